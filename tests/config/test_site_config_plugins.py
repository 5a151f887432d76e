"""Plugin schemas and the transport URL an activated configuration implies."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from zocalo.config import ConfigurationError, load_configuration, transport_url
from zocalo.config.plugins import (
    GraylogConfig,
    LoggingConfig,
    OpenTelemetryConfig,
    PikaConfig,
    SmtpConfig,
    StompConfig,
)

PIKA = {"plugin": "pika", "host": "h", "port": 5672, "username": "u", "password": "p", "vhost": "v"}


def test_pika_url_quotes_user_password_and_vhost() -> None:
    pika = PikaConfig(**{**PIKA, "username": "a@b", "password": "p:w/d%", "vhost": "/"})
    assert pika.url() == "amqp://a%40b:p%3Aw%2Fd%25@h:5672/%2F"


def test_pika_host_lists() -> None:
    pika = PikaConfig(**{**PIKA, "host": "r1, r2,r3", "port": "5671, 5672,5673"})
    assert pika.addresses == [("r1", 5671), ("r2", 5672), ("r3", 5673)]
    assert pika.url() == "amqp://u:p@r1:5671/v?hosts=r2:5672,r3:5673"
    shared = PikaConfig(**{**PIKA, "host": "r1,r2", "port": 5672})
    assert shared.url() == "amqp://u:p@r1:5672/v?hosts=r2:5672"
    with pytest.raises(ValidationError, match="2 ports for 3 hosts"):
        PikaConfig(**{**PIKA, "host": "a,b,c", "port": "1,2"})
    with pytest.raises(ValidationError, match="not a port number"):
        PikaConfig(**{**PIKA, "port": "5672,x"})


def test_stomp_url_quotes_prefix_and_numeric_password() -> None:
    stomp = StompConfig(
        plugin="stomp", host="mq", port="61613", username="me", password=12345, prefix="a b/c"
    )
    assert stomp.url() == "stomp://me:12345@mq:61613?prefix=a%20b%2Fc"


def test_passwords_never_print() -> None:
    pika = PikaConfig(**{**PIKA, "password": "hunter2"})
    assert "hunter2" not in repr(pika) and "hunter2" not in str(pika)
    assert pika["password"] == "hunter2"  # dict-style access, as python-zocalo hands out


def test_small_plugins() -> None:
    assert GraylogConfig(plugin="graylog", protocol="tcp", host="g", port=1).protocol == "TCP"
    with pytest.raises(ValidationError):
        GraylogConfig(plugin="graylog", protocol="HTTP", host="g", port=1)
    otel = OpenTelemetryConfig(plugin="opentelemetry", host="o", port=4318)
    assert otel.endpoint == "https://o:4318/v1/traces" and otel.timeout == 10
    assert SmtpConfig.model_validate({"plugin": "smtp", "host": "s", "port": 25})["from"] is None
    with pytest.raises(ValidationError, match="e-mail"):
        SmtpConfig.model_validate({"plugin": "smtp", "host": "s", "port": 25, "from": "x"})
    with pytest.raises(ValidationError, match="incremental"):
        LoggingConfig.model_validate(
            {"plugin": "logging", "verbose": [{"handlers": {"h": {"class": "x"}}}]}
        )


def _config(write, body: str, *envs: str):
    path = write("site.yaml", "version: 1\n" + body)
    return load_configuration(path, environments=envs)


RMQ = "rmq: {plugin: pika, host: rabbit, port: 5672, username: u, password: p, vhost: /}\n"
MQ = "mq: {plugin: stomp, host: amq, port: 61613, username: u, password: p, prefix: z}\n"


def test_transport_url_choice(write) -> None:
    envs = (
        "environments:\n  both: [rmq, mq]\n  stomp: [mq]\n  chosen: [rmq, mq, pick]\n"
        "  url: [rmq, mq, direct]\n  none: []\n"
    )
    body = (
        RMQ
        + MQ
        + "pick: {plugin: transport, default: StompTransport}\n"
        + "direct: {plugin: transport, default: 'sqlite:///tmp/x.db'}\n"
        + envs
    )
    assert _config(write, body, "both").transport_url() == "amqp://u:p@rabbit:5672/%2F"
    assert _config(write, body, "both").transport_url("StompTransport") == (
        "stomp://u:p@amq:61613?prefix=z"
    )
    assert _config(write, body, "stomp").transport_url() == "stomp://u:p@amq:61613?prefix=z"
    assert _config(write, body, "chosen").transport_url() == "stomp://u:p@amq:61613?prefix=z"
    assert transport_url(_config(write, body, "url"), None) == "sqlite:///tmp/x.db"
    assert _config(write, body, "none").transport_url() is None


def test_transport_name_without_its_section(write) -> None:
    config = _config(write, MQ + "environments: {beamline: [mq]}\n", "beamline")
    with pytest.raises(ConfigurationError) as caught:
        config.transport_url("PikaTransport")
    message = str(caught.value)
    assert "PikaTransport needs a 'pika' section" in message
    assert "environment 'beamline' provides none" in message
    with pytest.raises(ConfigurationError, match="use -e ENV"):
        load_configuration().transport_url("StompTransport")
    with pytest.raises(ConfigurationError, match="unknown transport 'Carrier'"):
        config.transport_url("Carrier")


def test_pika_url_is_what_the_rabbitmq_transport_reads() -> None:
    from zocalo.transport.rabbitmq.url import connection_parameters

    pika = PikaConfig(**{**PIKA, "username": "a@b", "password": "p:w/d%", "vhost": "/"})
    (parameters,), _ = connection_parameters(pika.url())
    assert (parameters.host, parameters.port, parameters.virtual_host) == ("h", 5672, "/")
    assert parameters.credentials.username == "a@b"
    assert parameters.credentials.password == "p:w/d%"


def test_a_pika_cluster_becomes_nodes_the_rabbitmq_transport_tries_in_turn() -> None:
    from zocalo.transport.rabbitmq.url import connection_parameters

    cluster = PikaConfig(**{**PIKA, "host": "r1,r2,r3", "port": "5672,5673,5674"})
    nodes, _ = connection_parameters(cluster.url())
    assert [(node.host, node.port) for node in nodes] == [("r1", 5672), ("r2", 5673), ("r3", 5674)]
    assert {node.virtual_host for node in nodes} == {nodes[0].virtual_host}
