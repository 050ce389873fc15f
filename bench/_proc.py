"""Process accounting from /proc (Linux): CPU seconds and RSS of another process."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (its own threads, not its children)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_mib(pid: int, key: str = "VmRSS") -> float:
    """Resident set (``VmRSS``) or its peak (``VmHWM``) in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def raise_nofile(want: int) -> int:
    """Raise RLIMIT_NOFILE towards ``want`` (capped by the hard limit); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(want, hard) if hard != resource.RLIM_INFINITY else want
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        mosq = subprocess.run(
            ["/usr/sbin/mosquitto", "-h"], capture_output=True, text=True, check=False, timeout=5
        ).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        mosq = "?"
    try:
        import _speedups

        impl = _speedups.IMPLEMENTATION
    except ImportError:
        impl = "?"
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mosquitto": mosq,
        "speedups": impl,
        "loadavg": os.getloadavg()[0],
    }


class CounterProc:
    """``bench.counter`` as a child process (see its docstring)."""

    def __init__(self, port: int, topics: list[str], **options: Any) -> None:
        self.argv = [sys.executable, "-m", "bench.counter", "--port", str(port)]
        for t in topics:
            self.argv += ["--topic", t]
        for k, v in options.items():
            if v is not None:
                self.argv += [f"--{k.replace('_', '-')}", str(v)]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdout=asyncio.subprocess.PIPE, cwd=_ROOT
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 20)
        if line.strip() != b"READY":
            raise RuntimeError(f"counter did not start: {line!r}")

    async def result(self, timeout: float = 600) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        await self.proc.wait()
        out: dict[str, Any] = json.loads(line)
        return out

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


def run(coro: Any, loop: str = "uvloop") -> Any:
    """``asyncio.run`` on uvloop or the default loop (``loop_factory`` needs ``Runner`` on 3.11)."""
    factory = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)
