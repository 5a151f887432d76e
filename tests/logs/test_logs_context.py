"""The recipe context on every line: the filter, console formats, the site's dictConfig."""

from __future__ import annotations

import io
import json
import logging
import textwrap
import threading
from pathlib import Path

import pytest

from zocalo.config import load_configuration
from zocalo.logs import (
    JSONFormatter,
    RecipeContextFilter,
    recipe_context,
    recipe_id_var,
    recipe_step_var,
    setup_logging,
)

# A module-level logger inside "handler code": it knows nothing of the recipe.
log = logging.getLogger("zocalo.tests.logs.context_module")


def handler_code() -> None:
    log.info("found %d spots", 17)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_recipe_context_sets_and_restores() -> None:
    assert recipe_id_var.get() is None and recipe_step_var.get() is None
    with recipe_context("outer", 1):
        with recipe_context("inner", 2):
            assert (recipe_id_var.get(), recipe_step_var.get()) == ("inner", 2)
        assert (recipe_id_var.get(), recipe_step_var.get()) == ("outer", 1)
    assert recipe_id_var.get() is None and recipe_step_var.get() is None


def test_filter_on_a_handler_stamps_module_level_loggers() -> None:
    """A filter on the *handler* sees records propagated from any module's logger."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RecipeContextFilter())
    handler.setFormatter(logging.Formatter("%(recipe_ID)s/%(recipe_step)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with recipe_context("abc", 3):
            handler_code()
        handler_code()
    finally:
        root.removeHandler(handler)
    assert stream.getvalue().splitlines() == ["abc/3 found 17 spots", "None/None found 17 spots"]


def test_context_does_not_leak_between_threads() -> None:
    seen: list[tuple] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.getMessage(), record.recipe_ID, record.recipe_step))

    handler = Capture()
    handler.addFilter(RecipeContextFilter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with recipe_context("main-thread", 1):
            worker = threading.Thread(target=lambda: log.info("from worker"))
            worker.start()
            worker.join()
            log.info("from main")
    finally:
        log.removeHandler(handler)
        log.setLevel(logging.NOTSET)
    assert sorted(seen) == [("from main", "main-thread", 1), ("from worker", None, None)]


def test_json_console_lines_carry_the_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    setup = setup_logging(logging.INFO, "json", service_name="demo.FindSpots")
    try:
        with recipe_context("abc", 3):
            handler_code()
            try:
                1 / 0  # noqa: B018
            except ZeroDivisionError:
                log.exception("boom")
    finally:
        setup.close()
    lines = json_lines(capsys.readouterr().err)
    spots = next(line for line in lines if line["message"] == "found 17 spots")
    assert spots["recipe_ID"] == "abc" and spots["recipe_step"] == 3
    assert spots["logger"] == "zocalo.tests.logs.context_module"
    assert spots["level"] == "INFO" and spots["service"] == "demo.FindSpots"
    boom = next(line for line in lines if line["message"] == "boom")
    assert "ZeroDivisionError" in boom["exception"] and boom["recipe_step"] == 3


def test_text_console_lines_carry_the_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    setup = setup_logging(logging.INFO, "text")
    try:
        with recipe_context("abc", 3):
            handler_code()
    finally:
        setup.close()
    err = capsys.readouterr().err
    assert "zocalo.tests.logs.context_module [abc:3] found 17 spots" in err


def test_setup_logging_replaces_its_own_handlers_and_closes() -> None:
    root = logging.getLogger()
    first = setup_logging(logging.INFO, "text")
    second = setup_logging(logging.DEBUG, "json")
    try:
        assert first.handlers[0] not in root.handlers
        assert second.handlers[0] in root.handlers
        assert root.level == logging.DEBUG
        assert isinstance(second.handlers[0].formatter, JSONFormatter)
    finally:
        second.close()
    assert second.handlers == []
    with pytest.raises(ValueError, match="log format"):
        setup_logging(logging.INFO, "xml")


def test_site_logging_plugin_is_applied_and_its_handlers_filtered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logfile = tmp_path / "zocalo.log"
    path = tmp_path / "site.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            version: 1
            logging-site:
              plugin: logging
              formatters:
                ctx:
                  format: "%(recipe_ID)s:%(recipe_step)s %(name)s %(message)s"
              handlers:
                file:
                  class: logging.FileHandler
                  filename: {logfile}
                  formatter: ctx
              root:
                level: WARNING
                handlers: [file]
              verbose:
                - loggers:
                    zocalo.tests.logs:
                      level: DEBUG
            environments:
              live: [logging-site]
            """
        )
    )
    config = load_configuration(path, environments=["live"])
    setup = setup_logging(logging.INFO, "text", config, verbosity=1)
    try:
        root = logging.getLogger()
        assert root.level == logging.WARNING  # the site's root level wins over -v
        handlers = root.handlers
        assert any(isinstance(h, logging.FileHandler) for h in handlers)
        assert all(any(isinstance(f, RecipeContextFilter) for f in h.filters) for h in handlers)
        with recipe_context("abc", 3):
            handler_code()  # INFO, but the verbose step set zocalo.tests.logs to DEBUG
            logging.getLogger("elsewhere").info("dropped: root is at WARNING")
    finally:
        setup.close()
    for handler in logging.getLogger().handlers:
        handler.flush()
    text = logfile.read_text()
    assert "abc:3 zocalo.tests.logs.context_module found 17 spots" in text
    assert "dropped" not in text
    # Our console handler is still there (the site declared none on the console).
    assert "[abc:3] found 17 spots" in capsys.readouterr().err


def test_site_console_handler_is_not_doubled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(
        textwrap.dedent(
            """
            version: 1
            logging-console:
              plugin: logging
              formatters:
                brief:
                  format: "SITE %(recipe_ID)s %(message)s"
              handlers:
                console:
                  class: logging.StreamHandler
                  formatter: brief
              root:
                level: INFO
                handlers: [console]
            environments:
              console: [logging-console]
            """
        )
    )
    setup = setup_logging(logging.INFO, "json", load_configuration(path, environments=["console"]))
    try:
        assert setup.handlers == []
        with recipe_context("abc", 3):
            handler_code()
    finally:
        setup.close()
    err = capsys.readouterr().err
    assert err.count("found 17 spots") == 1
    assert "SITE abc found 17 spots" in err
