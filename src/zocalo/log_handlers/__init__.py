"""Log handlers: GELF (Graylog) over UDP and TCP, and a queue that never blocks the caller.

:func:`zocalo.logs.setup_logging` wires these from the site configuration; use them
directly only to build a logging setup of your own.
"""

from __future__ import annotations

from zocalo.log_handlers.gelf import (
    GELFHandler,
    GELFTCPHandler,
    GELFUDPHandler,
    gelf_dict,
    syslog_level,
)
from zocalo.log_handlers.queueing import NonBlockingHandler

__all__ = [
    "GELFHandler",
    "GELFTCPHandler",
    "GELFUDPHandler",
    "NonBlockingHandler",
    "gelf_dict",
    "syslog_level",
]
