"""GELF over UDP and TCP, received by a real listener on a free port."""

from __future__ import annotations

import base64
import logging
import os
import textwrap
from pathlib import Path

import pytest

from zocalo.config import load_configuration
from zocalo.config.plugins import GraylogConfig
from zocalo.log_handlers import (
    GELFTCPHandler,
    GELFUDPHandler,
    NonBlockingHandler,
    gelf_dict,
    syslog_level,
)
from zocalo.logs import gelf_handler, recipe_context, setup_logging

# A module-level logger, as a service's modules have: no adapter, no context of its own.
log = logging.getLogger("zocalo.tests.logs.gelf_module")

pytestmark = pytest.mark.timeout(60)


def graylog(listener) -> GraylogConfig:
    return GraylogConfig(
        plugin="graylog", protocol=listener.protocol, host="127.0.0.1", port=listener.port
    )


def do_work() -> None:
    """Stands in for code a handler calls: it logs to the module-level logger."""
    log.info("processing %s images", 42)


def test_recipe_context_arrives_on_gelf_fields(gelf_listener, attach) -> None:
    attach(gelf_handler(graylog(gelf_listener), "demo.FindSpots"))
    with recipe_context("abc", 3):
        do_work()
    message = gelf_listener.wait_for(lambda m: m["short_message"] == "processing 42 images")
    assert message["_recipe_ID"] == "abc"
    assert message["_recipe_step"] == 3
    assert message["version"] == "1.1"
    assert message["level"] == 6
    assert message["_logger"] == "zocalo.tests.logs.gelf_module"
    assert message["_service"] == "demo.FindSpots"
    assert message["_file"] == __file__
    assert message["_function"] == "do_work"
    assert isinstance(message["_line"], int) and message["_line"] > 0
    assert message["host"]
    assert isinstance(message["timestamp"], float)
    assert "full_message" not in message


def test_lines_outside_a_recipe_carry_no_recipe_fields(gelf_listener, attach) -> None:
    attach(gelf_handler(graylog(gelf_listener)))
    with recipe_context("abc", 3):
        pass
    log.warning("idle")
    message = gelf_listener.wait_for(lambda m: m["short_message"] == "idle")
    assert "_recipe_ID" not in message and "_recipe_step" not in message
    assert message["level"] == 4


def test_exception_traceback_in_full_message(gelf_listener, attach) -> None:
    attach(gelf_handler(graylog(gelf_listener)))
    with recipe_context("r-9", 0):
        try:
            raise RuntimeError("detector on fire")
        except RuntimeError:
            log.exception("step failed")
    message = gelf_listener.wait_for(lambda m: m["short_message"] == "step failed")
    assert message["level"] == 3
    assert message["full_message"].startswith("step failed\nTraceback (most recent call last):")
    assert "RuntimeError: detector on fire" in message["full_message"]
    assert "test_exception_traceback_in_full_message" in message["full_message"]
    assert message["_recipe_ID"] == "r-9" and message["_recipe_step"] == 0


def test_large_udp_message_is_chunked_and_reassembled(udp_listener, attach) -> None:
    attach(gelf_handler(graylog(udp_listener)))
    # Random text barely compresses: the datagram stays well above 8 KB.
    text = base64.b64encode(os.urandom(48_000)).decode()
    with recipe_context("big", 1):
        log.info("blob %s", text)
    message = udp_listener.wait_for(lambda m: m["short_message"].startswith("blob "))
    assert message["short_message"] == "blob " + text
    assert message["_recipe_ID"] == "big"
    assert udp_listener.chunks >= 5  # 64 KB compressed to ~48 KB, 8154 bytes a chunk


def test_small_udp_message_is_one_compressed_datagram(udp_listener) -> None:
    handler = GELFUDPHandler("127.0.0.1", udp_listener.port)
    data = handler.makePickle(logging.makeLogRecord({"msg": "hi", "levelno": 20}))
    assert data[:1] == b"\x78"  # zlib
    assert list(handler.chunks(data)) == [data]
    handler.close()


def test_uncompressed_udp_and_small_chunks(udp_listener, attach) -> None:
    attach(GELFUDPHandler("127.0.0.1", udp_listener.port, compress=False, chunk_size=1420))
    log.info("x" * 5000)
    message = udp_listener.wait_for(lambda m: m["short_message"].startswith("xxx"))
    assert message["short_message"] == "x" * 5000
    assert udp_listener.chunks >= 4


def test_message_too_large_for_128_chunks_is_truncated_not_lost(udp_listener, attach) -> None:
    attach(GELFUDPHandler("127.0.0.1", udp_listener.port, compress=False, chunk_size=1420))
    log.info("huge %s", "y" * 400_000)  # 128 * 1420 is ~180 KB
    message = udp_listener.wait_for(lambda m: m["short_message"].startswith("huge "))
    assert message["_truncated"] == "true"
    assert message["short_message"].endswith("[truncated]")
    assert 1000 < len(message["short_message"]) < 182_000


def test_extra_fields_become_additional_fields(gelf_listener, attach) -> None:
    attach(gelf_handler(graylog(gelf_listener)))
    log.info("with extras", extra={"dcid": 1234, "beamline": "i03", "id": "not allowed"})
    message = gelf_listener.wait_for(lambda m: m["short_message"] == "with extras")
    assert message["_dcid"] == 1234
    assert message["_beamline"] == "i03"
    assert "_id" not in message


def test_tcp_frames_are_nul_terminated_uncompressed_json() -> None:
    handler = GELFTCPHandler("127.0.0.1", 1)
    data = handler.makePickle(logging.makeLogRecord({"msg": "a\0b", "levelno": 10}))
    assert data.endswith(b"\0") and data.count(b"\0") == 1
    assert data.startswith(b"{")
    handler.close()


def test_syslog_levels() -> None:
    assert [syslog_level(n) for n in (5, 10, 20, 25, 30, 40, 50, 60)] == [7, 7, 6, 6, 4, 3, 2, 2]
    record = logging.makeLogRecord({"msg": "m", "levelno": 50, "levelname": "CRITICAL"})
    assert gelf_dict(record, host="h")["level"] == 2


def site_config(tmp_path: Path, listener) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            version: 1
            graylog-local:
              plugin: graylog
              protocol: {listener.protocol.lower()}
              host: 127.0.0.1
              port: {listener.port}
            environments:
              live: [graylog-local]
            """
        )
    )
    return path


def test_setup_logging_wires_gelf_from_site_configuration(gelf_listener, tmp_path) -> None:
    config = load_configuration(site_config(tmp_path, gelf_listener), environments=["live"])
    setup = setup_logging(logging.INFO, "text", config, service_name="demo.Summary")
    try:
        assert isinstance(setup.gelf, NonBlockingHandler)
        target = setup.gelf.targets[0]
        expected = GELFUDPHandler if gelf_listener.protocol == "UDP" else GELFTCPHandler
        assert isinstance(target, expected)
        assert setup.gelf in logging.getLogger().handlers
        with recipe_context("site", 7):
            do_work()
            log.debug("below the root level: not sent")
        message = gelf_listener.wait_for(lambda m: m["short_message"] == "processing 42 images")
        assert message["_recipe_ID"] == "site" and message["_recipe_step"] == 7
        assert message["_service"] == "demo.Summary"
    finally:
        setup.close()
    assert setup.gelf not in logging.getLogger().handlers
    assert not any(m["short_message"].startswith("below") for m in gelf_listener.messages)


def test_setup_logging_without_graylog_has_no_gelf(tmp_path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("version: 1\n")
    setup = setup_logging(logging.INFO, "text", load_configuration(path))
    try:
        assert setup.gelf is None
        assert not any(isinstance(h, NonBlockingHandler) for h in logging.getLogger().handlers)
    finally:
        setup.close()


def test_a_forked_child_sends_through_its_own_queue_and_socket(gelf_listener, attach) -> None:
    """The supervisor forks its services: the handler it passes on must work in the child
    (a queue and thread of its own) without touching the parent's connection."""
    handler = attach(gelf_handler(graylog(gelf_listener), "demo.FindSpots"))
    log.info("from the parent, before the fork")
    gelf_listener.wait_for(lambda m: m["short_message"] == "from the parent, before the fork")
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            log.info("from the child %s", os.getpid())
            handler.close()  # drains the child's queue
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    gelf_listener.wait_for(lambda m: m["short_message"] == f"from the child {child}")
    log.info("from the parent, after the fork")
    gelf_listener.wait_for(lambda m: m["short_message"] == "from the parent, after the fork")
