"""``cloud2mqtt leases``: the lease bucket as an operator reads it, without running an instance.

What ``bridge/info`` and ``cloud2mqtt status`` show is each instance's own view, published over
MQTT. This reads the source instead: the ``c2m_leases`` KV bucket (leases.py) — the recorded
slot count, every instance's presence and when it expires, and every slot's holder — and maps
the configuration's accounts onto the slots, so that "who runs acct X", "which slots wait for a
takeover" and "is gw-c still counted" are answered from NATS itself. It only reads: it writes
no presence and takes no slot, so it can run beside a live cluster (or a stopped one).

``read_view(kv, slots)`` is the reading; ``LeaseView.rows`` / ``to_json`` the two outputs of
``cloud2mqtt leases`` (a table, or ``--json`` for scripts).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nats.js.errors import KeyNotFoundError, NoKeysError

from .kvtokens import unescape_key
from .leases import SLOTS_KEY, _loads, slot_of

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

    from ..config import AccountConfig

__all__ = ["LeaseView", "read_view"]

#: what a slot without a live holder is listed under
FREE, EXPIRED = "(free)", "(expired)"


@dataclass(frozen=True)
class LeaseView:
    """The bucket as read at one moment: ``slots`` is the configuration's count, ``recorded``
    the bucket's (None: no instance has joined yet); ``instances`` maps every presence to the
    seconds until it expires (negative: expired, not counted live); ``holders`` maps each slot
    to its holder (None: free) and the seconds until that lease expires."""

    slots: int
    recorded: int | None
    instances: dict[str, float]
    holders: dict[int, tuple[str | None, float | None]]

    def live(self) -> list[str]:
        return sorted(i for i, left in self.instances.items() if left > 0)

    def runner(self, slot: int) -> str:
        """Who runs ``slot``'s accounts: a live holder, ``(expired)`` (its holder's lease ran
        out: another instance takes it after a lease TTL), or ``(free)``."""
        owner, left = self.holders.get(slot, (None, None))
        if owner is None:
            return FREE
        return owner if left is not None and left > 0 else EXPIRED

    def to_json(self, accounts: list[AccountConfig]) -> dict[str, Any]:
        return {
            "slots": self.slots,
            "recorded_slots": self.recorded,
            "live": self.live(),
            "instances": {i: round(left, 1) for i, left in sorted(self.instances.items())},
            "leases": {
                str(n): {"owner": owner, "expires_in_s": None if left is None else round(left, 1)}
                for n, (owner, left) in sorted(self.holders.items())
            },
            "accounts": {
                f"{a.vendor}/{a.name}": {
                    "slot": (slot := slot_of(a.vendor, a.name, self.slots)),
                    "runs_on": self.runner(slot),
                }
                for a in accounts
            },
        }

    def rows(self, accounts: list[AccountConfig]) -> list[list[str]]:
        """The table: one row per instance (live or still present) and one for the slots
        nobody runs, with its slots and the configured accounts that hash into them."""
        slots_of = Counter(self.runner(n) for n in range(self.slots))
        accounts_of = Counter(self.runner(slot_of(a.vendor, a.name, self.slots)) for a in accounts)
        rows = [["INSTANCE", "LIVE", "EXPIRES IN", "SLOTS", "ACCOUNTS"]]
        for instance, left in sorted(self.instances.items()):
            rows.append([instance, "yes" if left > 0 else "no", f"{left:.1f}s" if left > 0 else "-",
                         str(slots_of.pop(instance, 0)), str(accounts_of.pop(instance, 0))])  # fmt: skip
        for name in (EXPIRED, FREE, *sorted(slots_of)):  # a holder whose presence is gone
            if slots_of.get(name) or accounts_of.get(name):
                rows.append([name, "-", "-", str(slots_of.pop(name, 0)), str(accounts_of.pop(name, 0))])
        return rows

    def summary(self) -> str:
        count = f"{self.slots} slots" + (
            "" if self.recorded in (None, self.slots) else f" (the cluster records {self.recorded}!)"
        )
        if self.recorded is None:
            count += " (none recorded yet: no instance has joined)"
        return f"{count}, {len(self.live())} live instance(s)"


async def read_view(kv: KeyValue, slots: int, *, wall: float | None = None) -> LeaseView:
    """Read the whole bucket once (``wall``: now, epoch seconds)."""
    now_ms = (time.time() if wall is None else wall) * 1000
    try:
        keys: list[str] = await kv.keys()
    except NoKeysError:
        keys = []
    recorded: int | None = None
    instances: dict[str, float] = {}
    holders: dict[int, tuple[str | None, float | None]] = {}
    for key in keys:
        with contextlib.suppress(KeyNotFoundError):
            value = _loads((await kv.get(key)).value)
            expires = value.get("expires")
            left = (expires - now_ms) / 1000 if isinstance(expires, (int, float)) else None
            if key == SLOTS_KEY:
                recorded = value.get("slots") if isinstance(value.get("slots"), int) else None
            elif key.startswith("instance."):
                instances[unescape_key(key.removeprefix("instance."))] = left if left else 0.0
            elif key.startswith("slot.") and key.removeprefix("slot.").isdigit():
                owner = value.get("owner")
                holders[int(key.removeprefix("slot."))] = (
                    owner if isinstance(owner, str) else None, left
                )
    return LeaseView(slots, recorded, instances, holders)
