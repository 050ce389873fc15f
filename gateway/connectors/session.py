"""``Session``: the run loop every connector shares; connectors write only their vendor's steps.

Theory of operation
-------------------
One ``run()`` per account, one *session* per connection to the vendor::

    CONNECTING ─▶ connect(): log in, list devices, open the push channel, resync, then
        │          mark_online() and hold the channel until it ends
        │                     │ returns or raises
        ▼                     ▼
      teardown() ─▶ classify the error ─▶ LinkState + delay ─▶ sleep ─▶ CONNECTING …

A connector subclasses ``Session`` and implements ``connect()`` (and ``teardown()`` when it
holds something to close). It raises the typed errors below, or lets the usual transport
errors escape; ``Session`` maps each onto a ``LinkState`` and a delay, so every vendor backs
off, flags and logs the same way:

=======================  ==================  ==============================================
raised                   link state          next attempt
=======================  ==================  ==============================================
``connect()`` returned   BACKOFF             ``backoff`` (capped exponential, full jitter)
``LinkLost``, OSError,   BACKOFF             ``backoff``
timeouts, HTTP errors,
``VendorError``
``HandshakeRejected``    BACKOFF             ``backoff`` (the WebSocket upgrade was refused)
``RemoteProtocolError``  BACKOFF             ``backoff``; counted as ``bad_replies``
``Throttled``            BACKOFF             ``max(backoff, retry_after)``
``NeedsAttention``,      ATTENTION           the attention schedule: one for every vendor
``VendorError("auth")``  (flagged)           (``attention_base`` doubling to
                                             ``attention_cap``, at least half the base);
                                             the log line names the config key to check
=======================  ==================  ==============================================

Pacing (``gateway.rates``): every attempt first takes a ``connect`` slot from the pacer for the
account's scopes (``rate_scopes``), at start-up as after a loss, so N accounts that drop at
once come back spread at the vendor's connect rate. The slot covers the attempt's logins and
handshakes; one made outside an attempt (a token renewal while online) takes its own. Every
vendor call runs inside ``async with self.paced(endpoint, kind)``, which counts it by endpoint
and scope and waits for its slot; ``optional=True`` marks calls that are skipped first when a
budget runs low (``Deferred``), ``kind="command"`` ones that are answered ``throttled`` at once
rather than queued past the command's timeout.

A successful ``mark_online()`` resets both schedules. The session's own helpers cover the rest
of the plumbing every vendor had written for itself: the token slot bound to the configured
identity (``load_tokens`` / ``save_tokens``) and "call, and on a rejected token re-authenticate
once and call again" (``with_reauth``).

Starting and stopping one account is the supervisor's (``Gateway.start_account`` /
``stop_account``): cancelling ``run()`` runs ``teardown()``; ``close()`` says goodbye to the
vendor afterwards.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar, TypeVar

import aiohttp

from protocols.model import ErrorCode, RemoteProtocolError, VendorError
from protocols.websocket import HandshakeRejected

from .. import rates
from ..backoff import Backoff
from ..link import LinkState
from ..rates import Deferred, Pacer, RateLimited, ScopeKey
from .base import AccountContext, Connector

__all__ = ["Deferred", "LinkError", "LinkLost", "NeedsAttention", "Session", "Throttled"]

T = TypeVar("T")

#: One attention schedule for every vendor (seconds): credentials that were refused are tried
#: again after 5, 10, 20 … minutes, at most hourly, never sooner than half the base.
ATTENTION_BASE = 300.0
ATTENTION_CAP = 3600.0
#: a garbled frame re-reads its device's state at most this often (seconds), this many at once
REREAD_INTERVAL = 30.0
REREAD_MAX = 8


class LinkError(Exception):
    """Base of the errors a connector raises to end a session.

    A command that runs into one is answered with its ``reply_code``.

    Strategy: raise the most specific one; the ``Session`` decides the link state, the delay
    and what is logged. ``str(exc)`` becomes the account's ``error`` on ``bridge/accounts``, so
    it must say what happened in the user's terms and never carry a secret.
    """

    reply_code: ClassVar[ErrorCode] = "vendor"


class LinkLost(LinkError):
    """The connection ended or stopped answering; reconnect with the normal backoff."""

    reply_code: ClassVar[ErrorCode] = "offline"


class Throttled(LinkError):
    """The vendor asked us to slow down; do not come back before ``retry_after`` seconds."""

    reply_code: ClassVar[ErrorCode] = "throttled"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NeedsAttention(LinkError):
    """A retry will not fix this by itself (credentials refused, session taken, bad config).

    ``config_key`` names the account key a human should check (``app_secret``, ``password`` …).
    ``retry_after`` overrides the attention schedule for this one wait (CoolKit's session-taken
    rule has its own).
    """

    reply_code: ClassVar[ErrorCode] = "auth"

    def __init__(
        self, message: str, config_key: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.config_key = config_key
        self.retry_after = retry_after


_TRANSIENT = (OSError, TimeoutError, aiohttp.ClientError, LinkLost, VendorError)


class Session(Connector):
    """A connector with the shared run loop. Implement ``connect()``; see the module docstring.

    Class attributes a vendor may override: ``backoff_base`` / ``backoff_cap`` /
    ``backoff_floor`` (seconds, or read from its options in ``__init__``), ``attention_base`` /
    ``attention_cap``, ``credential_keys`` (the config keys named when credentials are refused)
    and ``retry_state``.
    """

    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    backoff_floor: float = 0.0
    attention_base: float = ATTENTION_BASE
    attention_cap: float = ATTENTION_CAP
    credential_keys: ClassVar[tuple[str, ...]] = ()
    #: reported when a new session starts after a failed one; a polling vendor, which has no
    #: connection to open, stays in BACKOFF until a poll succeeds (``None``)
    retry_state: ClassVar[LinkState | None] = LinkState.CONNECTING

    _backoff: Backoff | None = None
    _attention: Backoff | None = None
    _pacer: Pacer | None = None
    #: between the attempt's connect slot and ``mark_online()``: logins and handshakes are
    #: covered by that slot
    _in_attempt: bool = False

    def __init__(self, options: Any, ctx: AccountContext, http: aiohttp.ClientSession) -> None:
        super().__init__(options, ctx, http)
        self._reread_at: dict[str, float] = {}
        self._rereads: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ vendor steps

    @abc.abstractmethod
    async def connect(self) -> None:
        """One session: authenticate, list devices (``ctx.devices``), open the push channel,
        resync the state, call ``mark_online()``, then hold the channel until it ends.

        Return when the vendor closed it cleanly; raise a ``LinkError`` (or let a transport
        error escape) otherwise. Never called twice at once.
        """

    async def teardown(self) -> None:
        """Release what ``connect()`` held (sockets, pending replies). Runs after every
        session, also on cancellation; must not raise."""

    # ------------------------------------------------------------------ helpers for connect()

    def mark_online(self, *, token_expires_ms: int | None = None) -> None:
        """The channel is up and the state resynced: report ONLINE and reset the schedules."""
        self._in_attempt = False
        self.ctx.link(LinkState.ONLINE, token_expires_ms=token_expires_ms)
        self.backoff.reset()
        self.attention_backoff.reset()

    @property
    def backoff(self) -> Backoff:
        if self._backoff is None:
            self._backoff = Backoff(self.backoff_base, self.backoff_cap, self.backoff_floor)
        return self._backoff

    @property
    def attention_backoff(self) -> Backoff:
        if self._attention is None:
            self._attention = Backoff(
                self.attention_base, self.attention_cap, floor=self.attention_base / 2
            )
        return self._attention

    # ------------------------------------------------------------------ pacing

    @property
    def pacer(self) -> Pacer:
        """The rate model's pacer: the gateway's (``use_pacer``), else the process-wide one."""
        if self._pacer is None:
            self.use_pacer(rates.default_pacer())
        assert self._pacer is not None
        return self._pacer

    def use_pacer(self, pacer: Pacer) -> None:
        self._pacer = pacer
        self.configure_pacer(pacer)

    def configure_pacer(self, pacer: Pacer) -> None:
        """Hook: apply this account's own rate options to the pacer (CoolKit's ``rate_*``)."""

    def rate_scopes(self) -> tuple[ScopeKey, ...]:
        """The scopes this account's calls count against; a vendor adds its app key scope."""
        return (rates.ip_scope(self.vendor), rates.account_scope(self.vendor, self.ctx.account))

    @contextlib.asynccontextmanager
    async def paced(
        self,
        endpoint: str,
        kind: str = "call",
        *,
        optional: bool = False,
        scopes: tuple[ScopeKey, ...] | None = None,
    ) -> AsyncIterator[None]:
        """Hold a slot for one vendor call to ``endpoint`` while the block runs.

        ``kind``: ``login`` / ``handshake`` (outside an attempt they first take a connect
        slot), ``call`` or ``command`` (refused with ``Throttled`` when its slot is further
        away than the vendor's ``command_max_wait``). ``optional``: raise ``Deferred`` at once
        when a budget runs low; the caller skips the call.
        """
        pacer = self.pacer
        scopes = scopes or self.rate_scopes()
        max_wait = pacer.rates(self.vendor).command_max_wait if kind == "command" else None
        try:
            if kind in ("login", "handshake") and not self._in_attempt:
                await pacer.acquire("connect", *scopes, endpoint=endpoint, max_wait=max_wait)
            await pacer.acquire(
                kind, *scopes, endpoint=endpoint, optional=optional, max_wait=max_wait
            )
        except Deferred:
            raise
        except RateLimited as exc:
            raise Throttled(f"rate budget: {exc}", exc.retry_after) from None
        self.ctx.api_call(endpoint)  # /metrics: vendor API calls by endpoint
        held = rates.hold()
        try:
            yield
        finally:
            rates.release(held)
            pacer.release(kind, *scopes, endpoint=endpoint)

    def token_identity(self) -> str:
        """What stored tokens belong to; a change of credentials must not reuse another's.

        Override with a fingerprint of the identifying options (never a secret in clear).
        """
        return self.vendor

    def load_tokens(self) -> dict[str, Any] | None:
        """The persisted tokens, if they belong to the configured identity."""
        stored = self.ctx.tokens.load()
        if stored and stored.get("identity") == self.token_identity():
            return stored
        return None

    def save_tokens(self, tokens: dict[str, Any] | None) -> None:
        """Persist ``tokens`` (``None`` forgets them) under the configured identity."""
        self.ctx.tokens.save(
            None if tokens is None else {**tokens, "identity": self.token_identity()}
        )

    async def with_reauth(
        self,
        call: Callable[[], Awaitable[T]],
        reauthenticate: Callable[[], Awaitable[None]],
        is_rejected: Callable[[Exception], bool],
    ) -> T:
        """``call()``; when it fails with an error ``is_rejected`` recognises as a rejected
        token, ``reauthenticate()`` once and ``call()`` once more (as the official SDKs do)."""
        try:
            return await call()
        except Exception as exc:
            if not is_rejected(exc):
                raise
        await reauthenticate()
        return await call()

    def reread(self, device: str, read: Callable[[str], Awaitable[object]]) -> None:
        """A garbled frame for a known device: read that device's state now (``read(device)``,
        e.g. the vendor's get-state call) instead of leaving it stale until its next push.

        At most once per ``REREAD_INTERVAL`` seconds per device, and never more than
        ``REREAD_MAX`` at a time; a failed read is logged, never raised.
        """
        loop = asyncio.get_running_loop()
        last = self._reread_at.get(device)
        if last is not None and loop.time() - last < REREAD_INTERVAL:
            return
        if len(self._rereads) >= REREAD_MAX:
            return
        self._reread_at[device] = loop.time()
        if len(self._reread_at) > 4096:  # bounded: a cloud with endless ids cannot grow it
            self._reread_at.clear()

        async def one() -> None:
            try:
                await read(device)
                self.ctx.count("rereads")
            except Deferred as exc:  # an optional read, refused for budget: skipped
                self.ctx.log.info("device %s: state re-read skipped: %s", device[:200], exc)
            except Exception as exc:
                self.ctx.log.warning("device %s: state re-read failed: %s", device[:200], exc)

        task = loop.create_task(one())
        self._rereads.add(task)
        task.add_done_callback(self._rereads.discard)

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        state: LinkState | None = LinkState.CONNECTING
        while True:
            if state is not None:
                self.ctx.link(state)
            state = self.retry_state
            try:
                await self.pacer.acquire("connect", *self.rate_scopes(), endpoint="session")
                self._in_attempt = True
                await self.connect()
                delay = self.backoff.next()
                self.ctx.link(LinkState.BACKOFF, "connection closed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = self._failed(exc)
            finally:
                self._in_attempt = False
                await self.teardown()
                for task in list(self._rereads):
                    task.cancel()
            self.ctx.log.info("reconnecting in %.1fs", delay)
            await asyncio.sleep(delay)

    def _failed(self, exc: Exception) -> float:
        """Map a session's end onto the link state; return the delay before the next one."""
        if isinstance(exc, VendorError) and exc.code == "auth":
            exc = NeedsAttention(f"credentials refused: {exc.vendor_code}: {exc.message}")
        elif isinstance(exc, VendorError) and exc.code == "throttled":
            exc = Throttled(f"{exc.vendor_code}: {exc.message}")
        elif isinstance(exc, RateLimited):
            exc = Throttled(f"rate budget: {exc}", exc.retry_after)
        if isinstance(exc, NeedsAttention):
            delay = exc.retry_after or self.attention_backoff.next()
            keys = (exc.config_key,) if exc.config_key else self.credential_keys
            hint = f"; check {', '.join(keys)} in this account's configuration" if keys else ""
            self.ctx.link(LinkState.ATTENTION, str(exc))
            self.ctx.log.error("%s%s; next attempt in %.0fs", exc, hint, delay)
            return delay
        if isinstance(exc, Throttled):
            delay = max(self.backoff.next(), exc.retry_after or 0.0)
            self.ctx.link(LinkState.BACKOFF, f"throttled: {exc}")
            return delay
        if isinstance(exc, HandshakeRejected):
            self.ctx.link(LinkState.BACKOFF, f"WebSocket upgrade refused: {exc}")
            return self.backoff.next()
        if isinstance(exc, RemoteProtocolError):
            self.ctx.bad_input(f"unusable reply: {exc}", counter="bad_replies")
            self.ctx.link(LinkState.BACKOFF, f"bad reply: {exc}")
            return self.backoff.next()
        if isinstance(exc, _TRANSIENT):
            reason = _describe(exc)
            self.ctx.link(LinkState.BACKOFF, reason)
            self.ctx.log.warning("link lost: %s", reason)
            return self.backoff.next()
        raise exc  # a bug: the supervisor logs it with its traceback and restarts the account


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, LinkError | VendorError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
