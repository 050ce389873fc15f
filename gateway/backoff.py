"""Reconnect delays: capped exponential backoff with full jitter.

Full jitter (a uniform draw in ``[0, min(cap, base·2ⁿ)]``) spreads thousands of accounts that
lost their link at the same moment, so they do not all come back in the same second and trip a
vendor's per-IP rate rules.
"""

from __future__ import annotations

import random


class Backoff:
    __slots__ = ("_attempt", "_rng", "base", "cap", "floor")

    def __init__(
        self, base: float = 1.0, cap: float = 60.0, floor: float = 0.0, rng: random.Random | None = None
    ) -> None:
        self.base = base
        self.cap = cap
        self.floor = floor
        self._attempt = 0
        # The module's shared generator unless one is given: a Random() each holds 2.5 KiB of
        # Mersenne state, a fifth of the per-connection memory budget at 10,000 accounts.
        self._rng = rng

    @property
    def attempt(self) -> int:
        return self._attempt

    def next(self) -> float:
        """The delay before the next attempt (and count this attempt)."""
        ceiling = min(self.cap, self.base * (2 ** min(self._attempt, 30)))
        self._attempt += 1
        return max(self.floor, (self._rng or random).uniform(0, ceiling))

    def reset(self) -> None:
        self._attempt = 0
