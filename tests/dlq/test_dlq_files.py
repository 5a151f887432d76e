"""Dead-letter files: python-zocalo's layout and content, written privately and durably,
read back with one clear error for anything that is not a dead letter."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from zocalo.dlq.errors import UnreadableFile
from zocalo.dlq.files import (
    dead_lettered_at,
    decode_body,
    encode_body,
    export,
    file_path,
    read_dead_letter,
)

DEAD_AT = 1633962302.25  # 2021-10-11, a time in python-zocalo's own tests


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_file_is_named_and_laid_out_as_python_zocalo_does(tmp_path):
    headers = {"x-death": [{"time": DEAD_AT, "queue": "images"}], "workflows-recipe": True}
    done = export(tmp_path, "dlq.images", headers, b'{"b": 1, "a": [1]}', "ID:host-1/2")
    local = time.localtime(DEAD_AT)
    day = time.strftime("%Y-%m-%d", local)
    expected = f"msg-{time.strftime('%Y%m%d-%H%M%S', local)}-250-ID_host-1_2"
    assert done.path == tmp_path / day / expected == file_path(tmp_path, DEAD_AT, "ID:host-1/2")
    text = done.path.read_text()
    content = json.loads(text)
    assert text == json.dumps(content, indent=2, sort_keys=True) + "\n"
    assert set(content) == {"exported", "header", "message"}
    assert set(content["exported"]) == {"date", "time"}
    assert content["header"] == {**headers, "message-id": "ID:host-1/2"}
    assert content["message"] == {"b": 1, "a": [1]}
    assert (done.queue, done.message_id, done.dead_lettered) == (
        "dlq.images",
        "ID:host-1/2",
        DEAD_AT,
    )


def test_files_and_the_directories_made_for_them_are_private_whatever_the_umask(tmp_path):
    previous = os.umask(0)
    try:
        done = export(tmp_path / "new" / "DLQ", "dlq.q", {}, b"1", "m1", now=DEAD_AT)
    finally:
        os.umask(previous)
    assert mode(done.path) == 0o600
    for directory in (done.path.parent, tmp_path / "new" / "DLQ", tmp_path / "new"):
        assert mode(directory) == 0o700, directory
    assert not [p for p in done.path.parent.iterdir() if p.name.startswith(".")], "no temp file"


def test_an_existing_directory_keeps_its_mode(tmp_path):
    tmp_path.chmod(0o755)
    export(tmp_path, "dlq.q", {}, b"1", "m1", now=DEAD_AT)
    assert mode(tmp_path) == 0o755


def test_the_same_message_exported_twice_is_one_file_another_gets_a_name_beside_it(tmp_path):
    dated = {"x-death": [{"time": DEAD_AT}]}
    first = export(tmp_path, "dlq.q", dated, b"[1]", "m1", now=DEAD_AT + 5)
    again = export(tmp_path, "dlq.q", dated, b"[1]", "m1", now=DEAD_AT + 60)
    assert again.path == first.path
    other = export(tmp_path, "dlq.q", {**dated, "h": 2}, b"[1]", "m1", now=DEAD_AT + 5)
    assert other.path == first.path.with_name(first.path.name + "-2")
    assert len(list(first.path.parent.iterdir())) == 2


def test_a_redelivered_message_without_a_date_is_found_where_it_was_exported(tmp_path):
    """Named after its export time (its headers say no other): a second export after a
    crash, minutes later, finds the first file instead of writing another."""
    first = export(tmp_path, "dlq.q", {"h": 1}, b"[1]", "m-1", now=DEAD_AT)
    other = export(tmp_path, "dlq.q", {"h": 2}, b"[2]", "m-1", now=DEAD_AT + 1)
    again = export(tmp_path, "dlq.q", {"h": 1}, b"[1]", "m-1", now=DEAD_AT + 600, redelivered=True)
    assert again.path == first.path != other.path
    fresh = export(tmp_path, "dlq.q", {"h": 1}, b"[1]", "m-1", now=DEAD_AT + 600)
    assert fresh.path != first.path, "a first delivery is not looked for: its id is new"


@pytest.mark.parametrize(
    ("body", "encoding"),
    [
        (b'{"x": [1, 2]}', None),
        (b'"a string"', None),
        (b"not json", "text"),
        (b"\xff\x00", "base64"),
    ],
)
def test_every_body_comes_back_exactly(tmp_path, body, encoding):
    message, kept_as = decode_body(body)
    assert kept_as == encoding
    done = export(tmp_path, "dlq.q", {}, body, "m", now=DEAD_AT)
    letter = read_dead_letter(done.path)
    assert letter.encoding == encoding
    if encoding is None:
        assert json.loads(letter.body()) == json.loads(body)
    else:
        assert letter.body() == body == encode_body(message, encoding)


def test_when_a_message_was_dead_lettered_comes_from_its_headers():
    assert dead_lettered_at({"x-death": [{"time": 100.0}, {"time": 50}]}) == 100.0
    assert dead_lettered_at({"timestamp": "1633102156582"}) == 1633102156.582
    history = ["a reason", {"time": 7}, {"time": 9}, "later reason"]
    assert dead_lettered_at({"zocalo-dlq-history": history}) == 9
    assert dead_lettered_at({"x-death": "text", "zocalo-dlq-history": "x"}) is None
    assert dead_lettered_at({"timestamp": True}) is None


def test_python_zocalos_own_files_are_read(tmp_path):
    pika = tmp_path / "pika"
    pika.write_text(
        json.dumps(
            {
                "exported": {"date": "2021-10-11", "time": "15:25:02"},
                "header": {"x-death": [{"time": DEAD_AT, "queue": "q"}], "message-id": 3},
                "message": {"foo": "0"},
            }
        )
    )
    letter = read_dead_letter(pika)
    assert (letter.header["x-death"][0]["queue"], letter.message) == ("q", {"foo": "0"})
    assert json.loads(letter.body()) == {"foo": "0"}


BAD_FILES = {
    "not JSON": ("{nope", "invalid JSON"),
    "a list": ("[1, 2]", "JSON list, not an object"),
    "no header": ('{"message": 1}', 'no "header" object'),
    "header not an object": ('{"header": [1], "message": 1}', 'no "header" object'),
    "no message": ('{"header": {}}', 'no "message"'),
    "bad encoding": ('{"header": {}, "message": "x", "message-encoding": "rot13"}', "rot13"),
    "bad base64": ('{"header": {}, "message": "!!", "message-encoding": "base64"}', "base64"),
    "too deep": ("[" * 100000 + "]" * 100000, "not a dead-letter file"),
}


@pytest.mark.parametrize(("text", "expected"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_file_that_is_no_dead_letter_is_refused_naming_it(tmp_path, text, expected):
    path = tmp_path / "letter"
    path.write_text(text)
    with pytest.raises(UnreadableFile) as refused:
        read_dead_letter(path)
    assert str(refused.value).startswith(f"{path}: ")
    assert expected in str(refused.value)
    assert "\n" not in str(refused.value)


def test_missing_unreadable_and_binary_files_are_refused_naming_them(tmp_path):
    with pytest.raises(UnreadableFile, match="no such file"):
        read_dead_letter(tmp_path / "gone")
    with pytest.raises(UnreadableFile, match="a directory"):
        read_dead_letter(tmp_path)
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(UnreadableFile, match="not UTF-8"):
        read_dead_letter(binary)
    if os.geteuid() != 0:  # root reads anything
        secret = tmp_path / "secret"
        secret.write_text("{}")
        secret.chmod(0)
        with pytest.raises(UnreadableFile, match="cannot be read"):
            read_dead_letter(secret)
