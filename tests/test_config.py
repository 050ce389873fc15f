from __future__ import annotations

import subprocess
import sys

import pytest

from gateway import connectors
from gateway.config import load_config
from gateway.errors import ConfigError

connectors.CONNECTORS.setdefault("dummy", "tests.dummy_connector:DummyConnector")

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


def write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_good_config_with_env(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), env={"BROKER_PW": "pw"})
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.username, cfg.mqtt.password) == ("broker.local", 1884, "user", "pw")
    assert cfg.mqtt.protocol == 4
    assert cfg.gateway.base_topic == "home/c2m" and cfg.gateway.command_timeout == 5.0
    assert cfg.accounts[0].options == {"secret": "fallback"}


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
        load_config(write(tmp_path, text), env={"BROKER_PW": "pw"})
    assert err.value.key == key
    assert err.value.line == line


def test_missing_env_var_is_named(tmp_path):
    with pytest.raises(ConfigError, match="BROKER_PW") as err:
        load_config(write(tmp_path, GOOD), env={})
    assert err.value.key == "mqtt.url"


def test_toml_syntax_error_has_line(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "[mqtt]\nurl = \n"))
    assert err.value.line == 2


def test_check_config_cli(tmp_path):
    p = write(tmp_path, "[mqtt]\nurl='mqtt://127.0.0.1:1883'\n")
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", str(p)], capture_output=True, text=True)
    assert out.returncode == 0 and "OK" in out.stdout
    p2 = write(tmp_path, "[mqtt]\nurl='http://x'\n")
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", str(p2)], capture_output=True, text=True)
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
