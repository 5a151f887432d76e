"""Loading python-zocalo site configuration files: format, includes, environments, errors."""

from __future__ import annotations

import logging
import pathlib
import shutil
from pathlib import Path

import pytest

from zocalo.config import ConfigurationError, SiteConfiguration, load_configuration
from zocalo.config.plugins import SlurmConfig, StompConfig
from zocalo.errors import ZocaloError

SAMPLE = Path(__file__).resolve().parents[2] / "contrib" / "site-configuration.yaml"

# --------------------------------------------------------------------------- the shipped sample


def test_sample_loads_its_default_environment(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="zocalo.config"):
        config = load_configuration(SAMPLE)
    assert config.path == SAMPLE
    assert set(config.environments) == {"live", "test", "legacy", "console", "default"}
    assert config.active == ("default",)
    assert config.transport_url() == (
        "amqp://zocalo-test:not-a-secret@rmq1.test.example.org:5672/zocalo-test"
        "?hosts=rmq2.test.example.org:5672,rmq3.test.example.org:5672"
    )
    # storage-common, then storage-test: later keys win, the rest merge.
    assert config.storage == {
        "zocalo.recipe_directory": "/dls_sw/apps/zocalo/test/recipes",
        "zocalo.go.fallback_location": "/dls_sw/apps/zocalo/dropfiles",
        "zocalo.dlq.purge_location": "/tmp/zocalo-dlq",
    }
    # The unknown plugin is kept, and said so, with its file and line.
    assert config.section("ispyb") == {
        "plugin": "ispyb",
        "credentials": "/dls_sw/dasc/mariadb/credentials/ispyb.cfg",
    }
    [warning] = [r.getMessage() for r in caplog.records if "ispyb" in r.getMessage()]
    assert str(SAMPLE) in warning and "line " in warning and "does not know" in warning


def test_sample_other_environments(tmp_path: Path) -> None:
    legacy = load_configuration(SAMPLE, environments=["legacy", "console"])
    assert legacy.active == ("legacy", "console")
    assert legacy.transport_url() == "stomp://zocalo:12345@activemq.example.org:61613?prefix=zocalo"
    steps = legacy.plugins["logging"].dict_config(verbosity=2)
    assert len(steps) == 3 and steps[0]["handlers"]["console"]["level"] == "INFO"
    assert steps[2] == {"version": 1, "incremental": True, "root": {"level": "DEBUG"}}

    # live needs its credentials file, which the sample does not ship: a clear error...
    with pytest.raises(ConfigurationError) as caught:
        load_configuration(SAMPLE, environments=["live"])
    message = str(caught.value)
    assert message.startswith(f"{SAMPLE}, line ")
    assert "section 'rmq-live'" in message and "environment 'live'" in message
    assert "secrets/rabbitmq-live.yaml" in message and "No such file" in message

    # ... and with one beside a copy of the sample, live works.
    copy = tmp_path / "site.yaml"
    shutil.copy(SAMPLE, copy)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "rabbitmq-live.yaml").write_text(
        "plugin: pika\nhost: rmq1.example.org,rmq2.example.org\nport: 5671,5672\n"
        "username: zocalo\npassword: s3cret\nvhost: /\n"
    )
    live = load_configuration(copy, environments=["live"])
    assert live.transport_url() == (
        "amqp://zocalo:s3cret@rmq1.example.org:5671/%2F?hosts=rmq2.example.org:5672"
    )
    assert live.plugins["rabbitmqapi"].base_urls == [
        "https://rmq1.example.org:15671/api",
        "https://rmq2.example.org:15671/api",
    ]
    assert live.plugins["rabbitmqapi"].vhost == "/"
    assert live.plugins["smtp"]["from"] == "Zocalo <zocalo@example.org>"
    assert live.plugins["graylog"].port == 12201
    assert isinstance(live.plugins["slurm"], SlurmConfig)
    assert live.storage["zocalo.dispatcher.logbook_location"] == "/dls/tmp/zocalo/dispatcher"
    assert live.plugins["ispyb"]["credentials"].endswith("ispyb.cfg")


def test_zocalo_config_variable_locates_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOCALO_CONFIG", str(SAMPLE))
    config = load_configuration(environments=["legacy"])
    assert config.path == SAMPLE
    assert isinstance(config.plugins["stomp"], StompConfig)


def test_no_configuration_is_empty() -> None:
    config = load_configuration()
    assert isinstance(config, SiteConfiguration)
    assert config.path is None and config.environments == () and config.active == ()
    assert config.plugins == {} and config.storage == {}
    assert config.transport_url() is None


def test_environment_without_configuration_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match="ZOCALO_CONFIG"):
        load_configuration(environments=["live"])


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"nowhere\.yaml: cannot read"):
        load_configuration(tmp_path / "nowhere.yaml")


# --------------------------------------------------------------------------- a facility file

COMMON = """
version: 1
include:
  - beamlines/i03.yaml
storage-common:
  plugin: storage
  zocalo.recipe_directory: /common/recipes
rmq:
  plugin: pika
  host: included.example.org
  port: 5672
  username: common
  password: common
  vhost: /common
environments:
  live:
    plugins: [storage-common]
"""

I03 = """
version: 1
storage-i03:
  plugin: storage
  zocalo.recipe_directory: /i03/recipes
  i03.only: yes
environments:
  i03:
    transport: rmq
    plugins: [storage-common, storage-i03]
"""

FACILITY = """
version: 1
include: common.yaml
rmq:
  plugin: pika
  host: main.example.org
  port: 5672
  username: main
  password: main
  vhost: /
rmq-credentials: credentials/rmq.yaml
mimas:
  plugin: mimas
  enabled: true
storage-main:
  plugin: storage
  zocalo.recipe_directory: /main/recipes
  zocalo.go.fallback_location: /main/dropfiles
environments:
  live:
    transport: rmq-credentials
    plugins: [storage-main, mimas]
  test:
    transport: rmq
    plugins: [storage-main]
  default: prod
  prod: live
"""


@pytest.fixture
def facility(write) -> Path:
    write("common.yaml", COMMON)
    write("beamlines/i03.yaml", I03)
    return write("site.yaml", FACILITY)


def test_facility_file_loads_without_reading_credentials(
    facility: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """credentials/rmq.yaml does not exist: only activating 'live' may try to read it."""
    reads: list[Path] = []
    original = pathlib.Path.read_text

    def spy(self: Path, *args, **kwargs) -> str:
        reads.append(Path(self).resolve())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", spy)
    config = load_configuration(facility, environments=["test"])
    credentials = (facility.parent / "credentials" / "rmq.yaml").resolve()
    assert credentials not in reads
    assert facility.resolve() in reads and (facility.parent / "common.yaml").resolve() in reads
    assert config.active == ("test",)
    # The included file's section replaces the main file's section of the same name.
    assert config.transport_url() == ("amqp://common:common@included.example.org:5672/%2Fcommon")

    # Activating the environment that needs it reads it, and says which file and line.
    with pytest.raises(ConfigurationError) as caught:
        load_configuration(facility, environments=["live"])
    assert credentials in reads
    message = str(caught.value)
    assert message.startswith(f"{facility}, line 10: section 'rmq-credentials'")
    assert "credentials/rmq.yaml" in message


def test_unreadable_credentials_are_only_opened_on_activation(facility: Path) -> None:
    credentials = facility.parent / "credentials" / "rmq.yaml"
    credentials.parent.mkdir()
    credentials.write_text(
        "plugin: pika\nhost: secret.example.org\nport: 5671\nusername: svc\n"
        "password: 'p@ss:w/rd'\nvhost: zocalo\n"
    )
    credentials.chmod(0)
    load_configuration(facility, environments=["test"])  # never touches it
    credentials.chmod(0o600)
    config = load_configuration(facility)  # default -> prod -> live
    assert config.active == ("default",)
    assert config.transport_url() == "amqp://svc:p%40ss%3Aw%2Frd@secret.example.org:5671/zocalo"


def test_facility_includes_merge(facility: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="zocalo.config"):
        config = load_configuration(facility, environments=["i03", "test"])
    # i03 comes from an include of an include (relative to that file's directory).
    assert config.active == ("i03", "test")
    # storage-main (test) is activated after i03's blocks and wins where keys overlap.
    assert config.storage == {
        "zocalo.recipe_directory": "/main/recipes",
        "zocalo.go.fallback_location": "/main/dropfiles",
        "i03.only": True,
    }
    replaced = [r.getMessage() for r in caplog.records if "replaces" in r.getMessage()]
    assert any("section 'rmq'" in message and "common.yaml" in message for message in replaced)
    # The unknown plugin 'mimas' is kept, with a warning naming it.
    assert config.section("mimas") == {"plugin": "mimas", "enabled": True}
    assert any("'mimas'" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def test_include_environment_groups_replace_and_plugins_append(write) -> None:
    write(
        "extra.yaml",
        """
        version: 1
        b-storage:
          plugin: storage
          from: extra
        b-rmq:
          plugin: stomp
          host: b
          port: 61613
          username: u
          password: p
          prefix: b
        environments:
          live:
            transport: b-rmq
            plugins: [b-storage]
        """,
    )
    main = write(
        "main.yaml",
        """
        version: 1
        include: [extra.yaml, extra.yaml]
        a-storage:
          plugin: storage
          from: main
          main: true
        a-rmq:
          plugin: stomp
          host: a
          port: 61613
          username: u
          password: p
          prefix: a
        environments:
          live:
            transport: a-rmq
            plugins: [a-storage]
        """,
    )
    config = load_configuration(main, environments=["live"])
    assert config.plugins["stomp"].host == "b"  # named group replaced by the include
    assert config.storage == {"from": "extra", "main": True}  # plugins lists concatenated


def test_include_cycle_reads_each_file_once(write) -> None:
    write("b.yaml", "version: 1\ninclude: a.yaml\nsb: {plugin: storage, b: 1}\n")
    a = write(
        "a.yaml",
        "version: 1\ninclude: b.yaml\nsa: {plugin: storage, a: 1}\nenvironments: {e: [sa, sb]}\n",
    )
    assert load_configuration(a, environments=["e"]).storage == {"a": 1, "b": 1}


def test_missing_include_names_the_including_line(write) -> None:
    main = write("main.yaml", "version: 1\ninclude:\n  - here.yaml\n  - missing.yaml\n")
    write("here.yaml", "version: 1\n")
    with pytest.raises(ConfigurationError) as caught:
        load_configuration(main)
    assert str(caught.value).startswith(f"{main}, line 4: include: cannot read")
    assert "missing.yaml" in str(caught.value)


def test_include_with_other_version_is_rejected(write) -> None:
    write("inc.yaml", "version: 2\n")
    main = write("main.yaml", "version: 1\ninclude: inc.yaml\n")
    with pytest.raises(ConfigurationError, match=r"inc\.yaml, line 1: version 2 is not supported"):
        load_configuration(main)


# --------------------------------------------------------------------------- environments


def test_alias_chain_resolves(write) -> None:
    path = write(
        "site.yaml",
        """
        version: 1
        s: {plugin: storage, k: v}
        environments:
          real: [s]
          middle: real
          outer: middle
        """,
    )
    config = load_configuration(path, environments=["outer"])
    assert config.active == ("outer",)
    assert config.storage == {"k": "v"}


def test_alias_cycle_is_rejected(write) -> None:
    path = write(
        "site.yaml",
        """
        version: 1
        environments:
          a: b
          b: c
          c: a
        """,
    )
    with pytest.raises(ConfigurationError, match=r"line \d: environment aliases form a cycle"):
        load_configuration(path)


def test_alias_to_undefined_environment_is_rejected(write) -> None:
    path = write("site.yaml", "version: 1\nenvironments:\n  x: [  ]\n  y: nowhere\n")
    with pytest.raises(ConfigurationError) as caught:
        load_configuration(path)
    assert str(caught.value) == (
        f"{path}, line 4: environment 'y' is an alias of 'nowhere', which is not defined"
    )
    assert caught.value.line == 4 and caught.value.key == "environments.y"
    assert isinstance(caught.value, ZocaloError)


def test_undefined_environment_requested(write) -> None:
    path = write("site.yaml", "version: 1\nenvironments:\n  live: []\n  test: []\n")
    with pytest.raises(ConfigurationError, match=r"'staging' \(-e\) is not defined.*live, test"):
        load_configuration(path, environments=["staging"])


def test_environment_referencing_undefined_section(write) -> None:
    path = write("site.yaml", "version: 1\nenvironments:\n  live:\n    - nothere\n")
    with pytest.raises(ConfigurationError, match=r"line 4: environment 'live': section 'nothere'"):
        load_configuration(path)


def test_environment_referencing_reserved_name(write) -> None:
    path = write("site.yaml", "version: 1\nenvironments:\n  live: [version]\n")
    with pytest.raises(ConfigurationError, match="reserved name"):
        load_configuration(path)


def test_activation_order_groups_then_plugins_without_duplicates(write) -> None:
    path = write(
        "site.yaml",
        """
        version: 1
        s1: {plugin: storage, order: s1, s1: true}
        s2: {plugin: storage, order: s2}
        s3: {plugin: storage, order: s3}
        environments:
          e:
            plugins: [s1, s3]
            zeta: s2
            alpha: [s3]
        """,
    )
    # alpha (s3), zeta (s2), plugins (s1; s3 already done): s1 is last.
    config = load_configuration(path, environments=["e"])
    assert config.storage == {"order": "s1", "s1": True}


def test_default_environment_variable(write, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(
        "site.yaml",
        """
        version: 1
        a: {plugin: storage, which: a}
        b: {plugin: storage, which: b}
        environments: {default: [a], other: [b]}
        """,
    )
    assert load_configuration(path).active == ("default",)
    monkeypatch.setenv("ZOCALO_DEFAULT_ENV", "other")
    config = load_configuration(path)
    assert config.active == ("other",) and config.storage == {"which": "b"}
    # -e beats the variable.
    assert load_configuration(path, environments=["default"]).storage == {"which": "a"}
    monkeypatch.setenv("ZOCALO_DEFAULT_ENV", "gone")
    with pytest.raises(ConfigurationError, match=r"'gone' \(\$ZOCALO_DEFAULT_ENV\)"):
        load_configuration(path)


def test_no_default_environment_activates_nothing(write) -> None:
    path = write("site.yaml", "version: 1\ns: {plugin: storage}\nenvironments: {x: [s]}\n")
    config = load_configuration(path)
    assert config.active == () and config.plugins == {}


def test_repeated_environments_activate_in_order(write) -> None:
    path = write(
        "site.yaml",
        """
        version: 1
        p1: {plugin: pika, host: one, port: 1, username: u, password: p, vhost: v}
        p2: {plugin: pika, host: two, port: 2, username: u, password: p, vhost: v}
        s1: {plugin: storage, a: 1, shared: first}
        s2: {plugin: storage, b: 2, shared: second}
        environments: {first: [p1, s1], second: [p2, s2]}
        """,
    )
    config = load_configuration(path, environments=["first", "second", "first"])
    assert config.active == ("first", "second")
    assert config.plugins["pika"].addresses == [("two", 2)]  # the later section wins
    assert config.storage == {"a": 1, "b": 2, "shared": "second"}


def test_iris_is_slurm(write) -> None:
    path = write(
        "site.yaml",
        "version: 1\nhpc: {plugin: iris, url: 'https://x', api_version: v0.0.38}\n"
        "environments: {e: [hpc]}\n",
    )
    config = load_configuration(path, environments=["e"])
    assert config.plugins["iris"] is config.plugins["slurm"]
    assert config.plugins["slurm"].api_version == "v0.0.38"


# --------------------------------------------------------------------------- errors


def test_version_must_be_one(write) -> None:
    path = write("site.yaml", "# comment\nversion: 2\n")
    with pytest.raises(ConfigurationError) as caught:
        load_configuration(path)
    assert str(caught.value) == f"{path}, line 2: version 2 is not supported (only version 1 is)"
    missing = write("missing.yaml", "environments: {}\n")
    with pytest.raises(ConfigurationError, match="'version: 1' is missing"):
        load_configuration(missing)


def test_validation_error_names_file_line_and_key(write) -> None:
    path = write(
        "site.yaml",
        """
        version: 1
        storage: {plugin: storage}
        rmq:
          plugin: stomp
          host: broker
          port: sixty
          username: u
          password: p
          prefix: z
        """,
    )
    with pytest.raises(ConfigurationError) as caught:
        load_configuration(path)
    assert str(caught.value) == (
        f"{path}, line 6: section 'rmq': field 'port': "
        "Input should be a valid integer, unable to parse string as an integer"
    )
    assert (caught.value.file, caught.value.line, caught.value.key) == (str(path), 6, "port")


def test_missing_field_points_at_the_section(write) -> None:
    path = write("site.yaml", "version: 1\n\nsmtp:\n  plugin: smtp\n  port: 25\n  from: nobody\n")
    with pytest.raises(ConfigurationError) as caught:
        load_configuration(path)
    lines = str(caught.value).splitlines()
    assert lines == [
        f"{path}, line 4: section 'smtp': field 'host': required field is missing",
        f"{path}, line 6: section 'smtp': field 'from': 'nobody' is not an e-mail address",
    ]


def test_path_section_errors_name_the_section_file(write) -> None:
    write("creds.yaml", "plugin: pika\nhost: h\nport: 99999\nusername: u\npassword: p\nvhost: v\n")
    path = write("site.yaml", "version: 1\nrmq: creds.yaml\nenvironments: {e: [rmq]}\n")
    config = load_configuration(path)  # not activated: not read, no error
    assert config.active == ()
    with pytest.raises(ConfigurationError) as caught:
        load_configuration(path, environments=["e"])
    message = str(caught.value)
    assert message.startswith(f"{path.parent / 'creds.yaml'}, line 3: section 'rmq': field 'port'")
    assert "not a port number" in message
    # A path section without 'plugin'.
    write("creds.yaml", "host: h\n")
    with pytest.raises(ConfigurationError, match="must hold a mapping with a 'plugin' key"):
        load_configuration(path, environments=["e"])


def test_section_without_plugin_key(write) -> None:
    path = write("site.yaml", "version: 1\nrmq:\n  host: h\n")
    with pytest.raises(ConfigurationError, match=r"line 2: section 'rmq' has no 'plugin' key"):
        load_configuration(path)


def test_duplicate_keys_are_rejected(write) -> None:
    path = write("site.yaml", "version: 1\ns: {plugin: storage}\nt: {plugin: storage}\ns: 3\n")
    with pytest.raises(
        ConfigurationError, match=r"line 4: key 's' appears twice \(first on line 2\)"
    ):
        load_configuration(path)


def test_yaml_syntax_error_has_a_line(write) -> None:
    path = write("site.yaml", "version: 1\nenvironments:\n  live: [a, b\n  test: []\n")
    with pytest.raises(ConfigurationError, match=rf"^{path}, line \d: not valid YAML"):
        load_configuration(path)


def test_unknown_section_lookup(write) -> None:
    path = write("site.yaml", "version: 1\n")
    with pytest.raises(ConfigurationError, match="no section 'nope'"):
        load_configuration(path).section("nope")
