"""One rate model for every vendor: what each cloud allows, and the pacer every vendor call takes
its slot from.

Theory of operation
-------------------
A vendor's limits bind a *scope*: the egress IP (in practice the process: ``("ip", vendor)``),
an app key (``("app", vendor, app_key)``), or one account (``("account", vendor, name)``). Each
scope carries rules built from its vendor's ``VendorRates`` row (``ASSUMED_LIMITS``, overridden
per vendor by ``[rates.<vendor>]`` in the configuration):

==================  ==========  ===============================================================
rule                scope       counts
==================  ==========  ===============================================================
token bucket        ip          ``connect`` slots: one per session attempt (start-up, reconnect)
                                and one per login outside an attempt; ``connect_per_second``
                                refill, ``connect_burst`` at once; logins and handshakes
                                themselves each keep to the same rate
token bucket        ip          vendor calls (``calls_per_second`` / ``calls_burst``)
sliding window      ip          vendor calls: at most ``window_calls`` per ``window_seconds``
endpoint interval   ip          vendor calls to one endpoint at least ``endpoint_interval`` apart
token bucket        app         vendor calls per app key (``app_calls_per_second`` / ``_burst``)
interval            account     push-channel handshakes of one account (``handshake``) at least
                                ``account_connect_interval`` apart (CoolKit ``userOnline``)
interval            account     one account's polls (``poll``) at least ``account_poll_interval``
                                apart (XiakeCloud ``get_device_list``; an account's own
                                ``min_poll_interval`` overrides it for that account)
==================  ==========  ===============================================================

Kinds of acquisition: ``connect`` (a slot, not itself a vendor call), and the vendor calls
``login``, ``handshake``, ``call``, ``poll`` and ``command``.

How a slot is granted: every rule is a *reservation* schedule (GCRA for the buckets), so a caller
reserves the earliest instant that satisfies every rule of every scope it names, commits it in
all of them, then sleeps until it. Reservations, not locks: N callers at once get N instants
spread at the bucket's rate, in arrival order, and a caller waiting for one endpoint never
delays another endpoint. A ``connect`` asks for an instant no earlier than a small random jitter
(one emission interval), so a burst of accounts does not hit the cloud in lock-step.

Degrading: an ``optional`` call (a periodic refresh, a resync of quiet devices) is refused with
``Deferred`` at once when any rule it would use has less than ``OPTIONAL_HEADROOM`` of its room
left, or would wait more than ``OPTIONAL_MAX_WAIT``; a call with ``max_wait`` (a command) is refused with
``RateLimited`` at once when its instant lies further away, and reserves nothing. Everything
else waits its turn.

Accounting: every acquisition is counted per scope (process-wide), per (scope, account) (the
account's share) and per endpoint; ``budget(vendor, account)`` is the ``bridge/accounts`` view.

The ``Pacer`` protocol is what connectors see; ``LocalPacer`` keeps the state in this process.
Several instances (cluster mode, ``shared_egress``) share the per-IP and per-app-key budgets:
each keeps a *part* of every shared scope's rate, burst and window (and ``1/part`` times its
endpoint spacing), ``divided(rates, part)``. No per-call round trip; the account scope is not
divided (an account runs on one instance). Peers that publish no demand mean plain division,
``1/n`` each.

Sharing by demand
-----------------
In cluster mode the part follows demand (``demand()`` and ``share_by_demand()``, called once
per lease round). Each instance publishes in its presence value, per shared scope, its
*demand*: the slots it took in that scope since its previous round plus the acquisitions still
waiting for one (a backlog counts every round until it is served). Both are counters the pacer
bumps anyway when it reserves and sleeps, so publishing costs no scan; and "taken or still
wanted" is the budget an instance would use if it had it, while an idle one publishes nothing.
An instance's *weight* in a scope is ``1 + demand`` (``1`` when it names no demand there), and
its part is::

    part_i = n_i / (n_i + sum of w_j as i last read them, over the other live instances j)

where ``n_i`` is its *held* own weight: the smallest weight it published during the last
``raise_after`` seconds (one lease TTL). So a smaller weight counts at once (it is recorded
before the presence is written), a larger one only once it has been in the KV for a lease TTL;
others' weights count as read. With equal demands every part is exactly ``1/N``; a busy
instance among idle ones gets ``(1 + d)/(N + d)``; an idle one keeps ``1/(N + d)`` of the rate
and at least one slot of burst, so it can still make a call at once.

Why the instances together stay within the limit: write ``v_ji`` for instance j's view of i's
weight. If ``n_i <= v_ji`` for every pair, then ``part_j <= n_j / (n_1 + … + n_N)``, and the parts
add up to at most 1. That holds because every view is at most a lease TTL old and ``n_i`` is the
smallest weight i published in the last lease TTL: an instance still making vendor calls holds
slots, each claimed or renewed less than ``ttl - margin`` ago by a round that first read every
presence (the leases fence a slot whose renewal is older, ``gateway/cluster/leases.py``); an
instance that holds no slot runs no account and makes no call. A raise is recorded only after
the write that publishes it was confirmed (a failed write leaves the older, smaller weight in
the history); a drop is recorded before the write. When any live peer publishes no demand at
all (an older version during a rolling upgrade), every instance falls back to ``1/N``.

Limits of the rule: a joining instance is counted by the others from their next round (as with
division: it claims no slot, so it makes no call, before its second round); slots already
reserved when a part shrinks keep their instants (each rule's ``adopt()`` carries them over),
so a busy instance whose part shrinks finishes the backlog it had reserved at its older part;
and rounding a part's burst up to one slot lets N idle instances each make one call at once.
"""

from __future__ import annotations

import asyncio
import bisect
import contextvars
import dataclasses
import hashlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import ConfigError

__all__ = [
    "ASSUMED_LIMITS",
    "Deferred",
    "LocalPacer",
    "Pacer",
    "RateLimited",
    "ScopeKey",
    "VendorRates",
    "account_scope",
    "app_scope",
    "default_pacer",
    "divided",
    "ip_scope",
    "parse_rates",
    "scope_name",
    "slot_held",
]

log = logging.getLogger("cloud2mqtt.rates")

ScopeKey = tuple[str, ...]
#: the kinds that are vendor calls (``connect`` is a slot only)
CALL_KINDS = frozenset({"login", "handshake", "call", "poll", "command"})
KINDS = CALL_KINDS | {"connect"}
#: an optional call is refused when a rule has less than this fraction of its room left
OPTIONAL_HEADROOM = 0.25
#: … or when its slot is further away than this (seconds)
OPTIONAL_MAX_WAIT = 5.0
#: the window over which token-bucket usage is shown on ``bridge/accounts``
BUCKET_VIEW_WINDOW = 60.0
ASSUMED = "assumed, not documented"


def ip_scope(vendor: str) -> ScopeKey:
    return ("ip", vendor)


def app_scope(vendor: str, app_key: str) -> ScopeKey:
    return ("app", vendor, app_key)


def account_scope(vendor: str, account: str) -> ScopeKey:
    return ("account", vendor, account)


def scope_name(key: ScopeKey) -> str:
    """How a scope is named where other instances read it (its demand in the presence value):
    ``ip/<vendor>``, ``app/<vendor>/<digest of the app key>`` (no app key leaves the process),
    ``account/<vendor>/<account>``."""
    if key[0] == "app":
        return f"app/{key[1]}/{hashlib.blake2b(key[2].encode(), digest_size=6).hexdigest()}"
    return "/".join(key)


class RateLimited(Exception):
    """The call would exceed a budget beyond what the caller may wait; nothing was reserved."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Deferred(RateLimited):
    """An optional call refused because a budget runs low: skip it this time."""


# ---------------------------------------------------------------------------------- the table


@dataclass(frozen=True, slots=True)
class VendorRates:
    """One vendor's limits (``None``: no limit, usage is still counted). See the module table."""

    connect_per_second: float
    connect_burst: int
    calls_per_second: float | None = None
    calls_burst: int = 1
    window_calls: int | None = None
    window_seconds: float | None = None
    endpoint_interval: float | None = None
    account_connect_interval: float | None = None
    account_poll_interval: float | None = None
    app_calls_per_second: float | None = None
    app_calls_burst: int = 1
    #: how long a command may wait for its slot before it is answered ``throttled``
    command_max_wait: float = 2.0
    #: fraction added to documented intervals and windows for clock and network jitter
    slack: float = 0.0
    #: where each number comes from: field name → "seed 001 §…" or ``ASSUMED``
    sources: Mapping[str, str] = field(default_factory=dict)

    def source(self, name: str) -> str:
        return self.sources.get(name, ASSUMED)


_SEED001 = "documented: seed 001, Requirements of Calling Interface (Important)"

#: The defaults, one row per vendor. Where a seed gives no number the value is a conservative
#: assumption, named as such (``sources``); every field can be set in ``[rates.<vendor>]``.
ASSUMED_LIMITS: dict[str, VendorRates] = {
    # Seed 002 names no limit at all.
    "tencent": VendorRates(connect_per_second=5.0, connect_burst=10),
    # Seed 001: ≥ 500 ms between one IP's calls to one interface, ≤ 300 calls per 5 minutes, no
    # repeated userOnline (the interval itself is not given: 20 s assumed). userOnline is one
    # interface, so connects (one userOnline each) are at most 2 per second from one IP.
    "coolkit": VendorRates(
        connect_per_second=2.0, connect_burst=1,
        window_calls=300, window_seconds=300.0, endpoint_interval=0.5,
        account_connect_interval=20.0, slack=0.05,
        sources={"connect_per_second": _SEED001 + " (500 ms per interface: userOnline)",
                 "connect_burst": _SEED001, "window_calls": _SEED001, "window_seconds": _SEED001,
                 "endpoint_interval": _SEED001,
                 "account_connect_interval": "documented rule (seed 001: no repeated userOnline),"
                                             " interval assumed"},
    ),
    # Seed 004 documents only the answer (HTTP 429 "too many requests"), not the rate; the API
    # gateway throttles per app key.
    "aliyun": VendorRates(
        connect_per_second=5.0, connect_burst=10, app_calls_per_second=10.0, app_calls_burst=20
    ),
    # Seed 000 names no limit. Polling is the whole protocol: one account lists its devices at
    # most every 5 s (an account's min_poll_interval sets its own).
    "xky": VendorRates(
        connect_per_second=5.0, connect_burst=10, account_poll_interval=5.0
    ),
}
#: any vendor without a row (a new one) gets this until it has its own
FALLBACK = VendorRates(connect_per_second=5.0, connect_burst=10)

_NUMBERS = {
    "connect_per_second": float, "connect_burst": int, "calls_per_second": float,
    "calls_burst": int, "window_calls": int, "window_seconds": float, "endpoint_interval": float,
    "account_connect_interval": float, "account_poll_interval": float,
    "app_calls_per_second": float, "app_calls_burst": int,
    "command_max_wait": float, "slack": float,
}  # fmt: skip
_OPTIONAL = {
    "calls_per_second", "window_calls", "window_seconds", "endpoint_interval",
    "account_connect_interval", "account_poll_interval", "app_calls_per_second",
}  # fmt: skip


def with_overrides(base: VendorRates, values: Mapping[str, Any], key: str) -> VendorRates:
    """``base`` with ``values`` applied (validated; errors name ``{key}.<field>``).

    A number given here is the user's, so its source reads "configured"; ``false`` switches an
    optional limit off (the usage is still shown, its limit reads ``null``).
    """
    changes: dict[str, Any] = {}
    sources = dict(base.sources)
    for name, value in values.items():
        kind = _NUMBERS.get(name)
        if kind is None:
            raise ConfigError(f"{key}.{name}", f"unknown key (one of {', '.join(_NUMBERS)})")
        if value is False and name in _OPTIONAL:
            changes[name] = None
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}.{name}", f"expected a number, got {value!r}")
        elif kind is int and (not float(value).is_integer() or value < 1):
            raise ConfigError(f"{key}.{name}", "must be a whole number, at least 1")
        elif name == "slack" and not 0 <= value < 1:
            raise ConfigError(f"{key}.{name}", "must be a fraction in [0, 1)")
        elif name != "slack" and value <= 0:
            raise ConfigError(f"{key}.{name}", "must be positive (false switches it off)")
        else:
            changes[name] = kind(value)
        sources[name] = "configured"
    rates = dataclasses.replace(base, **changes, sources=sources)
    if (rates.window_calls is None) != (rates.window_seconds is None):
        raise ConfigError(f"{key}.window_calls", "window_calls and window_seconds come as a pair")
    return rates


@dataclass(slots=True)
class RatesConfig:
    """``[rates.<vendor>]``: each vendor's row of ``ASSUMED_LIMITS`` with the configured keys."""

    vendors: dict[str, VendorRates] = field(default_factory=lambda: dict(ASSUMED_LIMITS))

    def for_vendor(self, vendor: str) -> VendorRates:
        return self.vendors.get(vendor, FALLBACK)


def parse_rates(raw: Mapping[str, Any], vendors: Iterable[str]) -> RatesConfig:
    """The ``[rates]`` table: one sub-table per vendor (``[rates.coolkit]``)."""
    known = set(vendors)
    cfg = RatesConfig()
    for vendor, table in raw.items():
        if vendor not in known:
            raise ConfigError(f"rates.{vendor}", f"unknown vendor (one of {', '.join(sorted(known))})")
        if not isinstance(table, Mapping):
            raise ConfigError(f"rates.{vendor}", "must be a table")
        cfg.vendors[vendor] = with_overrides(cfg.for_vendor(vendor), table, f"rates.{vendor}")
    return cfg


# ---------------------------------------------------------------------------------- rules


class _Bucket:
    """A token bucket as a reservation schedule (GCRA): ``tat`` is the theoretical arrival time
    of the next call; a call may go at ``tat - tolerance``; each call moves ``tat`` on by one
    emission interval. In any span of L seconds at most ``burst + rate * L`` calls are granted."""

    __slots__ = ("burst", "interval", "kinds", "name", "rate", "tat", "tolerance")

    def __init__(self, name: str, kinds: frozenset[str], rate: float, burst: int) -> None:
        self.name, self.kinds, self.rate, self.burst = name, kinds, rate, burst
        self.interval = 1.0 / rate
        self.tolerance = (burst - 1) * self.interval
        self.tat = float("-inf")

    def earliest(self, t: float, endpoint: str) -> float:
        return max(t, self.tat - self.tolerance)

    def commit(self, t: float, endpoint: str) -> None:
        self.tat = max(t, self.tat) + self.interval

    def adopt(self, old: _Bucket) -> None:
        """Take over ``old``'s schedule (the same rule, re-scaled)."""
        self.tat = old.tat

    def room(self, now: float) -> float:
        """The fraction of the burst still available at ``now`` (negative: reserved ahead)."""
        tokens = (now - self.tat) / self.interval + self.burst
        return min(tokens, self.burst) / self.burst

    def view(self) -> tuple[int, float]:
        return int(self.burst + self.rate * BUCKET_VIEW_WINDOW), BUCKET_VIEW_WINDOW


class _Window:
    """At most ``max_calls`` reservations in any ``window`` seconds (CoolKit's 300 per 5 min)."""

    __slots__ = ("kinds", "max_calls", "name", "slots", "span", "window")

    def __init__(self, name: str, kinds: frozenset[str], max_calls: int, window: float,
                 slack: float) -> None:  # fmt: skip
        self.name, self.kinds, self.max_calls, self.window = name, kinds, max_calls, window
        self.span = window * (1 + slack)
        self.slots: list[float] = []  # sorted reservation instants

    def earliest(self, t: float, endpoint: str) -> float:
        span, slots = self.span, self.slots
        drop = bisect.bisect_right(slots, t - 2 * span)
        if drop:
            del slots[:drop]
        while True:
            # Any window holding ``t`` lies inside (t - span, t + span): keeping the count there
            # below max_calls is conservative, and covers reservations made for the near future.
            lo = bisect.bisect_right(slots, t - span)
            hi = bisect.bisect_left(slots, t + span)
            if hi - lo < self.max_calls:
                return t
            t = slots[lo] + span + 1e-3

    def commit(self, t: float, endpoint: str) -> None:
        bisect.insort(self.slots, t)

    def adopt(self, old: _Window) -> None:
        self.slots = old.slots

    def room(self, now: float) -> float:
        lo = bisect.bisect_right(self.slots, now - self.span)
        return 1.0 - (len(self.slots) - lo) / self.max_calls

    def view(self) -> tuple[int, float]:
        return self.max_calls, self.window


class _Interval:
    """Calls at least ``interval`` apart, per endpoint (``per_endpoint``) or for all of them."""

    __slots__ = ("gap", "inflight", "interval", "kinds", "name", "next", "per_endpoint", "sent")

    def __init__(self, name: str, kinds: frozenset[str], interval: float, slack: float,
                 per_endpoint: bool) -> None:  # fmt: skip
        self.name, self.kinds, self.per_endpoint = name, kinds, per_endpoint
        self.interval = interval
        self.gap = interval * (1 + slack)
        self.next: dict[str, float] = {}
        self.sent: dict[str, float] = {}  # when each endpoint's last call went out / finished
        self.inflight: dict[str, int] = {}

    def _key(self, endpoint: str) -> str:
        return endpoint if self.per_endpoint else ""

    def earliest(self, t: float, endpoint: str) -> float:
        return max(t, self.next.get(self._key(endpoint), t))

    def commit(self, t: float, endpoint: str) -> None:
        self.next[self._key(endpoint)] = t + self.gap + 0.005

    def adopt(self, old: _Interval) -> None:
        self.sent, self.inflight = old.sent, old.inflight
        self.next = {k: t - old.gap + self.gap for k, t in old.next.items()}

    def room(self, now: float) -> float:
        return 1.0

    def view(self) -> None:
        return None


_Rule = _Bucket | _Window | _Interval
_CALLS = CALL_KINDS
_CONNECT = frozenset({"connect"})
_HANDSHAKE = frozenset({"handshake"})
_LOGIN = frozenset({"login"})
_POLL = frozenset({"poll"})


def rules_for(scope: ScopeKey, rates: VendorRates) -> list[_Rule]:
    """The rules a scope carries under its vendor's row."""
    rules: list[_Rule] = []
    if scope[0] == "ip":
        # Attempts, logins and push-channel handshakes each keep to the connect rate: attempts
        # are granted at it, and what an attempt does before its login or handshake (listing,
        # vendor latency) must not bunch them up again on the way to the cloud.
        for name, kinds in (("connects", _CONNECT), ("logins", _LOGIN), ("handshakes", _HANDSHAKE)):
            rules.append(_Bucket(name, kinds, rates.connect_per_second, rates.connect_burst))
        if rates.calls_per_second is not None:
            rules.append(_Bucket("calls", _CALLS, rates.calls_per_second, rates.calls_burst))
        if rates.window_calls is not None and rates.window_seconds is not None:
            rules.append(
                _Window("calls", _CALLS, rates.window_calls, rates.window_seconds, rates.slack)
            )
        if rates.endpoint_interval is not None:
            rules.append(_Interval("endpoint", _CALLS, rates.endpoint_interval, rates.slack, True))
    elif scope[0] == "app":
        if rates.app_calls_per_second is not None:
            rules.append(
                _Bucket("calls", _CALLS, rates.app_calls_per_second, rates.app_calls_burst)
            )
    elif scope[0] == "account":
        if rates.account_connect_interval is not None:
            rules.append(_Interval("handshake", _HANDSHAKE, rates.account_connect_interval,
                                   rates.slack, False))  # fmt: skip
        if rates.account_poll_interval is not None:
            rules.append(_Interval("poll", _POLL, rates.account_poll_interval, 0.0, False))
    return rules


# ---------------------------------------------------------------------------------- accounting


class _Usage:
    """How many acquisitions of one class (``connects`` / ``calls``) a scope (or one account's
    share of it) made: in total, by endpoint, and their times over the last ``keep`` seconds."""

    __slots__ = ("by_endpoint", "keep", "times", "total")

    def __init__(self, keep: float) -> None:
        self.keep = keep
        self.total = 0
        self.by_endpoint: dict[str, int] = {}
        self.times: deque[float] = deque()

    def add(self, t: float, endpoint: str) -> None:
        self.total += 1
        self.by_endpoint[endpoint] = self.by_endpoint.get(endpoint, 0) + 1
        times = self.times
        times.append(t)
        while times and times[0] < t - self.keep:
            times.popleft()

    def used(self, now: float, window: float) -> int:
        times = self.times
        while times and times[0] < now - self.keep:
            times.popleft()
        return len(times) - bisect.bisect_right(times, now - window)


def _class_of(kind: str) -> str:
    return "connects" if kind == "connect" else "calls"


class _Scope:
    __slots__ = ("key", "name", "part", "rates", "rules", "shares", "usage")

    def __init__(self, key: ScopeKey, rates: VendorRates, part: float = 1.0) -> None:
        self.key = key
        self.name = scope_name(key)
        self.part = part  # this instance's part of a shared scope (cluster mode)
        self.rates = rates
        self.rules = rules_for(key, rates)
        keep = max([BUCKET_VIEW_WINDOW] + [r.window for r in self.rules if isinstance(r, _Window)])
        self.usage = {"connects": _Usage(keep), "calls": _Usage(keep)}
        self.shares: dict[ScopeKey, dict[str, _Usage]] = {}

    def share(self, account: ScopeKey) -> dict[str, _Usage]:
        share = self.shares.get(account)
        if share is None:
            keep = self.usage["calls"].keep
            share = self.shares[account] = {"connects": _Usage(keep), "calls": _Usage(keep)}
        return share

    def limit_of(self, cls: str) -> tuple[int | None, float, str]:
        """The tightest shown limit of a class: (limit, window seconds, source)."""
        kinds = _CONNECT if cls == "connects" else frozenset({"call"})
        best: tuple[int | None, float, str] = (None, BUCKET_VIEW_WINDOW, "none documented or configured")
        for rule in self.rules:
            if not (rule.kinds & kinds) or isinstance(rule, _Interval):
                continue
            limit, window = rule.view()
            per_s = limit / window
            if best[0] is None or per_s < best[0] / best[1]:
                field_name = {"connects": "connect_per_second", "calls": (
                    "window_calls" if isinstance(rule, _Window) else
                    "app_calls_per_second" if self.key[0] == "app" else "calls_per_second")}[cls]
                best = (limit, window, self.rates.source(field_name))
        return best


def divided(rates: VendorRates, part: float) -> VendorRates:
    """One instance's ``part`` (a fraction in (0, 1]) of ``rates``' shared (ip, app key) limits:
    rates and windows scaled by it, bursts too (at least 1), endpoint spacing divided by it."""
    if part >= 1:
        return rates
    if part <= 0:
        raise ValueError(f"a part must be positive, got {part!r}")

    def burst(value: int) -> int:
        return max(1, int(value * part + 1e-9))

    def per_second(value: float | None) -> float | None:
        return None if value is None else value * part

    return dataclasses.replace(
        rates,
        connect_per_second=rates.connect_per_second * part,
        connect_burst=burst(rates.connect_burst),
        calls_per_second=per_second(rates.calls_per_second),
        calls_burst=burst(rates.calls_burst),
        window_calls=None if rates.window_calls is None else burst(rates.window_calls),
        endpoint_interval=(
            None if rates.endpoint_interval is None else rates.endpoint_interval / part
        ),
        app_calls_per_second=per_second(rates.app_calls_per_second),
        app_calls_burst=burst(rates.app_calls_burst),
    )


# ---------------------------------------------------------------------------------- the pacer

_HELD: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar("rate_slot", default=None)


def slot_held() -> bool:
    """True inside a ``Session.paced()`` block: the vendor call being made holds its slot.

    The test that no vendor call bypasses the model checks this at the HTTP, WebSocket and
    MQTT connect entry points.
    """
    held = _HELD.get()
    return bool(held and held[0])


def hold() -> tuple[list[bool], contextvars.Token[list[bool] | None]]:
    """Mark the running task as holding a slot; ``release()`` with what this returns. The mark
    is a shared cell, so tasks spawned meanwhile (a socket's reader) see it end too."""
    cell = [True]
    return cell, _HELD.set(cell)


def release(held: tuple[list[bool], contextvars.Token[list[bool] | None]]) -> None:
    cell, token = held
    cell[0] = False
    _HELD.reset(token)


class Pacer(Protocol):
    """What a connector needs of the rate model; ``LocalPacer`` is the in-process one."""

    async def acquire(
        self,
        kind: str,
        *scopes: ScopeKey,
        endpoint: str = "",
        optional: bool = False,
        max_wait: float | None = None,
    ) -> float:
        """Wait for a slot of ``kind`` in every scope; return the seconds waited.

        Raises ``Deferred`` (``optional``, budget low) or ``RateLimited`` (the wait would exceed
        ``max_wait``) at once, reserving nothing.
        """
        ...

    def rates(self, vendor: str) -> VendorRates: ...

    def release(self, kind: str, *scopes: ScopeKey, endpoint: str = "") -> None:
        """The call granted by ``acquire`` is over; every ``acquire`` of a vendor call is
        paired with one (``Session.paced`` does it)."""
        ...

    def configure(self, vendor: str, values: Mapping[str, Any], source: str) -> None: ...

    def configure_account(self, vendor: str, account: str, values: Mapping[str, Any]) -> None: ...

    def demand(self) -> dict[str, int]: ...

    def share_by_demand(self, peers: Mapping[str, Mapping[str, int] | None]) -> None: ...

    def budget(self, vendor: str, account: str) -> dict[str, Any]: ...

    def waiting(self) -> dict[str, int]: ...


class LocalPacer:
    """The pacer of one process: every scope's rules and counters in memory.

    ``clock`` and ``sleep`` are injectable (tests); ``rng`` draws the connect jitter.
    ``on_waiting(vendor, account, waiting)`` is told when an account starts and stops waiting
    for a slot (the gateway shows it on ``bridge/accounts``).
    """

    def __init__(
        self,
        config: RatesConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
        report_every: float = 5.0,
    ) -> None:
        self.config = config or RatesConfig()
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._scopes: dict[ScopeKey, _Scope] = {}
        self._waiting: dict[ScopeKey, int] = {}  # account scope → acquisitions waiting
        self._reporter: asyncio.Task[None] | None = None
        self.report_every = report_every
        self.on_waiting: Callable[[str, str, bool], None] | None = None
        self.waited = 0.0  # total seconds callers were held back
        self._account_rates: dict[ScopeKey, dict[str, Any]] = {}  # account scope → its own rules
        self.instances = 1  # live instances sharing the ip and app scopes (cluster mode)
        #: cluster mode, sharing by demand: the other live instances' demands as last read
        #: (None: equal division), this one's demand counters and its published weights
        self._peers: dict[str, dict[str, int]] | None = None
        self._granted: dict[str, int] = {}  # shared scope name → slots taken since demand()
        self._backlog: dict[str, int] = {}  # shared scope name → acquisitions waiting now
        self._history: dict[str, deque[tuple[float, int]]] = {}  # (since, weight) published
        self._pending: dict[str, int] = {}  # raises written, not yet confirmed
        #: a raise of this instance's weight counts after this long (the gateway: lease_ttl)
        self.raise_after = 15.0
        self.refused = 0

    # ------------------------------------------------------------------ configuration

    def rates(self, vendor: str) -> VendorRates:
        return self.config.for_vendor(vendor)

    def configure(self, vendor: str, values: Mapping[str, Any], source: str) -> None:
        """Override a vendor's row at run time (CoolKit's per-account ``rate_*`` options, kept
        for compatibility). Per-IP rules bind the whole process, so differing overrides are
        logged: the last one wins."""
        current = self.rates(vendor)
        new = with_overrides(current, values, source)
        if new == current:
            return
        if any(s == "configured" for s in current.sources.values()) and any(
            getattr(current, k) != v for k, v in values.items()
        ):
            log.warning(
                "%s: accounts are configured with different rate rules (%s); the per-IP budget is "
                "shared by the whole process, so keep them identical", vendor, source,
            )  # fmt: skip
        self.config.vendors[vendor] = new
        for key in [k for k in self._scopes if k[1] == vendor]:
            del self._scopes[key]

    def configure_account(self, vendor: str, account: str, values: Mapping[str, Any]) -> None:
        """Rules of one account's own scope (XiakeCloud's ``min_poll_interval``): they bind only
        that account, so unlike ``configure`` they differ freely between accounts."""
        key = account_scope(vendor, account)
        with_overrides(self.rates(vendor), values, key[2])  # validated like [rates.<vendor>]
        self._account_rates[key] = dict(values)
        self._scopes.pop(key, None)

    # ------------------------------------------------------------------ sharing (cluster mode)

    def demand(self) -> dict[str, int]:
        """This instance's demand per shared scope, to publish in its presence value (module
        docstring, "Sharing by demand"): slots taken since the previous call plus acquisitions
        waiting now; idle scopes are left out. A smaller weight counts at once; a larger one
        once ``share_by_demand()`` confirms that it was published."""
        now = self._clock()
        out: dict[str, int] = {}
        self._pending = {}
        for name in set(self._granted) | set(self._backlog) | set(self._history):
            wanted = self._granted.pop(name, 0) + self._backlog.get(name, 0)
            if wanted:
                out[name] = wanted
            history = self._history.setdefault(name, deque([(float("-inf"), 1)]))
            if 1 + wanted < history[-1][1]:
                history.append((now, 1 + wanted))
            elif 1 + wanted > history[-1][1]:
                self._pending[name] = 1 + wanted
        self._reshare()
        return out

    def share_by_demand(self, peers: Mapping[str, Mapping[str, int] | None]) -> None:
        """The lease round wrote what ``demand()`` returned and read the other live instances'
        demands (``None``: a peer that publishes none, an older version: share ``1/N`` then)."""
        now = self._clock()
        for name, weight in self._pending.items():  # published: a raise starts to count
            self._history[name].append((now, weight))
        self._pending = {}
        self._peers = None if any(d is None for d in peers.values()) else {
            peer: {k: v for k, v in d.items() if isinstance(v, int) and v > 0}
            for peer, d in peers.items() if d is not None
        }  # fmt: skip
        self._set_instances(1 + len(peers))
        self._reshare()

    def part(self, key: ScopeKey) -> float:
        """This instance's part of a scope: 1 for an account scope or a single instance."""
        if key[0] == "account" or self.instances == 1:
            return 1.0
        if self._peers is None:
            return 1 / self.instances
        name = scope_name(key)
        own = self._held(name)
        return own / (own + sum(1 + d.get(name, 0) for d in self._peers.values()))

    def _held(self, name: str) -> int:
        """The smallest own weight published in the last ``raise_after`` seconds."""
        history = self._history.get(name)
        if not history:
            return 1
        since = self._clock() - self.raise_after
        while len(history) > 1 and history[1][0] <= since:
            history.popleft()  # the first entry is the one in force ``raise_after`` ago
        return min(weight for _, weight in history)

    def _set_instances(self, instances: int) -> None:
        if instances != self.instances:
            log.info("pacing: per-IP and per-app-key budgets shared by %d instance(s)", instances)
            self.instances = instances

    def _reshare(self) -> None:
        for key, scope in self._scopes.items():
            part = self.part(key)
            if part == scope.part:
                continue
            log.debug("pacing: %s: this instance's part %.3f", scope.name, part)
            scope.part, scope.rates = part, self._rates_of(key, part)
            rules = rules_for(key, scope.rates)
            for new, old in zip(rules, scope.rules, strict=True):  # same rules, re-scaled:
                new.adopt(old)  # type: ignore[arg-type]  # what was reserved stays reserved
            scope.rules = rules

    def _rates_of(self, key: ScopeKey, part: float) -> VendorRates:
        rates = self.rates(key[1])
        if key[0] == "account":
            own = self._account_rates.get(key)
            return with_overrides(rates, own, key[2]) if own else rates
        return divided(rates, part)

    def _scope(self, key: ScopeKey) -> _Scope:
        scope = self._scopes.get(key)
        if scope is None:
            part = self.part(key)
            scope = self._scopes[key] = _Scope(key, self._rates_of(key, part), part)
        return scope

    # ------------------------------------------------------------------ slots

    def reserve(
        self,
        kind: str,
        *scopes: ScopeKey,
        endpoint: str = "",
        optional: bool = False,
        max_wait: float | None = None,
        not_before: float | None = None,
    ) -> float:
        """Reserve the earliest instant every rule allows; return the delay until it."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        now = self._clock()
        states = [self._scope(key) for key in scopes]
        rules = [r for s in states for r in s.rules if kind in r.kinds]
        t = now if not_before is None else max(now, not_before)
        for _ in range(1000):  # each rule's earliest() never goes back: a fixpoint is reached
            later = t
            for rule in rules:
                later = rule.earliest(later, endpoint)
            if later == t:
                break
            t = later
        delay = t - now
        if optional and (
            delay > OPTIONAL_MAX_WAIT or any(r.room(now) < OPTIONAL_HEADROOM for r in rules)
        ):
            self.refused += 1
            raise Deferred(f"{endpoint or kind}: budget low, optional call skipped", delay)
        if max_wait is not None and delay > max_wait:
            self.refused += 1
            raise RateLimited(
                f"{endpoint or kind}: rate budget exhausted (next slot in {delay:.1f}s)", delay
            )
        for rule in rules:
            rule.commit(t, endpoint)
        account = next((k for k in scopes if k[0] == "account"), None)
        cls = _class_of(kind)
        granted = self._granted
        for s in states:
            s.usage[cls].add(t, endpoint)
            if s.key[0] != "account":
                granted[s.name] = granted.get(s.name, 0) + 1  # demand (cluster mode)
                if account is not None:
                    s.share(account)[cls].add(t, endpoint)
        return delay

    async def acquire(
        self,
        kind: str,
        *scopes: ScopeKey,
        endpoint: str = "",
        optional: bool = False,
        max_wait: float | None = None,
    ) -> float:
        not_before = None
        if kind == "connect":
            rates = [self._scope(k).rates for k in scopes if k[0] == "ip"]
            if rates:
                not_before = self._clock() + self._rng.uniform(0, 1 / rates[0].connect_per_second)
        delay = self.reserve(
            kind, *scopes, endpoint=endpoint, optional=optional, max_wait=max_wait,
            not_before=not_before,
        )  # fmt: skip
        waited = 0.0
        account = next((k for k in scopes if k[0] == "account"), None)
        if delay > 0:
            shared = [self._scope(k).name for k in scopes if k[0] != "account"]
            self._wait_begins(account, shared)
            try:
                await self._sleep(delay)
            finally:
                self._wait_ends(account, shared)
            waited = delay
        # A busy loop can wake us late, and a request reaches the cloud some time after it is
        # granted: space calls to one endpoint by when the previous one *finished* (``release``),
        # one in flight at a time, not only by their reservations.
        for rule in self._spacing(kind, scopes):
            while True:
                gap = rule.sent.get(endpoint, float("-inf")) + rule.gap - self._clock()
                if rule.inflight.get(endpoint, 0) > 0:
                    gap = max(gap, 0.01)
                if gap <= 0:
                    break
                await self._sleep(gap)
                waited += gap
            rule.inflight[endpoint] = rule.inflight.get(endpoint, 0) + 1
            rule.sent[endpoint] = self._clock()
        self.waited += waited
        return waited

    def release(self, kind: str, *scopes: ScopeKey, endpoint: str = "") -> None:
        """The call granted by ``acquire`` is over (answered or failed)."""
        for rule in self._spacing(kind, scopes):
            n = rule.inflight.get(endpoint, 0) - 1
            if n > 0:
                rule.inflight[endpoint] = n
            else:
                rule.inflight.pop(endpoint, None)
            rule.sent[endpoint] = self._clock()

    def _spacing(self, kind: str, scopes: tuple[ScopeKey, ...]) -> list[_Interval]:
        return [
            r for key in scopes for r in self._scope(key).rules
            if isinstance(r, _Interval) and r.per_endpoint and kind in r.kinds
        ]  # fmt: skip

    # ------------------------------------------------------------------ waiting

    def _wait_begins(self, account: ScopeKey | None, shared: list[str]) -> None:
        for name in shared:
            self._backlog[name] = self._backlog.get(name, 0) + 1
        if account is None:
            return
        n = self._waiting.get(account, 0)
        self._waiting[account] = n + 1
        if n == 0 and self.on_waiting is not None:
            self.on_waiting(account[1], account[2], True)
        if self._reporter is None or self._reporter.done():
            self._reporter = asyncio.get_running_loop().create_task(self._report())

    def _wait_ends(self, account: ScopeKey | None, shared: list[str]) -> None:
        for name in shared:
            if self._backlog[name] > 1:
                self._backlog[name] -= 1
            else:
                del self._backlog[name]
        if account is None:
            return
        n = self._waiting.get(account, 1) - 1
        if n > 0:
            self._waiting[account] = n
            return
        self._waiting.pop(account, None)
        if self.on_waiting is not None:
            self.on_waiting(account[1], account[2], False)

    def is_waiting(self, vendor: str, account: str) -> bool:
        return account_scope(vendor, account) in self._waiting

    def waiting(self) -> dict[str, int]:
        """Accounts waiting for a slot, by vendor."""
        out: dict[str, int] = {}
        for key in self._waiting:
            out[key[1]] = out.get(key[1], 0) + 1
        return out

    async def _report(self) -> None:
        """One log line every ``report_every`` seconds while accounts wait (not one each)."""
        while self._waiting:
            by_vendor = ", ".join(f"{v} {n}" for v, n in sorted(self.waiting().items()))
            log.info(
                "pacing: %d account(s) waiting for a slot (%s)", len(self._waiting), by_vendor
            )
            await asyncio.sleep(self.report_every)

    # ------------------------------------------------------------------ budget

    def calls_made(self, vendor: str, account: str) -> int:
        """How many slots (connects and calls) the account took so far."""
        scope = self._scopes.get(account_scope(vendor, account))
        return 0 if scope is None else sum(u.total for u in scope.usage.values())

    def budget(self, vendor: str, account: str) -> dict[str, Any]:
        """The ``budget`` object of one account's ``bridge/accounts`` entry.

        For each scope the account used: per class (``connects``, ``calls``) ``used`` / ``limit``
        / ``window_s`` (``limit`` ``null`` where none is documented or configured) and, for the
        shared scopes (ip, app), the process-wide figure with this account's ``share``; plus the
        account's calls by endpoint. In cluster mode a shared scope shown with ``instances``
        (the live instances sharing it) has this instance's ``part`` of it as its limits.
        """
        now = self._clock()
        me = account_scope(vendor, account)
        out: dict[str, Any] = {}
        for key, scope in self._scopes.items():
            if key[1] != vendor:
                continue
            share = scope.shares.get(me) if key[0] != "account" else None
            if key[0] == "account" and key != me:
                continue
            if key[0] != "account" and share is None:
                continue
            entry: dict[str, Any] = {}
            for cls in ("connects", "calls"):
                limit, window, source = scope.limit_of(cls)
                item: dict[str, Any] = {
                    "used": scope.usage[cls].used(now, window), "limit": limit,
                    "window_s": window, "source": source,
                }  # fmt: skip
                if share is not None:
                    item["share"] = share[cls].used(now, window)
                entry[cls] = item
            if key[0] != "account" and self.instances > 1:
                entry["instances"] = self.instances  # limits are this instance's part of them
                entry["part"] = round(scope.part, 4)
            intervals = {r.name: r.interval for r in scope.rules if isinstance(r, _Interval)}
            if intervals:  # minimum spacings (seconds): endpoint, handshake, poll
                entry["intervals_s"] = intervals
            name = key[0] if key[0] != "app" else "app"
            out[name] = entry
        mine = self._scopes.get(me)
        if mine is not None:
            out["by_endpoint"] = dict(mine.usage["calls"].by_endpoint)
            out["total_calls"] = mine.usage["calls"].total
        return out


_DEFAULT: LocalPacer | None = None


def default_pacer() -> LocalPacer:
    """The process-wide pacer used by a connector the gateway did not hand one (unit tests,
    tools): the assumed limits, shared by every such connector, as the egress IP is."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = LocalPacer()
    return _DEFAULT
