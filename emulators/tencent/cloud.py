"""``TencentCloud``: the emulated application cloud, assembled from its concerns."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server
from websockets.asyncio.server import serve as ws_serve

from ..base import BUILD_ONLY, CloudOptions, SimulatedCloud, close_server
from .faults import Faults
from .http_api import HttpApi
from .model import (
    API_PREFIX,
    WS_PATH,
    DeviceModel,
    SimDevice,
    SimToken,
    SimUser,
)
from .push import PushSocket, SimSocket

log = logging.getLogger("cloud2mqtt.sim.tencent")


@dataclass(frozen=True, kw_only=True)
class TencentOptions(CloudOptions):
    """The knobs of a ``TencentCloud`` (each a ``simulate tencent`` option as well, but ``stamp``)."""

    ws_port: int = 0
    app_key: str = "c2m-demo-appkey"
    app_secret: str = "c2m-demo-appsecret"
    open_id: str = "c2m-demo-user"  # WxOpenID of the default user
    devices: int = field(default=4, metadata=BUILD_ONLY)  # per user
    token_lifetime: float = 7200.0
    timestamp_window: float = 300.0
    trace_timeout: float = 90.0
    idle_timeout: float = 180.0
    rate: float = 0.0
    max_rate: bool = False
    stamp: bool | None = None  # None: as max_rate
    latency: float = 0.02
    envelope: str = "response"
    report_timestamps: str = "s"
    templates: str = "mixed"
    nul_pad: int = field(default=0, metadata=BUILD_ONLY)


class TencentCloud(DeviceModel, HttpApi, PushSocket, Faults, SimulatedCloud):
    """One emulated Tencent application cloud (one AppKey/AppSecret, any number of users)."""

    vendor = "tencent"
    Options = TencentOptions
    options: TencentOptions

    def __init__(self, options: TencentOptions | None = None, /, **knobs: Any) -> None:
        super().__init__(options, **knobs)
        if self.stamp is None:
            self.stamp = self.max_rate
        self.users: dict[str, SimUser] = {}
        self.users_by_openid: dict[str, SimUser] = {}
        self.devices: dict[str, SimDevice] = {}
        self.tokens: dict[str, SimToken] = {}
        self.sockets: set[SimSocket] = set()
        self._watchers: dict[str, set[SimSocket]] = {}  # device -> sockets that ActivePushed it
        self.calls: collections.deque[str] = collections.deque(maxlen=10_000)
        #: when each WebSocket connection was accepted (monotonic seconds): the rate tests' and
        #: the reconnect bench's record of how connects were spread
        self.connect_times: collections.deque[float] = collections.deque(maxlen=100_000)
        self.stats: collections.Counter[str] = collections.Counter()
        self._nonces: dict[tuple[int, int], float] = {}
        self._seq = itertools.count(1)
        self._uids = itertools.count(100000001)
        self._stall_until = 0.0
        self._garble = 0
        self._garble_payloads = 0
        self._refuse_logins = 0
        self._slow = 0.0
        self._heartbeat_errors = 0
        self.set_report_timestamps(self.report_timestamps)
        self.set_templates(self.templates)
        self.nul_pad(self.options.nul_pad)
        self._ws_server: Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()
        self.user_for(self.open_id)  # the default user exists from the start (deterministic ids)

    # ------------------------------------------------------------------ lifecycle

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}{API_PREFIX}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.ws_port}{WS_PATH}"

    async def start(self) -> None:
        self._stopping.clear()
        app = self._http_app(client_max_size=1 << 20)
        app.router.add_get("/_control/state", self._state)
        app.router.add_post(API_PREFIX + "/{kind:appapi|tokenapi}", self._http)
        app.router.add_post(API_PREFIX + "/{kind:appapi|tokenapi}/{tail:.*}", self._http)
        await self._serve_http(app)
        self._ws_server = await ws_serve(
            self._ws_handler, self.host, self.ws_port, compression=None, max_size=1 << 20
        )
        if self.ws_port == 0:
            self.ws_port = next(iter(self._ws_server.sockets)).getsockname()[1]
        if self.rate > 0 and not self.max_rate:
            self._spawn(self._generator())
        self._spawn(self._watchdog())
        log.info("tencent emulator: api %s ws %s", self.api_url, self.ws_url)

    async def stop(self) -> None:
        self._stopping.set()
        for task in list(self._tasks):
            task.cancel()
        for sock in list(self.sockets):
            sock.conn.transport.abort()
        if self._ws_server is not None:
            await close_server(self._ws_server)
            self._ws_server = None
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self._stop_http()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def account_config(
        self, name: str = "demo", *, open_id: str | None = None, **overrides: Any
    ) -> dict[str, Any]:
        """The ``[[accounts]]`` table that points a gateway at this emulator."""
        return self._accounts_table(
            name,
            overrides,
            app_key=self.app_key,
            app_secret=self.app_secret,
            wx_open_id=open_id or self.open_id,
            nick_name="cloud2mqtt",
            api_url=self.api_url,
            ws_url=self.ws_url,
        )
