"""Shipped services, one module each: ``zocalo.service -s Dispatcher``, ``-s JSONLines``,
``-s ClusterSubmission``, ``-s Schlockmeister``, ``-s Mailer``, ``-s Join``,
``-s DatabaseWriter``.

Each is an ordinary :class:`~zocalo.service.Service`, registered under the
``zocalo.services`` entry point group like a facility's own.
"""
