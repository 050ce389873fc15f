"""Tencent IoT Explorer connector: one application account, one WebSocket (seed 002).

Theory of operation
-------------------
One ``run()`` loop per account, one session per WebSocket::

    token ─▶ list devices + templates ─▶ connect WS ─▶ ActivePush ─▶ heartbeat ─▶ resync ─▶ live
      ▲                                                                                     │
      └──────────────── backoff (capped exponential, full jitter) ◀── any close or error ◀──┘

- **Token.** The ``AccessToken`` comes from the token store (a restart does not log in again),
  else from a pre-issued ``access_token`` option, else from ``AppGetTokenByWeiXin`` (signed
  ``appapi``). Any call answered ``InvalidAccessToken`` logs in again once and is retried once
  (as the official SDK's ``reLogin``); a pre-issued token cannot be renewed, so its rejection
  puts the account in ``attention``, as does a refused login. Before the token's ``ExpireAt``
  the connector logs in again and re-subscribes on the live socket.
- **Devices.** ``AppGetFamilyList`` → ``AppGetFamilyDeviceList`` (paged, ``Limit`` ≤ 50) →
  ``AppGetProducts`` (data templates → ``Schema``) → ``ctx.devices`` with the complete list. The
  list is fetched again after every reconnect, every ``refresh_interval`` and on a ``Bind``/
  ``Unbind`` push.
- **Push channel.** ``ActivePush`` with every device id, then an ``AppDeviceTraceHeartBeat`` at
  once and every ``heartbeat`` seconds (50 s, as the current official SDKs; the seed says 60).
  Replies are matched by ``reqId``. After every (re)connect the state is resynced
  (``AppGetDeviceStatuses`` + ``AppGetDeviceData``), *after* subscribing so that nothing falls in
  a gap; the registry drops whichever value is older.
- **Frames.** Each frame is decoded by ``protocols.tencent.ws``; one that cannot be understood is
  counted with ``ctx.bad_input`` and skipped. Frames arrive from the socket's read callback
  (``gateway.wsclient``), which stops reading while the MQTT side is congested, so a congested
  broker slows the reading of the socket rather than growing a queue.
- **Commands.** ``set`` → ``AppControlDeviceData`` (values denormalized: bool → 1/0, …);
  ``get`` → ``AppGetDeviceData``; ``action`` → ``AppCallDeviceActionSync`` (or, with
  ``action_mode = "async"``, ``AppCallDeviceActionAsync`` whose ``action_reply`` push is matched
  by ``ClientToken``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import secrets
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import aiohttp
import orjson

from protocols.model import (
    EMPTY_SCHEMA,
    ActionReply,
    Availability,
    CommandError,
    CommandResult,
    DeviceEvent,
    DeviceInfo,
    LocalProtocolError,
    RemoteProtocolError,
    Schema,
    StateChange,
    VendorError,
)
from protocols.tencent import api, ws
from protocols.tencent.template import denormalize, schema_from_template

from .. import wsclient
from ..errors import ConfigError
from ..link import LinkState
from ..rates import ScopeKey, app_scope
from .base import AccountContext
from .options import opt, read_options
from .session import ATTENTION_BASE, ATTENTION_CAP, Deferred, LinkLost, NeedsAttention, Session

__all__ = ["TencentConnector", "TencentOptions"]

_TOKEN_MARGIN_MS = 120_000  # log in again this long before ExpireAt
_RECENT_REPLIES = 256


@dataclass(frozen=True)
class TencentOptions:
    app_key: str = opt(nonempty=True, help="the application's AppKey")
    app_secret: str | None = opt(
        None, secret=True, help="AppSecret for the signed appapi (to log in)"
    )
    wx_open_id: str | None = opt(None, help="the login call's user identity")
    nick_name: str = opt("")
    avatar: str = opt("")
    access_token: str | None = opt(
        None, secret=True, help="a pre-issued AccessToken instead of a login"
    )
    access_token_expire_at: int | None = opt(None, above=0, help="its ExpireAt, UNIX seconds")
    region: Literal["china", "oversea"] = opt("china", help="selects the default hosts")
    api_url: str = opt("", schemes=("http", "https"), help="base of appapi/tokenapi")
    ws_url: str = opt(ws.DEFAULT_WS_URL, schemes=("ws", "wss"), help="the push WebSocket")
    heartbeat: float = opt(50.0, minimum=0.05, help="seconds between trace heartbeats")
    ping_interval: float = opt(20.0, minimum=0.0, help="WebSocket keepalive (0 = off)")
    stall_timeout: float = opt(
        30.0,
        minimum=0.0,
        help="a socket that delivers nothing for "
        "this long and leaves a probe unanswered is dead (0 = off)",
    )
    platform: str = opt("")
    region_id: int | None = opt(None)
    families: tuple[str, ...] = opt((), help="restrict to these FamilyIds")
    action_mode: Literal["sync", "async"] = opt("sync")
    request_timeout: float = opt(10.0, minimum=0.05)
    reply_timeout: float = opt(20.0, minimum=0.05)
    refresh_interval: float = opt(3600.0, minimum=0.0)
    quiet_resync: bool = opt(
        True,
        help="at each periodic refresh, re-read the state of the devices that reported nothing "
        "since the last one (a push the cloud lost); optional calls, skipped first when the "
        "rate budget runs low",
    )
    backoff_base: float = opt(1.0, minimum=0.01)
    backoff_cap: float = opt(60.0, minimum=0.01)
    attention_backoff: float = opt(ATTENTION_BASE, minimum=0.01)
    attention_cap: float = opt(ATTENTION_CAP, minimum=0.01)

    @property
    def can_login(self) -> bool:
        return bool(self.app_secret and self.wx_open_id)


_SCHEMAS: dict[str, Schema] = {}  # data template (as text) → its Schema, for every account


def _shared_schema(template: object) -> Schema:
    """One ``Schema`` per distinct data template, shared by every account that sees it.

    Thousands of accounts usually run the same few products; a schema per account was ~2.6 KiB
    of each idle connection's memory (bench/scale.py). Schemas are immutable, so sharing is safe.
    """
    key = (
        template
        if isinstance(template, str)
        else orjson.dumps(template, option=orjson.OPT_SORT_KEYS, default=str).decode()
    )
    schema = _SCHEMAS.get(key)
    if schema is None:
        if len(_SCHEMAS) >= 4096:  # bounded: a cloud with endless templates cannot grow it
            _SCHEMAS.clear()
        schema = _SCHEMAS[key] = schema_from_template(template)
    return schema


class TencentConnector(Session):
    vendor: ClassVar[str] = "tencent"
    credential_keys: ClassVar[tuple[str, ...]] = ("app_key", "app_secret", "wx_open_id")
    options: TencentOptions

    # ------------------------------------------------------------------ configuration

    @classmethod
    def parse_options(cls, raw: Mapping[str, Any], key: str) -> TencentOptions:
        opts = read_options(TencentOptions, raw, key)
        default_api = api.DEFAULT_API_URL if opts.region == "china" else api.OVERSEA_API_URL
        opts = dataclasses.replace(
            opts,
            api_url=(opts.api_url or default_api).rstrip("/"),
            ws_url=opts.ws_url or ws.DEFAULT_WS_URL,
            app_secret=opts.app_secret or None,
            wx_open_id=opts.wx_open_id or None,
            access_token=opts.access_token or None,
        )
        if not opts.access_token and not opts.can_login:
            missing = "app_secret" if not opts.app_secret else "wx_open_id"
            raise ConfigError(
                f"{key}.{missing}", "needed to log in (or give a pre-issued access_token)"
            )
        if opts.wx_open_id and not opts.app_secret:
            raise ConfigError(f"{key}.app_secret", "needed to log in with wx_open_id")
        return opts

    def __init__(
        self, options: TencentOptions, ctx: AccountContext, http: aiohttp.ClientSession
    ) -> None:
        super().__init__(options, ctx, http)
        self.backoff_base, self.backoff_cap = options.backoff_base, options.backoff_cap
        self.attention_base, self.attention_cap = options.attention_backoff, options.attention_cap
        self._token: str | None = None
        self._expires_ms: int | None = None
        self._login_lock = asyncio.Lock()
        self._devices: dict[str, str] = {}  # device id → product id
        self._schemas: dict[str, Schema] = {}
        self._conn: wsclient.WsConnection | None = None
        self._pending: dict[str, asyncio.Future[ws.Reply]] = {}
        self._req_ids = itertools.count(1)
        self._action_waiters: dict[str, asyncio.Future[ActionReply]] = {}
        self._recent_replies: collections.OrderedDict[str, ActionReply] | None = None
        self._refresh = False  # a device-list refresh was asked for (Bind/Unbind push, request)
        self._heard: set[str] = set()  # devices that reported state since the last refresh
        self._wake: asyncio.Future[None] | None = None  # what the idle _live loop awaits
        self._subscribed: tuple[str, ...] = ()
        self._tag = secrets.token_hex(3)
        self._hb_failures = 0
        self._last_hb = 0.0  # loop time the last trace heartbeat was sent

    def rate_scopes(self) -> tuple[ScopeKey, ...]:
        return (*super().rate_scopes(), app_scope(self.vendor, self.options.app_key))

    # ------------------------------------------------------------------ session

    async def connect(self) -> None:
        self._hb_failures = 0
        await self._ensure_token()
        await self._list_devices()
        opts = self.options
        async with self.paced("WS connect", "handshake"):
            self._conn = conn = await wsclient.connect(
                opts.ws_url,
                open_timeout=opts.request_timeout,
                max_size=4 << 20,
                on_message=self._on_message,
                on_close=self._poke,
                flow=self.ctx,
                ping_interval=opts.ping_interval or None,
            )
        await self._subscribe()
        self._heard.clear()  # the resync reads them all: "quiet" counts from here
        await self._resync(self._subscribed)
        self.mark_online(token_expires_ms=self._expires_ms)
        await self._live(conn)

    async def teardown(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and conn.closed is None:
            await conn.close()
        for fut in self._pending.values():
            if not fut.done():
                fut.cancel()
        self._pending.clear()

    def _poke(self) -> None:
        """Wake the idle ``_live`` loop (connection closed, refresh asked for)."""
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _live(self, conn: wsclient.WsConnection) -> None:
        """Heartbeats, token renewal and device-list refreshes until the connection ends.

        Idle, an account is this one suspended coroutine and one timer handle: no reader task
        (messages arrive through ``_on_message``), no ``Event`` waiter task, no ``asyncio.wait``.
        """
        opts = self.options
        loop = asyncio.get_running_loop()
        next_refresh = loop.time() + opts.refresh_interval if opts.refresh_interval else None
        half = opts.stall_timeout / 2
        while True:
            next_probe = conn.last_message + half if half else None
            # Time the next heartbeat from the last one sent, not from when a (possibly long,
            # rate-paced) resync ended: at mass start-up the gap otherwise nears the server's
            # 90 s trace timeout.
            deadline = self._last_hb + opts.heartbeat
            if next_refresh is not None:
                deadline = min(deadline, next_refresh)
            if next_probe is not None:
                deadline = min(deadline, next_probe)
            if conn.closed is None and not self._refresh and deadline > loop.time():
                wake = self._wake = loop.create_future()
                timer = loop.call_at(deadline, self._poke)
                try:
                    await wake
                finally:
                    timer.cancel()
                    self._wake = None
            if conn.closed is not None:
                raise conn.closed
            if next_probe is not None and loop.time() >= next_probe:
                # Stall detection: a socket can keep answering WebSocket pings while the cloud
                # holds every frame. Nothing arrived for half the bound: an application round
                # trip must come back within the other half, or the link is dead.
                await self._probe(half)
                continue
            if self._refresh or (next_refresh is not None and loop.time() >= next_refresh):
                periodic = not self._refresh
                self._refresh = False
                if next_refresh is not None:
                    next_refresh = loop.time() + opts.refresh_interval
                before = set(self._subscribed)
                try:
                    await self._list_devices(optional=True)
                except Deferred as exc:
                    self.ctx.log.info("device-list refresh postponed: %s", exc)
                    continue
                if set(self._devices) != before:
                    await self._subscribe()
                    await self._resync([d for d in self._subscribed if d not in before])
                if periodic and opts.quiet_resync:
                    await self._resync_quiet(before)
                continue
            if self._token_expiring() and self.options.can_login:
                await self._relogin(self._token)
                await self._subscribe()
                continue
            if loop.time() >= self._last_hb + opts.heartbeat:
                await self._heartbeat()

    # ------------------------------------------------------------------ WebSocket

    def _next_req_id(self) -> str:
        return f"c2m-{self._tag}-{next(self._req_ids)}"

    async def _ws_request(
        self, req_id: str, frame: str, endpoint: str, timeout: float | None = None
    ) -> ws.Reply:
        conn = self._conn
        if conn is None:
            raise ConnectionError("WebSocket is not connected")
        fut: asyncio.Future[ws.Reply] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        try:
            async with self.paced(endpoint):
                conn.send(frame)
            async with asyncio.timeout(timeout or self.options.reply_timeout):
                return await fut
        finally:
            self._pending.pop(req_id, None)

    async def _subscribe(self) -> None:
        """ActivePush for every device, then the first trace heartbeat right away."""
        ids = list(self._devices)
        for attempt in (1, 2):
            token = self._token or ""
            req_id = self._next_req_id()
            frame = ws.active_push_frame(
                req_id, ids, token, app_key=self.options.app_key,
                platform=self.options.platform or None, region_id=self.options.region_id,
            )  # fmt: skip
            reply = await self._ws_request(req_id, frame, "WS ActivePush")
            try:
                accepted = ws.active_push_result(reply, ids)
            except VendorError:
                # The seed's failure form says nothing about why; a stale token is the usual one.
                if attempt == 1 and self.options.can_login:
                    await self._relogin(token)
                    continue
                raise
            break
        missing = set(ids) - set(accepted)
        if missing:
            self.ctx.log.warning(
                "ActivePush did not subscribe %d device(s): %s",
                len(missing),
                ", ".join(sorted(missing)),
            )
        self._subscribed = tuple(d for d in ids if d in set(accepted)) if accepted else ()
        await self._heartbeat()

    async def _heartbeat(self) -> None:
        self._last_hb = asyncio.get_running_loop().time()
        if not self._subscribed:
            return
        req_id = self._next_req_id()
        frame = ws.heartbeat_frame(
            req_id, self._subscribed, self._token or "", platform=self.options.platform or None
        )
        try:
            ws.yunapi_result(await self._ws_request(req_id, frame, "WS AppDeviceTraceHeartBeat"))
            self._hb_failures = 0
        except VendorError as exc:
            if api.is_token_error(exc):
                if not self.options.can_login:
                    raise NeedsAttention(
                        "the pre-issued AccessToken was rejected", "access_token"
                    ) from None
                await self._relogin(self._token)
                await self._subscribe()
                await self._resync(self._subscribed)
                return
            self._heartbeat_failed(f"heartbeat rejected: {exc}")
        except TimeoutError:
            self._heartbeat_failed(f"no heartbeat reply within {self.options.reply_timeout:g}s")

    async def _probe(self, timeout: float) -> None:
        """A trace heartbeat whose reply must come within ``timeout``; else ``LinkLost``."""
        req_id = self._next_req_id()
        frame = ws.heartbeat_frame(
            req_id, self._subscribed, self._token or "", platform=self.options.platform or None
        )
        try:
            await self._ws_request(req_id, frame, "WS AppDeviceTraceHeartBeat", timeout)
        except TimeoutError:
            self.ctx.count("stalls")
            raise LinkLost(
                f"stalled: no frame for {timeout:g}s and no answer to a probe within {timeout:g}s"
            ) from None

    def _heartbeat_failed(self, why: str) -> None:
        """Count it; the second failure in a row ends the session (a stalled or half-dead socket
        keeps no trace alive, so the devices would silently stop pushing)."""
        self.ctx.count("heartbeat_errors")
        self.ctx.log.warning("%s", why)
        self._hb_failures += 1
        if self._hb_failures >= 2:
            self._hb_failures = 0
            raise ConnectionError(f"{why} (twice in a row): reconnecting")

    def _on_message(self, message: str | bytes) -> None:
        """Every frame, straight from the socket's read (no task, no await; the connection
        pauses reading while the MQTT side is congested)."""
        ctx = self.ctx
        ctx.count("frames")
        # Fast path: a property report becomes its StateChange in one compiled call;
        # every other frame (and anything malformed) takes the full, error-wording path.
        report = ws.decode_report(message, now_ms=time.time_ns() // 1_000_000)
        if report is not None:
            self._heard.add(report.device)
            ctx.state(report)
            return
        try:
            frame = ws.parse_frame(message)
        except RemoteProtocolError as exc:
            ctx.bad_input(f"bad frame: {exc}")
            return
        if isinstance(frame, ws.Reply):
            fut = self._pending.get(str(frame.req_id))
            if fut is not None and not fut.done():
                fut.set_result(frame)
            return
        self._on_push(frame)

    def _on_push(self, push: ws.Push) -> None:
        ctx = self.ctx
        if push.action != "DeviceChange":
            ctx.count("ignored_pushes")
            return
        device = push.params.get("DeviceId")
        try:
            change = ws.parse_device_change(push.params)
            decoded = ws.decode_device_change(
                change,
                now_ms=time.time_ns() // 1_000_000,
                schema_for=self._schemas.get,
            )
        except RemoteProtocolError as exc:
            known = device if isinstance(device, str) and device in self._devices else None
            ctx.bad_input(f"bad DeviceChange: {exc}", device if isinstance(device, str) else None)
            if known is not None:  # its state may now be stale: read it (rate-limited)
                self.reread(known, lambda d: self._read_state(d, optional=True))
            return
        if decoded.flagged:
            ctx.count("flagged_values", len(decoded.flagged))
        for event in decoded.events:
            if isinstance(event, StateChange):
                self._heard.add(event.device)
                ctx.state(event)
            elif isinstance(event, Availability):
                ctx.availability(event)
            elif isinstance(event, ActionReply):
                self._on_action_reply(event)
            elif event.event_id in ("bind", "unbind") and change.type == "StatusChange":
                # The device list changed: list again (the gateway announces added/removed
                # devices on bridge/event); a bound device is not known yet, so no device event.
                self._refresh = True
                self._poke()
            else:
                ctx.event(event)

    def _on_action_reply(self, reply: ActionReply) -> None:
        token = reply.client_token or ""
        waiter = self._action_waiters.get(token)
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)
            return
        recent = self._recent_replies
        if recent is None:
            recent = self._recent_replies = collections.OrderedDict()
        recent[token] = reply
        while len(recent) > _RECENT_REPLIES:
            recent.popitem(last=False)
        self.ctx.event(
            DeviceEvent(
                reply.device, "action_reply", "info",
                {"action": reply.action_id, "clientToken": token, "code": reply.code,
                 "status": reply.message, "output": dict(reply.output)},
                reply.ts_ms,
            )
        )  # fmt: skip

    # ------------------------------------------------------------------ HTTP

    async def _post(
        self, kind: str, body: Mapping[str, Any], pace: str = "call", optional: bool = False
    ) -> dict[str, Any]:
        url = f"{self.options.api_url}/{kind}"
        timeout = aiohttp.ClientTimeout(total=self.options.request_timeout)
        endpoint = str(body.get("Action", kind))
        async with self.paced(endpoint, pace, optional=optional), self.http.post(
            url,
            data=orjson.dumps(body),
            headers={"Content-Type": "application/json"},
            timeout=timeout,
        ) as resp:
            raw = await resp.read()
            if resp.status != 200:
                with contextlib.suppress(RemoteProtocolError):
                    api.parse_response(raw)  # an error body explains more than the status
                message = f"{kind} answered HTTP {resp.status}"
                if resp.status == 429:
                    raise VendorError("throttled", f"HTTP {resp.status}", message)
                raise VendorError("vendor", f"HTTP {resp.status}", message)
            return api.parse_response(raw)

    async def _call(
        self, action: str, params: Mapping[str, Any], pace: str = "call", optional: bool = False
    ) -> dict[str, Any]:
        """A tokenapi call; an ``InvalidAccessToken`` answer logs in again once and retries once.

        ``pace``/``optional``: how the rate model paces it (``Session.paced``)."""
        sent = ""

        async def once() -> dict[str, Any]:
            nonlocal sent
            await self._ensure_token()
            sent = self._token or ""
            body = api.tokenapi_body(action, params, access_token=sent, request_id=uuid.uuid4().hex)
            if self.options.platform:
                body["Platform"] = self.options.platform
            return await self._post(api.TOKENAPI, body, pace, optional)

        def rejected(exc: Exception) -> bool:
            return self.options.can_login and _token_error(exc)

        try:
            return await self.with_reauth(once, lambda: self._relogin(sent), rejected)
        except VendorError as exc:
            if api.is_token_error(exc):
                self._forget_token(sent)
            raise

    # ------------------------------------------------------------------ token

    def _token_expiring(self) -> bool:
        return (
            self._expires_ms is not None
            and self._expires_ms - time.time() * 1000 < _TOKEN_MARGIN_MS
        )

    def token_identity(self) -> str:
        return f"{self.options.app_key}/{self.options.wx_open_id or 'static'}"

    async def _ensure_token(self) -> None:
        if self._token and not (self._token_expiring() and self.options.can_login):
            return
        if not self._token:
            stored = self.load_tokens() or {}
            if isinstance(stored.get("token"), str):
                expires = stored.get("expires_ms")
                self._token = stored["token"]
                self._expires_ms = expires if isinstance(expires, int) else None
            elif self.options.access_token:
                self._token = self.options.access_token
                expire = self.options.access_token_expire_at
                self._expires_ms = expire * 1000 if expire else None
        if self._token and not self._token_expiring():
            return
        if not self.options.can_login:
            if self._token:
                return  # a pre-issued token near its end: use it while the cloud accepts it
            raise NeedsAttention("no usable AccessToken and no login credentials", "access_token")
        await self._relogin(self._token)

    async def _relogin(self, stale: str | None) -> None:
        """Log in, unless another task already replaced the ``stale`` token meanwhile."""
        async with self._login_lock:
            if self._token and self._token != stale:
                return
            opts = self.options
            assert opts.app_secret and opts.wx_open_id
            body = api.appapi_body(
                "AppGetTokenByWeiXin",
                api.login_weixin_params(opts.wx_open_id, opts.nick_name, opts.avatar),
                app_key=opts.app_key,
                app_secret=opts.app_secret,
                timestamp=int(time.time()),
                nonce=secrets.randbelow(2**31 - 1) + 1,
                request_id=uuid.uuid4().hex,
            )
            # A refused login is an ``auth`` VendorError: a command gets that reply, and the
            # Session flags the account and names the credential keys.
            token = api.parse_token(await self._post(api.APPAPI, body, "login"))
            self._token, self._expires_ms = token.token, token.expire_at_ms
            self.save_tokens({"token": token.token, "expires_ms": token.expire_at_ms})
            self.ctx.count("logins")
            expires = token.expire_at_ms
            until = (
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(expires / 1000))
                if expires
                else "unknown"
            )
            self.ctx.log.info("logged in (token valid until %s)", until)
            if self._conn is not None:
                self.ctx.link(LinkState.ONLINE, token_expires_ms=token.expire_at_ms)

    def _forget_token(self, token: str) -> None:
        if self._token == token:
            self._token, self._expires_ms = None, None
            self.save_tokens(None)

    # ------------------------------------------------------------------ devices and state

    async def _paged(
        self, action: str, params: Mapping[str, Any], parse: Any, optional: bool = False
    ) -> list[Any]:
        items: list[Any] = []
        offset: int | None = 0
        while offset is not None:
            page: api.Page = parse(
                await self._call(
                    action, {**params, "Offset": offset, "Limit": api.MAX_LIMIT},
                    optional=optional,
                )
            )  # fmt: skip
            items.extend(page.items)
            offset = page.next_offset(offset)
        return items

    async def _list_devices(self, optional: bool = False) -> None:
        """The complete device list; ``optional`` (a periodic refresh): the family listing may be
        refused for budget (``Deferred``) before anything is reported, so a refresh is either
        skipped or complete."""
        families: list[api.FamilyRecord] = await self._paged(
            "AppGetFamilyList", {}, api.parse_family_list, optional
        )
        wanted = set(self.options.families)
        devices: dict[str, api.DeviceRecord] = {}
        for family in families:
            if wanted and family.family_id not in wanted:
                continue
            rows = await self._paged(
                "AppGetFamilyDeviceList",
                {"FamilyId": family.family_id, "RoomId": ""},
                lambda r, f=family.family_id: api.parse_device_list(r, f),
            )
            for dev in rows:
                devices.setdefault(dev.device_id, dev)
        products: dict[str, api.ProductRecord] = {}
        product_ids = sorted({d.product_id for d in devices.values()})
        for start in range(0, len(product_ids), api.MAX_LIMIT):
            products.update(
                api.parse_products(
                    await self._call(
                        "AppGetProducts",
                        api.products_params(product_ids[start : start + api.MAX_LIMIT]),
                    )
                )
            )
        schemas: dict[str, Schema] = {}
        for pid in product_ids:
            product = products.get(pid)
            try:
                schemas[pid] = _shared_schema(product.template) if product else EMPTY_SCHEMA
            except RemoteProtocolError as exc:
                self.ctx.bad_input(f"product {pid}: {exc}", counter="bad_templates")
                schemas[pid] = EMPTY_SCHEMA
        infos = []
        for dev in devices.values():
            product = products.get(dev.product_id)
            infos.append(
                DeviceInfo(
                    device=dev.device_id,
                    name=dev.alias or dev.device_name,
                    model=product.name if product and product.name else dev.product_id,
                    schema=schemas[dev.product_id],
                    extra={"product_id": dev.product_id, "device_name": dev.device_name,
                           "family_id": dev.family_id, "room_id": dev.room_id},
                )
            )  # fmt: skip
        self._devices = {d: r.product_id for d, r in devices.items()}
        self._schemas = {d: schemas[r.product_id] for d, r in devices.items()}
        self.ctx.devices(infos)

    async def _resync_quiet(self, known: set[str]) -> None:
        """Re-read the devices that were listed before this refresh and reported nothing since
        the last one: a push the cloud lost otherwise leaves their state stale for good. These
        reads are optional (``Deferred`` when the budget runs low): skipped, never queued."""
        quiet = [d for d in self._subscribed if d in known and d not in self._heard]
        self._heard.clear()
        if not quiet:
            return
        try:
            skipped = await self._resync(quiet, optional=True)
        except Deferred as exc:
            skipped = len(quiet)
            self.ctx.log.info("quiet-device resync postponed: %s", exc)
        if skipped < len(quiet):
            self.ctx.count("quiet_resyncs", len(quiet) - skipped)
        if skipped:
            self.ctx.count("quiet_resyncs_deferred", skipped)

    async def _resync(self, device_ids: Sequence[str], optional: bool = False) -> int:
        """Availability and full state of the devices, fetched fresh (pushes in a gap are lost).

        ``optional``: every call may be refused for budget; the status listing raises
        ``Deferred``, a refused state read is skipped. Returns how many reads were skipped."""
        ids = list(device_ids)
        now = time.time_ns() // 1_000_000
        for start in range(0, len(ids), 100):
            chunk = ids[start : start + 100]
            statuses = api.parse_device_statuses(
                await self._call(
                    "AppGetDeviceStatuses", api.device_statuses_params(chunk), optional=optional
                )
            )
            for device, online in statuses.items():
                if device in self._devices:
                    self.ctx.availability(Availability(device, online, now))
        limit = asyncio.Semaphore(8)
        skipped = 0

        async def one(device: str) -> None:
            nonlocal skipped
            async with limit:
                try:
                    await self._read_state(device, optional=optional)
                except Deferred:
                    skipped += 1
                except VendorError as exc:
                    if exc.code == "auth":
                        raise
                    self.ctx.log.warning("device %s: state not read: %s", device, exc)
                except RemoteProtocolError as exc:
                    self.ctx.bad_input(f"AppGetDeviceData: {exc}", device, "bad_replies")

        await asyncio.gather(*(one(d) for d in ids))
        return skipped

    async def _read_state(
        self, device: str, pace: str = "call", optional: bool = False
    ) -> dict[str, Any]:
        values, stamps = api.parse_device_data(
            await self._call(
                "AppGetDeviceData", api.device_data_params(device), pace, optional=optional
            )
        )
        if values:
            ts = max(stamps.values()) if stamps else time.time_ns() // 1_000_000
            self.ctx.state(StateChange(device, values, ts, prop_ts=stamps or None))
        return values

    # ------------------------------------------------------------------ commands

    def _schema_of(self, device: str) -> Schema:
        if device not in self._devices:
            raise CommandError("invalid", f"unknown device {device!r}")
        return self._schemas.get(device, EMPTY_SCHEMA)

    async def set(self, device: str, props: dict[str, Any]) -> CommandResult:
        schema = self._schema_of(device)
        try:
            params = api.control_params(device, denormalize(schema, props))
        except LocalProtocolError as exc:
            raise CommandError("invalid", str(exc)) from None
        await self._call("AppControlDeviceData", params, "command")
        return CommandResult.ok()

    async def get(self, device: str, props: list[str]) -> CommandResult:
        """The device's values as read (the command handler normalizes and filters them)."""
        self._schema_of(device)
        try:
            return CommandResult.ok(await self._read_state(device, "command"))
        except RemoteProtocolError as exc:
            raise VendorError("vendor", "BadReply", str(exc)) from None

    async def action(self, device: str, action: str, params: dict[str, Any]) -> CommandResult:
        schema = self._schema_of(device)
        spec = schema.action(action)
        try:
            request = api.action_params(
                device, action, denormalize(spec.input if spec else (), params)
            )
        except LocalProtocolError as exc:
            raise CommandError("invalid", str(exc)) from None
        if self.options.action_mode == "sync":
            result = api.parse_action_result(
                await self._call("AppCallDeviceActionSync", request, "command")
            )
            if not result.ok:
                return CommandResult.error(
                    "rejected", f"action status {result.status}", result.status
                )
            return CommandResult.ok(
                {"output": dict(result.output or {}), "client_token": result.client_token}
            )
        sent = api.parse_action_result(
            await self._call("AppCallDeviceActionAsync", request, "command")
        )
        if not sent.ok:
            return CommandResult.error("rejected", f"action status {sent.status}", sent.status)
        recent = self._recent_replies
        reply = recent.pop(sent.client_token, None) if recent else None
        if reply is None:
            waiter: asyncio.Future[ActionReply] = asyncio.get_running_loop().create_future()
            self._action_waiters[sent.client_token] = waiter
            try:
                reply = await waiter  # the gateway's command timeout bounds this wait
            finally:
                self._action_waiters.pop(sent.client_token, None)
        if reply.code != 0:
            return CommandResult.error(
                "rejected", reply.message or f"action failed ({reply.code})", reply.code
            )
        return CommandResult.ok({"output": dict(reply.output), "client_token": sent.client_token})

    async def request(self, command: str, payload: Mapping[str, Any]) -> CommandResult:
        if command == "refresh":
            self._refresh = True
            self._poke()
            return CommandResult.ok({"refreshing": True})
        return await super().request(command, payload)


def _token_error(exc: Exception) -> bool:
    return isinstance(exc, VendorError) and api.is_token_error(exc)
