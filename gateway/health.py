"""Counters for ``bridge/health``: every dropped or rejected input is counted by vendor."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

__all__ = ["Health"]


class Health:
    __slots__ = ("_last", "_last_t", "counters", "started", "totals")

    def __init__(self) -> None:
        self.counters: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        # totals that feed the rates; plain ints on the hot path
        self.totals = {"state": 0, "events": 0, "published": 0, "commands": 0}
        self.started = time.time()
        self._last = dict(self.totals)
        self._last_t = time.monotonic()

    def count(self, counter: str, vendor: str, n: int = 1) -> None:
        self.counters[counter][vendor] += n

    def snapshot(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        now = time.monotonic()
        dt = max(now - self._last_t, 1e-6)
        rates = {
            f"{name}_per_s": round((value - self._last[name]) / dt, 1)
            for name, value in self.totals.items()
        }
        self._last = dict(self.totals)
        self._last_t = now
        out: dict[str, Any] = {
            "ts": int(time.time() * 1000),
            "uptime_s": int(time.time() - self.started),
            "rates": rates,
            "totals": dict(self.totals),
            "counters": {name: dict(by_vendor) for name, by_vendor in self.counters.items()},
        }
        if extra:
            out.update(extra)
        return out
