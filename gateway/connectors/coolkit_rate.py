"""CoolKit's per-IP rate rules, enforced process-wide across every CoolKit account.

Seed 001, *Requirements of Calling Interface (Important)*: "The interval of a single IP calling the
same Interface should be greater than or equal to 500ms, with no more than 300 calls in 5 minutes
… every user is not allowed to log in and log out repeatedly for a short period of time (Send
userOnline command). Otherwise, your IP will be blocked".

The rules count calls *per IP*, so they bind the whole process, not one account: every CoolKit
connector in the process takes its slots from the one ``RateLimiter`` returned by
``shared_limiter`` (one per distinct rule set; normally there is exactly one, the seed's).

How a slot is granted: a caller reserves the earliest instant that keeps (a) ``min_interval``
after the previous reservation for the same endpoint and (b) at most ``max_calls`` reservations
in any ``window``; then it sleeps until that instant. Reservations, not a lock, so a caller
waiting for ``/v2/device/thing`` never delays one that wants ``/v2/family``. A small margin
(``slack``) absorbs network jitter between our clock and the server's.

``userOnline`` additionally waits until ``user_online_interval`` has passed since the same
account's previous handshake, so a flapping socket can never make us repeat it quickly.

Start-up pacing: when many accounts start at once, the budget above paces them by itself; the
``StartupProgress`` below counts accounts registered vs. synced and logs progress (and the wait,
when the budget holds an account back), so a slow start is explained rather than mysterious.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RateLimiter", "RateRules", "StartupProgress", "shared_limiter"]

log = logging.getLogger("cloud2mqtt.coolkit.rate")


@dataclass(frozen=True, slots=True)
class RateRules:
    min_interval: float = 0.5
    window: float = 300.0
    max_calls: int = 300
    user_online_interval: float = 20.0
    slack: float = 0.05  # fraction added to every interval for clock/network jitter


class RateLimiter:
    def __init__(self, rules: RateRules, clock: Callable[[], float] = time.monotonic) -> None:
        self.rules = rules
        self._clock = clock
        self._next_by_endpoint: dict[str, float] = {}
        self._slots: list[float] = []  # sorted reservation instants
        self._last_online: dict[str, float] = {}
        self._sent: dict[str, float] = {}  # when each endpoint's last call actually went out
        self.waited = 0.0  # total seconds callers were held back (for logs and tests)

    def reserve(self, endpoint: str) -> float:
        """Reserve the earliest allowed instant for one call; return the delay until it."""
        rules = self.rules
        now = self._clock()
        window = rules.window * (1 + rules.slack)
        cutoff = now - window
        drop = bisect.bisect_right(self._slots, cutoff)
        if drop:
            del self._slots[:drop]
        slot = max(now, self._next_by_endpoint.get(endpoint, now))
        while True:
            # Any window holding ``slot`` lies inside (slot - window, slot + window); keeping the
            # count there below max_calls is conservative but also covers reservations already
            # made for the near future by other endpoints.
            lo = bisect.bisect_right(self._slots, slot - window)
            hi = bisect.bisect_left(self._slots, slot + window)
            if hi - lo < rules.max_calls:
                break
            slot = self._slots[lo] + window + 1e-3
        bisect.insort(self._slots, slot)
        self._next_by_endpoint[endpoint] = slot + rules.min_interval * (1 + rules.slack) + 0.005
        return slot - now

    async def acquire(self, endpoint: str) -> float:
        """Wait for a slot for ``endpoint``; return how long we waited."""
        spacing = self.rules.min_interval * (1 + self.rules.slack)
        delay = max(self.reserve(endpoint), self._sent.get(endpoint, -spacing) + spacing - self._clock())
        waited = 0.0
        while delay > 0:
            self.waited += delay
            waited += delay
            await asyncio.sleep(delay)
            # A busy loop can wake us late and an earlier caller of the same endpoint later
            # still: space calls by when they really go out, not only by their reservations.
            delay = self._sent.get(endpoint, -spacing) + spacing - self._clock()
        self._sent[endpoint] = self._clock()
        return waited

    async def user_online(self, account: str) -> float:
        """Wait until ``account`` may send ``userOnline`` again, then take a global slot for it."""
        now = self._clock()
        last = self._last_online.get(account)
        delay = 0.0
        if last is not None:
            delay = max(0.0, last + self.rules.user_online_interval * (1 + self.rules.slack) - now)
        self._last_online[account] = now + delay  # reserved even if we are cancelled meanwhile
        if delay > 0:
            self.waited += delay
            await asyncio.sleep(delay)
        return delay + await self.acquire("WS userOnline")


_LIMITERS: dict[RateRules, RateLimiter] = {}


def shared_limiter(rules: RateRules) -> RateLimiter:
    """The process-wide limiter for these rules (accounts configured alike share one)."""
    limiter = _LIMITERS.get(rules)
    if limiter is None:
        if _LIMITERS:
            log.warning(
                "CoolKit accounts are configured with different rate rules; the per-IP budget "
                "is shared by the whole process, so keep the rate_* options identical"
            )
        limiter = _LIMITERS[rules] = RateLimiter(rules)
    return limiter


class StartupProgress:
    """Counts CoolKit accounts started vs. synced, process-wide, and logs the progress."""

    def __init__(self) -> None:
        self.registered: set[str] = set()
        self.synced: set[str] = set()

    def register(self, account: str) -> None:
        self.registered.add(account)

    def unregister(self, account: str) -> None:
        self.registered.discard(account)
        self.synced.discard(account)

    def describe(self) -> str:
        return f"{len(self.synced & self.registered)}/{len(self.registered)} CoolKit accounts synced"

    def done(self, account: str) -> None:
        if account in self.synced:
            return
        self.synced.add(account)
        if len(self.registered) > 1:
            log.info("start-up: %s", self.describe())


PROGRESS = StartupProgress()
