"""XiakeCloud connector: the REST API turned into the topic tree by polling.

Theory of operation
-------------------
XiakeCloud has no push channel (seed 000 is a REST API only), so one connector per account runs
one loop::

    login ─▶ poll get_device_list ─▶ diff against the last listing ─▶ publish what changed ─▶ sleep
      ▲            │ session rejected: log in again, retry once (paced)
      └── backoff ◀┘ HTTP/network/vendor error: link "backoff", full resync when it comes back

- **Session.** ``login`` returns a ``session`` that every other call carries. The seed names no
  lifetime, so the session is kept until the cloud rejects it (the assumed invalid-session code,
  ``protocols.xky.envelope``); then the connector logs in again once and retries the call. The
  session is persisted in ``ctx.tokens`` so a restart does not log in again.
- **Polling.** Every ``poll_interval`` seconds ± ``poll_jitter`` (a fraction), so that many
  accounts drift apart; two ``get_device_list`` requests never start closer than
  ``min_poll_interval``, whatever happens (errors, re-login retries, a short interval).
- **Publishing.** The first good listing after start, and after every failed poll, is a full
  resync (``ctx.devices`` + state + availability of every device). Otherwise only the
  differences from ``protocols.xky.records.diff``: a new device → ``ctx.device`` + state +
  availability; changed fields → ``ctx.state`` with those fields only; a changed online state →
  ``ctx.availability``; a changed name or node → ``ctx.device``; a vanished device →
  ``ctx.devices`` with the complete list, which clears its topics and emits ``bridge/event``.
- **Bad input.** A reply that cannot be parsed is counted (``ctx.bad_input``) and that poll is
  skipped: the last listing stays, so nothing is published or removed on its account.
- **Commands.** ``set`` accepts ``name``, ``desc`` and ``tags`` only (the schema marks everything
  else read-only, so the gateway rejects it first). ``set_device`` is sent with all three, as in
  the seed's example, the ones not being set taken from a fresh ``get_device`` so a change made
  elsewhere since the last poll is not reverted. ``request("multi_device", {"sns": [...]})``
  replaces the group-control list with ``set_multi_device``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp

from protocols.model import (
    CommandError,
    CommandResult,
    RemoteProtocolError,
    StateChange,
)
from protocols.xky import api
from protocols.xky.envelope import SessionInvalid, parse_response
from protocols.xky.records import (
    WRITABLE,
    DeviceRecord,
    availability,
    device_info,
    diff,
    parse_device,
    parse_device_list,
    parse_login,
    state_change,
)

from ..errors import ConfigError
from ..link import LinkState
from ..rates import ASSUMED_LIMITS, Pacer
from .base import AccountContext
from .options import opt, read_options
from .session import Deferred, LinkLost, Session

#: the backoff floor when the account sets no min_poll_interval (the rate model's default)
DEFAULT_MIN_POLL = ASSUMED_LIMITS["xky"].account_poll_interval or 5.0

__all__ = ["XkyConnector", "XkyOptions"]


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class XkyOptions:
    account: str = opt(nonempty=True, help="the XiakeCloud account")
    password: str = opt(secret=True, help="its password")
    subaccount: str = opt("", help="log in as this sub-account")
    key: str = opt(api.DEFAULT_KEY, secret=True, help="the login key")
    base_url: str = opt(api.DEFAULT_BASE_URL, schemes=("http", "https"), help="API base")
    poll_interval: float = opt(30.0, above=0, help="seconds between polls")
    min_poll_interval: float | None = opt(
        None, above=0, help="never poll faster than this ([rates.xky] account_poll_interval: 5)"
    )
    poll_jitter: float = opt(0.1, minimum=0, below=1, help="fraction of the interval")
    request_timeout: float = opt(10.0, above=0, help="seconds")
    backoff_cap: float = opt(300.0, above=0, help="seconds")
    logout_on_close: bool = opt(False, help="log out on shutdown")

    @property
    def poll_floor(self) -> float:
        """The minimum poll spacing: this account's, else the rate model's default."""
        return self.min_poll_interval or DEFAULT_MIN_POLL


class XkyConnector(Session):
    vendor: ClassVar[str] = "xky"
    credential_keys: ClassVar[tuple[str, ...]] = ("account", "password", "subaccount", "key")
    retry_state: ClassVar[LinkState | None] = None
    options: XkyOptions

    @classmethod
    def parse_options(cls, raw: Mapping[str, Any], key: str) -> XkyOptions:
        opts = read_options(XkyOptions, raw, key)
        if not opts.key:
            opts = dataclasses.replace(opts, key=api.DEFAULT_KEY)
        if opts.poll_interval < opts.poll_floor:
            raise ConfigError(
                f"{key}.poll_interval",
                f"{opts.poll_interval:g}s is below min_poll_interval ({opts.poll_floor:g}s)",
            )
        return opts

    def __init__(
        self, options: XkyOptions, ctx: AccountContext, http: aiohttp.ClientSession
    ) -> None:
        super().__init__(options, ctx, http)
        self.backoff_base = self.backoff_floor = options.poll_floor
        self.backoff_cap = options.backoff_cap
        self._session: str | None = None
        self._snapshot: dict[str, DeviceRecord] = {}
        self._resync = True
        self._lock = asyncio.Lock()  # one poll or one set at a time: the snapshot stays true
        self._login_lock = asyncio.Lock()
        self._rng = random.Random()
        self._timeout = aiohttp.ClientTimeout(total=options.request_timeout)
        self._load_session()

    # ------------------------------------------------------------------ the loop

    async def connect(self) -> None:
        """Poll until a poll fails; the Session then backs off and this starts again with a
        full resync (a failed poll may have missed changes)."""
        self._resync = True
        while True:
            try:
                async with self._lock:
                    await self._poll()
            except RemoteProtocolError as exc:
                self.ctx.bad_input(f"malformed reply, poll skipped: {exc}")
            except SessionInvalid as exc:  # rejected again right after a fresh login
                raise LinkLost(f"{exc.vendor_code}: {exc.message}") from None
            except Deferred as exc:  # the budget runs low: this round's poll is skipped
                self.ctx.log.info("poll skipped: %s", exc)
            else:
                self.mark_online()
            await asyncio.sleep(self._next_interval())

    def configure_pacer(self, pacer: Pacer) -> None:
        # The minimum poll spacing is a rule of this account's scope in the rate model (kind
        # ``poll``): the pacer holds every listing request to it, retries and re-logins included.
        if self.options.min_poll_interval is not None:
            pacer.configure_account(
                self.vendor, self.ctx.account,
                {"account_poll_interval": self.options.min_poll_interval},
            )  # fmt: skip

    def _next_interval(self) -> float:
        opts = self.options
        spread = opts.poll_interval * opts.poll_jitter
        return opts.poll_interval + self._rng.uniform(-spread, spread)

    async def _poll(self) -> None:
        # A poll after a good one may be skipped when the budget runs low; a resync may not.
        records = parse_device_list(
            await self._call(api.get_device_list, kind="poll", optional=not self._resync)
        )
        ts = now_ms()
        ctx = self.ctx
        # A resync is a diff against nothing: every device is "added", with its whole state.
        changes = diff({} if self._resync else self._snapshot, records)
        self._snapshot = dict(changes.snapshot)
        if changes.empty and not self._resync:
            return
        if self._resync or changes.removed:
            ctx.devices([device_info(r) for r in records])  # the complete list clears vanished ones
        else:
            for r in changes.added:
                ctx.device(device_info(r))
        self._resync = False
        for r in changes.info:
            ctx.device(device_info(r))
        for r in changes.added:
            ctx.state(state_change(r, ts))
        for r, props in changes.changed:
            ctx.state(state_change(r, ts, props))
        for r in changes.added + changes.availability:
            av = availability(r, ts)
            if av is not None:
                ctx.availability(av)
        await ctx.drain()

    # ------------------------------------------------------------------ session

    def token_identity(self) -> str:
        o = self.options
        return f"{o.account}|{o.subaccount}|{o.base_url}"

    def _load_session(self) -> None:
        session = (self.load_tokens() or {}).get("session")
        if isinstance(session, str) and session:
            self._session = session

    async def _login(self) -> str:
        opts = self.options
        result = parse_login(
            await self._send(
                api.login(opts.account, opts.password, opts.subaccount, opts.key), "login"
            )
        )
        self._session = result.session
        self.save_tokens(
            {"session": result.session, "uid": result.uid, "account": opts.account,
             "subaccount": opts.subaccount, "base_url": opts.base_url}
        )  # fmt: skip
        self.ctx.count("logins")
        self.ctx.log.info(
            "logged in%s", f" as sub-account {opts.subaccount}" if opts.subaccount else ""
        )
        return result.session

    async def _session_for(self, rejected: str | None = None) -> str:
        """The current session; a new login if there is none or ``rejected`` is still current."""
        async with self._login_lock:
            if self._session is not None and self._session != rejected:
                return self._session
            self._session = None
            if rejected is not None:
                self.ctx.log.info("session rejected; logging in again")
            return await self._login()

    async def _call(
        self, build: Callable[[str], api.Request], *, kind: str = "call", optional: bool = False
    ) -> Any:
        """Send one call with the session; on a rejected session log in again and retry once.

        ``kind`` / ``optional``: how the rate model paces it (``Session.paced``; a ``poll`` keeps
        to the account's minimum poll spacing)."""
        session = await self._session_for()
        try:
            return await self._send(build(session), kind, optional)
        except SessionInvalid:
            session = await self._session_for(rejected=session)
            return await self._send(build(session), kind)

    async def _send(self, req: api.Request, kind: str = "call", optional: bool = False) -> Any:
        headers = {"content-type": "application/json"} if req.body is not None else None
        endpoint = f"{req.method} {req.path}"
        async with self.paced(endpoint, kind, optional=optional), self.http.request(
            req.method,
            req.url(self.options.base_url),
            params=req.query,
            data=req.body,
            headers=headers,
            timeout=self._timeout,
        ) as resp:
            body = await resp.read()
            return parse_response(resp.status, body)

    # ------------------------------------------------------------------ commands

    async def _command(self, build: Callable[[str], api.Request]) -> Any:
        try:
            return await self._call(build, kind="command")
        except RemoteProtocolError as exc:
            self.ctx.bad_input(f"malformed reply to a command: {exc}")
            raise CommandError("vendor", f"malformed reply: {exc}") from None
        except TimeoutError:
            raise CommandError("timeout", "XiakeCloud did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise CommandError("vendor", f"XiakeCloud unreachable: {type(exc).__name__}") from None

    async def set(self, device: str, props: dict[str, Any]) -> CommandResult:
        extra = sorted(set(props) - WRITABLE)
        if extra:
            raise CommandError(
                "invalid", f"only name, desc and tags can be set, not {', '.join(extra)}"
            )
        async with self._lock:
            if device not in self._snapshot:
                raise CommandError("invalid", f"unknown device {device!r}")
            data = await self._command(lambda s: api.get_device(s, device))
            try:
                fresh = parse_device(data, device)
            except RemoteProtocolError as exc:
                self.ctx.bad_input(f"malformed get_device reply: {exc}", device)
                raise CommandError("vendor", f"malformed reply: {exc}") from None
            name = props.get("name", fresh.name)
            desc = props.get("desc", fresh.desc)
            tags = tuple(props.get("tags", fresh.tags))
            await self._command(
                lambda s: api.set_device(s, device, name=name, desc=desc, tags=list(tags))
            )
            old = self._snapshot.get(device, fresh)
            new = dataclasses.replace(fresh, name=name, desc=desc, tags=tags)
            self._snapshot[device] = new
            delta = {k: v for k, v in new.props().items() if old.props().get(k) != v}
            if (new.name, new.node) != (old.name, old.node):
                self.ctx.device(device_info(new))
            if delta:
                self.ctx.state(StateChange(device, delta, now_ms()))
        return CommandResult.ok()

    async def request(self, command: str, payload: Mapping[str, Any]) -> CommandResult:
        if command != "multi_device":
            return await super().request(command, payload)
        sns = payload.get("sns")
        if not isinstance(sns, list) or not all(isinstance(s, str) and s for s in sns):
            raise CommandError("invalid", '"sns" must be an array of device serial numbers')
        await self._command(lambda s: api.set_multi_device(s, sns))
        return CommandResult.ok({"sns": list(sns)})

    async def close(self) -> None:
        if not self.options.logout_on_close or self._session is None:
            return
        session, self._session = self._session, None
        self.save_tokens(None)
        with contextlib.suppress(Exception):
            await self._send(api.logout(session))
