"""Services: the base class, handler registration, the runner and discovery."""

from zocalo.service.base import HandlerSpec, Service, handler
from zocalo.service.runner import RunnerSettings, RunnerStats, ServiceRunner

__all__ = ["HandlerSpec", "RunnerSettings", "RunnerStats", "Service", "ServiceRunner", "handler"]
