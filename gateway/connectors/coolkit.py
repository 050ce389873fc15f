"""CoolKit / eWeLink connector (API v2, seed 001, or v1, seed 003): the I/O around ``protocols.coolkit``.

Theory of operation -- one account; ``Session`` (``session.py``) runs the loop and maps the
errors raised here onto the states reported on ``bridge/accounts``; this module holds only the
vendor's steps (``connect`` / ``teardown``)::

    connecting: tokens (stored → configured at/rt → login, region redirect) → family (v2)
                → dispatch → WebSocket → userOnline → thing list + state (resync) → online
    online:     pushes (update, sysmsg) → registry; commands (update/query) matched by sequence;
                ping every hbInterval×U(0.8,1); no traffic for hbInterval+15 s → ``LinkLost``
    backoff:    any failure → pending commands fail, wait (capped exponential, full jitter) → connecting;
                a per-IP rate refusal (``Throttled``) waits at least ``user_online_interval``
    attention:  session taken (REST 401, or WS 406 on a session that had worked) or an auth/config
                error (406 on the very first attempt, login refused) → ``NeedsAttention``: the
                Session's attention schedule, which for CoolKit is ``attention_backoff`` doubling
                to ``attention_cap`` (never sooner than half the base), then one careful retry;
                never a tight re-login loop (it logs the user's phone app out)

Tokens persist in the account's token slot (``Session.load_tokens``/``save_tokens``: atomic,
0600, bound to ``CoolkitOptions.identity``) with the region and the user apikey, so a restart
does not log in again; ``402`` refreshes them (the ``rt`` rotates, the new one is saved at once).
Accounts created through OAuth (free developer APPIDs cannot call the login endpoint) are
configured with ``at``/``rt`` and optionally ``apikey`` instead of a password.

State values go to the link as the vendor sent them (multi-channel ``switches`` flattened into
``switch_<n>``); the link normalizes them against the device schema and counts each misfit once.

Every REST call and every ``userOnline`` takes its slot from the rate model (``gateway.rates``:
the per-IP rules of seed 001, process-wide, and the per-account ``userOnline`` interval), so many
accounts starting or reconnecting together stay within the seed's rules; the Session paces the
attempts themselves (``connect_per_second``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import aiohttp

from protocols.coolkit import profiles, rest
from protocols.coolkit import ws as ckws
from protocols.coolkit.profiles import Profile
from protocols.coolkit.rest import RATE_LIMITED, Hosts, HttpRequest, RegionRedirect, Thing
from protocols.coolkit.sign import Signer, make_nonce
from protocols.model import (
    Availability,
    CommandError,
    CommandResult,
    DeviceInfo,
    Property,
    RemoteProtocolError,
    Schema,
    StateChange,
    VendorError,
)

from .. import wsclient
from ..errors import ConfigError
from ..link import now_ms
from ..rates import Pacer, account_scope
from .base import AccountContext
from .options import opt, read_options
from .session import LinkLost, NeedsAttention, Session, Throttled

__all__ = ["CoolkitConnector", "CoolkitOptions"]

REGIONS = ("cn", "as", "us", "eu", "test")
AT_LIFETIME_MS = 30 * 86400 * 1000  # seed 001: "The Access Token expires in 30 days by default"
REFRESH_AFTER_MS = 25 * 86400 * 1000
DEDICATED_ACCOUNT_HINT = (
    "a CoolKit account allows one session per app: another login (the eWeLink app with the same "
    "APPID, another bridge or Home Assistant) takes it over. Use a dedicated eWeLink account for "
    "cloud2mqtt and share your devices (or your home) to it"
)


_DEFAULT_HOSTS = Hosts()
#: the account's ``rate_*`` keys → the ``[rates.coolkit]`` fields they override (they bind the
#: whole process: the per-IP budget is shared)
_RATE_KEYS = (
    ("rate_min_interval", "endpoint_interval"),
    ("rate_window", "window_seconds"),
    ("rate_max_calls", "window_calls"),
    ("user_online_interval", "account_connect_interval"),
)
_URL = ("http", "https")


@dataclass(frozen=True, slots=True)
class CoolkitOptions:
    app_id: str = opt(nonempty=True, help="the APPID from the eWeLink developer centre")
    app_secret: str = opt(nonempty=True, secret=True, help="the APP SECRET beside it")
    api_version: Literal[1, 2] = opt(2, help="the REST generation (v2, or the legacy v1)")
    # the seed's "test" region works but is not offered (checked in parse_options)
    region: str = opt("eu", help="cn, as, us or eu")
    email: str | None = opt(None, help="log in with email + password ...")
    phone_number: str | None = opt(None, help="... or phone_number (+country code) + password")
    password: str | None = opt(None, secret=True)
    country_code: str = opt("+1", help='like "+44"')
    at: str | None = opt(None, secret=True, help="an OAuth access token, with rt")
    rt: str | None = opt(None, secret=True, help="its refresh token")
    apikey: str | None = opt(None, help="the user's apikey (learned at login otherwise)")
    api_url: str = opt(_DEFAULT_HOSTS.api, schemes=_URL, help="URL template ({region}, {tld})")
    dispatch_url: str = opt(_DEFAULT_HOSTS.dispatch, schemes=_URL, help="URL template")
    v1_api_url: str = opt(_DEFAULT_HOSTS.v1_api, schemes=_URL, help="URL template")
    page_size: int = opt(30, minimum=1, maximum=30, help="the cloud times out on larger pages")
    handshake_timeout: float = opt(10.0, above=0)
    http_timeout: float = opt(15.0, above=0)
    backoff_base: float = opt(2.0, above=0)
    backoff_cap: float = opt(300.0, above=0)
    attention_backoff: float = opt(900.0, above=0, help="documented: 15 min doubling ...")
    attention_cap: float = opt(4 * 3600.0, above=0, help="... to 4 h")
    command_interval: float = opt(0.1, minimum=0.0)
    heartbeat_grace: float = opt(ckws.DEAD_GRACE, above=0)
    stall_timeout: float = opt(30.0, minimum=0.0)
    rate_min_interval: float | None = opt(None, above=0, help="[rates.coolkit] endpoint_interval")
    rate_window: float | None = opt(None, above=0, help="[rates.coolkit] window_seconds")
    rate_max_calls: int | None = opt(None, minimum=1, help="[rates.coolkit] window_calls")
    user_online_interval: float | None = opt(
        None, above=0, help="[rates.coolkit] account_connect_interval"
    )

    @property
    def hosts(self) -> Hosts:
        return Hosts(self.api_url, self.dispatch_url, self.v1_api_url)

    @property
    def rate_overrides(self) -> dict[str, float]:
        """The ``rate_*`` keys given on this account, as ``[rates.coolkit]`` fields."""
        given = ((name, getattr(self, key)) for key, name in _RATE_KEYS)
        return {name: value for name, value in given if value is not None}

    @property
    def identity(self) -> str:
        """What the stored tokens belong to (a config change must not reuse another's tokens)."""
        who = (
            self.phone_number
            or self.email
            or "oauth:" + hashlib.sha256((self.at or "").encode()).hexdigest()[:16]
        )
        return f"v{self.api_version}|{self.app_id}|{who}"


@dataclass(slots=True)
class _Dev:
    thing: Thing
    profile: Profile | None
    schema: Schema
    online: bool | None


_GROUP_PROFILE = Profile(
    "group", frozenset(), (Property("switch", "Switch", "bool", enum={False: "off", True: "on"}),)
)
_GROUP_SCHEMA = Schema(_GROUP_PROFILE.props, passthrough=True)


class CoolkitConnector(Session):
    vendor = "coolkit"
    #: named when a refusal does not point at one key (the first 406, a stray auth code)
    credential_keys: ClassVar[tuple[str, ...]] = (
        "app_id", "app_secret", "region", "password", "at", "apikey",
    )  # fmt: skip

    def __init__(
        self, options: CoolkitOptions, ctx: AccountContext, http: aiohttp.ClientSession
    ) -> None:
        super().__init__(options, ctx, http)
        self.opts = options
        self.backoff_base, self.backoff_cap = options.backoff_base, options.backoff_cap
        # CoolKit's own hard schedule (documented: 15 min doubling to 4 h) is this account's
        # attention schedule: a session taken or a refused login waits on it.
        self.attention_base, self.attention_cap = options.attention_backoff, options.attention_cap
        self.app = rest.App(options.app_id, Signer(options.app_secret), options.hosts)
        self._tokens: dict[str, Any] | None = None
        self._tokens_loaded = False
        self._taken = False  # the last session was taken over: its access token is dead
        self._devs: dict[str, _Dev] = {}
        self._ws: wsclient.WsConnection | None = None
        self._session: ckws.WsSession | None = None
        self._pinger_task: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[ckws.CommandReply]] = {}
        self._worked = False  # a handshake succeeded at least once in this process
        self._last_command = 0.0

    # ------------------------------------------------------------------ configuration

    @classmethod
    def parse_options(cls, raw: Mapping[str, Any], key: str) -> CoolkitOptions:
        opts = read_options(CoolkitOptions, raw, key)

        def error(name: str, message: str) -> ConfigError:
            return ConfigError(f"{key}.{name}", message)

        if opts.region not in REGIONS:
            raise error("region", f"must be one of {', '.join(r for r in REGIONS if r != 'test')}")
        email, phone, at, rt = opts.email, opts.phone_number, opts.at, opts.rt
        if email and phone:
            raise error("phone_number", "give email or phone_number, not both")
        if (email or phone) and not opts.password:
            raise error("password", "missing (needed with email/phone_number)")
        if not (email or phone) and not (at and rt):
            raise error(
                "email",
                "give email (or phone_number) and password, or an at/rt pair from the OAuth flow",
            )
        if bool(at) != bool(rt):
            raise error("rt" if at else "at", "at and rt come as a pair")
        if phone and not phone.startswith("+"):
            raise error("phone_number", 'must start with the country code, e.g. "+8618023456789"')
        cc = opts.country_code
        if not cc.startswith("+") or not cc[1:].isdigit():
            raise error("country_code", 'must look like "+44"')
        return opts

    # ------------------------------------------------------------------ tokens

    def token_identity(self) -> str:
        return self.opts.identity

    def _load_tokens(self) -> None:
        """The stored tokens, else the configured at/rt pair (saved at once), else none."""
        opts = self.opts
        stored = self.load_tokens()
        if stored and stored.get("at") and stored.get("rt"):
            self._tokens = stored
        elif opts.at and opts.rt:
            self._save(
                at=opts.at, rt=opts.rt, apikey=opts.apikey, region=opts.region, issued_ms=None
            )
        else:
            self._tokens = None

    def _save(self, **changes: Any) -> dict[str, Any]:
        tokens = {**(self._tokens or {}), **changes}
        self._tokens = tokens
        self.save_tokens(tokens)
        return tokens

    @property
    def region(self) -> str:
        region = (self._tokens or {}).get("region")
        return region if isinstance(region, str) and region in REGIONS else self.opts.region

    @property
    def _account_key(self) -> str:
        """The config key that names the CoolKit account."""
        opts = self.opts
        return "phone_number" if opts.phone_number else "email" if opts.email else "at"

    def _expiry(self) -> int | None:
        issued = (self._tokens or {}).get("issued_ms")
        return int(issued) + AT_LIFETIME_MS if isinstance(issued, int) else None

    def _session_taken(self, why: str) -> NeedsAttention:
        """Another login took the account's session over, which kills our access token.

        Not fought: the Session waits on the attention schedule, and the next session logs in
        once more (when a password is configured)."""
        self._taken = True
        return NeedsAttention(
            f"session taken by another login: {why}; not fighting it. Hint: {DEDICATED_ACCOUNT_HINT}",
            self._account_key,
        )

    def _throttled(self, why: str) -> Throttled:
        interval = self.pacer.rates(self.vendor).account_connect_interval
        return Throttled(f"the cloud's per-IP rules: {why}", retry_after=interval or 20.0)

    # ------------------------------------------------------------------ pacing

    def configure_pacer(self, pacer: Pacer) -> None:
        if self.opts.rate_overrides:
            pacer.configure(self.vendor, self.opts.rate_overrides, self.ctx.account)

    # ------------------------------------------------------------------ HTTP

    async def _send(self, req: HttpRequest, kind: str = "call") -> tuple[int, bytes]:
        timeout = aiohttp.ClientTimeout(total=self.opts.http_timeout)
        async with self.paced(req.endpoint, kind), self.http.request(
            req.method, req.url, headers=dict(req.headers), data=req.body, timeout=timeout
        ) as resp:
            return resp.status, await resp.read()

    async def _signed(self, req: HttpRequest, kind: str = "call") -> Any:
        status, body = await self._send(req, kind)
        return rest.parse_envelope(status, body, self.opts.api_version)

    async def _bearer(
        self,
        build: Callable[[str], HttpRequest],
        version: Literal[1, 2] | None = None,
        kind: str = "call",
    ) -> Any:
        """A Bearer call's parsed reply (see ``_bearer_reply``)."""
        return (await self._bearer_reply(build, version or self.opts.api_version, kind))[2]

    async def _bearer_reply(
        self, build: Callable[[str], HttpRequest], version: Literal[1, 2], kind: str = "call"
    ) -> tuple[int, bytes, Any]:
        """A Bearer call: ``402`` refreshes once and retries; ``401`` means the session was taken."""

        async def once() -> tuple[int, bytes, Any]:
            tokens = await self._ensure_tokens()
            status, body = await self._send(build(str(tokens["at"])), kind)
            try:
                return status, body, rest.parse_envelope(status, body, version)
            except VendorError as exc:
                if exc.vendor_code == 401:
                    raise self._session_taken(
                        f"access token rejected (401: {exc.message})"
                    ) from None
                if exc.vendor_code == RATE_LIMITED:
                    raise self._throttled(exc.message) from None
                raise

        return await self.with_reauth(once, self._refresh, _token_expired)

    async def _ensure_tokens(self) -> dict[str, Any]:
        if not self._tokens_loaded:
            self._tokens_loaded = True
            self._load_tokens()
        if self._tokens is None:
            await self._login()
        assert self._tokens is not None
        return self._tokens

    async def _login(self) -> None:
        opts = self.opts
        if not opts.password:
            raise NeedsAttention(
                "no valid tokens and no password: authorize again through OAuth and configure the new at/rt",
                "at",
            )
        region = self.region
        for _ in range(3):
            now = int(time.time())
            try:
                data = await self._signed(
                    rest.login_request(
                        self.app, opts.api_version, region,
                        nonce=make_nonce(), password=opts.password or "", country_code=opts.country_code,
                        email=opts.email, phone_number=opts.phone_number, ts=now,
                    ),
                    "login",
                )  # fmt: skip
            except RegionRedirect as redirect:
                if redirect.region not in REGIONS or redirect.region == region:
                    raise NeedsAttention(
                        f"login redirected to an unknown region {redirect.region!r}", "region"
                    ) from None
                self.ctx.log.info(
                    "account lives in region %s (not %s); logging in there", redirect.region, region
                )
                region = redirect.region
                continue
            except VendorError as exc:
                raise self._login_error(exc) from None
            result = rest.parse_login(data)
            self._save(
                at=result.at, rt=result.rt, apikey=result.apikey, region=result.region or region,
                issued_ms=now_ms(),
            )  # fmt: skip
            self.ctx.count("logins")
            self.ctx.log.info("logged in (region %s)", self.region)
            return
        raise NeedsAttention("login kept redirecting between regions", "region")

    def _login_error(self, exc: VendorError) -> Exception:
        code = exc.vendor_code
        if code == RATE_LIMITED:
            return self._throttled(exc.message)
        v1 = self.opts.api_version == 1
        if code in ((401, 404) if v1 else (10001, 10003)):
            return NeedsAttention(
                f"login refused ({code}: {exc.message}): check email/phone_number and password",
                "password" if code in (401, 10001) else self._account_key,
            )
        if code in (406, 407, 408) or (code == 400 and "sign" in exc.message.lower()):
            return NeedsAttention(
                f"login refused ({code}: {exc.message}): check app_id/app_secret; free developer "
                "APPIDs may only use OAuth -- configure at/rt from the OAuth flow instead of a password",
                "app_secret",
            )
        if code == 400:
            return NeedsAttention(f"login refused ({code}: {exc.message}): incomplete parameters")
        return exc

    async def _refresh(self) -> None:
        opts = self.opts
        tokens = self._tokens or {}
        rt = tokens.get("rt")
        try:
            if not isinstance(rt, str):
                raise VendorError("auth", 0, "no refresh token")
            data = await self._signed(
                rest.refresh_request(
                    self.app, opts.api_version, self.region,
                    nonce=make_nonce(), rt=rt, ts=int(time.time()),
                ),
                "login",
            )  # fmt: skip
            at, new_rt = rest.parse_refresh(data)
        except (VendorError, RemoteProtocolError) as exc:
            if isinstance(exc, VendorError) and exc.vendor_code == RATE_LIMITED:
                raise self._throttled(exc.message) from None
            self.ctx.log.warning("token refresh failed (%s)", getattr(exc, "vendor_code", exc))
            self._tokens = None
            self.save_tokens(None)
            await self._login()  # NeedsAttention for OAuth-only accounts
            return
        self._save(at=at, rt=new_rt, issued_ms=now_ms())
        self.ctx.log.info("access token refreshed")

    # ------------------------------------------------------------------ session

    async def connect(self) -> None:
        opts = self.opts
        if self._taken:
            self._taken = False
            if opts.password:
                self._tokens = None  # taken over: the access token is dead, log in again (once)
        tokens = await self._ensure_tokens()
        issued = tokens.get("issued_ms")
        if isinstance(issued, int) and now_ms() - issued > REFRESH_AFTER_MS:
            await self._refresh()
        families: tuple[str | None, ...] = (None,)
        if opts.api_version == 2:
            family = rest.parse_family(await self._bearer(
                lambda at: rest.family_request(opts.hosts, self.region, at=at, nonce=make_nonce())))  # fmt: skip
            if family.apikey and not (self._tokens or {}).get("apikey"):
                self._save(apikey=family.apikey)
            families = family.family_ids or (None,)
        apikey = (self._tokens or {}).get("apikey")
        if not isinstance(apikey, str) or not apikey:
            raise NeedsAttention(
                "the user apikey is unknown: configure apikey with the at/rt pair", "apikey"
            )
        dispatch = rest.parse_dispatch(*await self._raw_bearer(
            lambda at: rest.dispatch_request(self.app, opts.api_version, self.region, at=at,
                                             nonce=make_nonce(), ts=int(time.time()))))  # fmt: skip
        url = dispatch.url(opts.hosts.ws_scheme())
        tokens = await self._ensure_tokens()
        # One userOnline: the per-IP interface rules and this account's userOnline interval.
        async with self.paced("WS userOnline", "handshake"):
            # Our own client (gateway/wsclient.py); flow=ctx stops reading while MQTT is congested.
            self._ws = ws = await wsclient.connect(
                url, open_timeout=opts.handshake_timeout, max_size=4 << 20, flow=self.ctx
            )
            self._session = session = ckws.WsSession(
                opts.api_version, opts.app_id, str(tokens["at"]), apikey
            )
            ws.send(session.handshake(now_ms=now_ms(), nonce=make_nonce()))
        event = session.receive(await _recv(ws, opts.handshake_timeout, "no answer to userOnline"))
        if isinstance(event, ckws.HandshakeFailed):
            if event.error == 406:
                if self._worked:
                    raise self._session_taken(
                        "userOnline refused with 406 on a session that had worked"
                    )
                raise NeedsAttention(
                    "userOnline refused with 406 on the first attempt: wrong APPID, signature or "
                    "incomplete parameters (check app_id/app_secret, region, at/apikey)"
                )
            if event.error == RATE_LIMITED:
                raise self._throttled("userOnline refused: repeated too often")
            raise VendorError(
                "vendor", event.error, f"userOnline refused: {event.reason or event.error}"
            )
        if not isinstance(event, ckws.HandshakeDone):
            raise RemoteProtocolError("unexpected answer to userOnline")
        self._worked = True
        hb = dataclasses.replace(event.heartbeat, grace=opts.heartbeat_grace)
        # Ping from the handshake on: the resync below may be paced by the rate budget for
        # longer than the server tolerates a silent socket.
        self._pinger_task = asyncio.create_task(self._pinger(ws, hb))
        await self._sync(families, apikey)
        self.mark_online(token_expires_ms=self._expiry())
        await self._reader(ws, session, hb)

    async def _raw_bearer(self, build: Callable[[str], HttpRequest]) -> tuple[int, bytes]:
        """Dispatch replies use their own envelope (the v1 one); 401/402 as every Bearer call."""
        status, body, _ = await self._bearer_reply(build, 1)
        return status, body

    async def teardown(self) -> None:
        pinger, session, ws = self._pinger_task, self._session, self._ws
        self._pinger_task = self._session = self._ws = None
        if pinger is not None:
            pinger.cancel()
            # wait() never raises the pinger's own CancelledError, so a cancellation of this
            # task (the account being stopped) still propagates: suppressing it here made the
            # Session reconnect forever and Gateway.stop() hang
            await asyncio.wait({pinger})
        if session is not None:
            for seq in session.close():
                fut = self._pending.pop(seq, None)
                if fut is not None and not fut.done():
                    fut.set_exception(CommandError(
                        "vendor", "the CoolKit connection closed before the device answered; retry"))  # fmt: skip
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(CommandError("vendor", "the CoolKit connection closed; retry"))
        self._pending.clear()
        if ws is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await ws.close()

    async def close(self) -> None:
        await self.teardown()

    # ------------------------------------------------------------------ sync

    async def _sync(self, families: tuple[str | None, ...], apikey: str) -> None:
        """Resync after every (re)connect: complete thing list, then a state snapshot."""
        opts = self.opts
        things: list[Thing] = []
        if opts.api_version == 2:
            seen: set[str] = set()
            for fid in families:
                pager = rest.ThingPager(opts.page_size, apikey)
                while pager.begin_index is not None:
                    begin = pager.begin_index
                    data = await self._bearer(
                        lambda at: rest.thing_page_request(
                            opts.hosts, self.region, at=at, nonce=make_nonce(), begin_index=begin,  # noqa: B023
                            num=opts.page_size, familyid=fid))  # noqa: B023  # fmt: skip
                    pager.feed(data)
                for reason in pager.bad:
                    self.ctx.bad_input(f"thing list entry skipped: {reason}")
                for thing in pager.things:
                    if thing.id not in seen:
                        seen.add(thing.id)
                        things.append(thing)
        else:
            doc = await self._bearer(
                lambda at: rest.v1_devices_request(self.app, self.region, at=at,
                                                   nonce=make_nonce(), ts=int(time.time())))  # fmt: skip
            things, bad = rest.parse_v1_devices(doc, apikey)
            for reason in bad:
                self.ctx.bad_input(f"device list entry skipped: {reason}")
        devs: dict[str, _Dev] = {}
        infos = []
        for thing in things:
            if thing.kind == "group":
                profile: Profile | None = _GROUP_PROFILE
                schema = _GROUP_SCHEMA
            else:
                profile = profiles.profile_for(thing.uiid)
                schema = profiles.schema_for(thing.uiid, thing.tags)
            devs[thing.id] = _Dev(thing, profile, schema, thing.online)
            extra: dict[str, Any] = {"kind": thing.kind, "shared": thing.shared}
            if thing.uiid is not None:
                extra["uiid"] = thing.uiid
            if thing.brand:
                extra["brand"] = thing.brand
            infos.append(DeviceInfo(thing.id, thing.name, thing.model, schema, thing.online, extra))
        self._devs = devs
        self.ctx.devices(infos)
        now = now_ms()
        for dev in devs.values():
            if dev.online is not None:
                self.ctx.availability(Availability(dev.thing.id, dev.online, now))
            if dev.thing.params:
                self._state(dev, dev.thing.params, now)

    def _state(self, dev: _Dev, params: Mapping[str, Any], ts: int, seq: int | None = None) -> None:
        """Report params as sent (channels flattened): the link normalizes and counts misfits."""
        props = profiles.flatten(dev.profile, params)
        if props:
            self.ctx.state(StateChange(dev.thing.id, props, ts, seq))

    # ------------------------------------------------------------------ live socket

    async def _pinger(self, ws: wsclient.WsConnection, hb: ckws.Heartbeat) -> None:
        while True:
            await asyncio.sleep(hb.ping_delay())
            ws.send(ckws.PING)

    async def _reader(
        self, ws: wsclient.WsConnection, session: ckws.WsSession, hb: ckws.Heartbeat
    ) -> None:
        loop = asyncio.get_running_loop()
        last_rx = loop.time()
        stall = self.opts.stall_timeout
        dead_after = min(hb.dead_after, stall) if stall else hb.dead_after
        why = (
            f"stalled: nothing for {dead_after:g}s, not even a pong to a probe"
            if dead_after < hb.dead_after
            else f"no traffic for {hb.dead_after:g}s (hbInterval {hb.interval:g}s + {hb.grace:g}s)"
        )
        probed = False
        while True:
            now = loop.time()
            remaining = last_rx + dead_after - now
            if stall and not probed:
                # Silent for half the stall bound: ping now (an application round trip the
                # cloud must answer) instead of waiting for the next scheduled ping.
                to_probe = last_rx + stall / 2 - now
                if to_probe <= 0:
                    ws.send(ckws.PING)
                    probed = True
                    continue
                remaining = min(remaining, to_probe)
            try:
                async with asyncio.timeout(max(remaining, 0.0)):
                    raw = await ws.recv()
            except TimeoutError:
                if loop.time() - last_rx < dead_after:
                    continue  # time to probe
                self.ctx.count("stalls")
                raise LinkLost(why) from None
            except wsclient.ConnectionClosed as exc:
                raise LinkLost(f"WebSocket {exc}") from None
            last_rx = loop.time()
            probed = False
            try:
                self.ctx.count("frames")
                event = session.receive(raw)
            except RemoteProtocolError as exc:
                self.ctx.bad_input(f"unreadable frame: {exc}")
                continue
            try:
                self._on_event(event)
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                self.ctx.bad_input(f"frame could not be applied: {type(exc).__name__}: {exc}")
            await self.ctx.drain()

    def _on_event(self, event: ckws.WsEvent) -> None:
        now = now_ms()
        if isinstance(event, ckws.CommandReply):
            fut = self._pending.pop(event.sequence, None)
            if fut is not None and not fut.done():
                fut.set_result(event)
        elif isinstance(event, ckws.DeviceUpdate):
            dev = self._listed(event.deviceid, "update")
            if dev is None:
                return
            self._state(dev, event.params, now, event.seq)
            if dev.online is False and set(event.params) - {"subDevRssi"}:
                # A real report proves the device is up (subDevRssi arrives even for offline ones).
                dev.online = True
                self.ctx.availability(Availability(dev.thing.id, True, now, "update"))
        elif isinstance(event, ckws.SysMsg):
            dev = self._listed(event.deviceid, "sysmsg")
            if dev is None:
                return
            if event.online is not None:
                dev.online = event.online
                self.ctx.availability(Availability(dev.thing.id, event.online, now, "sysmsg"))
            rest_params = {k: v for k, v in event.params.items() if k != "online"}
            if rest_params:
                self._state(dev, rest_params, now)
        elif isinstance(event, ckws.ServerError):
            if event.error == 406:
                raise self._session_taken(
                    f"the cloud ended the session (406 {event.reason})".strip()
                )
            self.ctx.bad_input(f"unsolicited error frame {event.error} {event.reason}".strip())

    def _listed(self, device: str, frame: str) -> _Dev | None:
        """The device a pushed frame names, or ``None`` (counted) when the list lacks it."""
        dev = self._devs.get(device)
        if dev is None:
            self.ctx.bad_input(
                f"{frame} for a device the thing list does not hold", device, "unknown_device"
            )
        return dev

    # ------------------------------------------------------------------ commands

    def _device(self, device: str) -> _Dev:
        dev = self._devs.get(device)
        if dev is None:
            raise CommandError("invalid", f"unknown CoolKit device {device!r}")
        return dev

    async def _command(
        self, action: Literal["update", "query"], dev: _Dev, params: Any
    ) -> ckws.CommandReply:
        ws, session = self._ws, self._session
        if ws is None or session is None or session.state != "live":
            raise CommandError("offline", "the CoolKit cloud link is down")
        loop = asyncio.get_running_loop()
        gap = self._last_command + self.opts.command_interval - loop.time()
        self._last_command = max(loop.time(), self._last_command + self.opts.command_interval)
        if gap > 0:
            await asyncio.sleep(gap)
        if self._session is not session:
            raise CommandError("vendor", "the CoolKit connection was replaced; retry")
        seq, frame = session.command(
            action, now_ms=now_ms(), deviceid=dev.thing.id,
            owner_apikey=dev.thing.owner_apikey, params=params,
        )  # fmt: skip
        fut: asyncio.Future[ckws.CommandReply] = loop.create_future()
        self._pending[seq] = fut
        try:
            # Counted on the account's budget; the per-IP rules of seed 001 bind its REST
            # interfaces, not the frames on an open socket.
            own = (account_scope(self.vendor, self.ctx.account),)
            async with self.paced(f"WS {action}", "command", scopes=own):
                ws.send(frame)
            return await fut
        except wsclient.ConnectionClosed:
            raise CommandError(
                "vendor", "the CoolKit connection closed while sending; retry"
            ) from None
        finally:
            self._pending.pop(seq, None)
            session.forget(seq)

    @staticmethod
    def _reply_error(reply: ckws.CommandReply) -> CommandError:
        code = reply.error
        if code == 504:
            # The device did not answer in time. Not proof of being offline: only sysmsg is.
            return CommandError("offline", "the device did not answer (504 Request Timeout)", 504)
        if code == 503:
            return CommandError("offline", "the device is offline (503)", 503)
        text = reply.reason or rest.ERROR_TEXT.get(code, f"error {code}")
        return CommandError(rest.error_code(code), text, code)

    async def set(self, device: str, props: dict[str, Any]) -> CommandResult:
        dev = self._device(device)
        params = profiles.encode_params(dev.profile, dev.schema, props)
        if dev.thing.kind == "group":
            gid = dev.thing.id[len(rest.GROUP_PREFIX) :]
            # A session taken (401) or a rate refusal is a LinkError: answered with its code.
            await self._bearer(lambda at: rest.group_status_request(
                self.opts.hosts, self.region, at=at, nonce=make_nonce(), group_id=gid, params=params), 2,
                "command")  # fmt: skip
            return CommandResult.ok()
        if dev.online is False:
            raise CommandError("offline", "the device is offline (as the cloud last reported)")
        reply = await self._command("update", dev, params)
        if reply.error != 0:
            raise self._reply_error(reply)
        return CommandResult.ok()

    async def get(self, device: str, props: list[str]) -> CommandResult:
        dev = self._device(device)
        if dev.thing.kind == "group":
            raise CommandError(
                "invalid", "CoolKit groups cannot be queried; read the member devices"
            )
        if dev.online is False:
            raise CommandError("offline", "the device is offline (as the cloud last reported)")
        reply = await self._command("query", dev, profiles.query_names(dev.profile, props))
        if reply.error != 0:
            raise self._reply_error(reply)
        params = reply.params or {}
        if params:
            self._state(dev, params, now_ms())
        # as read (channels flattened): the command handler normalizes and filters
        return CommandResult.ok(profiles.flatten(dev.profile, params))


def _token_expired(exc: Exception) -> bool:
    """``402``: the access token expired; refresh it and call once more."""
    return isinstance(exc, VendorError) and exc.vendor_code == 402


async def _recv(ws: wsclient.WsConnection, timeout: float, silent: str) -> str | bytes:
    """The next message; ``LinkLost`` when none comes within ``timeout`` or the socket ends."""
    try:
        async with asyncio.timeout(timeout):
            return await ws.recv()
    except TimeoutError:
        raise LinkLost(silent) from None
    except wsclient.ConnectionClosed as exc:
        raise LinkLost(f"WebSocket {exc}") from None
