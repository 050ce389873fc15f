"""Cluster mode: the whole cluster's ``bridge/accounts`` and ``bridge/devices``.

Each instance knows only its own accounts and devices, so each publishes its own snapshots
retained on ``<base>/bridge/instances/<instance id>/accounts`` and ``…/devices`` and reads the
others' there (``InstanceSnapshots.receive``). ``bridge/accounts`` and ``bridge/devices`` are
the merge of every instance's snapshot (``merge``), written by every instance: the merge is
sorted and depends only on the snapshots and on who owns which account, so instances that see
the same snapshots and leases write the same payload, and the last writer changes nothing.

From each instance's snapshot the merge keeps only the accounts (and their devices) that
instance runs now according to the slot leases (``owner``): a dead instance's retained
snapshot, or the last one of an instance an account just left, does not show an account run
elsewhere a second time, and an account that moves shows once, under its new owner (or not at
all while its slot is free). Each ``bridge/accounts`` entry names its ``instance``.

Pure bookkeeping (no NATS, no MQTT): the publisher (gateway/publisher.py) calls it, the gateway
routes the peers' messages to it and hands it the leases' view of ownership.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["KINDS", "InstanceSnapshots"]

#: the snapshots each instance publishes under ``bridge/instances/<id>/``
KINDS = ("accounts", "devices")

Entries = list[dict[str, Any]]


@dataclass(eq=False)
class InstanceSnapshots:
    """The peers' last snapshots and the merge; see the module docstring."""

    instance_id: str
    #: the ownership now (the slot leases): a lookup of who runs ``(vendor, account)``, None
    #: while nobody does (one lookup per merge: it reads the leases once)
    owners: Callable[[], Callable[[str, str], str | None]]
    #: whether this instance takes part (leases running): only then does it write the merge,
    #: so a stopping instance's last view cannot overwrite the survivors' newer one
    serving: Callable[[], bool] = lambda: True
    _peers: dict[str, dict[str, Entries]] = field(default_factory=dict, init=False)

    def receive(self, instance: str, kind: str, payload: bytes) -> bool:
        """A peer's retained snapshot (empty: it left). Returns whether anything changed."""
        if instance == self.instance_id or kind not in KINDS:
            return False  # our own echo: the publisher merges its live view instead
        snapshots = self._peers.setdefault(instance, {})
        if not payload:
            changed = snapshots.pop(kind, None) is not None
            if not snapshots:
                del self._peers[instance]
            return changed
        try:
            entries = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            return False
        if snapshots.get(kind) == entries:
            return False
        snapshots[kind] = entries
        return True

    def peers(self) -> list[str]:
        return sorted(self._peers)

    def merge(self, kind: str, own: Entries) -> Entries:
        """Every instance's ``kind`` entries of the accounts it owns now, sorted; accounts
        entries gain ``"instance"``."""
        by_instance = {i: s.get(kind, []) for i, s in self._peers.items()}
        by_instance[self.instance_id] = own
        owner = self.owners()
        out: Entries = []
        for instance, entries in by_instance.items():
            for entry in entries:
                vendor = entry.get("vendor")
                account = entry.get("name" if kind == "accounts" else "account")
                if not isinstance(vendor, str) or not isinstance(account, str):
                    continue
                if owner(vendor, account) != instance:
                    continue
                out.append({**entry, "instance": instance} if kind == "accounts" else entry)
        if kind == "accounts":
            out.sort(key=lambda e: (e["vendor"], e["name"], e["instance"]))
        else:
            out.sort(key=lambda e: (str(e.get("topic")), e["vendor"], e["account"]))
        return out
