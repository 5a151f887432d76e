"""zocalo.service: run one service."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import click

from zocalo.cli.common import open_broker, resolve_transport, transport_option
from zocalo.cli.config_options import site_config_options
from zocalo.config import SiteConfiguration
from zocalo.logs import apply_logging, logging_plan
from zocalo.service.discovery import ServiceNotFound, check_service_name, service_class_name
from zocalo.service.runner_settings import RunnerSettings
from zocalo.service.supervisor import exec_supervisor
from zocalo.service.supervisor_settings import RunnerHook, SupervisorSettings
from zocalo.transport.registry import ENVIRONMENT_VARIABLE, redact_url


@contextlib.contextmanager
def _library_logs_quiet(unless: bool) -> Iterator[None]:
    """Mute log records below CRITICAL while the broker is checked (shown again with -vv).

    A failed check is reported in one line; the broker client's own log lines about
    the same failure would only repeat it (pika logs five ERRORs for one refused login).
    """
    if unless:
        yield
        return
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(previous)


@click.command("service")
@click.argument("positional_name", required=False, metavar="[NAME]")
@click.option("-s", "--service", "name", metavar="NAME", help="Service to run.")
@transport_option
@click.option("-r", "--restart", is_flag=True, help="Restart the service after a crash.")
@click.option(
    "--max-hops",
    type=click.IntRange(min=1),
    default=RunnerSettings.max_hops,
    show_default=True,
    help="Longest recipe-path a message may carry; longer is a runaway loop, dead-lettered.",
)
@click.option(
    "--stop-timeout",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds a stopping service may take to finish the message in hand.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    metavar="PORT",
    help="Serve Prometheus metrics on this port (off by default).",
)
@click.option(
    "--metrics-address",
    default="127.0.0.1",
    show_default=True,
    metavar="ADDRESS",
    help="Address the metrics port listens on (0.0.0.0 or :: opens it to the network).",
)
@click.option(
    "--max-memory",
    type=click.FloatRange(0, min_open=True),
    metavar="MiB",
    help="Replace the worker process, between messages, once its resident memory "
    "grows past this many MiB (off by default).",
)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text")
@click.option("-v", "--verbose", count=True, help="Debug log lines: -v zocalo's, -vv pika's too.")
@site_config_options
def command(
    positional_name: str | None,
    name: str | None,
    transport: str | None,
    restart: bool,
    max_hops: int,
    stop_timeout: float,
    metrics_port: int | None,
    metrics_address: str,
    max_memory: float | None,
    log_format: str,
    verbose: int,
    site_config: SiteConfiguration,
) -> None:
    """Run the service NAME until SIGTERM/SIGINT."""
    name = name or positional_name
    if not name:
        raise click.UsageError("which service? give -s NAME")
    url = resolve_transport(transport, site_config)
    plan = logging_plan(
        logging.DEBUG if verbose else logging.INFO,
        log_format,
        site_config,
        service_name=name,
        verbosity=verbose,
    )
    apply_logging(plan)
    try:
        name = check_service_name(name)
    except ServiceNotFound as error:
        raise click.UsageError(str(error)) from None
    hooks: list[RunnerHook] = []
    if metrics_port is not None:  # served by the worker, hung on its runner's hooks
        metrics = {"port": metrics_port, "address": metrics_address}
        hooks.append(("zocalo.monitor.metrics:enable_metrics", metrics))
    settings = SupervisorSettings(
        service=name,
        transport=url,
        restart=restart,
        max_hops=max_hops,
        stop_timeout=stop_timeout,
        max_memory=max_memory,
        logging=plan,
        service_class=service_class_name(name),
        runner_hooks=hooks,
        site_config=str(site_config.path.resolve()) if site_config.path else None,
        site_environments=list(site_config.active),
    )
    # A wrong URL, bad credentials or a missing vhost: one clear line and exit 1 here,
    # not a supervisor restarting a service that can never connect.
    with _library_logs_quiet(unless=verbose >= 2), open_broker(url):
        pass
    logging.getLogger("zocalo.service").info("supervising %s on %s", name, redact_url(url))
    # The service, and what it starts, reach the same broker: a Schlockmeister opens a
    # connection of its own, a service may run zocalo.go.
    os.environ[ENVIRONMENT_VARIABLE] = url
    exec_supervisor(settings)


def main() -> None:
    command(prog_name="zocalo.service")


if __name__ == "__main__":
    main()
