"""Run a private mosquitto on a free port: for tests, the demo and the benchmarks.

Each instance gets its own config and directory so it never touches the system broker, and
can be stopped and started again on the same port (tests of "broker restart").
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["Mosquitto", "free_port", "port_open"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class Mosquitto:
    def __init__(self, port: int | None = None, extra_config: str = "") -> None:
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(self.binary).exists():
            raise RuntimeError("mosquitto is not installed (apt-get install -y mosquitto)")
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="c2m-mosquitto-"))
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 0\n"
            "set_tcp_nodelay true\n"
            f"{extra_config}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "mosquitto.log", "ab"),  # noqa: SIM115
        )
        for _ in range(200):
            if port_open(self.host, self.port, 0.1):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {(self.dir / 'mosquitto.log').read_text()[-500:]}")
            await asyncio.sleep(0.025)
        raise RuntimeError("mosquitto did not start listening")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.proc.wait, 5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None

    async def restart(self, down_for: float = 0.0) -> None:
        await self.stop()
        if down_for:
            await asyncio.sleep(down_for)
        await self.start()

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
