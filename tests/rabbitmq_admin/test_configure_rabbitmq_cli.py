"""zocalo.configure_rabbitmq against the machine's RabbitMQ management API.

Every test works in its own vhost(s) named ``zocalo-cfg-<uuid>`` and its own users named
``zocalo-cfg-test-<uuid>-*``, created here and deleted in a finalizer; the owner tag is
unique per test too, so no run can delete another run's vhosts or users.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner, Result

from zocalo.cli.configure_rabbitmq import main
from zocalo.rabbitmq_admin import ManagementAPI, hash_password
from zocalo.rabbitmq_admin.api import password_matches

pytestmark = pytest.mark.rabbitmq

API_URL = "http://127.0.0.1:15672"
SAMPLE = Path(__file__).parents[2] / "contrib" / "rabbitmq-configuration.yaml"
PLUGIN = "rabbitmq_delayed_message_exchange"

DLQ_GROUP = [
    "archive.filelist", "archive.pattern", "cluster.submission", "darc.dropzone", "dispatcher",
    "filewatcher", "htcondorwatcher", "images", "index", "ispyb_connector", "ispyb_pia",
    "mailnotification", "mimas", "mimas.held", "nexusparser.find_related_files", "notify_gda",
    "per_image_analysis", "per_image_analysis.hdf5_select", "processing_recipe", "pymca.fitter",
    "relion.dev.stop", "ssx.plot", "transient.destination", "transient.transaction", "trigger",
    "validation", "bridge.test",
]  # fmt: skip
SAC_GROUP = ["reduce.dc_sim", "reduce.xray_centering", "statistics.cluster", "jsonlines"]


class Broker:
    """Management API access plus a record of what to delete afterwards."""

    def __init__(self) -> None:
        # Deleting a vhost of quorum queues can take minutes on a loaded machine.
        self.api = ManagementAPI(API_URL, "guest", "guest", timeout=180)
        self.vhosts: list[str] = []
        self.users: list[str] = []
        self.tag = f"zocalo-cfg-test-{uuid.uuid4().hex}"

    def new_vhost_name(self) -> str:
        name = f"zocalo-cfg-{uuid.uuid4()}"
        self.vhosts.append(name)
        return name

    def new_vhost(self) -> str:
        name = self.new_vhost_name()
        self.api.put_vhost(name, "configure_rabbitmq test")
        return name

    def new_user_name(self, suffix: str) -> str:
        name = f"zocalo-cfg-test-{uuid.uuid4().hex[:12]}-{suffix}"
        self.users.append(name)
        return name

    def cleanup(self) -> None:
        errors = []
        for name in self.vhosts:
            try:
                self.api.delete_vhost(name)
            except Exception as error:
                errors.append(error)
        for name in self.users:
            try:
                self.api.delete_user(name)
            except Exception as error:
                errors.append(error)
        self.api.close()
        assert not errors, errors

    def queue(self, vhost: str, name: str) -> dict | None:
        return self.api.get_queue(vhost, name)

    def queues(self, vhost: str) -> dict[str, dict]:
        return {queue["name"]: queue for queue in self.api.queues(vhost)}

    def publish(self, vhost: str, queue: str, body: str = "precious") -> None:
        assert self.api.publish(vhost, "", queue, body), f"{body!r} was not routed to {queue}"

    def wait_for_messages(self, vhost: str, queue: str, count: int, timeout: float = 30) -> None:
        """Until the management statistics report ``count`` messages (they lag by ~5 s)."""
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            seen = (self.queue(vhost, queue) or {}).get("messages")
            if seen == count:
                return
            time.sleep(0.25)
        raise AssertionError(f"queue {queue} reports {seen} messages, expected {count}")


@pytest.fixture
def broker() -> Iterator[Broker]:
    broker = Broker()
    try:
        yield broker
    finally:
        broker.cleanup()


def run(*args: str | Path, vhost: str | None = None, tag: str | None = None) -> Result:
    argv = [str(arg) for arg in args]
    argv += ["--api", API_URL, "--user", "guest", "--password", "guest"]
    if vhost is not None:
        argv += ["--vhost", vhost]
    if tag is not None:
        argv += ["--owner-tag", tag]
    env = {"ZOCALO_CONFIG": None, "ZOCALO_DEFAULT_ENV": None, "ZOCALO_TRANSPORT": None}
    return CliRunner().invoke(main, argv, env=env, catch_exceptions=False)


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def write(tmp_path: Path, text: str, name: str = "topology.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- the shipped sample -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample() -> Iterator[tuple[Broker, str, str]]:
    """The sample applied once to a private vhost: (broker, vhost, output of the apply)."""
    broker = Broker()
    try:
        vhost = broker.new_vhost()
        output = ok(run(SAMPLE, "--skip-missing-plugins", vhost=vhost))
        yield broker, vhost, output
    finally:
        broker.cleanup()


def test_sample_second_dry_run_says_no_changes(sample):
    _broker, vhost, output = sample
    assert "Applied" in output
    again = ok(run(SAMPLE, "--skip-missing-plugins", "--dry-run", vhost=vhost))
    assert "No changes" in again
    assert "+ create" not in again


def test_sample_queues_are_quorum_with_dead_letter_queues(sample):
    broker, vhost, _ = sample
    queues = broker.queues(vhost)
    expected = (
        set(DLQ_GROUP)
        | {f"dlq.{name}" for name in DLQ_GROUP + SAC_GROUP}
        | set(SAC_GROUP)
        | {"per_image_analysis.ssx", "xrc.i03"}
    )
    assert set(queues) == expected
    assert queues["dispatcher"]["arguments"] == {
        "x-queue-type": "quorum",
        "x-single-active-consumer": False,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "dlq.dispatcher",
    }
    assert queues["dispatcher"]["durable"] is True
    assert queues["dispatcher"]["auto_delete"] is False
    assert queues["dlq.dispatcher"]["arguments"] == {"x-queue-type": "quorum"}
    assert queues["dlq.dispatcher"]["type"] == "quorum"
    assert queues["jsonlines"]["arguments"]["x-single-active-consumer"] is True
    assert queues["jsonlines"]["arguments"]["x-dead-letter-routing-key"] == "dlq.jsonlines"
    assert queues["per_image_analysis.ssx"]["arguments"] == {
        "x-queue-type": "quorum",
        "x-single-active-consumer": False,
    }
    # dead-letter-queue-create: false: DLX arguments but no DLQ.
    assert queues["xrc.i03"]["arguments"]["x-dead-letter-routing-key"] == "dlq.xrc.i03"
    assert "dlq.xrc.i03" not in queues


def test_sample_exchanges_and_bindings(sample):
    broker, vhost, _ = sample
    exchanges = {e["name"]: e for e in broker.api.exchanges(vhost)}
    for name in ("command", "transient.status", "transient.statistics.cluster"):
        assert exchanges[name]["type"] == "fanout"
        assert exchanges[name]["durable"] is True
    assert exchanges["results"]["type"] == "topic"
    assert "delayed" not in exchanges  # skipped: the plugin is not enabled here
    bindings = {
        (b["source"], b["destination"], b["routing_key"])
        for b in broker.api.bindings(vhost)
        if b["source"]
    }
    assert bindings == {("results", "xrc.i03", "xrc.i03")}


def test_sample_policies(sample):
    broker, vhost, _ = sample
    policies = {p["name"]: p for p in broker.api.policies(vhost)}
    assert set(policies) == {"redelivery", "ttl", "immediate", "dlq"}
    assert policies["redelivery"]["definition"] == {"delivery-limit": 5}
    assert policies["redelivery"]["pattern"] == ".*"
    assert policies["ttl"]["definition"] == {"delivery-limit": 5, "message-ttl": 60000}
    assert policies["ttl"]["priority"] == 1
    assert policies["immediate"]["definition"] == {"message-ttl": 0}
    assert policies["dlq"]["pattern"] == "^amq."
    assert policies["dlq"]["definition"] == {"dead-letter-exchange": ""}
    assert all(p["apply-to"] == "queues" for p in policies.values())


def test_missing_plugin_is_an_error_naming_it_and_changes_nothing(broker):
    vhost = broker.new_vhost()
    result = run(SAMPLE, vhost=vhost)
    assert result.exit_code == 1
    assert PLUGIN in result.output
    assert "'delayed'" in result.output
    assert "--skip-missing-plugins" in result.output
    assert broker.queues(vhost) == {}
    assert broker.api.policies(vhost) == []


def test_skip_missing_plugins_warns_and_drops_the_bindings(broker, tmp_path):
    vhost = broker.new_vhost()
    path = write(
        tmp_path,
        """
policies: []
exchanges:
  - {name: delayed, type: x-delayed-message, arguments: {x-delayed-type: direct}}
groups:
  - names: [work]
    bindings: ["", delayed]
""",
    )
    result = run(path, "--skip-missing-plugins", vhost=vhost)
    assert result.exit_code == 0, result.output
    assert "Warning" in result.stderr
    assert PLUGIN in result.stderr
    assert "delayed" not in {e["name"] for e in broker.api.exchanges(vhost)}
    assert set(broker.queues(vhost)) == {"work"}
    assert "No changes" in ok(run(path, "--skip-missing-plugins", "--dry-run", vhost=vhost))


# -- safety ------------------------------------------------------------------------------------

QUORUM = """
policies: []
exchanges: []
groups:
  - names: [{names}]
    settings:
      single_active_consumer: {sac}
      queues:
        type: quorum
        dead-letter-routing-key-pattern: "dlq.{{name}}"
"""


def test_immutable_argument_change_to_a_queue_in_use_is_kept_without_force(broker, tmp_path):
    vhost = broker.new_vhost()
    before = write(tmp_path, QUORUM.format(names="work", sac="false"), "before.yaml")
    ok(run(before, vhost=vhost))
    broker.publish(vhost, "work")
    broker.wait_for_messages(vhost, "work", 1)

    after = write(tmp_path, QUORUM.format(names="work", sac="true"), "after.yaml")
    dry = ok(run(after, "--dry-run", vhost=vhost))
    assert "- delete queue work" not in dry
    assert "= keep queue work" in dry
    assert "has 1 message; not recreated" in dry
    assert "x-single-active-consumer false -> true" in dry

    ok(run(after, vhost=vhost))  # everything else applies; the queue stays as it is
    queue = broker.queue(vhost, "work")
    assert queue["arguments"]["x-single-active-consumer"] is False
    assert queue["messages"] == 1

    forced = ok(run(after, "--force", "--dry-run", vhost=vhost))
    assert "[needs --force: holds 1 message]" in forced
    assert forced.index("- delete queue work") < forced.index("+ create queue work")
    assert "recreate" in forced
    ok(run(after, "--force", vhost=vhost))
    assert broker.queue(vhost, "work")["arguments"]["x-single-active-consumer"] is True
    assert "dlq.work" in broker.queues(vhost)
    assert "No changes" in ok(run(after, "--dry-run", vhost=vhost))


def test_immutable_change_to_an_empty_queue_needs_no_force(broker, tmp_path):
    vhost = broker.new_vhost()
    ok(
        run(
            write(tmp_path, "policies: []\nexchanges: []\ngroups: [{names: [work]}]\n"), vhost=vhost
        )
    )
    assert broker.queue(vhost, "work")["arguments"] == {
        "x-queue-type": "classic",
        "x-single-active-consumer": False,
    }
    after = write(tmp_path, QUORUM.format(names="work", sac="false"), "after.yaml")
    output = ok(run(after, vhost=vhost))
    assert "- delete queue work" in output
    assert broker.queue(vhost, "work")["type"] == "quorum"


def test_a_queue_that_holds_messages_and_its_dlq_are_kept_without_force(broker, tmp_path):
    vhost = broker.new_vhost()
    ok(run(write(tmp_path, QUORUM.format(names="keep, full", sac="false"), "a.yaml"), vhost=vhost))
    broker.publish(vhost, "full")
    broker.wait_for_messages(vhost, "full", 1)

    smaller = write(tmp_path, QUORUM.format(names="keep", sac="false"), "b.yaml")
    dry = ok(run(smaller, "--dry-run", vhost=vhost))
    assert "- delete" not in dry
    assert "= keep queue full (vhost" in dry and "has 1 message" in dry
    assert "= keep queue dlq.full" in dry and "dead-letter queue of queue full" in dry

    ok(run(smaller, vhost=vhost))
    assert {"full", "dlq.full"} <= set(broker.queues(vhost))

    forced = ok(run(smaller, "--force", "--dry-run", vhost=vhost))
    assert "- delete queue full" in forced
    assert "[needs --force: holds 1 message]" in forced
    assert "- delete queue dlq.full" in forced
    ok(run(smaller, "--force", vhost=vhost))
    assert set(broker.queues(vhost)) == {"keep", "dlq.keep"}


def test_only_named_vhosts_and_non_temporary_objects_are_managed(broker, tmp_path):
    vhost, other = broker.new_vhost(), broker.new_vhost()
    for name in (vhost, other):
        broker.api.put_queue(name, "stray", {"durable": True, "arguments": {}})
        broker.api.put_exchange(name, "stray.exchange", {"type": "topic"})
        broker.api.put_policy(
            name, "stray", {"pattern": "^stray$", "definition": {"max-length": 1}}
        )
    broker.api.put_queue(vhost, "temporary", {"durable": False, "auto_delete": True})
    path = write(tmp_path, "policies: []\nexchanges: []\ngroups: [{names: [work]}]\n")
    output = ok(run(path, vhost=vhost))
    assert "- delete queue stray" in output
    assert "- delete exchange stray.exchange" in output
    assert "- delete policy stray" in output
    assert set(broker.queues(vhost)) == {"work", "temporary"}
    # The other vhost is not in the file: untouched.
    assert "stray" in broker.queues(other)
    assert "stray.exchange" in {e["name"] for e in broker.api.exchanges(other)}
    assert [p["name"] for p in broker.api.policies(other)] == ["stray"]


def test_vhosts_are_created_tagged_and_deleted_only_with_force(broker, tmp_path):
    first, second = broker.new_vhost_name(), broker.new_vhost_name()
    untagged = broker.new_vhost()
    both = write(
        tmp_path,
        f"""
vhosts:
  - {{name: {first}, description: first}}
  - {{name: {second}}}
policies: []
exchanges: []
groups:
  - {{names: [a], vhost: {first}}}
  - {{names: [b], vhost: {second}}}
""",
        "both.yaml",
    )
    ok(run(both, tag=broker.tag))
    vhosts = {v["name"]: v for v in broker.api.vhosts()}
    assert broker.tag in vhosts[first]["tags"]
    assert vhosts[first]["description"] == "first"
    assert set(broker.queues(second)) == {"b"}
    assert "No changes" in ok(run(both, "--dry-run", tag=broker.tag))

    one = write(
        tmp_path,
        f"vhosts: [{{name: {first}}}]\npolicies: []\nexchanges: []\n"
        f"groups: [{{names: [a], vhost: {first}}}]\n",
        "one.yaml",
    )
    dry = ok(run(one, "--dry-run", tag=broker.tag))
    assert f"- delete vhost {second}" in dry
    assert "[needs --force: deleting a vhost deletes everything in it]" in dry
    assert untagged not in dry
    refused = run(one, tag=broker.tag)
    assert refused.exit_code == 1
    assert broker.api.get_vhost(second) is not None
    ok(run(one, "--force", tag=broker.tag))
    assert broker.api.get_vhost(second) is None
    assert broker.api.get_vhost(untagged) is not None  # not ours: no owner tag
    assert broker.api.get_vhost(first) is not None


def test_missing_undeclared_vhost_is_an_error(broker, tmp_path):
    name = broker.new_vhost_name()
    path = write(tmp_path, "policies: []\nexchanges: []\ngroups: [{names: [a]}]\n")
    result = run(path, vhost=name)
    assert result.exit_code == 1
    assert name in result.output
    assert "does not exist" in result.output or "do not exist" in result.output


# -- users ---------------------------------------------------------------------------------


def _ini(directory: Path, name: str, user: str, password: str, tags: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"[rabbitmq]\nusername = {user}\npassword = {password}\ntags = {tags}\n")
    return path


def test_users_from_user_config(broker, tmp_path):
    vhost = broker.new_vhost()
    topology = write(tmp_path, "policies: []\nexchanges: []\ngroups: [{names: [a]}]\n")
    users = tmp_path / "users"
    alice = broker.new_user_name("alice")
    bob = broker.new_user_name("bob")
    bystander = broker.new_user_name("bystander")
    broker.api.put_user(bystander, hash_password("x"), ["monitoring"])
    _ini(users, "alice.ini", alice, "wonderland", "monitoring")
    _ini(users / "nested", "bob.ini", bob, "builder")

    args = (topology, "--user-config", users)
    output = ok(run(*args, vhost=vhost, tag=broker.tag))
    assert f"+ create user {alice}" in output
    existing = {u["name"]: u for u in broker.api.users()}
    assert set(existing[alice]["tags"]) == {"monitoring", broker.tag}
    assert set(existing[bob]["tags"]) == {broker.tag}
    assert existing[alice]["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    raw = base64.b64decode(existing[alice]["password_hash"])
    assert raw[4:] == hashlib.sha256(raw[:4] + b"wonderland").digest()
    # RabbitMQ itself accepts the password (monitoring users may use the API).
    as_alice = ManagementAPI(API_URL, alice, "wonderland")
    try:
        assert as_alice.whoami()["name"] == alice
    finally:
        as_alice.close()
    assert "No changes" in ok(run(*args, "--dry-run", vhost=vhost, tag=broker.tag))

    _ini(users, "alice.ini", alice, "looking-glass", "monitoring")
    (users / "nested" / "bob.ini").unlink()
    dry = ok(run(*args, "--dry-run", vhost=vhost, tag=broker.tag))
    assert f"~ update user {alice}" in dry
    assert "password differs" in dry
    assert f"- delete user {bob}" in dry
    ok(run(*args, vhost=vhost, tag=broker.tag))
    existing = {u["name"]: u for u in broker.api.users()}
    assert bob not in existing
    assert password_matches(
        "looking-glass", existing[alice]["password_hash"], existing[alice]["hashing_algorithm"]
    )
    # Users without the owner tag are never deleted: the bystander and guest survive.
    assert bystander in existing
    assert "guest" in existing


def test_bad_user_file_names_the_file_and_key(broker, tmp_path):
    vhost = broker.new_vhost()
    topology = write(tmp_path, "policies: []\nexchanges: []\ngroups: [{names: [a]}]\n")
    users = tmp_path / "users"
    users.mkdir()
    bad = users / "broken.ini"
    bad.write_text(f"[rabbitmq]\nusername = {broker.new_user_name('broken')}\n")
    result = run(topology, "--user-config", users, vhost=vhost, tag=broker.tag)
    assert result.exit_code == 1
    assert str(bad) in result.output
    assert "password" in result.output
    assert broker.queues(vhost) == {}


def test_hash_password_matches_rabbitmq(broker):
    guest = next(u for u in broker.api.users() if u["name"] == "guest")
    assert password_matches("guest", guest["password_hash"], guest["hashing_algorithm"])
    assert not password_matches("wrong", guest["password_hash"], guest["hashing_algorithm"])
    assert (
        hash_password("pw", salt=b"\x01\x02\x03\x04")
        == base64.b64encode(
            b"\x01\x02\x03\x04" + hashlib.sha256(b"\x01\x02\x03\x04pw").digest()
        ).decode()
    )


# -- the file ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (
            "policies: []\nexchanges: []\ngroups: [{names: [a], settings: {queues: {type: x}}}]\n",
            "groups[0].settings.queues.type",
        ),
        (
            "policies: []\nexchanges: []\n"
            "groups: [{names: [a], settings: {queues: {dead-letter-routing-key-patern: x}}}]\n",
            "groups[0].settings.queues.dead-letter-routing-key-patern",
        ),
        ("exchanges: []\ngroups: []\n", "policies"),
        ("policies: []\nexchanges: [{name: e, type: nonsense}]\ngroups: []\n", "exchanges[0].type"),
        (
            "policies: []\nexchanges: []\ngroups: [{names: [a]}]\n"
            "bindings: [{source: nowhere, destination: a}]\n",
            "nowhere",
        ),
    ],
)
def test_bad_topology_names_the_file_and_key(broker, tmp_path, text, key):
    vhost = broker.new_vhost()
    path = write(tmp_path, text)
    result = run(path, "--dry-run", vhost=vhost)
    assert result.exit_code == 1
    assert str(path) in result.output
    assert key in result.output


def test_api_and_vhost_from_site_configuration(broker, tmp_path):
    vhost = broker.new_vhost()
    site = write(
        tmp_path,
        f"""
version: 1
rabbitmqapi:
  plugin: rabbitmqapi
  base_url: http://127.0.0.1:1/api, {API_URL}/api
  username: guest
  password: guest
  vhost: {vhost}
environments:
  test: [rabbitmqapi]
""",
        "site.yaml",
    )
    topology = write(tmp_path, "policies: []\nexchanges: []\ngroups: [{names: [a]}]\n")
    result = CliRunner().invoke(
        main,
        [str(topology), "--config", str(site), "-e", "test"],
        env={"ZOCALO_CONFIG": None, "ZOCALO_DEFAULT_ENV": None},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert set(broker.queues(vhost)) == {"a"}


EXCHANGE = """
policies: []
exchanges:
  - {{name: results, type: {type}, durable: true}}
groups:
  - names: [work]
bindings:
  - {{source: results, destination: work, routing_key: {key}}}
"""


def test_exchange_change_is_recreated_with_its_bindings(broker, tmp_path):
    vhost = broker.new_vhost()
    ok(run(write(tmp_path, EXCHANGE.format(type="topic", key="a"), "a.yaml"), vhost=vhost))
    # A live subscriber's binding (auto-delete queue) is not the tool's to remove.
    broker.api.put_queue(vhost, "subscriber", {"durable": False, "auto_delete": True})
    broker.api.create_binding(vhost, "results", "queue", "subscriber", "#", {})

    changed = write(tmp_path, EXCHANGE.format(type="direct", key="b"), "b.yaml")
    dry = ok(run(changed, "--dry-run", vhost=vhost))
    assert "- delete exchange results" in dry
    assert "+ create exchange results" in dry
    assert 'type "topic" -> "direct"' in dry
    assert "+ create binding results -> queue work key 'b'" in dry
    ok(run(changed, vhost=vhost))
    exchange = next(e for e in broker.api.exchanges(vhost) if e["name"] == "results")
    assert exchange["type"] == "direct"
    bindings = {
        (b["destination"], b["routing_key"]) for b in broker.api.bindings(vhost) if b["source"]
    }
    assert bindings == {("work", "b")}
    assert "No changes" in ok(run(changed, "--dry-run", vhost=vhost))

    # A stale binding from a managed exchange goes; a subscriber's binding stays.
    broker.api.create_binding(vhost, "results", "queue", "work", "stale", {})
    broker.api.create_binding(vhost, "results", "queue", "subscriber", "live", {})
    output = ok(run(changed, vhost=vhost))
    assert "- delete binding results -> queue work key 'stale'" in output
    bindings = {
        (b["destination"], b["routing_key"]) for b in broker.api.bindings(vhost) if b["source"]
    }
    assert bindings == {("work", "b"), ("subscriber", "live")}


# -- a vhost with running services -------------------------------------------------------


def test_the_sample_plans_no_deletion_of_what_running_services_use(broker, tmp_path):
    """The RabbitMQ transport's queues (with consumers or messages), their dead-letter
    queues and its delay topology are kept; --force still plans their deletion."""
    from zocalo.transport import create_transport

    vhost = broker.new_vhost()
    broker.api.put_permission(vhost, "guest", ".*", ".*", ".*")
    url = f"amqp://guest:guest@127.0.0.1:5672/{quote(vhost, safe='')}"
    with create_transport(url) as service:
        for queue in ("dispatcher", "per_image_analysis", "myservice"):
            service.subscribe(queue, lambda delivery: None)  # the sample's arguments differ
        service.subscribe_broadcast("transient.status", lambda delivery: None)
        service.subscribe_broadcast("news", lambda delivery: None)  # not in the sample
        service.send("myservice", b"later", delay=600)  # builds the delay topology
        service.declare_queue("stash")
        service.send("stash", b"precious")
        # A supervisor's command queue while its worker restarts: no consumer, no message.
        service.bind_queue("zocalo.command.host.1234", "command", expires=600)
        broker.wait_for_messages(vhost, "stash", 1)
        deadline = time.monotonic() + 30
        while any(
            (broker.queue(vhost, name) or {}).get("consumers") != 1
            for name in ("dispatcher", "per_image_analysis", "myservice")
        ):  # the management statistics lag a few seconds
            assert time.monotonic() < deadline, "consumers never showed in the management API"
            time.sleep(0.25)

        dry = ok(run(SAMPLE, "--skip-missing-plugins", "--dry-run", vhost=vhost))
        assert "- delete" not in dry
        for queue in ("dispatcher", "per_image_analysis", "myservice"):
            assert f"= keep queue {queue} (vhost {vhost}): has 1 consumer" in dry
        assert f"= keep queue stash (vhost {vhost}): has 1 message" in dry
        assert "= keep queue dlq.myservice" in dry and "= keep queue dlq.stash" in dry
        assert "= keep queue zocalo.command.host.1234" in dry
        assert "= keep zocalo's delayed-delivery topology (zocalo.delay.*:" in dry
        assert "33 exchange(s), 32 queue(s)" in dry
        assert f"= keep exchange news (vhost {vhost}): routes to 1 queue with consumers" in dry

        # Applied for real (a small file: the sample's 60 quorum queues make the vhost
        # slow to delete on a loaded machine), what is in use stays.
        small = write(tmp_path, "policies: []\nexchanges: []\ngroups: [{names: [dispatcher]}]\n")
        applied = ok(run(small, vhost=vhost))
        assert "- delete" not in applied and "= keep queue per_image_analysis" in applied
        queues = broker.queues(vhost)
        assert {"dispatcher", "myservice", "dlq.myservice", "stash", "zocalo.delay.wait0"} <= set(
            queues
        )
        assert {"zocalo.delay.delivery", "news"} <= {e["name"] for e in broker.api.exchanges(vhost)}

        forced = ok(run(SAMPLE, "--skip-missing-plugins", "--dry-run", "--force", vhost=vhost))
        for name in ("dispatcher", "myservice", "dlq.myservice", "stash", "zocalo.delay.wait0"):
            assert f"- delete queue {name} (vhost" in forced
        assert "- delete exchange zocalo.delay.delivery" in forced
        assert "- delete exchange news" in forced
        assert "= keep" not in forced
