"""Core unit tests: the real registry, topics, publisher and command handler over plain values,
with a recording MQTT port instead of a broker."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.events import EventBus
from gateway.health import Health
from gateway.publisher import Publisher
from gateway.registry import Registry
from gateway.topics import Topics


class RecordingMqtt:
    """The publisher's ``MqttPort``: records every publish as ``(topic, payload, qos, retain, props)``."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, int, bool, Any]] = []
        self.connected = True
        self.published = 0
        self.dropped = 0
        self.unacked = 0

    def publish(self, topic: str | bytes, payload: bytes, qos: int = 0, retain: bool = False,
                props: Any = None) -> None:  # fmt: skip
        topic = topic.decode() if isinstance(topic, bytes) else topic
        value: Any = orjson.loads(payload) if payload else b""
        self.sent.append((topic, value, qos, retain, props))

    def on(self, topic: str) -> list[Any]:
        return [payload for t, payload, *_ in self.sent if t == topic]


class Core:
    def __init__(self) -> None:
        self.bus = EventBus()
        self.topics = Topics("base")
        self.registry = Registry(self.topics, self.bus)
        self.health = Health()
        self.mqtt = RecordingMqtt()
        self.publisher = Publisher(self.mqtt, self.topics, self.registry, self.bus, self.health)


@pytest.fixture
def core() -> Core:
    return Core()
