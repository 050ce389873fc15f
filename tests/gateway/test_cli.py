"""The ``cloud2mqtt`` command as a user runs it: subprocesses, real sockets, its own broker."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from importlib import metadata
from typing import Any

import pytest

from gateway.cli import build_parser, check_connect, simulate_parser
from gateway.config import parse_config
from gateway.mosquitto import free_port, port_open
from gateway.vendors import VENDORS

CLI = [sys.executable, "-m", "gateway.cli"]
HEAVY = ("emulators", "gateway.simulators", "websockets", "aiohttp", "gateway.connectors",
         "gateway.app", "gateway.mqtt", "asyncio", "uvloop", "protocols", "_speedups")  # fmt: skip


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False)


def modules_after(*argv: str) -> set[str]:
    """The modules loaded by a fresh interpreter that ran ``cloud2mqtt ARGV`` (ending in help)."""
    code = (
        "import sys, json, contextlib, io\n"
        "from gateway.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        main({list(argv)!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return set(json.loads(out.stdout))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY or m.startswith(HEAVY))


@pytest.mark.parametrize(
    "argv", [["--help"], ["run", "--help"], ["check-config", "--help"], ["simulate", "--help"], ["demo", "--help"]]
)
def test_help_imports_no_emulator_and_nothing_heavy(argv):
    assert heavy(modules_after(*argv)) == []


def test_simulate_imports_only_its_own_emulator():
    modules = modules_after("simulate", "xky", "--help")
    assert VENDORS["xky"].emulator in modules
    assert not [VENDORS[v].emulator for v in VENDORS if v != "xky" and VENDORS[v].emulator in modules]


def test_simulate_parses_the_emulators_options_into_one_namespace():
    args = build_parser().parse_args(["--log-level", "error", "simulate", "xky", "--port", "5", "--log-level", "debug"])
    assert (args.command, args.vendor, args.port, args.log_level) == ("simulate", "xky", 5, "debug")
    assert not hasattr(args, "rest")
    out = cli("simulate", "xky", "--no-such-option")
    assert out.returncode == 2 and "cloud2mqtt simulate xky" in out.stderr and "--no-such-option" in out.stderr


def test_version():
    out = cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"cloud2mqtt {metadata.version('cloud2mqtt')}"


def test_bare_command_shows_usage_and_commands_without_backticks():
    out = cli()
    assert out.returncode == 2
    assert out.stderr.startswith("usage: cloud2mqtt") and "`" not in out.stderr
    for command in ("run", "check-config", "simulate", "demo"):
        assert command in out.stderr


def test_log_level_is_accepted_before_and_after_the_command(tmp_path):
    parser = build_parser()
    assert parser.parse_args(["check-config", "f", "--log-level", "debug"]).log_level == "debug"
    assert parser.parse_args(["--log-level", "error", "check-config", "f"]).log_level == "error"
    assert parser.parse_args(["--log-level", "error", "run", "-c", "f", "--log-level", "debug"]).log_level == "debug"
    assert parser.parse_args(["demo"]).log_level is None
    config = tmp_path / "c.toml"
    config.write_text("[mqtt]\nurl = 'mqtt://127.0.0.1'\n")
    assert cli("check-config", str(config), "--log-level", "debug").returncode == 0
    assert cli("check-config", str(config), "--log-level", "loud").returncode == 2


def test_every_option_has_help_and_shows_its_default():
    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    parsers = [parser, *commands.choices.values(), *(simulate_parser(v)[1] for v in VENDORS)]
    for p in parsers:
        for action in p._actions:
            if action.option_strings and action.help is not argparse.SUPPRESS:
                assert action.help, (p.prog, action.option_strings)
    for argv, expected in [
        (["demo", "--help"], ["(default: 4)", "(default: all)", "(default: mqtt://127.0.0.1:1883)"]),
        (["check-config", "--help"], ["(default: 10.0)"]),
        (["simulate", "xky", "--help"], ["(default: 127.0.0.1)"]),
    ]:
        out = cli(*argv)
        assert out.returncode == 0, out.stderr
        for text in expected:
            assert text in " ".join(out.stdout.split()), (argv, out.stdout)


@pytest.mark.parametrize("argv", [["--shard", "0/2"], ["--shard"]])
def test_shard_is_refused_with_an_explanation(tmp_path, argv):
    out = cli("run", "-c", str(tmp_path / "c.toml"), *argv)
    assert out.returncode == 2
    assert "--shard was removed" in out.stderr and "cluster mode" in out.stderr


@pytest.mark.parametrize("command", [["run", "-c"], ["check-config"]])
@pytest.mark.parametrize(("content", "expected"), [(None, "no such file"), ("[mqtt\n", "not valid TOML")])
def test_a_bad_config_file_is_one_line_not_a_traceback(tmp_path, command, content, expected):
    path = tmp_path / "c.toml"
    if content is not None:
        path.write_text(content)
    out = cli(*command, str(path))
    assert out.returncode == 2
    assert expected in out.stderr and str(path) in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_check_config_connect_to_a_refused_broker_is_one_line(tmp_path):
    port = free_port()
    path = tmp_path / "c.toml"
    path.write_text(f"[mqtt]\nurl = 'mqtt://127.0.0.1:{port}'\n")
    out = cli("check-config", str(path), "--connect", "--timeout", "5")
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"broker mqtt://127.0.0.1:{port}: FAILED — connection refused" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


class _LoginOk:
    @classmethod
    def parse_options(cls, raw, key):
        return dict(raw)

    @classmethod
    async def check_login(cls, options, *, timeout):
        return f"{options.get('devices', 0)} devices"


class _LoginFails(_LoginOk):
    @classmethod
    async def check_login(cls, options, *, timeout):
        raise PermissionError("wrong password")


class _NoHook:
    @classmethod
    def parse_options(cls, raw, key):
        return dict(raw)


async def test_check_config_connect_reports_broker_and_each_account(mosquitto, capsys):
    config = parse_config(
        {
            "mqtt": {"url": mosquitto.url},
            "accounts": [
                {"vendor": "ok", "name": "a", "devices": 3},
                {"vendor": "bad", "name": "b"},
                {"vendor": "plain", "name": "c"},
                {"vendor": "ok", "name": "d", "enabled": False},
            ],
        },
        vendors={"ok": _LoginOk, "bad": _LoginFails, "plain": _NoHook},
    )
    assert await check_connect(config, timeout=5) == 1
    out = capsys.readouterr().out
    assert f"broker {mosquitto.url}: OK (MQTT 5)" in out
    assert "account ok/a: login OK (3 devices)" in out
    assert "account bad/b: FAILED — wrong password" in out
    assert "account plain/c: login check not available for plain" in out
    assert "account ok/d: skipped (disabled)" in out


# --------------------------------------------------------------------------- running processes


def _lines(stream) -> queue.Queue[str | None]:
    q: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            q.put(line)
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def wait_line(q: queue.Queue[str | None], pattern: str, seen: list[str], timeout: float = 20) -> str:
    """The first line matching ``pattern``; fails naming what was seen instead."""
    while True:
        try:
            line = q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line matching {pattern!r} within {timeout}s; seen: {seen[-20:]}") from None
        if line is None:
            raise AssertionError(f"process ended before {pattern!r}; seen: {seen[-20:]}")
        seen.append(line)
        if re.search(pattern, line):
            return line


async def test_run_logs_start_and_shutdown_with_readable_times(mosquitto, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(f"[mqtt]\nurl = '{mosquitto.url}'\n[gateway]\nstate_dir = '{tmp_path}/state'\n")
    proc = subprocess.Popen([*CLI, "run", "-c", str(config), "--log-level", "info"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    seen: list[str] = []
    try:
        q = _lines(proc.stdout)
        await asyncio.to_thread(wait_line, q, "cloud2mqtt started", seen)
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(wait_line, q, "SIGTERM received, shutting down", seen)
        await asyncio.to_thread(wait_line, q, "cloud2mqtt stopped", seen)
        assert await asyncio.to_thread(proc.wait, 20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert any("no [[accounts]]" in line for line in seen)
    stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
    assert all(stamp.match(line) for line in seen), seen
    assert oct(os.stat(tmp_path / "state").st_mode & 0o777) == "0o700"


def _simulate(vendor: str, port: int, *extra: str) -> subprocess.Popen[str]:
    argv = [*CLI, "simulate", vendor, "--port", str(port), *extra]
    if vendor in ("tencent", "coolkit"):  # their WebSocket would take port + 1: pick it too
        argv += ["--ws-port", str(free_port())]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("vendor", list(VENDORS))
def test_simulate_serves_until_sigterm(vendor):
    for _attempt in range(5):  # a port free when picked can be taken before the bind: retry
        port = free_port()
        proc = _simulate(vendor, port)
        seen: list[str] = []
        try:
            try:
                wait_line(_lines(proc.stdout), r'^\{"vendor"', seen)  # its [[accounts]] table: it listens
            except AssertionError:
                if proc.wait(timeout=20) != 0 and any("already in use" in line for line in seen):
                    continue  # only a lost port race may retry
                raise
            assert port_open("127.0.0.1", port)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
            return
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
    pytest.fail("no free port in 5 attempts")


@pytest.mark.parametrize("vendor", list(VENDORS))
def test_simulate_on_a_taken_port_exits_nonzero_naming_it(vendor):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = _simulate(vendor, port)
        try:
            output, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in output
    assert "Traceback" not in output
    last = output.strip().splitlines()[-1]  # one closing line says it all (after any log lines)
    assert last.startswith(f"cloud2mqtt simulate {vendor}: cannot listen: port {port}"), output


def test_demo_runs_every_vendor_and_exits_zero():
    port = free_port()
    out = subprocess.run(
        [*CLI, "demo", "--duration", "6", "--broker", f"mqtt://127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"started a private mosquitto on 127.0.0.1:{port}" in out.stdout
    last = [line for line in out.stdout.splitlines() if line.startswith("[")][-1]
    for vendor in VENDORS:
        assert re.search(rf"{vendor} [1-9]", last), last
    assert f"accounts online {len(VENDORS)}/{len(VENDORS)}" in last
    assert "toggle: mosquitto_pub" in out.stdout
    assert not port_open("127.0.0.1", port)  # its private broker is gone


def _retained(host: str, port: int) -> dict[str, bytes]:
    """Every retained message on the broker (paho: a subscriber to # gets them first)."""
    import threading

    import paho.mqtt.client as paho

    got: dict[str, bytes] = {}
    done = threading.Event()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="retained-reader")

    def on_message(c: Any, u: Any, msg: Any) -> None:
        if msg.topic == "zz/probe-end":
            done.set()
        elif msg.retain:
            got[msg.topic] = msg.payload

    client.on_message = on_message
    client.on_connect = lambda c, u, f, rc, p: (c.subscribe("#", qos=1),
                                                c.publish("zz/probe-end", b"x", qos=1))
    client.connect(host, port)
    client.loop_start()
    try:
        assert done.wait(10), "the broker did not answer"
    finally:
        client.loop_stop()
        client.disconnect()
    return got


async def test_demo_leaves_no_retained_topic_behind(mosquitto):
    """Every vendor, with --homeassistant: one device config per emulated device while it runs
    (issue 13), every account's API budget on bridge/accounts (issue 15), and nothing retained
    — state, bridge, discovery — once it has gone (issue 12.2)."""
    import paho.mqtt.client as paho

    seen: dict[str, Any] = {}
    watcher = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="demo-watcher")
    watcher.on_connect = lambda c, u, f, rc, p: c.subscribe(
        [("homeassistant/device/+/config", 1), ("cloud2mqtt/bridge/devices", 1),
         ("cloud2mqtt/bridge/accounts", 1)]
    )
    watcher.on_message = lambda c, u, m: seen.__setitem__(m.topic, m.payload) if m.payload else None
    watcher.connect(mosquitto.host, mosquitto.port)
    watcher.loop_start()
    try:
        out = await asyncio.to_thread(
        subprocess.run,
            [*CLI, "demo", "--duration", "6", "--homeassistant",
             "--broker", mosquitto.url],
            capture_output=True, text=True, timeout=120, check=False,
        )
    finally:
        watcher.loop_stop()
        watcher.disconnect()
    assert out.returncode == 0, out.stderr[-3000:]
    devices = json.loads(seen["cloud2mqtt/bridge/devices"])
    configs = [t for t in seen if t.startswith("homeassistant/device/")]
    assert len(devices) >= 8 and len(configs) == len(devices), (len(devices), configs)
    # issue 15: every vendor's account shows its API budget on bridge/accounts
    accounts = json.loads(seen["cloud2mqtt/bridge/accounts"])
    assert {a["vendor"] for a in accounts} == set(VENDORS)
    assert all(isinstance(a.get("budget"), dict) and a["budget"] for a in accounts), accounts
    assert "using the broker at" in out.stdout and "devices" in out.stdout
    assert "discovery: mosquitto_sub" in out.stdout
    left = await asyncio.to_thread(_retained, mosquitto.host, mosquitto.port)
    assert left == {}, sorted(left)[:10]


async def test_demo_refuses_the_base_topic_of_a_live_gateway(gateway_factory, mosquitto, probe):
    gw = await gateway_factory([])
    await probe.wait_for("cloud2mqtt/bridge/state", lambda p: p == {"state": "online"})
    out = await asyncio.to_thread(
        subprocess.run,
        [*CLI, "demo", "--duration", "2", "--vendors", "xky", "--broker", mosquitto.url],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 2, out.stdout + out.stderr[-2000:]
    assert "refusing to run the demo on base topic 'cloud2mqtt'" in out.stdout
    assert "--base-topic" in out.stdout
    assert gw.mqtt.connected
    assert not probe.find("cloud2mqtt/bridge/state", lambda p: p == {"state": "offline"})
