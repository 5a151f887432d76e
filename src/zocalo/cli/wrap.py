"""zocalo.wrap: run a wrapper (a long job) for one recipe step, reporting down the recipe."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from zocalo.cli.common import fail, open_broker, resolve_transport, transport_option
from zocalo.cli.config_options import site_config_options
from zocalo.config import SiteConfiguration
from zocalo.errors import ZocaloError
from zocalo.logs import setup_logging
from zocalo.wrapper.live_step import LiveRecipeWrapper
from zocalo.wrapper.wrap import WrapperNotFound, load_wrapper, run_wrapper, stop_on_signals


@click.command("wrap")
@click.option(
    "--wrap",
    "wrapper_name",
    required=True,
    metavar="NAME",
    help="The wrapper to run (entry point group zocalo.wrappers), e.g. command.",
)
@click.option(
    "--recipewrapper",
    "recipe_wrapper_file",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="FILE",
    help="Recipe-wrapper file: the recipe message of the step to report through (JSON).",
)
@transport_option
@click.option("-v", "--verbose", count=True, help="Debug log lines: -v zocalo's, -vv pika's too.")
@site_config_options
def command(
    wrapper_name: str,
    recipe_wrapper_file: Path | None,
    transport: str | None,
    verbose: int,
    site_config: SiteConfiguration,
) -> None:
    """Run the wrapper NAME for the step in the recipe-wrapper FILE.

    Exit status 0 once the outcome (success or failure) has been sent down the recipe,
    as python-zocalo's zocalo.wrap; non-zero when it could not be sent.
    """
    setup_logging(logging.DEBUG if verbose else logging.INFO, site_config=site_config)
    try:
        wrapper_class = load_wrapper(wrapper_name)
    except WrapperNotFound as error:
        raise click.UsageError(str(error)) from None
    url = resolve_transport(transport, site_config)
    log = logging.getLogger("zocalo.wrap")
    log.info("starting wrapper %s with recipe-wrapper file %s", wrapper_name, recipe_wrapper_file)
    with open_broker(url) as broker:
        try:
            recipe_wrapper = (
                LiveRecipeWrapper.from_file(recipe_wrapper_file, broker)
                if recipe_wrapper_file is not None
                else None
            )
            wrapper = wrapper_class(environment={"config": site_config})
            stop_on_signals(wrapper)
            run_wrapper(wrapper, broker, name=wrapper_name, recipe_wrapper=recipe_wrapper)
        except ZocaloError as error:
            fail(str(error))


def main() -> None:
    command(prog_name="zocalo.wrap")


if __name__ == "__main__":
    main()
