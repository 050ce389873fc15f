"""Cluster mode: the whole cluster's ``bridge/accounts``, ``bridge/devices`` and ``bridge/health``.

Each instance knows only its own accounts, devices and counters, so each publishes its own
snapshots retained on ``<base>/bridge/instances/<instance id>/accounts``, ``…/devices`` and
``…/health`` and reads the others' there (``InstanceSnapshots.receive``). ``bridge/accounts``,
``bridge/devices`` and ``bridge/health`` are the merge of every instance's snapshot (``merge``,
``merge_health``), written by every instance: the merge is sorted and depends only on the
snapshots and on the leases, so instances that see the same snapshots and leases write the same
payload, and the last writer changes nothing.

From each instance's snapshot the merge keeps only the accounts (and their devices) that
instance runs now according to the slot leases (``owner``): a dead instance's retained
snapshot, or the last one of an instance an account just left, does not show an account run
elsewhere a second time, and an account that moves shows once, under its new owner (or not at
all while its slot is free). Each ``bridge/accounts`` entry names its ``instance``.

``bridge/health`` is the sum of the live instances' health snapshots (``live``: the instances
whose presence the leases see, this one always included): a dead instance's retained snapshot
stops counting once its presence expires. ``merge_health`` is the rule, over plain dicts: every
number is added up (devices, accounts, totals, counters by vendor, rates, MQTT figures), and
what describes one process (``PER_PROCESS``: ``ts``, ``uptime_s``, ``pid``, ``speedups``, and
any value that is not a number, such as ``mqtt.connected``) goes under ``instances.<id>``.

Pure bookkeeping (no NATS, no MQTT): the publisher (gateway/publisher.py) calls it, the gateway
routes the peers' messages to it and hands it the leases' view of ownership.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["KINDS", "PER_PROCESS", "InstanceSnapshots", "merge_health"]

#: the snapshots each instance publishes under ``bridge/instances/<id>/`` and reads from the
#: others (``bridge/instances/<id>/info`` is published too, for people: nothing merges it)
KINDS = ("accounts", "devices", "health")

#: the top-level ``bridge/health`` fields that describe one process, not a quantity to add up
#: (``instance`` is dropped: it is the key under ``instances``)
PER_PROCESS = frozenset({"ts", "uptime_s", "pid", "speedups"})

Entries = list[dict[str, Any]]
Health = dict[str, Any]


def merge_health(snapshots: Mapping[str, Mapping[str, Any]]) -> Health:
    """The cluster's ``bridge/health`` from each instance's own snapshot (``{instance id:
    snapshot}``; the caller picks the live ones).

    Every number is added up over the instances that have it (in instance-id order, floats
    rounded to 6 places, so the same snapshots always give the same payload), nested objects
    field by field; what is not a number (``mqtt.connected``, ``speedups``), a field of
    ``PER_PROCESS``, or a field whose type differs between instances (versions that disagree)
    goes to ``instances.<id>`` with its nesting; ``ts`` is also the newest snapshot's. Keys are
    sorted at every level."""
    level = {i: {k: v for k, v in snapshots[i].items() if k != "instance"}
             for i in sorted(snapshots)}  # fmt: skip
    sums, own = _merge_level(level, PER_PROCESS)
    stamps = [s["ts"] for s in level.values() if _is_number(s.get("ts"))]
    out: Health = {**sums, "instances": own}
    if stamps:
        out["ts"] = max(stamps)
    return dict(sorted(out.items()))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _merge_level(
    level: Mapping[str, Mapping[str, Any]], per_process: frozenset[str] = frozenset()
) -> tuple[Health, dict[str, Health]]:
    """One level of ``merge_health``: the sums, and each instance's own (non-additive) part."""
    sums: Health = {}
    own: dict[str, Health] = {i: {} for i in level}
    for key in sorted({k for values in level.values() for k in values}):
        values = {i: d[key] for i, d in level.items() if key in d}
        if key not in per_process and all(_is_number(v) for v in values.values()):
            total = sum(values.values())
            sums[key] = round(total, 6) if isinstance(total, float) else total
        elif key not in per_process and all(isinstance(v, Mapping) for v in values.values()):
            sums[key], nested = _merge_level(values)
            for i, part in nested.items():
                if part:
                    own[i][key] = part
        else:
            for i, value in values.items():
                own[i][key] = value
    return sums, own


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
    #: the live instances (the leases' presence view); only their health counts
    live: Callable[[], Iterable[str]] = lambda: ()
    _peers: dict[str, dict[str, Any]] = field(default_factory=dict, init=False)

    def receive(self, instance: str, kind: str, payload: bytes) -> bool:
        """A peer's retained snapshot (empty: it left). Returns whether anything changed."""
        if instance == self.instance_id or kind not in KINDS:
            return False  # our own echo: the publisher merges its live view instead
        if not payload:
            snapshots = self._peers.get(instance, {})
            changed = snapshots.pop(kind, None) is not None
            if not snapshots:
                self._peers.pop(instance, None)
            return changed
        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return False
        if kind == "health":
            if not isinstance(value, dict):
                return False
        elif not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
            return False
        snapshots = self._peers.setdefault(instance, {})
        if snapshots.get(kind) == value:
            return False
        snapshots[kind] = value
        return True

    def peers(self) -> list[str]:
        return sorted(self._peers)

    def merge(self, kind: str, own: Entries) -> Entries:
        """Every instance's ``kind`` entries of the accounts it owns now, sorted; accounts
        entries gain ``"instance"``."""
        by_instance: dict[str, Entries] = {i: s.get(kind, []) for i, s in self._peers.items()}
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

    def merge_health(self, own: Health) -> Health:
        """``bridge/health``: ``own`` (this instance's snapshot) and the last snapshot of every
        live peer, summed (``merge_health``)."""
        live = set(self.live())
        snapshots = {
            i: s["health"] for i, s in self._peers.items() if i in live and "health" in s
        }
        snapshots[self.instance_id] = own
        return merge_health(snapshots)
