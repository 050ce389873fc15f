"""The README's demo command, end to end, as a user runs it (a subprocess, its own broker)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from gateway.mosquitto import free_port, port_open

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
    for vendor in ("aliyun", "coolkit", "tencent", "xky"):
        assert re.search(rf"{vendor} [1-9]", last), last
    assert "accounts online 4/4" in last
    assert "toggle: mosquitto_pub" in out.stdout
    assert not port_open("127.0.0.1", port)  # its private broker is gone


@pytest.mark.parametrize("vendor", ["tencent", "coolkit", "aliyun", "xky"])
def test_simulate_serves_until_sigterm(vendor):
    port = free_port()
    proc = subprocess.Popen([*CLI, "simulate", vendor, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while not port_open("127.0.0.1", port):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "emulator did not listen"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
