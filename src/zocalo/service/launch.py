"""Run one service in this process until a signal or a stop request."""

from __future__ import annotations

import signal
import threading
from types import FrameType

from zocalo.service.base import Service
from zocalo.service.runner import RunnerSettings, ServiceRunner
from zocalo.transport.registry import create_transport


def run_service(
    service_class: type[Service],
    transport_url: str,
    *,
    settings: RunnerSettings | None = None,
) -> ServiceRunner:
    """Run ``service_class`` on ``transport_url``; SIGTERM/SIGINT stop it cleanly."""
    runner = ServiceRunner(service_class(), create_transport(transport_url), settings)

    def stop(signum: int, frame: FrameType | None) -> None:
        runner.request_stop()

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, stop)
    runner.run()
    return runner
