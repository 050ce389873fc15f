"""Private nats-servers with JetStream per test (each its own port and store dir), and clients.

``nats_server`` is the plain one; ``nats_servers.start(conf)`` starts another with more
configuration (an ``authorization`` or ``tls`` block) for the authentication and TLS tests.

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
    """``nats-server -js`` on a free port with its store under ``store``, plus ``conf`` (more
    nats-server configuration, written to ``store/nats.conf``); ``kill()`` stops it the hard
    way (what a crashed or partitioned server looks like to a client)."""

    def __init__(self, store: Path, conf: str = "") -> None:
        self.binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        self.host = "127.0.0.1"
        self.port = free_port()
        self.store = store
        self.conf = conf
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    async def start(self) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        argv = [self.binary, "-a", self.host, "-p", str(self.port), "-js", "-sd", str(self.store)]
        if self.conf:
            (self.store / "nats.conf").write_text(self.conf)
            argv += ["-c", str(self.store / "nats.conf")]
        self.proc = await start_listening(
            argv, self.host, self.port, self.store / "nats-server.log", "nats-server"
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


class NatsServers:
    """The test's nats-servers: ``await start(conf)`` starts one more; ``await default()`` is
    the plain one (started on first use) that ``nats_server`` and ``instance`` use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[NatsServer] = []
        self._default: NatsServer | None = None

    async def start(self, conf: str = "") -> NatsServer:
        server = NatsServer(self.root / f"nats{len(self.started) or ''}", conf)
        if not Path(server.binary).exists():
            cluster_unavailable("nats-server is not installed (apt-get install -y nats-server)")
        self.started.append(server)
        await server.start()
        return server

    async def default(self) -> NatsServer:
        if self._default is None:
            self._default = await self.start()
        return self._default


@pytest.fixture
async def nats_servers(tmp_path: Path) -> AsyncIterator[NatsServers]:
    try:
        import nats  # noqa: F401
    except ImportError:
        cluster_unavailable("nats-py is not installed (pip install -e '.[cluster]')")
    servers = NatsServers(tmp_path)
    yield servers
    for server in servers.started:
        server.kill()


@pytest.fixture
async def nats_server(nats_servers: NatsServers) -> NatsServer:
    return await nats_servers.default()


@pytest.fixture
async def nats_client(nats_servers: NatsServers) -> AsyncIterator[Callable[..., Any]]:
    """``await nats_client(server=None, **options)``: a new connection to ``server`` (default:
    the test's plain server), closed afterwards."""
    import nats

    opened: list[Any] = []

    async def connect(server: NatsServer | None = None, **kwargs: Any) -> Any:
        server = server or await nats_servers.default()
        nc = await nats.connect(
            servers=[server.url], connect_timeout=2, max_reconnect_attempts=-1,
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
    nats_servers: NatsServers, gateway_factory: Callable[..., Any], tmp_path: Path
) -> Callable[..., Awaitable[Gateway]]:
    """``await instance(name, accounts, server=None, gateway=None, **cluster)``: a started
    gateway in cluster mode named ``name``, with its own state dir, on ``server`` (default: the
    test's plain nats-server); ``[cluster]`` is ``slots = 4`` and ``lease_ttl = 1`` unless
    ``cluster`` says otherwise; ``gateway``: more ``gateway_factory`` options (``http``, …)."""

    async def start(
        name: str,
        accounts: list[dict[str, Any]],
        server: NatsServer | None = None,
        gateway: dict[str, Any] | None = None,
        **cluster: Any,
    ) -> Gateway:
        server = server or await nats_servers.default()
        gw: Gateway = await gateway_factory(
            accounts,
            cluster={"nats": server.url, "slots": 4, "lease_ttl": 1.0, **cluster},
            instance_id=name,
            state_dir=str(tmp_path / name),
            **(gateway or {}),
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
