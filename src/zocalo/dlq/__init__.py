"""The dead-letter and queue tools' library side (check, purge, reinject, drain, pickup).

Transport-neutral: each tool works through the transport contract, and learns which
queues a broker holds from a :class:`~zocalo.dlq.listing.QueueListing` (the embedded
broker answers itself; RabbitMQ through its management API). The command-line tools in
:mod:`zocalo.cli` only parse options and print.
"""
