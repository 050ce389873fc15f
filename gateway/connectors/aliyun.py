"""Aliyun Living IoT (飞燕) connector: signed API-gateway calls + the MQTT app channel.

Theory of operation
-------------------
One account = one user (``iotToken``) seen through one app (AppKey/AppSecret for the API
gateway, and the app's virtual device productKey/deviceName/deviceSecret for MQTT). The run
loop, backoff and attention schedule are the shared ``Session``'s; one ``connect()`` is::

    MQTT CONNECT ──▶ subscribe (exact down topics) ──▶ bind ──▶ resync ──▶ mark_online ──▶ live
    (pushes are held from here on …                        … and replayed in order once the
                                                             device list is in)

- **connect**: MQTT credentials are derived again on every attempt (the password signs a
  timestamp); CONNACK 4/5 means the app triple is wrong (``NeedsAttention``: ``device_secret``).
  The first session checks or refreshes the iotToken first when ``check_session`` is set or no
  iotToken is configured.
- **bind**: ``app/up/account/bind`` with the iotToken. 200 → go on. 2043 (iotToken rejected) →
  one ``/account/checkOrRefreshSession`` when a refresh token is configured, else attention;
  2152 (account active in another session) → attention.
- **pushes**: seed 004 §6.1.2 lets pushes follow the bind immediately, even in the same read as
  ``bind_reply``: every push is held from the moment the channel is connected until the device
  list is in, then replayed in order (at most ``_MAX_HELD``; more are counted and dropped, the
  snapshot covers them). Pushes reach the link as the vendor sent them (the link normalizes).
- **resync** after *every* (re)bind: ``/uc/listBindingByAccount`` (paged) → ``ctx.devices``,
  ``/thing/tsl/get`` once per product → ``Schema``, ``/thing/properties/get`` per device → state
  with per-item times, so the registry drops whatever is older than it holds.
- **throttling**: an HTTP 429 opens a circuit breaker (``throttle_cooldown``, doubling per
  consecutive 429 up to ``throttle_cap``): calls fail fast with ``throttled``; after the cooldown
  one call is let through as a probe, and its success closes the breaker. A throttled API never
  takes the link down while the app channel is up: the link stays ONLINE (pushes still flow) and
  the throttled resync or token refresh is tried again when the breaker lets a call through.
  Only before any device list is in does the session wait for the breaker, holding pushes.
- **live**: a token rejected by the API is refreshed (and the app bound again) when a refresh
  token is configured, else the account is flagged while pushes keep flowing; the iotToken is
  refreshed ahead of its expiry; a ``topo/add/status`` asks for a resync.
- **teardown** (also on shutdown): unbind if still bound, then disconnect.

Commands: ``set`` → ``/thing/properties/set``, ``action`` → ``/thing/service/invoke``, ``get`` →
``/thing/properties/get`` (the cloud's snapshot), answered per the reply contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

import aiohttp

from gateway.mqtt.client import ConnectRefused, MqttClient
from protocols.aliyun import (
    API,
    BindReply,
    OtaProgress,
    TopoAddStatus,
    build_bind,
    build_request,
    build_unbind,
    decode_app_message,
    decode_items,
    denormalize,
    down_topics,
    mqtt_credentials,
    parse_bindings,
    parse_response,
    sign_request,
    tsl_to_schema,
)
from protocols.aliyun.mqtt import BIND_ACTIVE_ELSEWHERE, BIND_TOKEN_REJECTED
from protocols.model import (
    EMPTY_SCHEMA,
    Availability,
    CommandResult,
    DeviceEvent,
    DeviceInfo,
    RemoteProtocolError,
    Schema,
    StateChange,
    VendorError,
)

from ..errors import ConfigError
from ..link import AccountContext, LinkState, now_ms
from ..rates import ScopeKey, app_scope
from .options import opt, read_options
from .session import LinkLost, NeedsAttention, Session, Throttled

__all__ = ["AliyunConnector", "AliyunOptions", "Breaker"]


#: Pushes held while the device list is not in yet or a resync runs (replayed after it).
_MAX_HELD = 20_000


@dataclass(frozen=True, slots=True)
class AliyunOptions:
    app_key: str = opt(nonempty=True, help="API gateway AppKey (X-Ca-Key)")
    app_secret: str = opt(secret=True, nonempty=True, help="API gateway AppSecret (signature)")
    product_key: str = opt(nonempty=True, help="the app's virtual-device triple ...")
    device_name: str = opt(nonempty=True, help="... for the MQTT app channel ...")
    device_secret: str = opt(secret=True, nonempty=True, help="... and its secret")
    iot_token: str | None = opt(None, secret=True, nonempty=True, help="the user session")
    refresh_token: str | None = opt(
        None, secret=True, nonempty=True, help="refreshes the iotToken"
    )
    identity_id: str | None = opt(None, nonempty=True, help="needed with refresh_token")
    check_session: bool = opt(False, help="check the iotToken at start")
    api_url: str = opt("https://api.link.aliyun.com", nonempty=True, schemes=("http", "https"))
    region: str = opt("cn-shanghai", nonempty=True, help="selects the default MQTT host")
    mqtt_host: str | None = opt(None, nonempty=True)
    mqtt_port: int | None = opt(None, minimum=1, maximum=65535)
    tls: bool = opt(True)
    ca_file: str | None = opt(None, nonempty=True)
    client_id: str | None = opt(None, nonempty=True)
    keepalive: int = opt(60, minimum=30, maximum=1200)
    page_size: int = opt(100, minimum=1, maximum=100)
    reconnect_min: float = opt(1.0, minimum=0.01, maximum=3600)
    reconnect_max: float = opt(60.0, minimum=0.01, maximum=86400)
    attention_backoff: float = opt(300.0, minimum=0.01, maximum=86400)
    throttle_cooldown: float = opt(60.0, minimum=0.01, maximum=86400)
    throttle_cap: float = opt(120.0, minimum=0.01, maximum=86400)
    bind_timeout: float = opt(10.0, minimum=0.1, maximum=300)
    http_timeout: float = opt(10.0, minimum=0.1, maximum=300)
    max_concurrency: int = opt(4, minimum=1, maximum=64)

    @property
    def host(self) -> str:
        return self.mqtt_host or f"{self.product_key}.iot-as-mqtt.{self.region}.aliyuncs.com"

    @property
    def port(self) -> int:
        return self.mqtt_port or (8883 if self.tls else 1883)


class Breaker:
    """Circuit breaker for HTTP 429, with a half-open probe.

    Closed: calls go through. The n-th 429 in a row opens it for ``cooldown · 2^(n-1)`` seconds,
    at most ``cap``; while open, ``admit()`` raises ``throttled`` without calling the platform.
    After the cooldown it is half-open: ``admit()`` lets exactly one call through (the probe,
    ``admit()`` returns ``True``) and fails the others fast until the probe's verdict:
    ``success()`` closes the breaker, ``trip()`` opens it again for the next, longer, pause.
    A probe that ends without a verdict (timeout, cancelled) calls ``release()``; the next call
    probes again. ``clock`` is injectable (seconds, monotonic).
    """

    __slots__ = ("cap", "clock", "consecutive", "cooldown", "open_until", "probing")

    def __init__(
        self, cooldown: float, cap: float = 120.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.cooldown = cooldown
        self.cap = cap
        self.clock = clock
        self.consecutive = 0  # 429s in a row; > 0 means open or half-open
        self.open_until = 0.0
        self.probing = False

    def remaining(self) -> float:
        """Seconds until a call may go through again (0 when closed or half-open)."""
        return max(0.0, self.open_until - self.clock())

    def check(self) -> None:
        """Fail fast when no call may go through now (open, or a probe is out)."""
        left = self.remaining()
        if left > 0:
            raise VendorError("throttled", 429, f"throttled by the platform; calls paused for {left:.0f}s")
        if self.probing:
            raise VendorError("throttled", 429, "throttled by the platform; probing whether it has ended")

    def admit(self) -> bool:
        """``check()``, then claim the probe when half-open; ``True`` when this call is it."""
        self.check()
        if self.consecutive:
            self.probing = True
            return True
        return False

    def trip(self) -> None:
        self.consecutive += 1
        self.probing = False
        delay = min(self.cap, self.cooldown * 2 ** min(self.consecutive - 1, 16))
        self.open_until = self.clock() + delay

    def success(self) -> None:
        self.consecutive = 0
        self.probing = False

    def release(self, probe: bool) -> None:
        """The call admitted with ``probe`` ended without a verdict on the throttling."""
        if probe:
            self.probing = False


class AliyunConnector(Session):
    vendor: ClassVar[str] = "aliyun"
    #: named when the API refuses the iotToken without a more precise key
    credential_keys: ClassVar[tuple[str, ...]] = ("iot_token", "refresh_token")
    options: AliyunOptions

    # ------------------------------------------------------------------ config

    @classmethod
    def parse_options(cls, raw: Mapping[str, Any], key: str) -> AliyunOptions:
        opts = read_options(AliyunOptions, raw, key)
        if opts.iot_token is None and opts.refresh_token is None:
            raise ConfigError(f"{key}.iot_token", "missing (or give refresh_token and identity_id)")
        if opts.refresh_token is not None and opts.identity_id is None:
            raise ConfigError(f"{key}.identity_id", "needed with refresh_token")
        if not urlsplit(opts.api_url).netloc:
            raise ConfigError(f"{key}.api_url", f"expected an http(s) URL, got {opts.api_url!r}")
        if opts.client_id is not None and any(c in opts.client_id for c in "|,"):
            raise ConfigError(f"{key}.client_id", "may not contain '|' or ','")
        return dataclasses.replace(opts, api_url=opts.api_url.rstrip("/"))

    # ------------------------------------------------------------------ lifecycle

    def __init__(self, options: AliyunOptions, ctx: AccountContext, http: aiohttp.ClientSession) -> None:
        super().__init__(options, ctx, http)
        self.opts: AliyunOptions = options
        self.backoff_base, self.backoff_cap = options.reconnect_min, options.reconnect_max
        self.attention_base = options.attention_backoff
        self.attention_cap = options.attention_backoff * 16
        self.iot_token: str | None = options.iot_token
        self.refresh_token: str | None = options.refresh_token
        self.identity_id: str | None = options.identity_id
        self.token_expires_ms: int | None = None
        self.mqtt: MqttClient | None = None
        self.bare_client_id = options.client_id or f"{options.product_key}&{options.device_name}"
        self.breaker = Breaker(options.throttle_cooldown, options.throttle_cap)
        self._sem = asyncio.Semaphore(options.max_concurrency)
        self._lost = asyncio.Event()
        self._bind_waiters: dict[str, asyncio.Future[BindReply]] = {}
        self._held: list[tuple[str, bytes]] | None = None
        self._resync_wanted = asyncio.Event()
        self._token_rejected = asyncio.Event()
        self._refresh_due = False  # the iotToken's refresh time came (retried while throttled)
        self._listed = False  # a device list is in (pushes can be dispatched against it)
        self._refused_key = "iot_token"  # the config key behind the last auth refusal of the API
        self._bound = False
        self.binds = 0  # bind attempts (tests and health)
        stored = self.load_tokens()
        if stored is None:  # saved before the Session base, under "source"
            legacy = self.ctx.tokens.load()
            stored = legacy if legacy and legacy.get("source") == self.token_identity() else None
        if stored:
            self.iot_token = stored.get("iot_token") or self.iot_token
            self.refresh_token = stored.get("refresh_token") or self.refresh_token
            expires = stored.get("expires_ms")
            self.token_expires_ms = expires if isinstance(expires, int) else None
        # The first session gets an iotToken first (none known) or checks it (check_session).
        self._startup_check = self.iot_token is None or (options.check_session and bool(self.refresh_token))

    def rate_scopes(self) -> tuple[ScopeKey, ...]:
        return (*super().rate_scopes(), app_scope(self.vendor, self.opts.app_key))

    def token_identity(self) -> str:
        """A fingerprint of the configured credentials: persisted tokens apply only to them."""
        seed = f"{self.opts.iot_token}|{self.opts.refresh_token}|{self.opts.identity_id}"
        return hashlib.sha256(seed.encode()).hexdigest()[:16]

    async def close(self) -> None:
        await self.teardown()

    async def teardown(self) -> None:
        client, self.mqtt = self.mqtt, None
        self._held = None
        for fut in self._bind_waiters.values():
            if not fut.done():
                fut.cancel()
        self._bind_waiters.clear()
        bound, self._bound = self._bound, False
        if client is None:
            return
        with contextlib.suppress(Exception):
            if bound and client.connected:
                topic, payload = build_unbind(self.opts.product_key, self.opts.device_name, self.bare_client_id)
                client.publish(topic, payload, qos=1)
                await client.flush(1.0)
        with contextlib.suppress(Exception):
            await client.disconnect()

    # ------------------------------------------------------------------ one MQTT session

    def _ssl(self) -> ssl.SSLContext | None:
        if not self.opts.tls:
            return None
        return ssl.create_default_context(cafile=self.opts.ca_file)

    async def connect(self) -> None:
        try:
            await self._connect()
        except VendorError as exc:
            if exc.code == "throttled":  # before the channel was up: back off at least as long
                raise Throttled(str(exc), retry_after=self.breaker.remaining()) from None
            raise
        except ConnectRefused as exc:
            if exc.auth:
                raise NeedsAttention(f"MQTT credentials refused: {exc}", "device_secret") from None
            raise

    async def _connect(self) -> None:
        o = self.opts
        if self._startup_check:
            self._startup_check = False
            await self._check_session()
        self._bound = False
        self._token_rejected.clear()
        self._resync_wanted.clear()
        self._refresh_due = False
        creds = mqtt_credentials(
            o.product_key, o.device_name, o.device_secret, now_ms(),
            client_id=self.bare_client_id, secure_mode=2 if o.tls else 3,
        )
        self._lost.clear()
        client = MqttClient(
            o.host,
            o.port,
            client_id=creds.client_id,
            username=creds.username,
            password=creds.password,
            ssl=self._ssl(),
            server_hostname=o.host if o.tls else None,
            keepalive=o.keepalive,
            protocol=4,
            on_message=self._on_message,
            on_disconnect=self._on_disconnect,
            reconnect=False,
            flow=self.ctx,
        )
        self.mqtt = client
        # Pushes may follow the bind at once (seed 004 §6.1.2), in the very read that carries
        # bind_reply: hold everything from now until the device list is in.
        self._held = []
        async with self.paced("MQTT CONNECT", "handshake"):
            await client.connect()
        granted = await client.subscribe([(t, 1) for t in down_topics(o.product_key, o.device_name)])
        if any(g >= 0x80 for g in granted):
            raise LinkLost("the platform refused a subscription")
        await self._bind(client)
        await self._first_resync()
        self.mark_online(token_expires_ms=self.token_expires_ms)
        self.ctx.log.info("app channel bound; %d device(s)", len(self.ctx.known_devices()))
        await self._live()

    async def _check_session(self) -> None:
        """At start-up: get an iotToken (none configured) or check the configured one."""
        try:
            await self._refresh_session()
        except (TimeoutError, VendorError, aiohttp.ClientError, RemoteProtocolError) as exc:
            self.ctx.log.warning("session refresh failed: %s", exc)

    async def _first_resync(self) -> None:
        """The resync after a bind. Throttled with a device list in: go online (pushes flow) and
        let ``_live`` retry; throttled before any list: wait for the breaker, pushes held."""
        while True:
            try:
                await self._resync_holding()
                return
            except VendorError as exc:
                if exc.code != "throttled":
                    raise
                if self._listed:
                    self._resync_wanted.set()
                    self.ctx.log.warning("resync throttled; retrying in %.0fs", self.breaker.remaining())
                    return
                wait = max(self.breaker.remaining(), self.opts.reconnect_min)
                self.ctx.link(LinkState.CONNECTING, f"throttled; device list in {wait:.0f}s")
                await self._sleep_unless_lost(wait)

    async def _sleep_unless_lost(self, delay: float) -> None:
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({lost}, timeout=delay)
        finally:
            lost.cancel()
        if self._lost.is_set():
            raise LinkLost("MQTT link lost")

    async def _live(self) -> None:
        """Hold the bound channel until it is lost; tend the token and resyncs meanwhile."""
        while True:
            pause = self.breaker.remaining()
            if self._work_pending() and (pause > 0 or self.breaker.probing):
                # Throttled: pushes flow, the pending calls wait for the breaker.
                await self._sleep_unless_lost(max(pause, self.opts.reconnect_min))
            else:
                await self._idle()
            if self._lost.is_set():
                raise LinkLost("MQTT link lost")
            try:
                await self._tend()
            except VendorError as exc:
                if exc.code != "throttled":
                    raise
                # The channel is up and pushes flow: stay online, and try again when the
                # breaker lets a call through.
                self.ctx.log.warning("%s; retrying in %.0fs", exc.message, self.breaker.remaining())

    def _work_pending(self) -> bool:
        return self._resync_wanted.is_set() or self._token_rejected.is_set() or self._refresh_due

    async def _idle(self) -> None:
        """Wait for the link to drop, a resync or refresh to be asked for, or the refresh time."""
        if self._work_pending():
            return
        waits = {
            asyncio.ensure_future(self._lost.wait()),
            asyncio.ensure_future(self._resync_wanted.wait()),
            asyncio.ensure_future(self._token_rejected.wait()),
        }
        try:
            done, _ = await asyncio.wait(waits, timeout=self._refresh_due_in(), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if not done:
            self._refresh_due = True

    async def _tend(self) -> None:
        if self._token_rejected.is_set():
            if self.refresh_token:
                await self._refresh_session()
                assert self.mqtt is not None
                await self._bind(self.mqtt)
                self._resync_wanted.set()
                self.ctx.link(LinkState.ONLINE, token_expires_ms=self.token_expires_ms)
            else:
                # Pushes may still flow on the bound channel; calls will not. A human must
                # give a new iotToken; nothing here retries on its own.
                self._token_rejected.clear()
                self.ctx.link(LinkState.ATTENTION, "the API rejected the iotToken")
        elif self._refresh_due:
            await self._refresh_session()
            self._refresh_due = False
            assert self.mqtt is not None
            await self._bind(self.mqtt)
        if self._resync_wanted.is_set():
            self._resync_wanted.clear()
            try:
                await self._resync_holding()
            except VendorError as exc:
                if exc.code == "throttled":
                    self._resync_wanted.set()
                raise

    def _refresh_due_in(self) -> float | None:
        """Refresh the iotToken ahead of its expiry (a tenth of its life, at most an hour early)."""
        if self.refresh_token is None or self.token_expires_ms is None:
            return None
        left = (self.token_expires_ms - now_ms()) / 1000
        return max(1.0, left - min(3600.0, max(left / 10, 1.0)))

    def _on_disconnect(self, exc: Exception | None) -> None:
        self._lost.set()

    # ------------------------------------------------------------------ bind

    async def _bind(self, client: MqttClient) -> None:
        refreshed = False
        if self.iot_token is None:
            await self._refresh_session()
            refreshed = True
        while True:
            if self.iot_token is None:
                raise NeedsAttention("no iotToken", "iot_token")
            o = self.opts
            loop = asyncio.get_running_loop()
            msg_id = f"bind{now_ms()}{self.binds}"
            fut: asyncio.Future[BindReply] = loop.create_future()
            self._bind_waiters[msg_id] = fut
            topic, payload = build_bind(o.product_key, o.device_name, self.iot_token, self.bare_client_id, msg_id)
            self.binds += 1
            async with self.paced("account/bind"):
                client.publish(topic, payload, qos=1)
            try:
                lost: asyncio.Future[Any] = asyncio.ensure_future(self._lost.wait())
                waiting: set[asyncio.Future[Any]] = {fut, lost}
                done, _ = await asyncio.wait(waiting, timeout=o.bind_timeout, return_when=asyncio.FIRST_COMPLETED)
                lost.cancel()
                if fut not in done:
                    if lost in done:
                        raise LinkLost("MQTT link lost while binding")
                    raise LinkLost("no bind reply")
                reply = fut.result()
            finally:
                self._bind_waiters.pop(msg_id, None)
            if reply.ok:
                self._bound = True
                return
            if reply.code == BIND_TOKEN_REJECTED and self.refresh_token and not refreshed:
                self.ctx.log.warning("bind rejected the iotToken (%s); refreshing it", reply.code)
                await self._refresh_session()
                refreshed = True
                continue
            if reply.code == BIND_TOKEN_REJECTED:
                key = "refresh_token" if self.refresh_token else "iot_token"
                raise NeedsAttention(f"bind {reply.code}: iotToken rejected ({reply.message})", key)
            if reply.code == BIND_ACTIVE_ELSEWHERE:
                raise NeedsAttention(f"bind {reply.code}: account active in another session ({reply.message})")
            raise NeedsAttention(f"bind {reply.code}: {reply.message}")

    async def _refresh_session(self) -> None:
        """``/account/checkOrRefreshSession`` (research notes; not in seed 004)."""
        if not self.refresh_token or not self.identity_id:
            raise NeedsAttention("iotToken rejected and no refresh_token configured", "iot_token")
        try:
            data = await self._call(
                "refresh_session",
                {"request": {"refreshToken": self.refresh_token, "identityId": self.identity_id}},
                token=False,
                kind="login",
            )
        except VendorError as exc:
            if exc.code == "auth":
                raise NeedsAttention(f"refreshToken rejected ({exc.vendor_code})", "refresh_token") from None
            raise
        if not isinstance(data, dict) or not isinstance(data.get("iotToken"), str):
            raise RemoteProtocolError("session refresh reply without iotToken")
        self.iot_token = data["iotToken"]
        if isinstance(data.get("refreshToken"), str):
            self.refresh_token = data["refreshToken"]
        expire = data.get("iotTokenExpire")
        if isinstance(expire, int) and not isinstance(expire, bool):
            self.token_expires_ms = now_ms() + expire * 1000
        self.save_tokens({
            "iot_token": self.iot_token, "refresh_token": self.refresh_token,
            "identity_id": self.identity_id, "expires_ms": self.token_expires_ms,
        })  # fmt: skip
        self._token_rejected.clear()
        self.ctx.link(
            LinkState.CONNECTING if not self._bound else LinkState.ONLINE,
            token_expires_ms=self.token_expires_ms
        )
        self.ctx.log.info("iotToken refreshed")

    # ------------------------------------------------------------------ HTTP

    async def _call(
        self, name: str, params: Mapping[str, Any], *, token: bool = True, kind: str = "call"
    ) -> Any:
        """One signed API call; ``kind``: how the rate model paces it (``Session.paced``). The
        429 breaker below is the platform's answer; the rate model keeps us from earning it."""
        self.breaker.check()
        api = API[name]
        body = build_request(api.version, params, self.iot_token if token else None)
        headers = sign_request(self.opts.app_key, self.opts.app_secret, "POST", api.path, body=body)
        async with self._sem:
            probe = self.breaker.admit()
            try:
                async with self.paced(api.path, kind), self.http.post(
                    self.opts.api_url + api.path,
                    data=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=self.opts.http_timeout),
                ) as resp:
                    raw = await resp.read()
                    status = resp.status
                    err = resp.headers.get("X-Ca-Error-Message")
            except TimeoutError:
                raise VendorError("timeout", None, f"{api.path}: no answer in {self.opts.http_timeout:g}s") from None
            except aiohttp.ClientError as exc:
                raise VendorError("vendor", None, f"{api.path}: {type(exc).__name__}: {exc}") from None
            finally:
                self.breaker.release(probe)  # no verdict yet; a reply gives one below
        try:
            data = parse_response(status, raw, err)
        except VendorError as exc:
            if exc.code == "throttled":
                self.breaker.trip()
                self.ctx.count("throttled")
                self.ctx.log.warning(
                    "%s throttled (%s); pausing API calls for %.0fs", api.path, exc.vendor_code, self.breaker.remaining()
                )
                raise
            self.breaker.success()  # the platform answered: not throttled
            if exc.code == "auth":
                # The API gateway itself refuses the app's signature or AppKey with an HTTP
                # error; the service refuses the iotToken with a code in an HTTP 200 reply.
                self._refused_key = "app_secret" if status != 200 else "iot_token"
                if token and self._bound and status == 200:
                    self.ctx.log.warning("%s: %s", api.path, exc)
                    self._token_rejected.set()
            raise
        except RemoteProtocolError:
            self.breaker.success()
            raise
        self.breaker.success()
        return data

    # ------------------------------------------------------------------ resync

    async def _resync_holding(self) -> None:
        """Resync with pushes held; replay them in order once a device list is in."""
        if self._held is None:
            self._held = []
        try:
            await self.with_reauth(self._resync, self._reauthenticate, self._token_refused)
        except VendorError as exc:
            if exc.code != "auth":
                raise
            if self._refused_key == "app_secret":
                raise NeedsAttention(f"API gateway refused the app: {exc}", "app_secret") from None
            key = "refresh_token" if self.refresh_token else "iot_token"
            raise NeedsAttention(f"API rejected the iotToken: {exc}", key) from None
        finally:
            if self._listed:
                held, self._held = self._held or [], None
                for topic, payload in held:
                    self._dispatch(topic, payload)

    def _token_refused(self, exc: Exception) -> bool:
        return (
            isinstance(exc, VendorError) and exc.code == "auth"
            and self._refused_key == "iot_token" and bool(self.refresh_token)
        )

    async def _reauthenticate(self) -> None:
        """The iotToken died under us: refresh it once and bind again, then list again."""
        self.ctx.log.warning("API rejected the iotToken; refreshing it")
        await self._refresh_session()
        assert self.mqtt is not None
        await self._bind(self.mqtt)

    async def _resync(self) -> None:
        infos: list[DeviceInfo] = []
        seen: set[str] = set()
        page = 1
        while True:
            data = await self._call("list_bindings", {"pageNo": page, "pageSize": self.opts.page_size})
            batch, total = parse_bindings(data)
            for info in batch:
                if info.device not in seen:
                    seen.add(info.device)
                    infos.append(info)
            if not batch or total is None or page * self.opts.page_size >= total or page >= 1000:
                break
            page += 1
        # TSL once per product (it is the product's model), fetched again on every resync.
        schemas: dict[str, Schema] = {}
        for info in infos:
            pk = str(info.extra.get("productKey") or f"device:{info.device}")
            if pk not in schemas:
                schemas[pk] = await self._schema_for(info)
        full = [
            dataclasses.replace(info, schema=schemas[str(info.extra.get("productKey") or f"device:{info.device}")])
            for info in infos
        ]
        self.ctx.devices(full)
        self._listed = True
        ts = now_ms()
        for info in full:
            status = info.extra.get("status")
            if status in (0, 8):
                self.ctx.availability(Availability(info.device, False, ts, "inactive" if status == 0 else "disabled"))
        await asyncio.gather(*(self._snapshot(info.device) for info in full))

    async def _schema_for(self, info: DeviceInfo) -> Schema:
        try:
            return tsl_to_schema(await self._call("tsl", {"iotId": info.device}))
        except RemoteProtocolError as exc:
            self.ctx.bad_input(f"TSL unusable: {exc}", info.device)
        except VendorError as exc:
            if exc.code in ("auth", "throttled", "timeout"):
                raise
            self.ctx.bad_input(f"TSL not available: {exc}", info.device)
        return EMPTY_SCHEMA

    async def _snapshot(self, device: str) -> None:
        try:
            data = await self._call("properties_get", {"iotId": device})
        except VendorError as exc:
            if exc.code in ("auth", "throttled"):
                raise
            self.ctx.log.warning("device %s: properties snapshot failed: %s", device, exc)
            return
        except RemoteProtocolError as exc:
            self.ctx.bad_input(f"properties snapshot unusable: {exc}", device)
            return
        if not isinstance(data, dict):
            if data is not None:
                self.ctx.bad_input("properties snapshot is not an object", device)
            return
        props, prop_ts = decode_items(data, now_ms())
        if props:
            self.ctx.state(StateChange(device, props, max(prop_ts.values()), prop_ts=prop_ts))

    # ------------------------------------------------------------------ pushes

    def _on_message(self, topic: str, payload: bytes, props: dict[str, Any]) -> None:
        self.ctx.count("frames")
        if self._held is not None and not topic.endswith("/account/bind_reply"):
            if len(self._held) >= _MAX_HELD:
                # The resync's snapshot covers what is dropped here; count it, do not grow.
                self.ctx.count("dropped_pushes")
                return
            self._held.append((topic, payload))
            return
        self._dispatch(topic, payload)

    def _dispatch(self, topic: str, payload: bytes) -> None:
        try:
            msg = decode_app_message(topic, payload, now_ms())
        except RemoteProtocolError as exc:
            self.ctx.bad_input(f"app channel: {exc}")
            return
        if msg is None:
            return
        if isinstance(msg, StateChange):
            self.ctx.state(msg)
        elif isinstance(msg, Availability):
            self.ctx.availability(msg)
        elif isinstance(msg, DeviceEvent):
            self.ctx.event(msg)
        elif isinstance(msg, BindReply):
            fut = self._bind_waiters.get(msg.msg_id)
            if fut is not None and not fut.done():
                fut.set_result(msg)
            elif not msg.unbind and not msg.ok:
                self.ctx.log.warning("unsolicited bind reply %s: %s", msg.code, msg.message)
        elif isinstance(msg, OtaProgress):
            self.ctx.event(msg.to_event(now_ms()))
        elif isinstance(msg, TopoAddStatus):
            if msg.new_gateway and msg.new_gateway in self.ctx.known_devices():
                level = "info" if msg.ok else "error"
                self.ctx.event(DeviceEvent(msg.new_gateway, "topo_add", level, dict(msg.raw), now_ms()))
            if msg.ok:
                self._resync_wanted.set()  # a sub-device joined: list devices again

    # ------------------------------------------------------------------ commands

    async def set(self, device: str, props: dict[str, Any]) -> CommandResult:
        items = denormalize(props, self.ctx.schema(device))
        await self._call("properties_set", {"iotId": device, "items": items}, kind="command")
        return CommandResult.ok()

    async def get(self, device: str, props: list[str]) -> CommandResult:
        data = await self._call("properties_get", {"iotId": device}, kind="command")
        if not isinstance(data, dict):
            raise VendorError("vendor", None, "properties reply is not an object")
        values, prop_ts = decode_items(data, now_ms())
        if values:
            self.ctx.state(StateChange(device, values, max(prop_ts.values()), prop_ts=prop_ts))
        return CommandResult.ok(values)  # as read: the command handler normalizes and filters

    async def action(self, device: str, action: str, params: dict[str, Any]) -> CommandResult:
        schema = self.ctx.schema(device)
        spec = schema.action(action) if schema is not None else None
        args = denormalize(params, Schema(spec.input) if spec is not None else None)
        data = await self._call(
            "service_invoke", {"iotId": device, "identifier": action, "args": args}, kind="command"
        )
        # The seed's example wraps the service output: {"data": {"data": {...}}}.
        if isinstance(data, dict) and set(data) == {"data"}:
            data = data["data"]
        if data is None:
            return CommandResult.ok({})
        return CommandResult.ok(data if isinstance(data, dict) else {"result": data})
