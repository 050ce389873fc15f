"""Configuration: every problem of a file named at once, with key, line and a way to fix it."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import stat
import subprocess
import sys
import typing

import pytest

from gateway.config import (
    check_state_dir,
    default_instance_id,
    ensure_state_dir,
    load_config,
    parse_config,
)
from gateway.connectors.coolkit import CoolkitConnector
from gateway.errors import ConfigError, ConfigErrors
from gateway.vendors import VENDORS, connector_class
from tests.dummy_connector import DummyConnector

# The tests' own vendor table: the real vendors plus the scripted one, no global touched.
TABLE = {**VENDORS, "dummy": DummyConnector}

GOOD = """
[mqtt]
url = "mqtt://user:${BROKER_PW}@broker.local:1884"
protocol = "3.1.1"

[gateway]
base_topic = "home/c2m"
command_timeout = 5

[[accounts]]
vendor = "dummy"
name = "a1"
secret = "${SECRET:-fallback}"
"""

XKY = """
[[accounts]]
vendor = "xky"
name = "home"
account = "me"
password = "pw"
"""


def write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def load(tmp_path, text, **kw):
    return load_config(write(tmp_path, text), env=kw.pop("env", {"BROKER_PW": "pw"}), vendors=TABLE, **kw)


def problems(tmp_path, text, **kw) -> list[ConfigError]:
    with pytest.raises(ConfigErrors) as err:
        load(tmp_path, text, **kw)
    return err.value.errors


def test_good_config_with_env(tmp_path):
    cfg = load(tmp_path, GOOD)
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.username, cfg.mqtt.password) == ("broker.local", 1884, "user", "pw")
    assert cfg.mqtt.protocol == 4
    assert cfg.gateway.base_topic == "home/c2m" and cfg.gateway.command_timeout == 5.0
    assert cfg.accounts[0].options == {"secret": "fallback"}
    assert cfg.accounts[0].connector is DummyConnector
    assert cfg.warnings == []


def test_the_vendor_table_is_a_parameter_not_a_global():
    raw = {"accounts": [{"vendor": "dummy", "name": "a"}]}
    assert parse_config(raw, vendors=TABLE).accounts[0].connector is DummyConnector
    with pytest.raises(ConfigError, match="unknown vendor 'dummy'") as err:
        parse_config(raw, vendors=VENDORS)
    assert err.value.key == "accounts[0].vendor"


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        (GOOD.replace("command_timeout = 5", "command_timeout = -1"), "gateway.command_timeout", 8),
        (GOOD.replace('protocol = "3.1.1"', "protocol = 7"), "mqtt.protocol", 4),
        (GOOD + "\n[[accounts]]\nvendor = \"nope\"\nname = \"x\"\n", "accounts[1].vendor", 16),
        (GOOD.replace('name = "a1"', 'name = "a/1"'), "accounts[0].name", 12),
        (GOOD.replace("[gateway]", "[gateway]\nbogus = 1"), "gateway.bogus", 7),
    ],
)
def test_errors_name_key_and_line(tmp_path, text, key, line):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    assert err.value.key == key
    assert err.value.line == line


def test_a_file_with_three_mistakes_names_all_three(tmp_path):
    text = GOOD.replace("command_timeout = 5", "command_timeout = -1").replace(
        'protocol = "3.1.1"', "protocol = 7"
    ) + XKY.replace('password = "pw"\n', 'pasword = "pw"\n')
    found = problems(tmp_path, text)
    # ordered by line; the misspelt key also leaves the real one missing (the table's line)
    assert [(e.key, e.line) for e in found] == [
        ("mqtt.protocol", 4),
        ("gateway.command_timeout", 8),
        ("accounts[1].password", 15),
        ("accounts[1].pasword", 19),
    ]
    assert "did you mean 'password'?" in found[3].message
    message = str(ConfigErrors(found))
    assert message.startswith("4 problems:")
    assert all(str(e) in message for e in found)


def test_check_config_cli_lists_every_problem(tmp_path):
    text = (
        '[mqtt]\nurl = "mqtt://127.0.0.1:1883"\nqos = 2\n[gateway]\nhealth_interval = 0\n'
        + XKY.replace('password = "pw"\n', 'password = "pw"\npoll_interval = "often"\n')
    )
    out = run_cli("check-config", str(write(tmp_path, text)))
    assert out.returncode == 2, out.stderr
    assert "3 problems" in out.stderr
    for where in ("mqtt.qos (line 3)", "gateway.health_interval (line 5)", "accounts[0].poll_interval (line 12)"):
        assert where in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("text", "key", "suggestion"),
    [
        ("[gatway]\nbase_topic = 'x'\n", "gatway", "gateway"),
        ("[[account]]\nvendor = 'xky'\n", "account", "accounts"),
        ("[mqtt]\nkeepalvie = 30\n", "mqtt.keepalvie", "keepalive"),
        ("[gateway]\nstatedir = 'x'\n", "gateway.statedir", "state_dir"),
        (XKY + "pol_interval = 30\n", "accounts[0].pol_interval", "poll_interval"),
        (XKY.replace('"xky"', '"xkyy"'), "accounts[0].vendor", "xky"),
    ],
)
def test_misspelt_keys_get_a_did_you_mean(tmp_path, text, key, suggestion):
    [error] = [e for e in problems(tmp_path, text) if e.key == key]
    assert f"did you mean {suggestion!r}?" in error.message


def test_missing_keys_name_the_line_of_the_table_that_lacks_them(tmp_path):
    text = '[mqtt]\nurl = "mqtt://127.0.0.1"\n\n[[accounts]]\nvendor = "xky"\nname = "x"\n\n[[accounts]]\nname = "y"\n'
    found = {e.key: e.line for e in problems(tmp_path, text)}
    assert found["accounts[0].account"] == 4
    assert found["accounts[0].password"] == 4  # the connector's second problem, found too
    assert found["accounts[1].vendor"] == 8


def test_missing_env_var_is_named(tmp_path):
    with pytest.raises(ConfigError, match="BROKER_PW") as err:
        load(tmp_path, GOOD, env={})
    assert err.value.key == "mqtt.url"


@pytest.mark.parametrize("value", ["${MQTT_PW", "pre-${MQTT_PW:-x", "${1BAD}", "a${"])
def test_an_unterminated_or_malformed_variable_is_rejected(tmp_path, value):
    [error] = problems(tmp_path, f'[mqtt]\npassword = "{value}"\n', env={"MQTT_PW": "pw"})
    assert error.key == "mqtt.password" and error.line == 2
    assert "${NAME}" in error.message


def test_toml_syntax_error_has_line(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "[mqtt]\nurl = \n"))
    assert err.value.line == 2


def test_a_missing_file_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file") as err:
        load_config(tmp_path / "nope.toml")
    assert err.value.key.endswith("nope.toml")


def test_a_file_without_accounts_is_valid_with_a_warning(tmp_path):
    cfg = load(tmp_path, '[mqtt]\nurl = "mqtt://127.0.0.1"\n')
    assert cfg.accounts == [] and any("no [[accounts]]" in w for w in cfg.warnings)
    out = run_cli("check-config", str(write(tmp_path, '[mqtt]\nurl = "mqtt://127.0.0.1"\n')))
    assert out.returncode == 0 and "warning: no [[accounts]]" in out.stdout


@pytest.mark.parametrize(("value", "expected"), [("5", 5), ('"5"', 5), ('"3.1.1"', 4)])
def test_mqtt_protocol_accepts_5_and_311(tmp_path, value, expected):
    assert load(tmp_path, f"[mqtt]\nprotocol = {value}\n").mqtt.protocol == expected


@pytest.mark.parametrize("value", ["4", '"4"', '"311"', "3", '"3.1"', '"5.0"', "5.0"])
def test_mqtt_protocol_rejects_anything_else(tmp_path, value):
    [error] = problems(tmp_path, f"[mqtt]\nprotocol = {value}\n")
    assert error.key == "mqtt.protocol" and error.line == 2


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[gateway]\ncommand_timeout = nan\n", "gateway.command_timeout"),
        ("[gateway]\nhealth_interval = inf\n", "gateway.health_interval"),
        ("[gateway]\noffline_grace = -inf\n", "gateway.offline_grace"),
        (XKY + "poll_interval = nan\n", "accounts[0].poll_interval"),
        (XKY + "request_timeout = inf\n", "accounts[0].request_timeout"),
    ],
)
def test_non_finite_numbers_are_rejected(tmp_path, text, key):
    found = problems(tmp_path, text)
    assert [e.key for e in found] == [key]
    assert "finite" in found[0].message


def test_option_reader_rejects_non_finite_numbers():
    from gateway.connectors.options import OptionReader

    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ConfigError, match="finite") as err:
            OptionReader({"t": bad}, "accounts[0]").number("t", 1.0, minimum=0)
        assert err.value.key == "accounts[0].t"


def test_mqtt_buffer_size(tmp_path):
    assert load(tmp_path, "").mqtt.buffer_size == 10_000
    assert load(tmp_path, "[mqtt]\nbuffer_size = 0\n").mqtt.buffer_size == 0
    [error] = problems(tmp_path, "[mqtt]\nbuffer_size = -1\n")
    assert error.key == "mqtt.buffer_size"


def test_instance_id_defaults_to_host_and_state_dir(tmp_path):
    a = load(tmp_path, f'[gateway]\nstate_dir = "{tmp_path}/a"\n').gateway.instance_id
    b = load(tmp_path, f'[gateway]\nstate_dir = "{tmp_path}/b"\n').gateway.instance_id
    assert a == default_instance_id(f"{tmp_path}/a") and a != b
    assert load(tmp_path, '[gateway]\ninstance_id = "gw-1"\n').gateway.instance_id == "gw-1"
    [error] = problems(tmp_path, '[gateway]\ninstance_id = "a/b"\n')
    assert error.key == "gateway.instance_id"


# ---------------------------------------------------------------------------------- state dir


def test_state_dir_that_cannot_be_created_is_refused(tmp_path):
    (tmp_path / "afile").write_text("")
    bad = tmp_path / "afile" / "sub"
    with pytest.raises(ConfigError, match="cannot be created") as err:
        check_state_dir(bad)
    assert err.value.key == "gateway.state_dir"
    with pytest.raises(ConfigError):
        ensure_state_dir(bad)
    [error] = problems(tmp_path, f'[gateway]\nstate_dir = "{bad}"\n', state_dir=True)
    assert error.key == "gateway.state_dir" and error.line == 2
    out = run_cli("check-config", str(write(tmp_path, f'[gateway]\nstate_dir = "{bad}"\n')))
    assert out.returncode == 2 and "gateway.state_dir (line 2)" in out.stderr


def test_state_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        check_state_dir(tmp_path / "afile")


def test_a_missing_state_dir_is_fine_and_created_0700(tmp_path):
    target = tmp_path / "new" / "state"
    check_state_dir(target)
    assert not target.exists()  # check-config creates nothing
    ensure_state_dir(target)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o700
    check_state_dir(target)  # and now it is an existing, writable directory


def test_token_store_creates_its_dir_0700(tmp_path):
    from gateway.tokens import TokenStore

    store = TokenStore(tmp_path / "state" / "tokens.json")
    store.put("xky/a", {"token": "t"})
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o700


# ----------------------------------------------------------------------------------- the CLI


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_check_config_cli(tmp_path):
    out = run_cli("check-config", str(write(tmp_path, "[mqtt]\nurl='mqtt://127.0.0.1:1883'\n")))
    assert out.returncode == 0 and "OK" in out.stdout
    out = run_cli("check-config", str(write(tmp_path, "[mqtt]\nurl='http://x'\n")))
    assert out.returncode == 2 and "mqtt.url (line 2)" in out.stderr


def test_option_reader_names_the_key_and_never_takes_a_bool_for_a_number() -> None:
    from gateway.connectors.options import OptionReader

    o = OptionReader({"n": True, "s": "", "t": 5, "x": 0, "b": "yes", "extra": 1}, "accounts[2]")
    for read, field in [
        (lambda: o.number("n", 1.0), "n"),
        (lambda: o.integer("n", 1), "n"),
        (lambda: o.string("s", empty=False), "s"),
        (lambda: o.string("t"), "t"),
        (lambda: o.string("absent", required=True), "absent"),
        (lambda: o.number("x", 1.0, above=0), "x"),
        (lambda: o.number("x", 1.0, minimum=0.5), "x"),
        (lambda: o.boolean("b", False), "b"),
        (lambda: o.refuse_unknown({"n", "s", "t", "x", "b"}), "extra"),
    ]:
        with pytest.raises(ConfigError) as err:
            read()
        assert err.value.key == f"accounts[2].{field}"
    assert o.number("x", 1.0, minimum=0) == 0.0 and o.string("s") == "" and o.string("nope") is None
    assert o.number("missing", 2) == 2.0 and o.boolean("missing", True) is True


def test_option_reader_names_every_unknown_key_with_a_suggestion():
    from gateway.connectors.options import OptionReader

    with pytest.raises(ConfigErrors) as err:
        OptionReader({"regoin": 1, "zzz": 2, "ok": 3}, "accounts[0]").refuse_unknown({"region", "ok"})
    assert [e.key for e in err.value.errors] == ["accounts[0].regoin", "accounts[0].zzz"]
    assert "did you mean 'region'?" in err.value.errors[0].message
    assert "did you mean" not in err.value.errors[1].message


COOLKIT = """
[[accounts]]
vendor = "coolkit"
name = "home"
app_id = "id"
app_secret = "secret"
email = "me@example.com"
password = "pw"
"""


def test_coolkit_email_and_phone_number_together_are_refused(tmp_path):
    assert load(tmp_path, COOLKIT).accounts[0].vendor == "coolkit"
    [error] = problems(tmp_path, COOLKIT + 'phone_number = "+8613185260282"\n')
    assert error.key == "accounts[0].phone_number" and "not both" in error.message


def test_coolkit_region_error_lists_only_the_real_regions(tmp_path):
    [error] = problems(tmp_path, COOLKIT + 'region = "europe"\n')
    assert error.key == "accounts[0].region"
    assert "cn, as, us, eu" in error.message and "test" not in error.message


SECRET_NAME = re.compile(r"secret|password|token$|^(at|rt|key)$")


@pytest.mark.parametrize("vendor", list(VENDORS))
def test_no_vendor_options_repr_shows_a_secret(vendor):
    """Options objects reach logs and tracebacks: every credential field is out of the repr."""
    hints = typing.get_type_hints(connector_class(vendor).parse_options)
    fields = dataclasses.fields(hints["return"])
    secrets = [f.name for f in fields if SECRET_NAME.search(f.name)]
    assert secrets, f"{vendor}: no credential field found (is the pattern out of date?)"
    shown = [name for name in secrets if next(f for f in fields if f.name == name).repr]
    assert not shown, f"{vendor}: {shown} would appear in repr()"


def test_a_literal_option_refuses_a_bool_that_equals_one_of_its_values():
    with pytest.raises(ConfigError) as err:
        CoolkitConnector.parse_options({"app_id": "a", "app_secret": "s", "at": "x", "rt": "y",
                                        "api_version": True}, "k")  # fmt: skip
    assert err.value.key == "k.api_version"


# ---------------------------------------------------------------------------- [cluster]

#: cluster mode needs MQTT 5 (shared subscriptions): GOOD asks for 3.1.1
CLUSTER_GOOD = GOOD.replace('protocol = "3.1.1"', "protocol = 5")


def test_no_cluster_section_means_a_single_instance(tmp_path):
    assert load(tmp_path, GOOD).cluster is None


def test_cluster_section_defaults_and_values(tmp_path):
    cfg = load(tmp_path, CLUSTER_GOOD + '\n[cluster]\nnats = "nats://n1:4222"\n')
    assert cfg.cluster is not None
    assert cfg.cluster.servers == ["nats://n1:4222"]
    assert (cfg.cluster.slots, cfg.cluster.lease_ttl, cfg.cluster.max_moves) == (64, 15.0, 4)
    assert cfg.cluster.instance_id == cfg.gateway.instance_id  # the gateway's by default
    assert cfg.cluster.shared_egress is True
    cfg = load(tmp_path, CLUSTER_GOOD + (
        '\n[cluster]\nnats = ["nats://n1:4222", "tls://n2:4222"]\nslots = 16\nlease_ttl = 5\n'
        'max_moves = 2\ninstance_id = "gw-a"\nshared_egress = false\n'
    ))  # fmt: skip
    assert cfg.cluster is not None
    assert cfg.cluster.servers == ["nats://n1:4222", "tls://n2:4222"]
    assert (cfg.cluster.slots, cfg.cluster.lease_ttl, cfg.cluster.max_moves) == (16, 5.0, 2)
    assert cfg.cluster.instance_id == "gw-a" and cfg.cluster.shared_egress is False


def test_cluster_must_be_a_table(tmp_path):
    [error] = problems(tmp_path, 'cluster = "yes"\n' + GOOD)
    assert error.key == "cluster" and error.line == 1


def test_cluster_refuses_mqtt_311(tmp_path):
    """Commands reach one instance through an MQTT 5 shared subscription: 3.1.1 is refused."""
    text = GOOD + '\n[cluster]\nnats = "nats://n1:4222"\n'
    [error] = problems(tmp_path, text)
    assert error.key == "mqtt.protocol" and "cluster mode needs MQTT 5" in error.message
    assert error.line == text.splitlines().index('protocol = "3.1.1"') + 1


# ------------------------------------------------------------- [cluster]: NATS credentials, TLS

#: a .creds file as ``nsc`` writes it (the JWT and seed are placeholders: only the shape is checked)
CREDS = """-----BEGIN NATS USER JWT-----
eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.c2ln
------END NATS USER JWT------

-----BEGIN USER NKEY SEED-----
SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4
------END USER NKEY SEED------
"""
SEED = "SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4\n"


@pytest.fixture(scope="module")
def nats_files(tmp_path_factory):
    """A .creds file, an nkey seed file, a CA (the tests' throwaway one) and a junk file."""
    from tests.helpers import throwaway_tls

    tmp_path = tmp_path_factory.mktemp("nats-files")
    (tmp_path / "gw.creds").write_text(CREDS)
    (tmp_path / "gw.nk").write_text(SEED)
    (tmp_path / "junk.txt").write_text("not a key\n")
    tls = throwaway_tls(tmp_path / "tls")
    return {"d": tmp_path, "ca": tls.ca, "cert": tls.client_cert, "key": tls.client_key,
            "server_key": tls.server_key}  # fmt: skip


def test_cluster_nats_credentials_and_tls(tmp_path, nats_files):
    d = nats_files["d"]
    cfg = load(tmp_path, CLUSTER_GOOD + (
        f'\n[cluster]\nnats = "nats://n1:4222"\ncredentials = "{d}/gw.creds"\n'
        f'tls_ca = "{nats_files["ca"]}"\ntls_cert = "{nats_files["cert"]}"\n'
        f'tls_key = "{nats_files["key"]}"\n'
    ))  # fmt: skip
    assert cfg.cluster is not None
    assert cfg.cluster.credentials == f"{d}/gw.creds" and cfg.cluster.tls is True
    assert cfg.cluster.ssl_context() is not None
    assert cfg.cluster.auth_keys() == "cluster.credentials"
    env = {"BROKER_PW": "pw", "NATS_PW": "Pw-Planted-9", "NATS_TOKEN": "Tok-Planted-8"}
    cfg = load(tmp_path, CLUSTER_GOOD + (
        '\n[cluster]\nnats = "nats://n1:4222"\nuser = "gw"\npassword = "${NATS_PW}"\n'
    ), env=env)  # fmt: skip
    assert cfg.cluster is not None
    assert (cfg.cluster.user, cfg.cluster.password, cfg.cluster.tls) == ("gw", "Pw-Planted-9", False)
    assert cfg.cluster.ssl_context() is None
    cfg = load(tmp_path, CLUSTER_GOOD + (
        '\n[cluster]\nnats = ["tls://n1:4222"]\ntoken = "${NATS_TOKEN}"\n'
    ), env=env)  # fmt: skip
    assert cfg.cluster is not None
    assert cfg.cluster.token == "Tok-Planted-8" and cfg.cluster.tls is True  # tls:// asks for it
    cfg = load(tmp_path, CLUSTER_GOOD + f'\n[cluster]\nnkey_seed = "{d}/gw.nk"\n')
    assert cfg.cluster is not None and cfg.cluster.nkey_seed == f"{d}/gw.nk"


@pytest.mark.parametrize(
    ("body", "key", "words"),
    [
        ('slots = 0', "cluster.slots", "between 1 and 4096"),
        ('slots = "many"', "cluster.slots", "expected int"),
        ("lease_ttl = 0.5", "cluster.lease_ttl", "at least 1 second"),
        ("max_moves = 0", "cluster.max_moves", "at least 1"),
        ('nats = "http://n1:4222"', "cluster.nats", "nats://"),
        ("nats = []", "cluster.nats", "at least one"),
        ('instance_id = "a b"', "cluster.instance_id", "letters, digits"),
        ("lease_tl = 5", "cluster.lease_tl", "did you mean 'lease_ttl'?"),
        ('shared_egress = "yes"', "cluster.shared_egress", "expected bool"),
        ('credentials = "{d}/none.creds"', "cluster.credentials", "does not exist"),
        ('credentials = "{d}/junk.txt"', "cluster.credentials", "not a NATS .creds file"),
        ('nkey_seed = "{d}/junk.txt"', "cluster.nkey_seed", "not an nkey seed file"),
        ('nkey_seed = "{d}/gw.creds"', "cluster.nkey_seed", "not an nkey seed file"),
        ('tls_ca = "{d}/none.pem"', "cluster.tls_ca", "does not exist"),
        ('tls_ca = "{d}/junk.txt"', "cluster.tls_ca", "unusable for TLS"),
        ('tls_cert = "{cert}"', "cluster.tls_cert", "without cluster.tls_key"),
        ('tls_key = "{key}"', "cluster.tls_key", "without cluster.tls_cert"),
        ('tls_cert = "{cert}"\ntls_key = "{server_key}"', "cluster.tls_cert", "unusable for TLS"),
        ('tls = false\ntls_ca = "{ca}"', "cluster.tls", "cluster.tls_ca asks for TLS"),
        ('tls = false\nnats = "tls://n1:4222"', "cluster.tls", "tls:// URL"),
        ('tls = false\nnats = "wss://n1:443"', "cluster.tls", "wss:// URL"),
        ('tls_ca = "{ca}"\nnats = "ws://n1:80"', "cluster.nats", "plain text, and TLS is asked"),
        ('user = "gw"', "cluster.user", "without cluster.password"),
        ('password = "pw"', "cluster.password", "without cluster.user"),
        ('token = ""', "cluster.token", "must not be empty"),
        ('token = "t"\nuser = "gw"\npassword = "pw"', "cluster.user",
         "one way to authenticate, and cluster.token, cluster.user/password are given"),
        ('nats = "nats://gw:pw@n1:4222"\ntoken = "t"', "cluster.nats", "one way to authenticate"),
        ('credentials = "{d}/gw.creds"\nnkey_seed = "{d}/gw.nk"', "cluster.nkey_seed",
         "one way to authenticate"),
    ],
)  # fmt: skip
def test_cluster_errors_name_key_and_line(tmp_path, nats_files, body, key, words):
    body = body.format(**nats_files)
    text = CLUSTER_GOOD + "\n[cluster]\n" + body + "\n"
    [error] = [e for e in problems(tmp_path, text) if e.key == key]
    assert words in error.message
    name = key.removeprefix("cluster.")
    [line] = [n for n, s in enumerate(text.splitlines(), 1) if s.startswith(f"{name} =")]
    assert error.line == line


def test_cluster_secrets_are_in_no_repr_and_no_bridge_info(tmp_path):
    from gateway.redact import redact

    env = {"BROKER_PW": "Mq-Planted-7", "NATS_PW": "Pw-Planted-9"}
    for auth in ('user = "gw"\npassword = "${NATS_PW}"', 'nats = "nats://${NATS_PW}@n1:4222"',
                 'token = "${NATS_PW}"', 'nats = "nats://gw:${NATS_PW}@n1:4222"'):  # fmt: skip
        cfg = load(tmp_path, CLUSTER_GOOD + f"\n[cluster]\n{auth}\n", env=env)
        shown = [repr(cfg), repr(cfg.cluster), repr(cfg.mqtt), str(redact(cfg))]
        assert not [s for s in shown if "Pw-Planted-9" in s or "Mq-Planted-7" in s], shown
        assert ":4222" in repr(cfg.cluster) and "slots=64" in repr(cfg.cluster)
