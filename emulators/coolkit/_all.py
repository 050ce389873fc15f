"""An emulated CoolKit / eWeLink cloud (API v2, seed 001, and v1, seed 003), for the demo and the tests.

It serves what the seeds describe, *as the server would*, with the shared codec
(``protocols.coolkit``):

- HTTP (aiohttp) on ``--port``, every region under a path prefix: ``http://host:port/{region}``
  stands for ``https://{region}-apia.coolkit.cc`` (v2), ``https://{region}-dispa.coolkit.cc``
  and ``https://{region}-api.coolkit.cc:8080`` (v1) alike. Regions: ``cn as us eu test``.
- WebSocket (websockets) on ``--ws-port``; ``/dispatch/app`` hands out ``{domain, port}`` of it.

What it checks:

- Every ``Sign`` signature (v2: HMAC of the exact body bytes; v1 GET: of the sorted ``k=v&…``
  canonical string), the ``X-CK-Appid`` of user endpoints, the v1 ``appid/nonce/ts/version``
  fields, and every ``Bearer`` token. Codes: bad APPID or signature ``406`` (seed FAQ: "failed
  to pass authorization"), missing fields ``400``, unknown/invalidated ``at`` ``401``, expired
  ``at`` ``402``, unknown ``rt`` ``405`` (v2, the field's "can't find the account with this rt")
  or ``402`` (v1: rt失效), wrong password ``10001``/v1 ``401``, no such user ``10003``/v1 ``404``,
  wrong region ``10004`` + ``data.region`` / v1 ``301`` + ``region``. A token works only in the
  region of its account (``401`` elsewhere).
- One live session per account and app: a login issues new ``at``/``rt`` and invalidates the old
  ones; sockets opened with them get ``{"error":406,…}`` and are closed ("session taken").
- ``userOnline``: ``at``, ``apikey``, ``appid``, ``nonce``, ``userAgent``, ``sequence`` required
  (``ts`` and ``version`` optional: the official ``ewelink-api-next`` omits them and the live
  server accepts that); the reply's heartbeat flag is ``hb`` for v2 sessions and ``hbl`` for v1.
- Heartbeats: a socket silent for ``hb_interval + hb_grace`` seconds is dropped (the field sees
  ~160 s with ``hbInterval`` 145); ``ping`` → ``pong``.
- Commands: ``sequence`` must increase strictly per connection (else ``400``); the ``apikey``
  must be the owner's, plus ``selfApikey`` for a shared device (else ``406``); an offline device
  answers ``504`` (seed: "the device does not respond (offline or command error)").
- Rate rules, per client IP, as the seed states them: ≥ ``rate_min_interval`` (0.5 s) between
  calls to the same interface, ≤ ``rate_max_calls`` (300) per ``rate_window`` (300 s), and no
  ``userOnline`` for the same account within ``user_online_interval`` seconds. The seed names no
  error code, so we answer ``429`` (``protocols.coolkit.rest.RATE_LIMITED``) in the JSON
  ``error`` field (HTTP 200 on REST; the handshake reply, then close, on the WebSocket). Every
  violation is counted in ``violations``.
- Thing list paging: ``num`` default 30, ``0`` = all, ``beginIndex`` default -9999999; asking for
  more than 30 at once when there are more than 30 things fails with ``500`` (the seed's warning).

Misbehaviour, in-process or by ``POST /_control/<fault>`` with a JSON body:
``drop`` (abort every socket), ``stall`` (current sockets go silent: no pong, no replies, no
pushes), ``garble`` ``{"count":1}`` (send unparsable frames now), ``never_answer`` ``{"count":1}``
(commands get no reply), ``fail_504`` ``{"count":1}``, ``expire_tokens``, ``kick``
``{"email":…}`` (another login takes the session), ``push`` ``{"deviceid","params"}``,
``set_online`` ``{"deviceid","online"}``, ``reset``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import secrets
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl

import orjson
from aiohttp import web
from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed

from protocols.coolkit.rest import RATE_LIMITED
from protocols.coolkit.sign import Signer, canonical_query

from ..base import SimulatedCloud, add_common_arguments, control_response, serve_forever

__all__ = ["CoolkitCloud", "add_arguments", "demo_cloud", "serve"]

log = logging.getLogger("cloud2mqtt.sim.coolkit")

REGIONS = ("cn", "as", "us", "eu", "test")
Version = Literal[1, 2]


class _Reject(Exception):
    def __init__(self, code: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


@dataclass
class SimUser:
    email: str
    password: str
    region: str
    country_code: str = "+1"
    phone: str | None = None
    apikey: str = field(default_factory=lambda: str(uuid.uuid4()))
    family_id: str = field(default_factory=lambda: secrets.token_hex(12))

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"apikey": self.apikey, "email": self.email, "countryCode": self.country_code}
        if self.phone:
            out["phoneNumber"] = self.phone
        return out


@dataclass
class SimDevice:
    deviceid: str
    uiid: int
    name: str
    owner: str  # apikey
    params: dict[str, Any]
    online: bool = True
    shared_to: set[str] = field(default_factory=set)
    model: str = ""
    tags: dict[str, Any] = field(default_factory=dict)
    index: int = 0
    devicekey: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class SimGroup:
    id: str
    name: str
    owner: str
    members: list[str]
    params: dict[str, Any]
    index: int = 0


@dataclass
class SimSession:
    user: SimUser
    appid: str
    version: Version
    at: str
    rt: str
    at_expires: float
    rt_expires: float
    valid: bool = True


@dataclass
class _Conn:
    ws: ServerConnection
    session: SimSession | None = None
    last_seq: int = -1
    stalled: bool = False


class CoolkitCloud(SimulatedCloud):
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        ws_port: int = 0,
        *,
        appid: str = "cloud2mqtt-demo-appid-0000000000",
        app_secret: str = "cloud2mqtt-demo-secret-000000000",
        hb_interval: float = 145.0,
        hb_grace: float = 15.0,
        at_ttl: float = 30 * 86400.0,
        rt_ttl: float = 60 * 86400.0,
        rate_min_interval: float = 0.5,
        rate_window: float = 300.0,
        rate_max_calls: int = 300,
        user_online_interval: float = 10.0,
        push_interval: float | None = None,
        extra_devices: int = 0,
        demo: bool = True,
        seed: int = 0,
    ) -> None:
        self.host = host
        self.port = port
        self.ws_port = ws_port
        self.apps: dict[str, Signer] = {appid: Signer(app_secret)}
        self.appid = appid
        self.app_secret = app_secret
        self.hb_interval = hb_interval
        self.hb_grace = hb_grace
        self.at_ttl = at_ttl
        self.rt_ttl = rt_ttl
        self.rate_min_interval = rate_min_interval
        self.rate_window = rate_window
        self.rate_max_calls = rate_max_calls
        self.user_online_interval = user_online_interval
        self.push_interval = push_interval
        self.rng = random.Random(seed)
        self.users: dict[str, SimUser] = {}
        self.devices: dict[str, SimDevice] = {}
        self.groups: dict[str, SimGroup] = {}
        self.sessions: dict[tuple[str, str], SimSession] = {}
        self._by_at: dict[str, SimSession] = {}
        self._by_rt: dict[str, SimSession] = {}
        self.conns: list[_Conn] = []
        # Observability for tests.
        self.violations: list[str] = []
        self.calls: list[tuple[float, str]] = []
        self.logins: list[str] = []
        self.handshakes: list[tuple[float, str, int]] = []  # (t, apikey, error)
        self.commands: list[dict[str, Any]] = []
        # Faults.
        self._never_answer = 0
        self._fail_504 = 0
        # Rate state (one client IP in practice: the tests' 127.0.0.1).
        self._last_call: dict[tuple[str, str], float] = {}
        self._window: dict[str, deque[float]] = {}
        self._last_online: dict[str, float] = {}
        self._runner: web.AppRunner | None = None
        self._ws_server: Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        if demo:
            self._demo(extra_devices)

    # ------------------------------------------------------------------ population

    def add_user(self, email: str, password: str, region: str = "eu", country_code: str = "+1",
                 phone: str | None = None) -> SimUser:  # fmt: skip
        user = SimUser(email, password, region, country_code, phone)
        self.users[email] = user
        return user

    def add_device(self, deviceid: str, uiid: int, name: str, owner: SimUser, params: dict[str, Any],
                   *, online: bool = True, shared_to: tuple[SimUser, ...] = (), model: str = "",
                   tags: dict[str, Any] | None = None) -> SimDevice:  # fmt: skip
        dev = SimDevice(deviceid, uiid, name, owner.apikey, dict(params), online,
                        {u.apikey for u in shared_to}, model, dict(tags or {}), len(self.devices))  # fmt: skip
        self.devices[deviceid] = dev
        return dev

    def add_group(self, gid: str, name: str, owner: SimUser, members: list[str]) -> SimGroup:
        group = SimGroup(gid, name, owner.apikey, list(members), {"switch": "off"}, 1000 + len(self.groups))
        self.groups[gid] = group
        return group

    def remove_device(self, deviceid: str) -> None:
        self.devices.pop(deviceid, None)

    def _demo(self, extra: int) -> None:
        demo = self.add_user("demo@example.com", "demo-pass", "eu", "+44")
        owner = self.add_user("owner@example.com", "owner-pass", "eu", "+44")
        self.add_user("asia@example.com", "asia-pass", "as", "+65")
        sw = {"startup": "off", "rssi": -50, "fwVersion": "3.5.0", "sledOnline": "on"}
        self.add_device("1000000001", 1, "Desk lamp", demo, {"switch": "off", **sw}, model="BASIC R2")
        self.add_device(
            "1000000002", 2, "Kitchen 2CH", demo,
            {"switches": [{"switch": "off", "outlet": i} for i in range(4)], "rssi": -61, "fwVersion": "3.5.0"},
            model="DUAL R2", tags={"ck_channel_name": {"0": "Hob light", "1": "Extractor"}},
        )  # fmt: skip
        self.add_device(
            "1000000003", 104, "Living bulb", demo,
            {"switch": "on", "ltype": "white", "white": {"br": 80, "ct": 120},
             "color": {"r": 255, "g": 255, "b": 255, "br": 100}, "fwVersion": "1.2.0"},
            model="B05-B-A60",
        )  # fmt: skip
        self.add_device(
            "1000000004", 15, "Greenhouse TH16", demo,
            {"switch": "off", "mainSwitch": "off", "deviceType": "normal", "currentTemperature": "21.5",
             "currentHumidity": "48", "sensorType": "AM2301", "rssi": -70},
            model="TH16",
        )  # fmt: skip
        self.add_device(
            "1000000005", 32, "Washer POWR2", demo,
            {"switch": "on", "startup": "stay", "power": "512.30", "voltage": "230.10", "current": "2.23"},
            model="POWR2",
        )  # fmt: skip
        self.add_device("1000000006", 6, "Garden pump", demo, {"switch": "off", **sw}, online=False)
        self.add_device("1000000007", 9999, "Mystery gadget", demo, {"foo": "bar", "level": 3})
        self.add_device("10000000a1", 6, "Neighbour's switch", owner, {"switch": "off", **sw}, shared_to=(demo,))
        self.add_group("g-lights", "All lamps", demo, ["1000000001", "1000000006"])
        for i in range(extra):
            self.add_device(f"20{i:08x}", 1, f"Switch {i}", demo, {"switch": "off", **sw})

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._ws_server = await ws_serve(self._ws_handler, self.host, self.ws_port, compression=None)
        self.ws_port = self._ws_server.sockets[0].getsockname()[1] if self._ws_server.sockets else self.ws_port
        app = web.Application()
        app.router.add_post("/_control/{fault}", self._control)
        app.router.add_route("*", "/{region}/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            server: Any = site._server
            self.port = server.sockets[0].getsockname()[1]
        if self.push_interval:
            self._tasks.append(asyncio.create_task(self._pusher(self.push_interval)))
        log.info("coolkit emulator on %s (WebSocket port %d)", self.url, self.ws_port)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for conn in list(self.conns):
            conn.ws.transport.abort()
        if self._ws_server is not None:
            self._ws_server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws_server.wait_closed(), 2)
        if self._runner is not None:
            await self._runner.cleanup()

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
        cfg: dict[str, Any] = {
            "vendor": "coolkit",
            "name": name,
            "app_id": self.appid,
            "app_secret": self.app_secret,
            "api_version": version,
            "region": region or user.region,
            "api_url": base,
            "dispatch_url": base,
            "v1_api_url": base,
            "rate_min_interval": self.rate_min_interval,
            "rate_window": self.rate_window,
            "rate_max_calls": self.rate_max_calls,
            "user_online_interval": self.user_online_interval,
        }
        if oauth:
            sess = self._new_session(user, self.appid, version)
            cfg.update({"at": sess.at, "rt": sess.rt})
        else:
            cfg.update({"email": email, "password": user.password, "country_code": user.country_code})
        cfg.update(overrides)
        return cfg

    # ------------------------------------------------------------------ faults and events

    def drop(self) -> None:
        for conn in list(self.conns):
            conn.ws.transport.abort()

    def stall(self) -> None:
        for conn in self.conns:
            conn.stalled = True

    async def garble(self, count: int = 1) -> None:
        for conn in list(self.conns):
            if conn.session is not None and not conn.stalled:
                for _ in range(count):
                    with contextlib.suppress(ConnectionClosed):
                        await conn.ws.send('{"action":"update","deviceid":')

    def never_answer(self, count: int = 1) -> None:
        self._never_answer += count

    def fail_504(self, count: int = 1) -> None:
        self._fail_504 += count

    def expire_tokens(self) -> None:
        for sess in self.sessions.values():
            sess.at_expires = 0.0

    async def kick(self, email: str = "demo@example.com") -> None:
        """Another client logs in to the same account and app: the session is taken."""
        await self._take_over(self._new_session(self.users[email], self.appid, 2))

    async def push(self, deviceid: str, params: dict[str, Any]) -> None:
        dev = self.devices[deviceid]
        self._apply(dev, params)
        await self._broadcast(dev, {"action": "update", "deviceid": deviceid, "apikey": dev.owner,
                                    "userAgent": "device", "params": params, "from": "device"})  # fmt: skip

    async def set_online(self, deviceid: str, online: bool) -> None:
        dev = self.devices[deviceid]
        dev.online = online
        await self._broadcast(dev, {"action": "sysmsg", "deviceid": deviceid, "apikey": dev.owner,
                                    "ts": int(time.time()), "params": {"online": online}})  # fmt: skip

    def reset(self) -> None:
        self._never_answer = self._fail_504 = 0
        for conn in self.conns:
            conn.stalled = False

    async def _control(self, request: web.Request) -> web.Response:
        return await control_response(request, {
            "drop": self.drop,
            "stall": self.stall,
            "expire_tokens": self.expire_tokens,
            "reset": self.reset,
            "never_answer": lambda count=1: self.never_answer(int(count)),
            "fail_504": lambda count=1: self.fail_504(int(count)),
            "garble": lambda count=1: self.garble(int(count)),
            "kick": lambda email="demo@example.com": self.kick(str(email)),
            "push": lambda deviceid, params: self.push(str(deviceid), dict(params)),
            "set_online": lambda deviceid, online: self.set_online(str(deviceid), bool(online)),
        })  # fmt: skip

    async def _pusher(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            for dev in list(self.devices.values()):
                if not dev.online:
                    continue
                if "currentTemperature" in dev.params:
                    t = round(float(dev.params["currentTemperature"]) + self.rng.uniform(-0.3, 0.3), 1)
                    await self.push(dev.deviceid, {"currentTemperature": str(t)})
                elif "power" in dev.params and dev.params.get("switch") == "on":
                    await self.push(dev.deviceid, {"power": f"{self.rng.uniform(400, 600):.2f}"})

    # ------------------------------------------------------------------ sessions

    def _new_session(self, user: SimUser, appid: str, version: Version) -> SimSession:
        now = time.monotonic()
        old = self.sessions.get((user.apikey, appid))
        if old is not None:
            old.valid = False
        sess = SimSession(user, appid, version, secrets.token_hex(20), secrets.token_hex(20),
                          now + self.at_ttl, now + self.rt_ttl)  # fmt: skip
        self.sessions[(user.apikey, appid)] = sess
        self._by_at[sess.at] = sess
        self._by_rt[sess.rt] = sess
        return sess

    async def _take_over(self, new: SimSession) -> None:
        for conn in list(self.conns):
            sess = conn.session
            if sess is not None and sess is not new and sess.user is new.user and sess.appid == new.appid:
                with contextlib.suppress(ConnectionClosed):
                    await conn.ws.send(orjson.dumps({"error": 406, "reason": "Authentication Failed",
                                                     "apikey": sess.user.apikey}).decode())  # fmt: skip
                    await conn.ws.close(1000, "logged in elsewhere")

    def _bearer(self, request: web.Request, region: str) -> SimSession:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            raise _Reject(401, "missing access token")
        sess = self._by_at.get(auth[7:])
        if sess is None or not sess.valid or self.sessions.get((sess.user.apikey, sess.appid)) is not sess:
            raise _Reject(401, "cannot found access token info")
        if sess.at_expires <= time.monotonic():
            raise _Reject(402, "access token expired")
        if sess.user.region != region:
            raise _Reject(401, f"token belongs to region {sess.user.region}")
        return sess

    # ------------------------------------------------------------------ rate rules

    def _rate(self, ip: str, endpoint: str) -> None:
        now = time.monotonic()
        self.calls.append((now, endpoint))
        last = self._last_call.get((ip, endpoint))
        self._last_call[(ip, endpoint)] = now
        window = self._window.setdefault(ip, deque())
        while window and window[0] <= now - self.rate_window:
            window.popleft()
        window.append(now)
        if last is not None and now - last < self.rate_min_interval:
            self.violations.append(f"{endpoint}: {now - last:.3f}s after the previous call")
            raise _Reject(RATE_LIMITED, f"calls to {endpoint} must be {self.rate_min_interval:g}s apart")
        if len(window) > self.rate_max_calls:
            self.violations.append(f"{endpoint}: {len(window)} calls in {self.rate_window:g}s")
            raise _Reject(RATE_LIMITED, f"more than {self.rate_max_calls} calls in {self.rate_window:g}s")

    # ------------------------------------------------------------------ HTTP

    async def _handle(self, request: web.Request) -> web.Response:
        region = request.match_info["region"]
        path = "/" + request.match_info["tail"]
        body = await request.read()
        version: Version = 1 if path.startswith("/api/") else 2
        if path == "/dispatch/app":
            version = 1 if request.method == "POST" else 2
        try:
            if region not in REGIONS:
                raise _Reject(403, f"unknown region {region!r}")
            self._rate(request.remote or "?", f"{request.method} {path}")
            handler = _ROUTES.get((request.method, path))
            if handler is None:
                raise _Reject(403, "api not found")
            data = await handler(self, request, region, body)
        except _Reject as rej:
            if version == 1:
                doc: dict[str, Any] = {"error": rej.code, "errmsg": rej.message, **rej.extra}
            else:
                doc = {"error": rej.code, "msg": rej.message, "data": rej.extra}
            return web.Response(body=orjson.dumps(doc), content_type="application/json")
        if version == 1 or path == "/dispatch/app":
            return web.Response(body=orjson.dumps({"error": 0, **data}), content_type="application/json")
        return web.Response(body=orjson.dumps({"error": 0, "msg": "", "data": data}), content_type="application/json")

    def _signed(self, request: web.Request, appid: str | None, message: bytes) -> None:
        signer = self.apps.get(appid or "")
        if signer is None:
            raise _Reject(406, "appid is unauthorized")
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Sign ") or not signer.verify(message, auth[5:]):
            raise _Reject(406, "sign verification failed")

    @staticmethod
    def _json(body: bytes) -> dict[str, Any]:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _Reject(400, "body is not JSON") from None
        if not isinstance(doc, dict):
            raise _Reject(400, "body is not an object")
        return doc

    def _login_user(self, doc: Mapping[str, Any], region: str, version: Version) -> SimUser:
        phone, email = doc.get("phoneNumber"), doc.get("email")
        password = doc.get("password")
        if not isinstance(password, str) or not (phone or email) or (version == 2 and not doc.get("countryCode")):
            raise _Reject(400, "missing parameters")
        user = None
        for u in self.users.values():
            if (phone and u.phone == phone) or (not phone and email and u.email.lower() == str(email).lower()):
                user = u
        if user is None:
            raise _Reject(10003 if version == 2 else 404, "user does not exist")
        if user.region != region:
            if version == 2:
                raise _Reject(10004, "redirection", region=user.region)
            raise _Reject(301, "user is in another region", region=user.region)
        if user.password != password:
            raise _Reject(10001 if version == 2 else 401, "incorrect password")
        return user

    @staticmethod
    def _v1_fields(doc: Mapping[str, Any]) -> None:
        if not all(k in doc for k in ("appid", "nonce", "ts", "version")) or str(doc.get("version")) != "8":
            raise _Reject(406, "incomplete parameters (appid, nonce, ts, version: 8)")

    async def _login_v2(self, request: web.Request, region: str, body: bytes) -> dict[str, Any]:
        self._signed(request, request.headers.get("X-CK-Appid"), body)
        user = self._login_user(self._json(body), region, 2)
        sess = self._new_session(user, request.headers["X-CK-Appid"], 2)
        self.logins.append(user.email)
        await self._take_over(sess)
        return {"user": user.record(), "at": sess.at, "rt": sess.rt, "region": user.region}

    async def _login_v1(self, request: web.Request, region: str, body: bytes) -> dict[str, Any]:
        doc = self._json(body)
        self._v1_fields(doc)
        self._signed(request, str(doc["appid"]), body)
        user = self._login_user(doc, region, 1)
        sess = self._new_session(user, str(doc["appid"]), 1)
        self.logins.append(user.email)
        await self._take_over(sess)
        return {"user": user.record(), "at": sess.at, "rt": sess.rt, "region": user.region}

    def _rotate(self, sess: SimSession) -> SimSession:
        """Refresh: a new ``at`` and a new ``rt`` (the ``rt`` rotates); sockets stay up."""
        sess.valid = False
        new = SimSession(sess.user, sess.appid, sess.version, secrets.token_hex(20), secrets.token_hex(20),
                         time.monotonic() + self.at_ttl, time.monotonic() + self.rt_ttl)  # fmt: skip
        self.sessions[(sess.user.apikey, sess.appid)] = new
        self._by_at[new.at] = new
        self._by_rt[new.rt] = new
        for conn in self.conns:
            if conn.session is sess:
                conn.session = new
        return new

    def _refresh_session(self, rt: Any, code: int) -> SimSession:
        sess = self._by_rt.get(rt) if isinstance(rt, str) else None
        if sess is None or not sess.valid or self.sessions.get((sess.user.apikey, sess.appid)) is not sess:
            raise _Reject(code, "can't find the account with this rt!")
        if sess.rt_expires <= time.monotonic():
            raise _Reject(code, "refresh token expired")
        return self._rotate(sess)

    async def _refresh_v2(self, request: web.Request, region: str, body: bytes) -> dict[str, Any]:
        if request.headers.get("Authorization", "").startswith("Sign "):
            self._signed(request, request.headers.get("X-CK-Appid"), body)
        else:
            self._bearer_any(request)
        new = self._refresh_session(self._json(body).get("rt"), 405)
        return {"at": new.at, "rt": new.rt}

    def _bearer_any(self, request: web.Request) -> None:
        auth = request.headers.get("Authorization", "")
        sess = self._by_at.get(auth[7:]) if auth.startswith("Bearer ") else None
        if sess is None:
            raise _Reject(401, "missing or unknown token")

    async def _refresh_v1(self, request: web.Request, region: str, body: bytes) -> dict[str, Any]:
        query = dict(parse_qsl(request.query_string, keep_blank_values=True))
        self._v1_fields(query)
        if query.get("grantType") != "refresh":
            raise _Reject(400, "grantType must be refresh")
        self._signed(request, query["appid"], canonical_query(query).encode())
        new = self._refresh_session(query.get("rt"), 402)
        return {"at": new.at, "rt": new.rt, "user": new.user.record(), "region": new.user.region}

    async def _family(self, request: web.Request, region: str, body: bytes) -> dict[str, Any]:
        sess = self._bearer(request, region)
        fid = sess.user.family_id
        return {"familyList": [{"id": fid, "apikey": sess.user.apikey, "name": "My Home", "index": 0,
                                "roomList": []}], "currentFamilyId": fid}  # fmt: skip

    def _visible(self, apikey: str) -> list[SimDevice]:
        return [d for d in self.devices.values() if d.owner == apikey or apikey in d.shared_to]

    def _device_record(self, dev: SimDevice, version: Version) -> dict[str, Any]:
        extra = {"uiid": dev.uiid, "model": dev.model or "PSF-B01-GL", "ui": "", "manufacturer": "emulated"}
        rec: dict[str, Any] = {
            "name": dev.name, "deviceid": dev.deviceid, "apikey": dev.owner, "online": dev.online,
            "params": dev.params, "devicekey": dev.devicekey, "productModel": dev.model, "brandName": "SONOFF",
            "tags": dev.tags,
        }  # fmt: skip
        if version == 1:
            rec["extra"] = {"extra": extra}
            rec["uiid"] = dev.uiid
        else:
            rec["extra"] = extra
        return rec

    async def _things(self, request: web.Request, region: str, body: bytes) -> dict[str, Any]:
        sess = self._bearer(request, region)
        me = sess.user.apikey
        items: list[dict[str, Any]] = []
        for dev in self._visible(me):
            item_type = 1 if dev.owner == me else 2
            rec = self._device_record(dev, 2)
            if item_type == 2:
                rec["sharedBy"] = {"apikey": dev.owner, "permit": 15}
            items.append({"itemType": item_type, "itemData": rec, "index": dev.index})
        for group in self.groups.values():
            if group.owner == me:
                data = {"id": group.id, "name": group.name, "mainDeviceId": group.members[0] if group.members else "",
                        "params": group.params, "family": {"familyid": sess.user.family_id, "index": group.index}}  # fmt: skip
                items.append({"itemType": 3, "itemData": data, "index": group.index})
        items.sort(key=lambda i: i["index"])
        try:
            num = int(request.query.get("num", 30))
            begin = int(request.query.get("beginIndex", -9999999))
        except ValueError:
            raise _Reject(400, "num and beginIndex must be integers") from None
        if (num == 0 or num > 30) and len(items) > 30:
            raise _Reject(500, "too much data: page with beginIndex")
        page = [i for i in items if i["index"] >= begin]
        if num:
            page = page[:num]
        return {"thingList": page, "total": len(items)}

    async def _group_status(self, request: web.Request, region: str, body: bytes) -> dict[str, Any]:
        sess = self._bearer(request, region)
        doc = self._json(body)
        params = doc.get("params")
        if doc.get("type") not in (1, 2) or not isinstance(doc.get("id"), str) or not isinstance(params, dict):
            raise _Reject(400, "type, id and params are required")
        if doc["type"] == 2:
            group = self.groups.get(doc["id"])
            if group is None or group.owner != sess.user.apikey:
                raise _Reject(405, "group not found")
            group.params.update(params)
            for did in group.members:
                dev = self.devices.get(did)
                if dev is not None and dev.online:  # offline members are skipped, as the seed says
                    await self.push(did, params)
            return {}
        dev = self.devices.get(doc["id"])
        if dev is None or dev not in self._visible(sess.user.apikey):
            raise _Reject(405, "device not found")
        if not dev.online:
            raise _Reject(4002, "device offline")
        await self.push(dev.deviceid, params)
        return {}

    async def _v1_devices(self, request: web.Request, region: str, body: bytes) -> dict[str, Any]:
        self._v1_fields(request.query)
        sess = self._bearer(request, region)
        return {"devicelist": [self._device_record(d, 1) for d in self._visible(sess.user.apikey)]}

    def _dispatch_reply(self) -> dict[str, Any]:
        return {"port": self.ws_port, "IP": self.host, "reason": "ok", "domain": self.host}

    async def _dispatch_v2(self, request: web.Request, region: str, body: bytes) -> dict[str, Any]:
        # EN seed: "Authorization parameter: Token"; the ZH docs say none, and the official client
        # sends none. A token that *is* sent must be valid.
        if request.headers.get("Authorization"):
            self._bearer(request, region)
        return self._dispatch_reply()

    async def _dispatch_v1(self, request: web.Request, region: str, body: bytes) -> dict[str, Any]:
        doc = self._json(body)
        self._v1_fields(doc)
        if doc.get("accept") != "ws":
            raise _Reject(400, "accept must be ws")
        self._bearer(request, region)
        return self._dispatch_reply()

    # ------------------------------------------------------------------ WebSocket

    async def _ws_handler(self, ws: ServerConnection) -> None:
        if ws.request is None or ws.request.path.split("?")[0] != "/api/ws":
            await ws.close(1008, "path must be /api/ws")
            return
        conn = _Conn(ws)
        self.conns.append(conn)
        try:
            if await self._ws_handshake(conn):
                await self._ws_loop(conn)
        except ConnectionClosed:
            pass
        finally:
            self.conns.remove(conn)

    async def _ws_send(self, conn: _Conn, doc: Mapping[str, Any]) -> None:
        if not conn.stalled:
            with contextlib.suppress(ConnectionClosed):
                await conn.ws.send(orjson.dumps(doc).decode())

    async def _ws_handshake(self, conn: _Conn) -> bool:
        try:
            raw = await asyncio.wait_for(conn.ws.recv(), self.hb_interval + self.hb_grace)
        except TimeoutError:
            await conn.ws.close(1000, "no handshake")
            return False
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            doc = None
        seq = doc.get("sequence") if isinstance(doc, dict) else None

        async def refuse(code: int, reason: str, apikey: Any = None) -> bool:
            self.handshakes.append((time.monotonic(), str(apikey), code))
            await self._ws_send(conn, {"error": code, "reason": reason, "apikey": apikey, "sequence": seq,
                                       "actionName": "userOnline"})  # fmt: skip
            await conn.ws.close(1000, reason)
            return False

        if not isinstance(doc, dict) or doc.get("action") != "userOnline":
            return await refuse(400, "first frame must be userOnline")
        required = ("at", "apikey", "appid", "nonce", "userAgent", "sequence")
        if any(not isinstance(doc.get(k), str) or not doc.get(k) for k in required):
            return await refuse(400, "incomplete parameters", doc.get("apikey"))
        sess = self._by_at.get(doc["at"])
        if (
            doc["appid"] not in self.apps
            or sess is None
            or not sess.valid
            or self.sessions.get((sess.user.apikey, sess.appid)) is not sess
            or sess.at_expires <= time.monotonic()
            or sess.user.apikey != doc["apikey"]
            or sess.appid != doc["appid"]
        ):
            return await refuse(406, "Authentication Failed", doc["apikey"])
        now = time.monotonic()
        last = self._last_online.get(sess.user.apikey)
        self._last_online[sess.user.apikey] = now
        if last is not None and now - last < self.user_online_interval:
            self.violations.append(f"userOnline for {sess.user.email} {now - last:.3f}s after the previous one")
            return await refuse(RATE_LIMITED, "userOnline repeated too often; this IP would be blocked", doc["apikey"])
        conn.session = sess
        self.handshakes.append((now, sess.user.apikey, 0))
        flag = "hb" if sess.version == 2 else "hbl"
        await self._ws_send(conn, {"error": 0, "apikey": sess.user.apikey,
                                   "config": {flag: 1, "hbInterval": self.hb_interval}, "sequence": doc["sequence"]})  # fmt: skip
        return True

    async def _ws_loop(self, conn: _Conn) -> None:
        while True:
            try:
                raw = await asyncio.wait_for(conn.ws.recv(), self.hb_interval + self.hb_grace)
            except TimeoutError:
                log.info("dropping a socket that missed its heartbeat")
                await conn.ws.close(1000, "heartbeat timeout")
                return
            if conn.stalled:
                continue
            if raw == "ping":
                with contextlib.suppress(ConnectionClosed):
                    await conn.ws.send("pong")
                continue
            try:
                doc = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(doc, dict) and doc.get("action") in ("update", "query"):
                await self._ws_command(conn, doc)

    async def _ws_command(self, conn: _Conn, doc: dict[str, Any]) -> None:
        sess = conn.session
        assert sess is not None
        self.commands.append(doc)
        seq = doc.get("sequence")
        deviceid = doc.get("deviceid")
        reply: dict[str, Any] = {"deviceid": deviceid, "apikey": doc.get("apikey"), "sequence": seq}
        try:
            seq_n = int(seq) if isinstance(seq, str) else None
        except ValueError:
            seq_n = None
        if seq_n is None or seq_n <= conn.last_seq:
            await self._ws_send(conn, {**reply, "error": 400, "reason": "sequence must increase"})
            return
        conn.last_seq = seq_n
        dev = self.devices.get(deviceid) if isinstance(deviceid, str) else None
        me = sess.user.apikey
        allowed = dev is not None and (
            (dev.owner == me and doc.get("apikey") == me)
            or (me in dev.shared_to and doc.get("apikey") == dev.owner and doc.get("selfApikey") == me)
        )
        if dev is None or not allowed:
            await self._ws_send(conn, {**reply, "error": 406, "reason": "access denied"})
            return
        if self._never_answer > 0:
            self._never_answer -= 1
            return
        if self._fail_504 > 0 or not dev.online:
            self._fail_504 = max(0, self._fail_504 - 1)
            await self._ws_send(conn, {**reply, "error": 504, "reason": "Request Timeout"})
            return
        params = doc.get("params")
        if doc["action"] == "query":
            names = params if isinstance(params, list) else []
            out = {k: v for k, v in dev.params.items() if not names or k in names}
            await self._ws_send(conn, {**reply, "error": 0, "params": out})
            return
        if not isinstance(params, dict):
            await self._ws_send(conn, {**reply, "error": 400, "reason": "params must be an object"})
            return
        await self._ws_send(conn, {**reply, "error": 0})
        await self.push(dev.deviceid, params)

    def _apply(self, dev: SimDevice, params: Mapping[str, Any]) -> None:
        for key, value in params.items():
            if key == "switches" and isinstance(value, list) and isinstance(dev.params.get("switches"), list):
                by_outlet = {s.get("outlet"): s for s in dev.params["switches"] if isinstance(s, dict)}
                for entry in value:
                    if isinstance(entry, dict) and entry.get("outlet") in by_outlet:
                        by_outlet[entry["outlet"]].update(entry)
            elif isinstance(value, dict) and isinstance(dev.params.get(key), dict):
                dev.params[key].update(value)
            else:
                dev.params[key] = value

    async def _broadcast(self, dev: SimDevice, doc: Mapping[str, Any]) -> None:
        for conn in list(self.conns):
            sess = conn.session
            if sess is None or not sess.valid:
                continue
            if sess.user.apikey == dev.owner or sess.user.apikey in dev.shared_to:
                await self._ws_send(conn, doc)


_Handler = Any
_ROUTES: dict[tuple[str, str], _Handler] = {
    ("POST", "/v2/user/login"): CoolkitCloud._login_v2,
    ("POST", "/v2/user/refresh"): CoolkitCloud._refresh_v2,
    ("GET", "/v2/family"): CoolkitCloud._family,
    ("GET", "/v2/device/thing"): CoolkitCloud._things,
    ("POST", "/v2/device/thing/status"): CoolkitCloud._group_status,
    ("GET", "/dispatch/app"): CoolkitCloud._dispatch_v2,
    ("POST", "/dispatch/app"): CoolkitCloud._dispatch_v1,
    ("POST", "/api/user/login"): CoolkitCloud._login_v1,
    ("GET", "/api/user/refresh"): CoolkitCloud._refresh_v1,
    ("GET", "/api/user/device"): CoolkitCloud._v1_devices,
}


def demo_cloud(devices: int = 8) -> CoolkitCloud:
    """The demo's cloud: the demo account's eight devices (+ ``devices - 8`` extra switches), a
    shared one and a group, with sensor and power readings pushed every few seconds."""
    return CoolkitCloud(push_interval=5.0, extra_devices=max(0, devices - 8))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091, help="HTTP port (every region under /{region})")
    parser.add_argument("--ws-port", type=int, default=None, help="WebSocket port (default: --port + 1)")
    parser.add_argument("--hb-interval", type=float, default=145.0, help="hbInterval handed out, seconds")
    parser.add_argument("--hb-grace", type=float, default=15.0, help="silence tolerated beyond hbInterval")
    parser.add_argument("--at-ttl", type=float, default=30 * 86400.0, help="access token lifetime, seconds")
    parser.add_argument("--rt-ttl", type=float, default=60 * 86400.0, help="refresh token lifetime, seconds")
    parser.add_argument("--rate-min-interval", type=float, default=0.5)
    parser.add_argument("--rate-window", type=float, default=300.0)
    parser.add_argument("--rate-max-calls", type=int, default=300)
    parser.add_argument("--user-online-interval", type=float, default=10.0)
    parser.add_argument("--push-interval", type=float, default=None, help="seconds between sensor pushes")
    parser.add_argument("--devices", type=int, default=0, help="extra single switches for the demo user")
    parser.add_argument("--seed", type=int, default=0)


async def serve(args: argparse.Namespace) -> None:
    ws_port = args.ws_port if args.ws_port is not None else (args.port + 1 if args.port else 0)
    cloud = CoolkitCloud(
        args.host, args.port, ws_port,
        hb_interval=args.hb_interval, hb_grace=args.hb_grace, at_ttl=args.at_ttl, rt_ttl=args.rt_ttl,
        rate_min_interval=args.rate_min_interval, rate_window=args.rate_window,
        rate_max_calls=args.rate_max_calls, user_online_interval=args.user_online_interval,
        push_interval=args.push_interval, extra_devices=args.devices, seed=args.seed,
    )  # fmt: skip
    await serve_forever(cloud, cloud.account_config, args=args, ports=(args.port, ws_port))
