"""The README's demo command, end to end, as a user runs it (a subprocess, its own broker)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from gateway.mosquitto import free_port, port_open
from gateway.vendors import VENDORS

CLI = [sys.executable, "-m", "gateway.cli"]


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
        try:
            deadline = time.monotonic() + 20
            while not port_open("127.0.0.1", port):
                if proc.poll() is not None:
                    break
                assert time.monotonic() < deadline, "emulator did not listen"
                time.sleep(0.1)
            else:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=20) == 0
                return
            output = proc.stdout.read() if proc.stdout else ""
            assert "already in use" in output, output  # only a lost port race may retry
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
    assert proc.returncode != 0
    assert f"port {port} on 127.0.0.1 is already in use" in output
    assert "Traceback" not in output
