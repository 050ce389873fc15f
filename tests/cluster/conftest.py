"""A private nats-server with JetStream per test (its own port and store dir), and clients.

Skipped locally when nats-server or nats-py is missing; a failure in CI (``CI=true``), where
scripts/bootstrap installs both.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from gateway.mosquitto import free_port, start_listening
from tests.conftest import IN_CI, Probe

if TYPE_CHECKING:
    from emulators.tencent import TencentCloud
    from gateway.app import Gateway


def cluster_unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"cluster tests cannot run in CI: {reason}")
    pytest.skip(reason)


class NatsServer:
    """``nats-server -js`` on a free port with its store under ``store``; ``kill()`` stops it
    the hard way (what a crashed or partitioned server looks like to a client)."""

    def __init__(self, store: Path) -> None:
        self.binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        self.host = "127.0.0.1"
        self.port = free_port()
        self.store = store
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    async def start(self) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        self.proc = await start_listening(
            [self.binary, "-a", self.host, "-p", str(self.port), "-js", "-sd", str(self.store)],
            self.host, self.port, self.store / "nats-server.log", "nats-server",
        )  # fmt: skip

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    try:
        import nats  # noqa: F401
    except ImportError:
        cluster_unavailable("nats-py is not installed (pip install -e '.[cluster]')")
    server = NatsServer(tmp_path / "nats")
    if not Path(server.binary).exists():
        cluster_unavailable("nats-server is not installed (apt-get install -y nats-server)")
    await server.start()
    yield server
    server.kill()


@pytest.fixture
async def nats_client(nats_server: NatsServer) -> AsyncIterator[Callable[..., Any]]:
    """``await nats_client()``: a new connection to the test's server, closed afterwards."""
    import nats

    opened: list[Any] = []

    async def connect(**kwargs: Any) -> Any:
        nc = await nats.connect(
            servers=[nats_server.url], connect_timeout=2, max_reconnect_attempts=-1,
            reconnect_time_wait=0.2, **kwargs,
        )  # fmt: skip
        opened.append(nc)
        return nc

    yield connect
    for nc in opened:
        if not nc.is_closed:
            try:
                async with asyncio.timeout(2):
                    await nc.close()
            except Exception:
                pass


@pytest.fixture
def instance(
    nats_server: NatsServer, gateway_factory: Callable[..., Any], tmp_path: Path
) -> Callable[..., Awaitable[Gateway]]:
    """``await instance(name, accounts, **cluster)``: a started gateway in cluster mode named
    ``name``, with its own state dir, on the test's nats-server; ``[cluster]`` is ``slots = 4``
    and ``lease_ttl = 1`` unless ``cluster`` says otherwise."""

    async def start(name: str, accounts: list[dict[str, Any]], **cluster: Any) -> Gateway:
        gw: Gateway = await gateway_factory(
            accounts,
            cluster={"nats": nats_server.url, "slots": 4, "lease_ttl": 1.0, **cluster},
            instance_id=name,
            state_dir=str(tmp_path / name),
        )
        return gw

    return start


def toml_config(tables: dict[str, Any]) -> str:
    """Just enough TOML for a test config: tables and arrays of tables of plain values."""
    out: list[str] = []
    for name, value in tables.items():
        rows = value if isinstance(value, list) else [value]
        for row in rows:
            out.append(f"[[{name}]]" if isinstance(value, list) else f"[{name}]")
            out.extend(f"{k} = {json.dumps(v)}" for k, v in row.items())
    return "\n".join(out) + "\n"


@pytest.fixture
async def instance_process(
    nats_server: NatsServer, mosquitto: Any, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[asyncio.subprocess.Process]]]:
    """``await instance_process(name, accounts, cluster={…}, **gateway)``: a real ``cloud2mqtt
    run`` process in cluster mode on the test's nats-server and broker, for what one process
    cannot show of another (a SIGKILL, the process-wide log level); its log goes to
    ``<tmp_path>/<name>.log``. ``[cluster]`` is ``slots = 4``, ``lease_ttl = 1`` unless
    ``cluster`` says otherwise. Killed after the test if still running."""
    started: list[asyncio.subprocess.Process] = []

    async def start(
        name: str, accounts: list[dict[str, Any]], *, cluster: dict[str, Any] | None = None,
        **gateway: Any,
    ) -> asyncio.subprocess.Process:  # fmt: skip
        config = tmp_path / f"{name}.toml"
        config.write_text(toml_config({
            "mqtt": {"url": mosquitto.url, "client_id": f"proc-{name}"},
            "gateway": {"state_dir": str(tmp_path / name), "instance_id": name,
                        "command_timeout": 3.0, "health_interval": 0.5, **gateway},
            "cluster": {"nats": nats_server.url, "slots": 4, "lease_ttl": 1.0, **(cluster or {})},
            "accounts": accounts,
        }))  # fmt: skip
        with open(tmp_path / f"{name}.log", "wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.cli", "run", "-c", str(config),
                stdout=asyncio.subprocess.DEVNULL, stderr=log,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
            )  # fmt: skip
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def quick_accounts(cloud: TencentCloud, n: int) -> list[dict[str, Any]]:
    """``acct0`` … ``acct<n-1>`` of the Tencent emulator (``user-<i>``), with a fast heartbeat
    and backoff: an account that moves is up again quickly."""
    return [
        cloud.account_config(f"acct{i}", open_id=f"user-{i}", heartbeat=0.5,
                             backoff_base=0.05, backoff_cap=0.3)
        for i in range(n)
    ]  # fmt: skip


async def retained(mosquitto: Any, topic: str, *until: str) -> dict[str, Any]:
    """The retained messages a new subscriber to ``topic`` gets, read until each of ``until``
    came."""
    fresh = Probe(mosquitto.host, mosquitto.port, topic)
    try:
        await fresh.ready()
        for name in until:
            await fresh.wait_for(name)
        return {t: p for t, p, retain in fresh.messages if retain}
    finally:
        fresh.close()
