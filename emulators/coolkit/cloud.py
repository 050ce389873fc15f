"""``CoolkitCloud``: the emulated CoolKit cloud, assembled from its concerns.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server
from websockets.asyncio.server import serve as ws_serve

from protocols.coolkit.sign import Signer

from ..base import BUILD_ONLY, CloudOptions, SimulatedCloud, close_server
from .faults import Faults
from .http_api import HttpApi
from .model import (
    Conn,
    Population,
    SimDevice,
    SimGroup,
    SimSession,
    SimUser,
    Version,
)
from .push import PushSocket

log = logging.getLogger("cloud2mqtt.sim.coolkit")


@dataclass(frozen=True, kw_only=True)
class CoolkitOptions(CloudOptions):
    """The knobs of a ``CoolkitCloud`` (each a ``simulate coolkit`` option as well, but the app's
    and ``demo``)."""

    ws_port: int = 0
    appid: str = "cloud2mqtt-demo-appid-0000000000"
    app_secret: str = "cloud2mqtt-demo-secret-000000000"
    hb_interval: float = 145.0
    hb_grace: float = 15.0
    at_ttl: float = 30 * 86400.0
    rt_ttl: float = 60 * 86400.0
    rate_min_interval: float = 0.5
    rate_window: float = 300.0
    rate_max_calls: int = 300
    user_online_interval: float = 10.0
    push_interval: float | None = None
    extra_devices: int = field(default=0, metadata=BUILD_ONLY)
    demo: bool = field(default=True, metadata=BUILD_ONLY)  # the demo population


class CoolkitCloud(Population, HttpApi, PushSocket, Faults, SimulatedCloud):
    vendor = "coolkit"
    Options = CoolkitOptions
    options: CoolkitOptions

    def __init__(self, options: CoolkitOptions | None = None, /, **knobs: Any) -> None:
        super().__init__(options, **knobs)
        self.apps: dict[str, Signer] = {self.appid: Signer(self.app_secret)}
        self.users: dict[str, SimUser] = {}
        self.devices: dict[str, SimDevice] = {}
        self.groups: dict[str, SimGroup] = {}
        self.sessions: dict[tuple[str, str], SimSession] = {}
        self._by_at: dict[str, SimSession] = {}
        self._by_rt: dict[str, SimSession] = {}
        self.conns: list[Conn] = []
        # Observability for tests.
        self.violations: list[str] = []
        self.calls: list[tuple[float, str]] = []
        self.logins: list[str] = []
        self.handshakes: list[tuple[float, str, int]] = []  # (t, apikey, error)
        self.pings = 0  # app-level pings answered (tests wait on it)
        self.commands: list[dict[str, Any]] = []
        # Faults.
        self._never_answer = 0
        self._fail_504 = 0
        # Rate state (one client IP in practice: the tests' 127.0.0.1).
        self._last_call: dict[tuple[str, str], float] = {}
        self._window: dict[str, deque[float]] = {}
        self._last_online: dict[str, float] = {}
        self._ws_server: Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        if self.options.demo:
            self._demo(self.options.extra_devices)


    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._ws_server = await ws_serve(self._ws_handler, self.host, self.ws_port, compression=None)
        self.ws_port = self._ws_server.sockets[0].getsockname()[1] if self._ws_server.sockets else self.ws_port
        app = self._http_app()
        app.router.add_route("*", "/{region}/{tail:.*}", self._handle)
        await self._serve_http(app)
        if self.push_interval:
            self._tasks.append(asyncio.create_task(self._pusher(self.push_interval)))
        log.info("coolkit emulator on %s (WebSocket port %d)", self.url, self.ws_port)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for conn in list(self.conns):
            conn.ws.transport.abort()
        if self._ws_server is not None:
            await close_server(self._ws_server)
        await self._stop_http()

    def account_config(
        self,
        name: str = "demo",
        email: str = "demo@example.com",
        *,
        version: Version = 2,
        region: str | None = None,
        oauth: bool = False,
        **overrides: Any,
    ) -> dict[str, Any]:
        """The ``[[accounts]]`` table for a gateway; ``oauth`` configures a fresh ``at``/``rt`` pair
        (as the OAuth flow would hand out) instead of a password."""
        user = self.users[email]
        base = f"{self.url}/{{region}}"
        if oauth:
            sess = self._new_session(user, self.appid, version)
            login: dict[str, Any] = {"at": sess.at, "rt": sess.rt}
        else:
            login = {"email": email, "password": user.password, "country_code": user.country_code}
        return self._accounts_table(
            name, overrides,
            app_id=self.appid, app_secret=self.app_secret, api_version=version,
            region=region or user.region, api_url=base, dispatch_url=base, v1_api_url=base,
            rate_min_interval=self.rate_min_interval, rate_window=self.rate_window,
            rate_max_calls=self.rate_max_calls, user_online_interval=self.user_online_interval,
            **login,
        )  # fmt: skip

