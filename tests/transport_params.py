"""Transport ids as pytest parameters, each with the mark that selects it (``-m 'not
rabbitmq'`` leaves out what needs the machine's RabbitMQ, ``-m 'not stomp'`` what needs
a private STOMP broker): decided here once for every parametrized test."""

from __future__ import annotations

from typing import Any

import pytest

_MARKS = {"rabbitmq": pytest.mark.rabbitmq, "stomp": pytest.mark.stomp}


def transports(*ids: str) -> list[Any]:
    """``transports("sqlite", "rabbitmq")``: one ``pytest.param`` per id, marked."""
    return [pytest.param(id_, id=id_, marks=_MARKS.get(id_, ())) for id_ in ids]
