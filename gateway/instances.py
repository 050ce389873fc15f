"""Cluster mode: the whole cluster's ``bridge/accounts``, ``bridge/devices``, ``bridge/health``
and ``bridge/info``.

Each instance knows only its own accounts, devices, counters and settings, so each publishes
its own snapshots retained on ``<base>/bridge/instances/<instance id>/<kind>`` (``KINDS``) and
reads the others' there (``InstanceSnapshots.receive``). The ``bridge/<kind>`` topics are the
merge of every instance's snapshot (``merge``, ``merge_health``, ``merge_info``), written by
every instance: the merge is sorted and depends only on the
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
``bridge/info`` (``merge_info``) keeps what the live instances say alike where one instance
would have it, and the rest under ``instances.<id>``. Both rules are one walk over the nested
fields (``_split_level``) with a different rule for a field's values.

Pure bookkeeping (no NATS, no MQTT): the publisher (gateway/publisher.py) calls it, the gateway
routes the peers' messages to it and hands it the leases' view of ownership.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["KINDS", "PER_PROCESS", "InstanceSnapshots", "merge_health", "merge_info"]

#: the snapshots each instance publishes under ``bridge/instances/<id>/`` and reads from the
#: others
KINDS = ("accounts", "devices", "health", "info")

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
    sums, own = _split_level(level, _sum, PER_PROCESS)
    stamps = [s["ts"] for s in level.values() if _is_number(s.get("ts"))]
    out: Health = {**sums, "instances": own}
    if stamps:
        out["ts"] = max(stamps)
    return dict(sorted(out.items()))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def merge_info(snapshots: Mapping[str, Mapping[str, Any]], cluster: Mapping[str, Any]) -> Health:
    """The cluster's ``bridge/info`` from each instance's own (``{instance id: info}``; the
    caller picks the live ones) and ``cluster``, the receiving instance's fresh view of the
    leases (its ``cluster`` field).

    What every instance says alike stays where a single instance has it (version, build,
    the common configuration, field by field); what differs (a log level, an HTTP address, a
    version during a rolling upgrade, ``gateway.instance_id``) goes to ``instances.<id>`` with
    its nesting, as do each instance's slots (``held``). ``cluster`` keeps what is the
    cluster's: ``slots``, ``lease_ttl``, ``live`` and who runs each account."""
    level = {i: {k: v for k, v in snapshots[i].items() if k != "cluster"} for i in sorted(snapshots)}
    common, own = _split_level(level, _same)
    for i in level:
        theirs = snapshots[i].get("cluster")
        if isinstance(theirs, Mapping) and "held" in theirs:
            own[i]["held"] = theirs["held"]
    shared = {k: v for k, v in cluster.items() if k not in ("instance", "held")}
    return dict(sorted({**common, "cluster": shared, "instances": own}.items()))


def _sum(values: Mapping[str, Any], everyone: int) -> Any:
    """``merge_health``'s rule for one field: numbers add up (over the instances that have the
    field); anything else is per instance."""
    if not all(_is_number(v) for v in values.values()):
        return _APART
    total = sum(values.values())
    return round(total, 6) if isinstance(total, float) else total


def _same(values: Mapping[str, Any], everyone: int) -> Any:
    """``merge_info``'s rule for one field: kept when every instance has it, alike."""
    first, *rest = values.values()
    return first if len(values) == everyone and all(v == first for v in rest) else _APART


#: a field's rule says it is not common: each instance keeps its own value
_APART: Any = object()


def _split_level(
    level: Mapping[str, Mapping[str, Any]],
    combine: Callable[[Mapping[str, Any], int], Any],
    apart: frozenset[str] = frozenset(),
) -> tuple[Health, dict[str, Health]]:
    """One level of a merge: what ``combine`` makes of each field's values across the
    instances (given the values and how many instances there are; ``_APART``: nothing in
    common), nested objects field by field, and each instance's own part (the fields of
    ``apart`` always)."""
    common: Health = {}
    own: dict[str, Health] = {i: {} for i in level}
    for key in sorted({k for values in level.values() for k in values}):
        values = {i: d[key] for i, d in level.items() if key in d}
        merged = _APART if key in apart else combine(values, len(level))
        if merged is not _APART:
            common[key] = merged
        elif key not in apart and all(isinstance(v, Mapping) for v in values.values()):
            common[key], nested = _split_level(values, combine)
            for i, part in nested.items():
                if part:
                    own[i][key] = part
        else:
            for i, value in values.items():
                own[i][key] = value
    return common, own


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
        if kind in ("health", "info"):
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

    def merge_own(self, kind: str, own: dict[str, Any]) -> dict[str, Any]:
        """``merge_health`` or ``merge_info`` by ``kind``."""
        return self.merge_health(own) if kind == "health" else self.merge_info(own)

    def merge_health(self, own: Health) -> Health:
        """``bridge/health``: ``own`` (this instance's snapshot) and the last snapshot of every
        live peer, summed (``merge_health``)."""
        return merge_health(self._live_with("health", own))

    def merge_info(self, own: dict[str, Any]) -> dict[str, Any]:
        """``bridge/info``: ``own`` (this instance's, with its fresh ``cluster`` view) and the
        last one of every live peer (``merge_info``)."""
        cluster = own.get("cluster")
        return merge_info(self._live_with("info", own), cluster if isinstance(cluster, dict) else {})

    def _live_with(self, kind: str, own: dict[str, Any]) -> dict[str, Any]:
        """This instance's ``own`` snapshot of ``kind`` and every live peer's last one."""
        live = set(self.live())
        snapshots = {i: s[kind] for i, s in self._peers.items() if i in live and kind in s}
        snapshots[self.instance_id] = own
        return snapshots
