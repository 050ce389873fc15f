"""The device registry: one merged state per device, for every vendor.

It holds what the topic tree shows: the last known property values (with per-property
timestamps so a replayed, older update is dropped), availability, and the device's info and
schema. It does no I/O; the gateway publishes what ``apply_*`` says changed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from protocols.model import DeviceInfo

from .topics import Topics

__all__ = ["DeviceRecord", "Registry"]


@dataclass(slots=True, eq=False)
class DeviceRecord:
    vendor: str
    account: str
    info: DeviceInfo
    topic: str
    topic_bytes: bytes
    state: dict[str, Any] = field(default_factory=dict)
    prop_ts: dict[str, int] = field(default_factory=dict)
    last_seen: int = 0
    online: bool | None = None
    since: int = 0
    reason: str | None = None
    prop_topics: dict[str, bytes] = field(default_factory=dict)

    @property
    def device(self) -> str:
        return self.info.device

    def describe(self) -> dict[str, Any]:
        return {
            "vendor": self.vendor,
            "account": self.account,
            "id": self.info.device,
            "topic": self.topic,
            "name": self.info.name,
            "model": self.info.model,
            "online": self.online,
            "schema": self.info.schema.to_json(),
        }

    def availability_payload(self) -> dict[str, Any]:
        return {
            "state": "online" if self.online else "offline",
            "since": self.since,
            "reason": self.reason,
        }


class Registry:
    def __init__(self, topics: Topics) -> None:
        self.topics = topics
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
        key = (vendor, info.device)
        rec = self._devices.get(key)
        if rec is not None:
            if rec.account != account:
                # The same device shared into two accounts: the first keeps it.
                return rec, False
            rec.info = info
            return rec, False
        topic = self.topics.device(vendor, info.device)
        rec = DeviceRecord(vendor, account, info, topic, topic.encode())
        self._devices[key] = rec
        self._by_account.setdefault((vendor, account), {})[info.device] = rec
        return rec, True

    def remove(self, rec: DeviceRecord) -> None:
        self._devices.pop((rec.vendor, rec.device), None)
        acc = self._by_account.get((rec.vendor, rec.account))
        if acc is not None:
            acc.pop(rec.device, None)

    @staticmethod
    def apply_state(
        rec: DeviceRecord, props: Mapping[str, Any], ts: int, prop_ts: Mapping[str, int] | None
    ) -> tuple[dict[str, Any], int]:
        """Merge newer values; return what changed and how many were older than stored."""
        changed: dict[str, Any] = {}
        stale = 0
        stored_ts = rec.prop_ts
        state = rec.state
        for key, value in props.items():
            t = prop_ts.get(key, ts) if prop_ts else ts
            if t < stored_ts.get(key, 0):
                stale += 1
                continue
            stored_ts[key] = t
            if key not in state or state[key] != value:
                state[key] = value
                changed[key] = value
        if ts > rec.last_seen and (changed or not stale):
            rec.last_seen = ts
        return changed, stale

    @staticmethod
    def apply_availability(rec: DeviceRecord, online: bool, ts: int, reason: str | None) -> bool:
        if rec.online is online and rec.reason == reason:
            return False
        if rec.online is not online:
            rec.since = ts
        rec.online = online
        rec.reason = reason
        return True
