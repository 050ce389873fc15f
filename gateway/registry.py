"""The device registry: one merged state per device, for every vendor.

It holds what the topic tree shows: the last known property values (with per-property
timestamps so a replayed, older update is dropped), availability, and the device's info and
schema. It does no I/O: every change it accepts is emitted on the event bus
(``gateway.events``), where the publisher and the other consumers pick it up.

Callers (the account links) feed it values already normalized; what they get back says what
was accepted, so they can count what was not (stale values).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from protocols.model import DeviceEvent, DeviceInfo

from .events import (
    AvailabilityChanged,
    DeviceAdded,
    DeviceEventRaised,
    DeviceRemoved,
    EventBus,
    SchemaChanged,
    StateChanged,
)
from .records import DeviceRecord
from .topics import Topics

log = logging.getLogger("cloud2mqtt.registry")

__all__ = ["DeviceRecord", "Registry"]


class Registry:
    """Every known device, keyed by ``(vendor, device id)``; emits what changes on ``bus``."""

    def __init__(self, topics: Topics, bus: EventBus) -> None:
        self.topics = topics
        self.bus = bus
        self._on_state = bus.handlers(StateChanged)
        self._devices: dict[tuple[str, str], DeviceRecord] = {}
        self._by_account: dict[tuple[str, str], dict[str, DeviceRecord]] = {}

    def __len__(self) -> int:
        return len(self._devices)

    def __iter__(self) -> Iterator[DeviceRecord]:
        return iter(self._devices.values())

    def get(self, vendor: str, device: str) -> DeviceRecord | None:
        return self._devices.get((vendor, device))

    def account_devices(self, vendor: str, account: str) -> dict[str, DeviceRecord]:
        return self._by_account.get((vendor, account), {})

    def upsert(self, vendor: str, account: str, info: DeviceInfo) -> tuple[DeviceRecord, bool]:
        """Add or update a device; emits ``DeviceAdded`` or, when its info changed,
        ``SchemaChanged``. Returns the record and whether it is new. A device already held by
        another account of the same vendor (shared into both) stays with the first."""
        key = (vendor, info.device)
        rec = self._devices.get(key)
        if rec is not None:
            if rec.account != account:
                return rec, False
            if rec.info != info:
                old = rec.info
                rec.info = info
                if (old.schema, old.name, old.model) != (info.schema, info.name, info.model):
                    self.bus.emit(SchemaChanged(rec))
            return rec, False
        topic = self.topics.device(vendor, info.device)
        rec = DeviceRecord(vendor, account, info, topic, topic.encode())
        self._devices[key] = rec
        self._by_account.setdefault((vendor, account), {})[info.device] = rec
        self.bus.emit(DeviceAdded(rec))
        return rec, True

    def remove(self, rec: DeviceRecord) -> None:
        """Forget a device; emits ``DeviceRemoved`` (its retained topics are to be cleared)."""
        if self._devices.pop((rec.vendor, rec.device), None) is None:
            return
        acc = self._by_account.get((rec.vendor, rec.account))
        if acc is not None:
            acc.pop(rec.device, None)
        self.bus.emit(DeviceRemoved(rec))

    def apply_state(
        self,
        rec: DeviceRecord,
        props: Mapping[str, Any],
        ts: int,
        prop_ts: Mapping[str, int] | None,
        precision_ms: int = 1,
    ) -> tuple[dict[str, Any], int]:
        """Merge newer values; emit ``StateChanged`` with what changed; return what changed
        and how many values were older than the stored ones (and so dropped).

        A value is dropped as stale when its time is older than the stored one, compared at
        ``precision_ms`` (the resolution the vendor gives this update's times): a report stamped
        with a whole second loses only to a value stored in an earlier second, and a tie goes to
        the newcomer. The stored time only moves forward.
        """
        changed: dict[str, Any] = {}
        stale = 0
        stored_ts = rec.prop_ts
        state = rec.state
        p = precision_ms
        for key, value in props.items():
            t = prop_ts.get(key, ts) if prop_ts else ts
            stored = stored_ts.get(key, 0)
            if t < stored:
                if p == 1 or t // p < stored // p:
                    stale += 1
                    continue
            else:
                stored_ts[key] = t
            if key not in state or state[key] != value:
                state[key] = value
                changed[key] = value
        if ts > rec.last_seen and (changed or not stale):
            rec.last_seen = ts
        if changed:
            # the hot path: the bus's handler list for StateChanged, without emit's lookup
            event = StateChanged(rec, changed, ts, precision_ms)
            for handler in self._on_state:
                try:
                    handler(event)
                except Exception:
                    log.exception("StateChanged handler %r failed", handler)
        return changed, stale

    def apply_availability(
        self, rec: DeviceRecord, online: bool, ts: int, reason: str | None
    ) -> bool:
        """Set online/offline; emit ``AvailabilityChanged`` and return True when it changed."""
        if rec.online is online and rec.reason == reason:
            return False
        if rec.online is not online:
            rec.since = ts
        rec.online = online
        rec.reason = reason
        self.bus.emit(AvailabilityChanged(rec))
        return True

    def raise_event(self, rec: DeviceRecord, event: DeviceEvent) -> None:
        """Pass a device event on (``DeviceEventRaised``); events are not stored."""
        self.bus.emit(DeviceEventRaised(rec, event))
