"""``AccountLink``: what one connector sees of the gateway (the ``AccountContext`` contract).

Everything a connector reports flows through here, in one direction::

    connector ─▶ link: normalize through the device schema (the only place) ─▶ registry
              ─▶ bus ─▶ publisher, discovery, metrics

No vendor knowledge lives here; every vendor gets the same state rules. The link never reaches
the gateway: it is given the registry, the bus, the health counters, its token slot and the
MQTT side's congestion signal (``flow``), and nothing else.

Link states (``LinkState``) and what the link does on each:

=============  ===============================================================================
state          meaning / effect
=============  ===============================================================================
CONNECTING     logging in, listing, opening the push channel, resyncing
ONLINE         the push channel is up and resynced; the offline-grace timer is cancelled
BACKOFF        lost; a reconnect is scheduled. After ``offline_grace`` seconds in a non-online
               state every device of the account is published offline (``cloud_disconnected``)
ATTENTION      a retry will not fix it (credentials, session taken): retried slowly, flagged
               on ``bridge/accounts`` and announced once on ``bridge/event``
STOPPED        the account was stopped (shutdown, or moved to another instance)
=============  ===============================================================================
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from protocols.model import Availability, DeviceEvent, DeviceInfo, Schema, StateChange
from protocols.tsl import normalize

from .events import AccountLinkChanged, EventBus
from .flow import Flow
from .health import Health
from .logflags import DEBUG
from .publisher import now_ms
from .registry import Registry
from .tokens import TokenSlot

__all__ = ["AccountContext", "AccountLink", "LinkState", "now_ms"]


class LinkState(enum.StrEnum):
    """An account's link to its vendor cloud is in one of these five states.

    A ``StrEnum``: members compare equal to their values (``"online"``), which is what
    ``bridge/accounts`` shows.
    """

    #: logging in, listing devices, opening the push channel, resyncing
    CONNECTING = "connecting"
    #: the push channel is up and the state resynced
    ONLINE = "online"
    #: the link was lost; the next attempt is scheduled
    BACKOFF = "backoff"
    #: a retry will not fix it by itself: a human must look (credentials, session taken)
    ATTENTION = "attention"
    #: the account is not running (shutdown, or its ownership moved)
    STOPPED = "stopped"


class AccountContext(Protocol):
    """What a connector may call: the contract ``AccountLink`` implements and tests record.

    Report with ``devices``/``device`` (the list), ``state``/``availability``/``event``
    (raw vendor values: the link normalizes them), ``link`` (the account's state) and
    ``bad_input``/``count`` (what was rejected). Honour ``congested``/``drain()``.
    """

    vendor: str
    account: str
    log: logging.LoggerAdapter[logging.Logger]
    tokens: TokenSlot

    def devices(self, infos: Iterable[DeviceInfo]) -> None:
        """The complete device list; devices missing from it are removed (topics cleared)."""

    def device(self, info: DeviceInfo) -> None:
        """Add or update one device without touching the others."""

    def state(self, change: StateChange) -> None: ...

    def availability(self, av: Availability) -> None: ...

    def event(self, ev: DeviceEvent) -> None: ...

    def link(
        self,
        state: LinkState,
        error: str | None = None,
        *,
        token_expires_ms: int | None = None,
    ) -> None:
        """Report the account's link state on ``bridge/accounts``; ``LinkState.ATTENTION`` flags
        the account for a human (logged and raised once each time the account enters it)."""

    def bad_input(
        self, reason: str, device: str | None = None, counter: str = "bad_frames"
    ) -> None:
        """Count and log one rejected input; never include secrets in ``reason``."""

    def count(self, counter: str, n: int = 1) -> None:
        """Count ``n`` of ``counter`` for this account: ``frames`` (every frame read from the
        vendor; count per read batch), ``logins`` (every successful login), anything else
        ``bridge/health`` should show."""

    def api_call(self, endpoint: str, n: int = 1) -> None:
        """Count one call of the vendor's API ``endpoint`` (its action or path name, a fixed
        string: never an id or a parameter) for ``/metrics``."""

    def schema(self, device: str) -> Schema | None: ...

    def known_devices(self) -> Sequence[str]: ...

    @property
    def congested(self) -> bool:
        """The MQTT side is behind: stop reading vendor sockets until ``drain()`` returns."""

    async def drain(self) -> None:
        """Wait while the MQTT side is congested (backpressure: stop reading the vendor)."""


class _Adapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['vendor']}/{self.extra['account']}] {msg}", kwargs  # type: ignore[index]


class AccountLink:
    """One account's view of the gateway. The gateway creates one per running account."""

    def __init__(
        self,
        vendor: str,
        account: str,
        *,
        registry: Registry,
        bus: EventBus,
        health: Health,
        tokens: TokenSlot,
        flow: Flow,
        offline_grace: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.vendor = vendor
        self.account = account
        self.log: logging.LoggerAdapter[logging.Logger] = _Adapter(
            logging.getLogger(f"cloud2mqtt.{vendor}"), {"vendor": vendor, "account": account}
        )
        self.tokens = tokens
        self.registry = registry
        self.bus = bus
        self.health = health
        self.flow = flow
        self.offline_grace = offline_grace
        self.link_state = LinkState.STOPPED  # until the supervisor starts the account
        self.link_since = now_ms()
        self.link_error: str | None = None
        self.attention = False
        self.token_expires_ms: int | None = None
        #: waiting for a slot from the rate model (``pacing()``); shown on ``bridge/accounts``
        self.waiting_for_slot = False
        #: the account's API budget (``gateway.rates``), set by the gateway; shown as ``budget``
        self.budget: Callable[[], dict[str, Any]] | None = None
        self._grace: asyncio.TimerHandle | None = None
        self._log_budget: dict[str, tuple[float, int]] = {}
        self._clock = clock
        self._counts = health.account(vendor, account)  # states/events: one dict increment

    # ---------------------------------------------------------------- devices

    def devices(self, infos: Iterable[DeviceInfo]) -> None:
        """The complete device list; devices missing from it are removed (topics cleared)."""
        infos = list(infos)
        listed = {i.device for i in infos}
        if DEBUG.on:
            self.log.debug("device list: %d device(s) (resync)", len(infos))
        for info in infos:
            self.device(info)
        for rec in list(self.registry.account_devices(self.vendor, self.account).values()):
            if rec.device not in listed:
                self.registry.remove(rec)

    def device(self, info: DeviceInfo) -> None:
        """Add or update one device without touching the others."""
        rec, _ = self.registry.upsert(self.vendor, self.account, info)
        if rec.account != self.account:
            return
        if info.online is not None:
            self.availability(Availability(info.device, info.online, now_ms()))

    def schema(self, device: str) -> Schema | None:
        rec = self.registry.get(self.vendor, device)
        return rec.info.schema if rec is not None else None

    def known_devices(self) -> Sequence[str]:
        return list(self.registry.account_devices(self.vendor, self.account))

    # ---------------------------------------------------------------- the hot path

    def state(self, change: StateChange) -> None:
        """Property values as the vendor sent them: normalized here, each misfit counted once."""
        rec = self.registry.get(self.vendor, change.device)
        if rec is None or rec.account != self.account:
            self.bad_input(
                "state for a device the account does not list", change.device, "unknown_device"
            )
            return
        props, flagged = normalize(rec.info.schema, change.props)
        if flagged:
            self.health.count("flagged_values", self.vendor, len(flagged), self.account)
            self._warn(
                "flagged_values",
                "device %s: value(s) of %s do not fit the schema; kept as sent",
                change.device,
                ", ".join(flagged),
            )
        _, stale = self.registry.apply_state(
            rec, props, change.ts_ms, change.prop_ts, change.precision_ms
        )
        self.health.totals["state"] += 1
        self._counts["states"] += 1
        if stale:
            self.health.count("stale_dropped", self.vendor, stale, self.account)

    def availability(self, av: Availability) -> None:
        rec = self.registry.get(self.vendor, av.device)
        if rec is None or rec.account != self.account:
            self.bad_input(
                "availability for a device the account does not list", av.device, "unknown_device"
            )
            return
        self.registry.apply_availability(rec, av.online, av.ts_ms, av.reason)

    def event(self, ev: DeviceEvent) -> None:
        rec = self.registry.get(self.vendor, ev.device)
        if rec is None or rec.account != self.account:
            self.bad_input(
                "event for a device the account does not list", ev.device, "unknown_device"
            )
            return
        self.health.totals["events"] += 1
        self._counts["events"] += 1
        self.registry.raise_event(rec, ev)

    @property
    def congested(self) -> bool:
        """The MQTT side is behind: stop reading vendor sockets until ``drain()`` returns."""
        return self.flow.congested

    async def drain(self) -> None:
        """Wait while the MQTT side is congested (backpressure: stop reading the vendor)."""
        flow = self.flow
        if flow.congested:  # the common case costs one attribute test, not a second coroutine
            await flow.drain()

    # ---------------------------------------------------------------- account state

    def link(
        self,
        state: LinkState,
        error: str | None = None,
        *,
        token_expires_ms: int | None = None,
    ) -> None:
        """Report the account's link state on ``bridge/accounts``; ``LinkState.ATTENTION`` flags
        the account for a human (logged and raised once each time the account enters it)."""
        attention = state is LinkState.ATTENTION
        changed = state != self.link_state or error != self.link_error
        if state != self.link_state:
            self.link_since = now_ms()
            if DEBUG.on:
                self.log.debug("link %s -> %s%s", self.link_state.value, state.value,
                               f" ({error})" if error else "")  # fmt: skip
        self.link_state = state
        self.link_error = error
        if token_expires_ms is not None:
            changed = changed or token_expires_ms != self.token_expires_ms
            self.token_expires_ms = token_expires_ms
        newly_flagged = attention and not self.attention
        if newly_flagged:
            self.log.error("needs attention: %s", error)
        self.attention = attention
        if state in (LinkState.ONLINE, LinkState.STOPPED):
            if self._grace is not None:
                self._grace.cancel()
                self._grace = None
        elif self._grace is None:
            loop = asyncio.get_running_loop()
            self._grace = loop.call_later(self.offline_grace, self._grace_expired)
        if changed:
            self.bus.emit(
                AccountLinkChanged(self.vendor, self.account, self.describe(), newly_flagged)
            )

    def pacing(self, waiting: bool) -> None:
        """The account starts (``True``) or stops waiting for a slot from the rate model."""
        if waiting != self.waiting_for_slot:
            self.waiting_for_slot = waiting
            self.republish()

    def republish(self) -> None:
        """Report the entry again (its budget moved on)."""
        self.bus.emit(AccountLinkChanged(self.vendor, self.account, self.describe(), False))

    def _grace_expired(self) -> None:
        self._grace = None
        if self.link_state is LinkState.ONLINE:
            return
        self.log.warning(
            "link down for more than %.0fs: marking its devices offline", self.offline_grace
        )
        self.mark_offline("cloud_disconnected")

    def mark_offline(self, reason: str) -> None:
        """Publish every device of the account offline with ``reason``."""
        ts = now_ms()
        for rec in list(self.registry.account_devices(self.vendor, self.account).values()):
            if rec.online is not False:
                self.registry.apply_availability(rec, False, ts, reason)

    def describe(self) -> dict[str, Any]:
        return {
            "vendor": self.vendor,
            "name": self.account,
            "state": self.link_state.value,
            "since": self.link_since,
            "error": self.link_error,
            "attention": self.attention,
            "token_expires": self.token_expires_ms,
            "devices": len(self.registry.account_devices(self.vendor, self.account)),
            "waiting_for_slot": self.waiting_for_slot,
            "budget": self.budget() if self.budget is not None else None,
        }

    # ---------------------------------------------------------------- bad input

    def bad_input(
        self, reason: str, device: str | None = None, counter: str = "bad_frames"
    ) -> None:
        """Count and log one rejected input; never include secrets in ``reason``."""
        self.health.count(counter, self.vendor, 1, self.account)
        self._warn(counter, "%s: %s (device %s)", counter, reason, device or "-")

    def count(self, counter: str, n: int = 1) -> None:
        self.health.count(counter, self.vendor, n, self.account)

    def api_call(self, endpoint: str, n: int = 1) -> None:
        self.health.count_labelled("api_calls", self.vendor, self.account, endpoint, n)

    def _warn(self, counter: str, msg: str, *args: Any) -> None:
        """Log, but at most 20 lines per counter per minute: a garbage storm must not flood logs."""
        now = self._clock()
        start, n = self._log_budget.get(counter, (now, 0))
        if now - start > 60:
            if n > 20:
                self.log.warning("%s: %d more suppressed in the last minute", counter, n - 20)
            start, n = now, 0
        n += 1
        self._log_budget[counter] = (start, n)
        if n <= 20:
            self.log.warning(msg, *args)


if TYPE_CHECKING:

    def _conforms(link: AccountLink) -> AccountContext:
        return link  # mypy proves AccountLink satisfies the connectors' contract
