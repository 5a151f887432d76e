"""What a supervisor and the children it forks need to know, as plain JSON-able data.

A module of its own so that the supervisor (which forks the worker) and the
worker (which reads the settings) both import it and not each other.
"""

from __future__ import annotations

import json
from typing import Any

from zocalo.logs import LoggingPlan
from zocalo.service.status import STATUS_INTERVAL

#: A runner hook: ``("package.module:function", {options})``; the worker calls
#: ``function(runner, **options)`` before it runs the service.
RunnerHook = tuple[str, dict[str, Any]]


class SupervisorSettings:
    """Everything a supervisor and its children need, as plain JSON-able data.

    (A plain class: ``dataclasses`` would pull ``inspect`` and more into every
    supervisor.)
    """

    def __init__(
        self,
        service: str,
        transport: str,
        restart: bool = False,
        stop_timeout: float = 60.0,
        status_interval: float = STATUS_INTERVAL,
        max_attempts: int = 3,
        max_hops: int | None = None,
        logging: LoggingPlan | None = None,
        service_class: str | None = None,
        max_memory: float | None = None,
        runner_hooks: list[RunnerHook] | None = None,
        site_config: str | None = None,
        site_environments: list[str] | None = None,
    ) -> None:
        self.service = service
        #: The class name, known without importing the service (see ``service_class_name``).
        self.service_class = service_class
        self.transport = transport
        self.restart = restart
        self.stop_timeout = stop_timeout
        self.status_interval = status_interval
        self.max_attempts = max_attempts
        #: MiB of resident memory past which a worker is replaced between messages.
        self.max_memory = max_memory
        #: None: the runner's default (``RunnerSettings.max_hops``).
        self.max_hops = max_hops
        self.logging = logging or LoggingPlan(service_name=service)
        #: Named by the caller (the command line wires metrics this way), so that code
        #: above ``zocalo.service`` adds its middleware to the runner
        #: (``runner.add_middleware``) without the service layer importing it. Imported
        #: in the worker only: the supervisor stays small.
        self.runner_hooks = [(name, dict(options)) for name, options in runner_hooks or ()]
        #: The site configuration file and environments the command line activated; the
        #: worker activates the same for the service (``Service.site_config``).
        self.site_config = site_config
        self.site_environments = list(site_environments or ())

    def to_json(self) -> str:
        return json.dumps({**vars(self), "logging": self.logging.to_dict()})

    @classmethod
    def from_json(cls, text: str) -> SupervisorSettings:
        data = json.loads(text)
        return cls(**{**data, "logging": LoggingPlan.from_dict(data["logging"])})
