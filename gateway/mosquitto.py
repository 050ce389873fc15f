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

__all__ = ["Mosquitto", "free_port", "port_open", "start_listening"]


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


async def start_listening(
    args: list[str], host: str, port: int, log_file: Path, name: str
) -> subprocess.Popen[bytes]:
    """Run a server (stderr to ``log_file``) and return once it listens on ``host:port``;
    ``RuntimeError`` with the log's tail when it exits or does not listen within 5 s."""
    proc = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=open(log_file, "ab"),  # noqa: SIM115
    )
    for _ in range(200):
        if port_open(host, port, 0.1):
            return proc
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited: {log_file.read_text()[-500:]}")
        await asyncio.sleep(0.025)
    raise RuntimeError(f"{name} did not start listening")


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
        self.proc = await start_listening(
            [self.binary, "-c", str(self.conf)], self.host, self.port,
            self.dir / "mosquitto.log", "mosquitto",
        )  # fmt: skip

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
