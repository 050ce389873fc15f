"""Counters for ``bridge/health``: every dropped or rejected input is counted by vendor.

Rates come from fixed windows: ``totals`` are sampled at the window boundaries, and
``snapshot()`` reports the rate over the last *completed* window, so asking for a snapshot
(``bridge/request/health``, the periodic publish, a scrape) never changes what the next one
says. Until the first window completes, the rate is over the time since start.

The same numbers feed ``/metrics`` (``gateway.consumers.metrics`` reads them at scrape time, so
nothing is counted twice on the hot path): ``counters`` by vendor, ``by_account`` per
``(vendor, account)`` (the account links count there too, including ``states`` and ``events``)
and ``labelled`` for counters with one more label (``commands`` by result, ``api_calls`` by
endpoint).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

__all__ = ["Health"]


class Health:
    __slots__ = (
        "_clock",
        "_rates",
        "_window",
        "_window_start",
        "_window_totals",
        "by_account",
        "counters",
        "labelled",
        "started",
        "totals",
    )

    def __init__(self, window: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.counters: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        # totals that feed the rates; plain ints on the hot path
        self.totals = {"state": 0, "events": 0, "published": 0, "commands": 0}
        self.started = time.time()
        self._clock = clock
        self._window = window
        self._window_start = clock()
        self._window_totals = dict(self.totals)
        self._rates: dict[str, float] | None = None  # of the last completed window
        #: (vendor, account) -> counter -> n; one dict per account, kept across restarts
        self.by_account: dict[tuple[str, str], defaultdict[str, int]] = {}
        #: (counter, vendor, account, label) -> n: ``commands`` by result, ``api_calls`` by endpoint
        self.labelled: defaultdict[tuple[str, str, str, str], int] = defaultdict(int)

    def count(self, counter: str, vendor: str, n: int = 1, account: str | None = None) -> None:
        self.counters[counter][vendor] += n
        if account is not None:
            self.account(vendor, account)[counter] += n

    def account(self, vendor: str, account: str) -> defaultdict[str, int]:
        """The account's own counters (a link keeps this dict and counts into it directly)."""
        counts = self.by_account.get((vendor, account))
        if counts is None:
            counts = self.by_account[(vendor, account)] = defaultdict(int)
        return counts

    def count_labelled(
        self, counter: str, vendor: str, account: str, label: str, n: int = 1
    ) -> None:
        """Count with one more label (``commands`` by result, ``api_calls`` by endpoint)."""
        self.labelled[(counter, vendor, account, label)] += n

    def rates(self) -> dict[str, float]:
        """Per-second rates over the last completed window (or since start, before one)."""
        now = self._clock()
        elapsed = now - self._window_start
        if elapsed >= self._window:
            # close the window(s) that ended: the rate over them is the one reported
            self._rates = {
                name: (value - self._window_totals[name]) / elapsed
                for name, value in self.totals.items()
            }
            self._window_start = now
            self._window_totals = dict(self.totals)
        if self._rates is not None:
            rates = self._rates
        else:
            dt = max(elapsed, 1e-6)
            rates = {n: (v - self._window_totals[n]) / dt for n, v in self.totals.items()}
        return {f"{name}_per_s": round(value, 1) for name, value in rates.items()}

    def snapshot(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ts": int(time.time() * 1000),
            "uptime_s": int(time.time() - self.started),
            "rates": self.rates(),
            "totals": dict(self.totals),
            "counters": {name: dict(by_vendor) for name, by_vendor in self.counters.items()},
        }
        if extra:
            out.update(extra)
        return out
