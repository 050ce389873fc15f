"""``DeviceRecord``: one device as the topic tree shows it (held by the registry, carried by
the bus's events, read by the publisher and the consumers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocols.model import DeviceInfo

__all__ = ["DeviceRecord"]


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
