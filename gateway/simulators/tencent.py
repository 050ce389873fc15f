"""An emulated Tencent IoT Explorer application cloud (seed 002), for tests, the demo and the bench.

It implements the seed's protocol *as the server would*, sharing ``protocols.tencent`` with the
connector:

- HTTP (aiohttp) ``POST /api/exploreropen/appapi`` (signed, pre-login: ``AppGetTokenByWeiXin``)
  and ``POST /api/exploreropen/tokenapi`` (``AccessToken``: ``AppGetUser``, ``AppLogoutUser``,
  ``AppGetFamilyList``, ``AppGetFamilyDeviceList``, ``AppGetDeviceStatuses``, ``AppGetDeviceData``,
  ``AppGetProducts``, ``AppControlDeviceData``, ``AppCallDeviceActionSync``/``Async``). A trailing
  ``/<Action>`` path segment (the Android SDK's form) and query strings are accepted. Replies are
  ``{"Response": {…, "RequestId"}}`` (``envelope="sdk"`` answers ``{"code","msg","data"}`` as the
  official JS SDK expects).
- WebSocket (websockets, ``compression=None``) on its own port at ``/iotstudio_v2_weapp_1`` (any
  path is accepted): ``ActivePush``, ``YunApi`` (``AppDeviceTraceHeartBeat`` and every tokenapi
  action), ``Hello``; ``DeviceChange`` pushes with a base64 ``Payload``.

Error codes. From the seed: ``InvalidParameterValue.InvalidAccessToken`` (bad, expired or
logged-out token), ``ErrorRequiredParamNotFound``, ``InvalidAction``,
``InvalidParameterValue.InvalidJSON``, ``InvalidParameterValue`` (a value the data template
refuses), ``InvalidParameterValue.ErrorUserNotExists`` (login refused), ``ResourceNotFound.AppNotExists``
(unknown AppKey), ``ResourceNotFound.DeviceNotExist``, ``FailedOperation.DeviceOffline``,
``UnauthorizedOperation.NoPermissionToFamily``, ``UnauthorizedOperation.APPNoPermissionToStudioProduct``
(heartbeat for a device that is not the user's). The seed names none for the appapi checks, so
this emulator picks:

- ``InvalidParameterValue.InvalidSignature`` — ``Signature`` does not match;
- ``InvalidParameterValue.TimestampExpired`` — ``Timestamp`` is more than ``timestamp_window``
  seconds (default 300) away from the server clock;
- ``InvalidParameterValue.NonceUsed`` — the same ``Timestamp`` + ``Nonce`` pair was already used
  (the seed: "Nonce … 用于和时间戳一起，防范 API 重放攻击").

Emulator policy (not seed facts): pushes go only to sockets that sent ``ActivePush`` and only for
devices whose trace heartbeat (or ``ActivePush``) is younger than ``trace_timeout`` (90 s); a
socket that sent nothing for ``idle_timeout`` (180 s) is closed with code 1000.

Devices: every user (created on first login by ``WxOpenID``) owns ``devices`` devices, lights
(``power_switch`` bool, ``brightness`` int, ``color`` enum; event ``status_report``; action
``light_blink``) and sensors (``temperature`` float r, ``humidity`` int r; event ``low_voltage``)
alternately. At ``rate`` pushes per second per user they report properties, post events and go
offline/online; ``max_rate`` sends reports as fast as each socket drains (``stamp`` adds a
``sent_ts`` send time, epoch ms, to each report's params). A control changes the device, comes
back as a ``Property``/``Push`` ``control`` push and then a ``Property``/``Report`` push.

Misbehaviour, in-process or by ``POST /_control/<fault>`` with a JSON body:
``drop`` (abort every socket), ``stall {"seconds"}`` (send nothing), ``garble {"count"}`` (the next
frames are garbage: bad JSON, a seed-damaged payload, binary, a push without params),
``expire_tokens``, ``refuse_logins {"count"}`` (-1: until ``0``), ``slow {"seconds"}`` (HTTP
replies), ``heartbeat_errors {"count"}`` (``error: "-1"`` replies), and device drivers ``report
{"device","props"}``, ``event {"device","event","params"}``, ``online``/``offline {"device"}``;
``GET /_control/state`` returns counters.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import logging
import math
import random
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from aiohttp import web
from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed

from protocols.model import CommandError, RemoteProtocolError, Schema
from protocols.tencent import api as tapi
from protocols.tencent import ws as tws
from protocols.tencent.sign import verify
from protocols.tencent.template import denormalize, schema_from_template
from protocols.tsl import validate

from .base import SimulatedCloud, control_response, serve_forever

__all__ = ["TencentCloud", "account_config", "add_arguments", "demo_cloud", "serve"]

log = logging.getLogger("cloud2mqtt.sim.tencent")

ERR_SIGNATURE: Final = "InvalidParameterValue.InvalidSignature"
ERR_TIMESTAMP: Final = "InvalidParameterValue.TimestampExpired"
ERR_NONCE: Final = "InvalidParameterValue.NonceUsed"
ERR_APP: Final = "ResourceNotFound.AppNotExists"
ERR_TOKEN: Final = "InvalidParameterValue.InvalidAccessToken"
ERR_MISSING: Final = "ErrorRequiredParamNotFound"
ERR_ACTION: Final = "InvalidAction"
ERR_JSON: Final = "InvalidParameterValue.InvalidJSON"
ERR_PARAM: Final = "InvalidParameterValue"
ERR_LOGIN: Final = "InvalidParameterValue.ErrorUserNotExists"
ERR_DEVICE: Final = "ResourceNotFound.DeviceNotExist"
ERR_OFFLINE: Final = "FailedOperation.DeviceOffline"
ERR_FAMILY: Final = "UnauthorizedOperation.NoPermissionToFamily"
ERR_PRODUCT: Final = "UnauthorizedOperation.APPNoPermissionToStudioProduct"

LIGHT_PRODUCT: Final = "C2MLIGHT01"
SENSOR_PRODUCT: Final = "C2MSENSOR1"
WS_PATH: Final = "/iotstudio_v2_weapp_1"
API_PREFIX: Final = "/api/exploreropen"

LIGHT_TEMPLATE: Final[dict[str, Any]] = {
    "version": "1.0",
    "profile": {"ProductId": LIGHT_PRODUCT, "CategoryId": "141"},
    "properties": [
        {"id": "power_switch", "name": "电灯开关", "desc": "", "required": True, "mode": "rw",
         "define": {"type": "bool", "mapping": {"0": "关", "1": "开"}}},
        {"id": "brightness", "name": "亮度", "desc": "", "mode": "rw",
         "define": {"type": "int", "unit": "%", "step": "1", "min": "0", "max": "100", "start": "1"}},
        {"id": "color", "name": "颜色", "desc": "", "mode": "rw",
         "define": {"type": "enum", "mapping": {"0": "Red", "1": "Green", "2": "Blue"}}},
    ],
    "events": [
        {"id": "status_report", "name": "DeviceStatus", "desc": "", "type": "info", "required": False,
         "params": [
             {"id": "status", "name": "running_state", "define": {"type": "bool", "mapping": {"0": "normal", "1": "fault"}}},
             {"id": "message", "name": "Message", "define": {"type": "string", "min": "0", "max": "64"}},
         ]},
    ],
    "actions": [
        {"id": "light_blink", "name": "闪烁", "desc": "", "required": False,
         "input": [
             {"id": "color", "name": "color", "define": {"type": "enum", "mapping": {"0": "Red", "1": "Green", "2": "Blue"}}},
             {"id": "time", "name": "time", "define": {"type": "int", "min": "0", "max": "60", "step": "1", "unit": "s"}},
             {"id": "total_time", "name": "total_time", "define": {"type": "int", "min": "0", "max": "600", "step": "1", "unit": "s"}},
         ],
         "output": [{"id": "result", "name": "result", "define": {"type": "int", "min": "0", "max": "1", "step": "1"}}]},
    ],
}  # fmt: skip

SENSOR_TEMPLATE: Final[dict[str, Any]] = {
    "version": "1.0",
    "profile": {"ProductId": SENSOR_PRODUCT, "CategoryId": "3"},
    "properties": [
        {"id": "temperature", "name": "温度", "desc": "", "mode": "r",
         "define": {"type": "float", "unit": "℃", "step": "0.1", "min": "-40.0", "max": "125.0", "start": "0"}},
        {"id": "humidity", "name": "湿度", "desc": "", "mode": "r",
         "define": {"type": "int", "unit": "%", "step": "1", "min": "0", "max": "100", "start": "0"}},
    ],
    "events": [
        {"id": "low_voltage", "name": "LowVoltage", "desc": "", "type": "alert", "required": False,
         "params": [{"id": "voltage", "name": "Voltage",
                     "define": {"type": "float", "unit": "V", "step": "0.1", "min": "0.0", "max": "24.0", "start": "1"}}]},
    ],
    "actions": [],
}  # fmt: skip

_PRODUCTS: Final = {
    # The seed prints DataTemplate as an object; the official SDK demo JSON.parses a string.
    # Send one of each so both paths of a client run.
    LIGHT_PRODUCT: ("light", "C2M light", LIGHT_TEMPLATE, False),
    SENSOR_PRODUCT: ("sensor", "C2M sensor", SENSOR_TEMPLATE, True),
}
_SCHEMAS: Final = {pid: schema_from_template(tpl) for pid, (_, _, tpl, _) in _PRODUCTS.items()}

_GARBAGE: Final = (
    "{not json",
    orjson.dumps(
        {
            "action": "DeviceChange",
            "push": True,
            "params": {
                "Time": "2019-04-11T20:42:36+08:00",
                "Type": "Event",
                "SubType": "Report",
                "Topic": "",
                # the seed's Event example payload, as damaged by the document extraction
                "Payload": "ewogICAgICAgICJtZXRob2QiOiAiZXZlbnRfcG9zdCIsciaGICAgICAgInZlcnPb24iOia"
                "iMS4wIiwKICAgICAgICAiZXZlbnRJZCI6ICJsb3dfdm9sdGFnZSIsciaGICAgICAgInBhcmF",
                "Seq": 1,
                "DeviceId": "",
            },
        }
    ).decode(),
    b"\x00\xff\xfe garbage",
    '{"push": true, "action": "DeviceChange"}',
)


class _Reject(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(code)
        self.code = code
        self.message = message


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class SimDevice:
    device_id: str
    product_id: str
    name: str
    kind: str
    owner: str
    family_id: str
    alias: str
    online: bool = True
    values: dict[str, Any] = field(default_factory=dict)  # wire form (bool as 0/1)
    updated: dict[str, int] = field(default_factory=dict)
    created: int = 0

    @property
    def schema(self) -> Schema:
        return _SCHEMAS[self.product_id]


@dataclass
class SimUser:
    uid: str
    open_id: str
    nick: str
    family_id: str
    devices: list[str] = field(default_factory=list)


@dataclass
class SimToken:
    token: str
    uid: str
    expires: float  # epoch seconds


class SimSocket:
    __slots__ = ("conn", "last_rx", "queue", "subscribed", "uid", "writer")

    def __init__(self, conn: ServerConnection) -> None:
        self.conn = conn
        self.uid: str | None = None
        self.subscribed: dict[str, float] = {}  # device -> monotonic time of its last trace
        self.last_rx = time.monotonic()
        self.queue: asyncio.Queue[str | bytes] = asyncio.Queue(maxsize=2000)
        self.writer: asyncio.Task[None] | None = None


class TencentCloud(SimulatedCloud):
    """One emulated Tencent application cloud (one AppKey/AppSecret, any number of users)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ws_port: int = 0,
        app_key: str = "c2m-demo-appkey",
        app_secret: str = "c2m-demo-appsecret",
        open_id: str = "c2m-demo-user",
        devices: int = 4,
        token_lifetime: float = 7200.0,
        timestamp_window: float = 300.0,
        trace_timeout: float = 90.0,
        idle_timeout: float = 180.0,
        rate: float = 0.0,
        max_rate: bool = False,
        stamp: bool | None = None,
        latency: float = 0.02,
        envelope: str = "response",
        seed: int = 0,
    ) -> None:
        self.host = host
        self.port = port
        self.ws_port = ws_port
        self.app_key = app_key
        self.app_secret = app_secret
        self.open_id = open_id
        self.devices_per_user = devices
        self.token_lifetime = token_lifetime
        self.timestamp_window = timestamp_window
        self.trace_timeout = trace_timeout
        self.idle_timeout = idle_timeout
        self.rate = rate
        self.max_rate = max_rate
        self.stamp = max_rate if stamp is None else stamp
        self.latency = latency
        self.envelope = envelope
        self.rng = random.Random(seed)
        self.users: dict[str, SimUser] = {}
        self.users_by_openid: dict[str, SimUser] = {}
        self.devices: dict[str, SimDevice] = {}
        self.tokens: dict[str, SimToken] = {}
        self.sockets: set[SimSocket] = set()
        self._watchers: dict[str, set[SimSocket]] = {}  # device -> sockets that ActivePushed it
        self.calls: collections.deque[str] = collections.deque(maxlen=10_000)
        self.stats: collections.Counter[str] = collections.Counter()
        self._nonces: dict[tuple[int, int], float] = {}
        self._seq = itertools.count(1)
        self._uids = itertools.count(100000001)
        self._stall_until = 0.0
        self._garble = 0
        self._refuse_logins = 0
        self._slow = 0.0
        self._heartbeat_errors = 0
        self._runner: web.AppRunner | None = None
        self._ws_server: Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()
        self.user_for(open_id)  # the default user exists from the start (deterministic ids)

    # ------------------------------------------------------------------ lifecycle

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}{API_PREFIX}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.ws_port}{WS_PATH}"

    async def start(self) -> None:
        self._stopping.clear()
        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/_control/{fault}", self._control)
        app.router.add_get("/_control/state", self._state)
        app.router.add_post(API_PREFIX + "/{kind:appapi|tokenapi}", self._http)
        app.router.add_post(API_PREFIX + "/{kind:appapi|tokenapi}/{tail:.*}", self._http)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = self._runner.addresses[0][1]
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
            self._ws_server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws_server.wait_closed(), 2)
            self._ws_server = None
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def account_config(
        self, name: str = "demo", *, open_id: str | None = None, **overrides: Any
    ) -> dict[str, Any]:
        """The ``[[accounts]]`` table that points a gateway at this emulator."""
        cfg: dict[str, Any] = {
            "vendor": "tencent",
            "name": name,
            "app_key": self.app_key,
            "app_secret": self.app_secret,
            "wx_open_id": open_id or self.open_id,
            "nick_name": "cloud2mqtt",
            "api_url": self.api_url,
            "ws_url": self.ws_url,
        }
        cfg.update(overrides)
        return cfg

    # ------------------------------------------------------------------ users and devices

    def user_for(self, open_id: str, nick: str = "") -> SimUser:
        user = self.users_by_openid.get(open_id)
        if user is not None:
            return user
        index = len(self.users)
        uid = str(next(self._uids))
        user = SimUser(uid, open_id, nick or open_id, f"f{index:04d}{secrets.token_hex(6)}")
        self.users[uid] = user
        self.users_by_openid[open_id] = user
        for j in range(self.devices_per_user):
            self._add_device(user, index, j)
        return user

    def _add_device(self, user: SimUser, index: int, j: int) -> SimDevice:
        product = LIGHT_PRODUCT if j % 2 == 0 else SENSOR_PRODUCT
        kind = _PRODUCTS[product][0]
        name = f"{kind}-{index}-{j + 1}"
        now = _now_ms()
        dev = SimDevice(f"{product}/{name}", product, name, kind, user.uid, user.family_id,
                        f"{kind} {j + 1}", created=now // 1000)  # fmt: skip
        if kind == "light":
            dev.values = {"power_switch": 0, "brightness": 50, "color": 0}
        else:
            dev.values = {"temperature": round(20 + self.rng.random() * 5, 1), "humidity": 45}
        dev.updated = dict.fromkeys(dev.values, now)
        self.devices[dev.device_id] = dev
        user.devices.append(dev.device_id)
        return dev

    def add_device(self, open_id: str | None = None) -> str:
        """Bind a new device to the user; a ``StatusChange``/``Bind`` push tells their sockets."""
        user = self.user_for(open_id or self.open_id)
        index = list(self.users).index(user.uid)
        dev = self._add_device(user, index, len(user.devices))
        self._push_to_user(user, dev, "Bind")
        return dev.device_id

    def remove_device(self, device: str) -> None:
        """Unbind a device; ``StatusChange``/``Unbind`` goes to its owner's sockets."""
        dev = self.devices.pop(device)
        user = self.users[dev.owner]
        user.devices.remove(device)
        self._push_to_user(user, dev, "Unbind")
        for sock in self._watchers.pop(device, set()):
            sock.subscribed.pop(device, None)

    def _push_to_user(self, user: SimUser, dev: SimDevice, subtype: str) -> None:
        frame = tws.device_change_frame(
            dev.device_id, "StatusChange", subtype, None, seq=next(self._seq), ts_ms=_now_ms()
        )
        for sock in self.sockets:
            if sock.uid == user.uid:
                self._enqueue(sock, frame)

    def device_ids(self, open_id: str | None = None) -> list[str]:
        return list(self.user_for(open_id or self.open_id).devices)

    # ------------------------------------------------------------------ pushes

    def _enqueue(self, sock: SimSocket, frame: str | bytes) -> None:
        try:
            sock.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.stats["push_dropped_full"] += 1

    def _deliver(self, device: str, frame: str) -> int:
        now = time.monotonic()
        sent = 0
        for sock in self._watchers.get(device, ()):
            traced = sock.subscribed[device]
            if now - traced > self.trace_timeout:
                self.stats["push_untraced"] += 1
                continue
            self._enqueue(sock, frame)
            sent += 1
        self.stats["pushes"] += sent
        return sent

    def _push(
        self,
        dev: SimDevice,
        type_: str,
        subtype: str,
        payload: Mapping[str, Any] | None,
        *,
        topic: str = "",
    ) -> int:
        frame = tws.device_change_frame(dev.device_id, type_, subtype, payload, seq=next(self._seq),
                                        ts_ms=_now_ms(), topic=topic)  # fmt: skip
        return self._deliver(dev.device_id, frame)

    def report(
        self, device: str, props: Mapping[str, Any], *, client_token: str | None = None
    ) -> int:
        """The device reports property values (wire form); pushed as ``Property``/``Report``."""
        dev = self.devices[device]
        now = _now_ms()
        for key, value in props.items():
            dev.values[key] = value
            dev.updated[key] = now
        body: dict[str, Any] = {
            "method": "report",
            "clientToken": client_token or f"report-{next(self._seq)}",
            "timestamp": now,
            "params": dict(props),
        }
        return self._push(
            dev, "Property", "Report", body, topic=f"$thing/up/property/{dev.product_id}/{dev.name}"
        )

    def event(
        self, device: str, event_id: str, params: Mapping[str, Any], *, level: str | None = None
    ) -> int:
        dev = self.devices[device]
        spec = next((e for e in dev.schema.events if e.id == event_id), None)
        body = {
            "method": "event_post",
            "version": "1.0",
            "eventId": event_id,
            "type": level or (spec.level if spec else "info"),
            "timestamp": _now_ms(),
            "params": dict(params),
            "clientToken": f"event-{next(self._seq)}",
        }
        return self._push(
            dev, "Event", "Report", body, topic=f"$thing/up/event/{dev.product_id}/{dev.name}"
        )

    def set_online(self, device: str, online: bool) -> int:
        dev = self.devices[device]
        dev.online = online
        return self._push(dev, "StatusChange", "Online" if online else "Offline", None)

    def push_raw(self, frame: str | bytes) -> None:
        """Send one frame as it is to every subscribed socket (tests of bad input)."""
        for sock in self.sockets:
            if sock.subscribed:
                self._enqueue(sock, frame)

    async def _generator(self) -> None:
        """Random property reports, events and availability flips at ``rate`` per user."""
        interval = 1.0 / self.rate
        while True:
            await asyncio.sleep(interval)
            watched = self._watchers
            for user in self.users.values():
                devs = [d for d in user.devices if d in watched]
                if devs:
                    self._random_change(self.devices[self.rng.choice(devs)])

    def _random_change(self, dev: SimDevice) -> None:
        roll = self.rng.random()
        if not dev.online or roll > 0.97:
            self.set_online(dev.device_id, not dev.online)
            return
        if roll > 0.9:
            if dev.kind == "light":
                self.event(dev.device_id, "status_report", {"status": 0, "message": "ok"})
            else:
                self.event(
                    dev.device_id, "low_voltage", {"voltage": round(2 + self.rng.random(), 2)}
                )
            return
        self.report(dev.device_id, self._random_values(dev))

    def _random_values(self, dev: SimDevice) -> dict[str, Any]:
        if dev.kind == "light":
            which = self.rng.randrange(3)
            if which == 0:
                return {"power_switch": 1 - int(dev.values.get("power_switch", 0))}
            if which == 1:
                return {"brightness": self.rng.randrange(101)}
            return {"color": self.rng.randrange(3)}
        temp = float(dev.values.get("temperature", 21.0)) + self.rng.uniform(-0.5, 0.5)
        return {
            "temperature": round(min(max(temp, -40.0), 125.0), 1),
            "humidity": self.rng.randrange(30, 70),
        }

    async def _max_rate(self, sock: SimSocket) -> None:
        """Reports for the socket's devices as fast as it drains (the load bench's firehose)."""
        n = 0
        while True:
            devices = [d for d in sock.subscribed if self.devices[d].online]
            if not devices:
                await asyncio.sleep(0.05)
                continue
            dev = self.devices[devices[n % len(devices)]]
            n += 1
            params = self._random_values(dev)
            now = time.time_ns()
            if self.stamp:
                params["sent_ts"] = now / 1e6
            dev.values.update((k, v) for k, v in params.items() if k != "sent_ts")
            body = {
                "method": "report",
                "clientToken": f"r{n}",
                "timestamp": now // 1_000_000,
                "params": params,
            }
            frame = tws.device_change_frame(dev.device_id, "Property", "Report", body, seq=next(self._seq),
                                            ts_ms=now // 1_000_000)  # fmt: skip
            await sock.queue.put(frame)
            self.stats["pushes"] += 1

    # ------------------------------------------------------------------ WebSocket

    async def _ws_handler(self, conn: ServerConnection) -> None:
        sock = SimSocket(conn)
        self.sockets.add(sock)
        self.stats["ws_connections"] += 1
        sock.writer = self._spawn(self._writer(sock))
        firehose: asyncio.Task[None] | None = None
        try:
            while True:
                remaining = self.idle_timeout - (time.monotonic() - sock.last_rx)
                if remaining <= 0:
                    self.stats["idle_closed"] += 1
                    await conn.close(1000, "idle")
                    return
                try:
                    message = await asyncio.wait_for(conn.recv(), remaining)
                except TimeoutError:
                    continue
                sock.last_rx = time.monotonic()
                await self._on_frame(sock, message)
                if self.max_rate and firehose is None and sock.subscribed:
                    firehose = self._spawn(self._max_rate(sock))
        except ConnectionClosed:
            pass
        finally:
            self.sockets.discard(sock)
            for device in sock.subscribed:
                watchers = self._watchers.get(device)
                if watchers is not None:
                    watchers.discard(sock)
                    if not watchers:
                        del self._watchers[device]
            if firehose is not None:
                firehose.cancel()
            if sock.writer is not None:
                sock.writer.cancel()

    async def _writer(self, sock: SimSocket) -> None:
        """Sends queued frames, one WebSocket message each, as the cloud does.

        Everything queued by the time the writer runs leaves in one write (websockets' own
        ``send_context`` around several ``send_text``): one ``send()`` per frame made this
        emulator, not the gateway under test, the bottleneck of bench.load at 20k msg/s.
        """
        loop = asyncio.get_running_loop()
        conn, queue = sock.conn, sock.queue
        with contextlib.suppress(ConnectionClosed):
            while True:
                batch = [await queue.get()]
                while not queue.empty() and len(batch) < 256:
                    batch.append(queue.get_nowait())
                while self._stall_until > loop.time():
                    await asyncio.sleep(self._stall_until - loop.time())
                async with conn.send_context():
                    for frame in batch:
                        if self._garble > 0:
                            self._garble -= 1
                            frame = _GARBAGE[self.stats["garbled"] % len(_GARBAGE)]
                            self.stats["garbled"] += 1
                        if isinstance(frame, str):
                            conn.protocol.send_text(frame.encode())
                        else:
                            conn.protocol.send_binary(frame)

    async def _on_frame(self, sock: SimSocket, message: str | bytes) -> None:
        try:
            req = tws.parse_request(message)
        except RemoteProtocolError as exc:  # a bad client frame is skipped, never fatal
            self.stats["bad_client_frames"] += 1
            log.debug("bad client frame: %s", exc)
            return
        self.calls.append(f"ws:{req.action}")
        req_id = req.req_id if req.req_id is not None else ""
        if req.action == "ActivePush":
            self._enqueue(sock, tws.active_push_reply(req_id, self._active_push(sock, req.params)))
        elif req.action == "YunApi":
            self._enqueue(sock, await self._yunapi(sock, req_id, req.params))
        elif req.action == "Hello":
            self._enqueue(sock, tws.reply_frame(req_id, {"result": "hello world"}))
        else:
            self._enqueue(
                sock,
                tws.reply_frame(
                    req_id, {}, error="-1", error_message=f"unknown action {req.action}"
                ),
            )

    def _active_push(self, sock: SimSocket, params: Mapping[str, Any]) -> list[str]:
        self.stats["active_push"] += 1
        try:
            user = self._user_of(params.get("AccessToken"))
        except _Reject:
            return []  # the seed's failure form: error "" and an empty deviceIds
        wanted = params.get("DeviceIds")
        if not isinstance(wanted, list):
            return []
        now = time.monotonic()
        accepted = [
            d
            for d in wanted
            if isinstance(d, str) and d in self.devices and self.devices[d].owner == user.uid
        ]
        sock.uid = user.uid
        for device in accepted:
            sock.subscribed[device] = now
            self._watchers.setdefault(device, set()).add(sock)
        return accepted

    async def _yunapi(self, sock: SimSocket, req_id: str | int, params: Mapping[str, Any]) -> str:
        action = params.get("Action")
        inner = params.get("ActionParams")
        inner = dict(inner) if isinstance(inner, Mapping) else {}
        if "AccessToken" not in inner and "AccessToken" in params:  # iOS puts it next to Action
            inner["AccessToken"] = params["AccessToken"]
        request_id = str(inner.get("RequestId") or req_id)
        if self._heartbeat_errors:
            self._heartbeat_errors -= 1
            return tws.reply_frame(
                req_id, {}, error="-1", error_message="后台连接出错，请联系管理员"
            )
        try:
            if not isinstance(action, str) or not action:
                raise _Reject(ERR_MISSING, "Action")
            if action == tws.HEARTBEAT_ACTION:
                self.stats["heartbeats"] += 1
                user = self._user_of(inner.get("AccessToken"))
                ids = inner.get("DeviceIds")
                if not isinstance(ids, list):
                    raise _Reject(ERR_MISSING, "DeviceIds")
                foreign = [
                    d for d in ids if not (d in self.devices and self.devices[d].owner == user.uid)
                ]
                if foreign:
                    raise _Reject(ERR_PRODUCT, "App对操作该产品无权限")
                now = time.monotonic()
                for device in ids:
                    if device in sock.subscribed:
                        sock.subscribed[device] = now
                response: dict[str, Any] = {}
            else:
                response = await self._tokenapi(action, inner)
        except _Reject as rej:
            response = {"Error": {"Code": rej.code, "Message": rej.message}}
        response["RequestId"] = request_id
        return tws.reply_frame(req_id, {"Response": response})

    async def _watchdog(self) -> None:
        """Forget replayed-nonce entries that left the timestamp window."""
        while True:
            await asyncio.sleep(max(1.0, self.timestamp_window / 4))
            horizon = time.time() - self.timestamp_window * 2
            for key, seen in list(self._nonces.items()):
                if seen < horizon:
                    del self._nonces[key]

    # ------------------------------------------------------------------ HTTP

    def _answer(self, response: dict[str, Any], request_id: str) -> web.Response:
        response["RequestId"] = request_id
        if self.envelope == "sdk":
            error = response.get("Error")
            body: dict[str, Any] = {
                "code": 1 if error else 0,
                "msg": error["Message"] if error else "",
                "data": response,
            }
        else:
            body = {"Response": response}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def _http(self, request: web.Request) -> web.Response:
        self.stats["http_requests"] += 1
        if self._slow > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._slow)
        request_id = ""
        try:
            try:
                body = orjson.loads(await request.read())
            except orjson.JSONDecodeError:
                raise _Reject(ERR_JSON, "请求格式不是 JSON") from None
            if not isinstance(body, dict):
                raise _Reject(ERR_JSON, "请求格式不是 JSON")
            request_id = str(body.get("RequestId") or "")
            action = (
                body.get("Action") or request.match_info.get("tail") or request.query.get("cmd")
            )
            if not isinstance(action, str) or not action:
                raise _Reject(ERR_MISSING, "Action")
            self.calls.append(action)
            if request.match_info["kind"] == tapi.APPAPI:
                response = self._appapi(action, body)
            else:
                response = await self._tokenapi(action, body)
        except _Reject as rej:
            self.stats[f"error:{rej.code}"] += 1
            response = {"Error": {"Code": rej.code, "Message": rej.message}}
        return self._answer(response, request_id)

    def _check_signature(self, body: Mapping[str, Any]) -> None:
        for key in ("AppKey", "Timestamp", "Nonce", "Signature", "RequestId"):
            if body.get(key) in (None, ""):
                raise _Reject(ERR_MISSING, f"缺少参数 {key}")
        if body["AppKey"] != self.app_key:
            raise _Reject(ERR_APP, "应用未创建或是已删除")
        stamp, nonce = body["Timestamp"], body["Nonce"]
        if not isinstance(stamp, int) or isinstance(stamp, bool):
            raise _Reject(ERR_PARAM, "Timestamp 必须是整数")
        if not isinstance(nonce, int) or isinstance(nonce, bool) or nonce <= 0:
            raise _Reject(ERR_PARAM, "Nonce 必须是正整数")
        if abs(time.time() - stamp) > self.timestamp_window:
            raise _Reject(ERR_TIMESTAMP, "Timestamp 超出有效期")
        if not verify(self.app_secret, body):
            raise _Reject(ERR_SIGNATURE, "签名错误")
        if (stamp, nonce) in self._nonces:
            raise _Reject(ERR_NONCE, "Nonce 已使用")
        self._nonces[(stamp, nonce)] = time.time()

    def _appapi(self, action: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self._check_signature(body)
        if action != "AppGetTokenByWeiXin":
            raise _Reject(ERR_ACTION, "Action 非法")
        open_id = body.get("WxOpenID")
        if not isinstance(open_id, str) or not open_id:
            raise _Reject(ERR_MISSING, "WxOpenID")
        nick = body.get("NickName") or ""
        if not isinstance(nick, str) or len(nick) > 64:
            raise _Reject("InvalidParameterValue.NickNameLengthInvalid", "昵称长度非法")
        if self._refuse_logins:
            if self._refuse_logins > 0:
                self._refuse_logins -= 1
            self.stats["logins_refused"] += 1
            raise _Reject(ERR_LOGIN, "账号不存在")
        user = self.user_for(open_id, nick)
        user.nick = nick or user.nick  # AppGetTokenByWeiXin also updates the profile
        expires = time.time() + self.token_lifetime
        token = SimToken(secrets.token_hex(16), user.uid, expires)
        self.tokens[token.token] = token
        self.stats["logins"] += 1
        return {"Data": {"ExpireAt": math.ceil(expires), "Token": token.token}}

    def _user_of(self, access_token: object) -> SimUser:
        if not isinstance(access_token, str) or not access_token:
            raise _Reject(ERR_TOKEN, "Token 无效")
        token = self.tokens.get(access_token)
        if token is None or token.expires <= time.time():
            raise _Reject(ERR_TOKEN, "Token 无效")
        return self.users[token.uid]

    def _own_device(self, user: SimUser, body: Mapping[str, Any]) -> SimDevice:
        product, name = body.get("ProductId"), body.get("DeviceName")
        if not product or not name:
            raise _Reject(ERR_MISSING, "ProductId/DeviceName")
        dev = self.devices.get(f"{product}/{name}")
        if dev is None or dev.owner != user.uid:
            raise _Reject(ERR_DEVICE, "设备未创建或是已删除")
        return dev

    @staticmethod
    def _page(body: Mapping[str, Any]) -> tuple[int, int]:
        offset, limit = body.get("Offset", 0), body.get("Limit", 20)
        if (
            not isinstance(offset, int)
            or not isinstance(limit, int)
            or offset < 0
            or not 0 < limit <= tapi.MAX_LIMIT
        ):
            raise _Reject(ERR_PARAM, f"Offset/Limit 非法 (Limit 最大值为{tapi.MAX_LIMIT})")
        return offset, limit

    async def _tokenapi(self, action: str, body: Mapping[str, Any]) -> dict[str, Any]:
        user = self._user_of(body.get("AccessToken"))
        handler = _TOKENAPI.get(action)
        if handler is None:
            raise _Reject(ERR_ACTION, "Action 非法")
        result: dict[str, Any] = handler(self, user, body)
        return result

    def _get_user(self, user: SimUser, body: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "Data": {
                "UserID": user.uid,
                "NickName": user.nick,
                "Avatar": "",
                "WxOpenID": user.open_id,
            }
        }

    def _logout(self, user: SimUser, body: Mapping[str, Any]) -> dict[str, Any]:
        self.tokens.pop(str(body.get("AccessToken")), None)
        return {}

    def _family_list(self, user: SimUser, body: Mapping[str, Any]) -> dict[str, Any]:
        offset, limit = self._page(body)
        families = [{"FamilyId": user.family_id, "Name": f"{user.nick}的家", "Role": 1,
                     "CreateTime": 1570786578, "UpdateTime": 1570790807}]  # fmt: skip
        return {"FamilyList": families[offset : offset + limit], "Total": len(families)}

    def _device_list(self, user: SimUser, body: Mapping[str, Any]) -> dict[str, Any]:
        if body.get("FamilyId") in (None, ""):
            raise _Reject(ERR_MISSING, "FamilyId")
        if body["FamilyId"] != user.family_id:
            raise _Reject(ERR_FAMILY, "操作该家庭无权限")
        offset, limit = self._page(body)
        rows = []
        for device in user.devices[offset : offset + limit]:
            dev = self.devices[device]
            rows.append({
                "ProductId": dev.product_id, "DeviceName": dev.name, "DeviceId": dev.device_id,
                "AliasName": dev.alias, "UserID": user.uid, "RoomId": "0", "IconUrl": "",
                "CreateTime": dev.created, "UpdateTime": dev.created,
            })  # fmt: skip
        return {"DeviceList": rows, "Total": len(user.devices)}

    def _statuses(self, user: SimUser, body: Mapping[str, Any]) -> dict[str, Any]:
        ids = body.get("DeviceIds")
        if not isinstance(ids, list):
            raise _Reject(ERR_MISSING, "DeviceIds")
        out = []
        for device in ids:
            dev = self.devices.get(device) if isinstance(device, str) else None
            if dev is not None and dev.owner == user.uid:
                out.append({"DeviceId": dev.device_id, "ProductId": dev.product_id,
                            "DeviceName": dev.name, "Online": 0 if dev.online else 1})  # fmt: skip
        return {"DeviceStatuses": out}

    def _device_data(self, user: SimUser, body: Mapping[str, Any]) -> dict[str, Any]:
        dev = self._own_device(user, body)
        data = {k: {"Value": v, "LastUpdate": dev.updated.get(k, 0)} for k, v in dev.values.items()}
        return {"Data": orjson.dumps(data).decode()}

    def _products(self, user: SimUser, body: Mapping[str, Any]) -> dict[str, Any]:
        ids = body.get("ProductIds")
        if not isinstance(ids, list):
            raise _Reject(ERR_MISSING, "ProductIds")
        out = []
        for pid in ids:
            if pid not in _PRODUCTS:
                continue
            _, name, tpl, as_string = _PRODUCTS[pid]
            out.append({
                "ProductId": pid, "Name": name, "Description": "", "State": "",
                "DataTemplate": orjson.dumps(tpl).decode() if as_string else tpl,
                "AppTemplate": "", "NetType": "wifi", "CategoryId": int(tpl["profile"]["CategoryId"]),
                "ProductType": 0, "UpdateTime": 1600159203,
            })  # fmt: skip
        return {"Products": out}

    @staticmethod
    def _json_object(value: object, what: str) -> dict[str, Any]:
        if isinstance(value, Mapping):
            return dict(value)
        if not isinstance(value, str):
            raise _Reject(ERR_MISSING, what)
        try:
            parsed = orjson.loads(value) if value else {}
        except orjson.JSONDecodeError:
            raise _Reject(ERR_JSON, f"{what} 不是 JSON") from None
        if not isinstance(parsed, dict):
            raise _Reject(ERR_JSON, f"{what} 不是 JSON 对象")
        return parsed

    def _control_device(self, user: SimUser, body: Mapping[str, Any]) -> dict[str, Any]:
        dev = self._own_device(user, body)
        data = self._json_object(body.get("Data"), "Data")
        if not data:
            raise _Reject(ERR_PARAM, "Data 为空")
        schema = dev.schema
        wire: dict[str, Any] = {}
        for key, value in data.items():
            prop = schema.prop(key)
            if prop is None:
                raise _Reject(ERR_PARAM, f"属性 {key} 不存在")
            try:
                wire[key] = denormalize([prop], {key: validate(prop, value)})[key]
            except CommandError as exc:
                raise _Reject(ERR_PARAM, exc.message) from None
        if not dev.online:
            raise _Reject(ERR_OFFLINE, "设备处于离线状态")
        token = f"API-ControlDeviceData-{next(self._seq)}"
        self._push(dev, "Property", "Push", {"method": "control", "clientToken": token, "params": wire},
                   topic=f"$thing/down/property/{dev.product_id}/{dev.name}")  # fmt: skip
        self.stats["controls"] += 1
        self._spawn(self._apply_later(dev.device_id, wire, token))
        return {"Data": ""}

    async def _apply_later(self, device: str, wire: dict[str, Any], token: str) -> None:
        await asyncio.sleep(self.latency)
        self.report(device, wire, client_token=token)

    def _action(self, user: SimUser, body: Mapping[str, Any], *, sync: bool) -> dict[str, Any]:
        dev = self._own_device(user, body)
        action_id = body.get("ActionId")
        spec = dev.schema.action(action_id) if isinstance(action_id, str) else None
        if spec is None:
            raise _Reject(ERR_PARAM, f"行为 {action_id} 不存在")
        inputs = self._json_object(body.get("InputParams", "{}"), "InputParams")
        by_id = {p.id: p for p in spec.input}
        for key, value in inputs.items():
            if key not in by_id:
                raise _Reject(ERR_PARAM, f"输入参数 {key} 不存在")
            try:
                validate(by_id[key], value, writing=False)
            except CommandError as exc:
                raise _Reject(ERR_PARAM, exc.message) from None
        if not dev.online:
            raise _Reject(ERR_OFFLINE, "设备处于离线状态")
        client_token = f"{user.uid}::{body.get('RequestId') or next(self._seq)}"
        output = {"result": 1}
        self.stats["actions"] += 1
        if sync:
            return {
                "ClientToken": client_token,
                "OutputParams": orjson.dumps(output).decode(),
                "Status": "succ",
            }
        self._spawn(self._action_later(dev, spec.id, inputs, client_token, output))
        return {"ClientToken": client_token, "Status": "Sent"}

    async def _action_later(
        self,
        dev: SimDevice,
        action_id: str,
        inputs: dict[str, Any],
        client_token: str,
        output: dict[str, Any],
    ) -> None:
        self._push(dev, "Action", "Push", {"method": "action", "clientToken": client_token, "actionId": action_id,
                                           "timestamp": _now_ms() // 1000, "params": inputs})  # fmt: skip
        await asyncio.sleep(self.latency)
        self._push(dev, "Action", "Report", {"method": "action_reply", "clientToken": client_token, "code": 0,
                                             "status": "succ", "response": output})  # fmt: skip

    # ------------------------------------------------------------------ faults

    def drop_sockets(self) -> int:
        """Abort every WebSocket without a close handshake."""
        n = len(self.sockets)
        for sock in list(self.sockets):
            sock.conn.transport.abort()
        self.stats["dropped"] += n
        return n

    def stall(self, seconds: float) -> None:
        self._stall_until = asyncio.get_running_loop().time() + seconds

    def garble(self, count: int = 1) -> None:
        self._garble += count

    def expire_tokens(self) -> int:
        now = time.time()
        for token in self.tokens.values():
            token.expires = min(token.expires, now)
        return len(self.tokens)

    def refuse_logins(self, count: int = -1) -> None:
        """Refuse the next ``count`` logins (``-1``: all of them until called with ``0``)."""
        self._refuse_logins = count

    def slow(self, seconds: float) -> None:
        self._slow = max(0.0, seconds)

    def heartbeat_errors(self, count: int = 1) -> None:
        self._heartbeat_errors = count

    async def _state(self, request: web.Request) -> web.Response:
        state = {
            "stats": dict(self.stats),
            "sockets": len(self.sockets),
            "subscribed": sorted({d for s in self.sockets for d in s.subscribed}),
            "users": len(self.users),
            "devices": {
                d: {"online": v.online, "values": v.values} for d, v in self.devices.items()
            },
        }
        return web.Response(body=orjson.dumps(state), content_type="application/json")

    async def _control(self, request: web.Request) -> web.Response:
        return await control_response(request, {
            "drop": self.drop_sockets,
            "stall": lambda seconds=5: self.stall(float(seconds)),
            "garble": lambda count=1: self.garble(int(count)),
            "expire_tokens": self.expire_tokens,
            "refuse_logins": lambda count=-1: self.refuse_logins(int(count)),
            "slow": lambda seconds=5: self.slow(float(seconds)),
            "heartbeat_errors": lambda count=1: self.heartbeat_errors(int(count)),
            "report": lambda device, props: self.report(str(device), dict(props)),
            "event": lambda device, event, params=None: self.event(
                str(device), str(event), dict(params or {})),
            "online": lambda device: self.set_online(str(device), True),
            "offline": lambda device: self.set_online(str(device), False),
        })  # fmt: skip


_TOKENAPI: Final[dict[str, Any]] = {
    "AppGetUser": TencentCloud._get_user,
    "AppLogoutUser": TencentCloud._logout,
    "AppGetFamilyList": TencentCloud._family_list,
    "AppGetFamilyDeviceList": TencentCloud._device_list,
    "AppGetDeviceStatuses": TencentCloud._statuses,
    "AppGetDeviceData": TencentCloud._device_data,
    "AppGetProducts": TencentCloud._products,
    "AppControlDeviceData": TencentCloud._control_device,
    "AppCallDeviceActionSync": lambda self, user, body: self._action(user, body, sync=True),
    "AppCallDeviceActionAsync": lambda self, user, body: self._action(user, body, sync=False),
}


# ---------------------------------------------------------------------- demo and CLI


def demo_cloud(devices: int = 4) -> TencentCloud:
    """The emulator as ``cloud2mqtt demo`` runs it: a push every second, ports picked freely."""
    return TencentCloud(devices=devices, rate=1.0)


def account_config(cloud: TencentCloud, name: str = "demo", **overrides: Any) -> dict[str, Any]:
    return cloud.account_config(name, **overrides)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091, help="HTTP (appapi/tokenapi) port")
    parser.add_argument(
        "--ws-port", type=int, default=None, help="WebSocket port (default: --port + 1)"
    )
    parser.add_argument("--app-key", default="c2m-demo-appkey")
    parser.add_argument("--app-secret", default="c2m-demo-appsecret")
    parser.add_argument("--open-id", default="c2m-demo-user", help="WxOpenID of the default user")
    parser.add_argument("--devices", type=int, default=4, help="devices per user")
    parser.add_argument(
        "--token-lifetime", type=float, default=7200.0, help="AccessToken lifetime, seconds"
    )
    parser.add_argument(
        "--timestamp-window", type=float, default=300.0, help="accepted appapi clock skew, seconds"
    )
    parser.add_argument("--trace-timeout", type=float, default=90.0,
                        help="stop pushing a device whose trace heartbeat is older (seconds)")  # fmt: skip
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=180.0,
        help="close a socket silent this long (seconds)",
    )
    parser.add_argument(
        "--rate", type=float, default=1.0, help="random pushes per second per user (0: none)"
    )
    parser.add_argument(
        "--max-rate", action="store_true", help="send reports as fast as each socket drains"
    )
    parser.add_argument(
        "--latency", type=float, default=0.02, help="device reaction time to a control, seconds"
    )
    parser.add_argument("--envelope", choices=["response", "sdk"], default="response",
                        help="HTTP reply envelope: the seed's Response or the JS SDK's code/msg/data")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)


async def serve(args: argparse.Namespace) -> None:
    cloud = TencentCloud(
        args.host,
        args.port,
        ws_port=args.ws_port if args.ws_port is not None else (args.port + 1 if args.port else 0),
        app_key=args.app_key,
        app_secret=args.app_secret,
        open_id=args.open_id,
        devices=args.devices,
        token_lifetime=args.token_lifetime,
        timestamp_window=args.timestamp_window,
        trace_timeout=args.trace_timeout,
        idle_timeout=args.idle_timeout,
        rate=args.rate,
        max_rate=args.max_rate,
        latency=args.latency,
        envelope=args.envelope,
        seed=args.seed,
    )
    await serve_forever(cloud, cloud.account_config)
