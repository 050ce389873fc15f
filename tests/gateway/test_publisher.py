"""The publisher over plain values: registry events become the topic tree."""

from __future__ import annotations

from gateway.events import AccountLinkChanged, MqttConnected
from protocols.model import DeviceEvent, DeviceInfo, Property, Schema

from .conftest import Core

SCHEMA = Schema(properties=(Property("power", type="bool"), Property("set", type="int")))


async def test_state_availability_and_events_follow_registry_changes(core: Core) -> None:
    core.publisher.start()
    rec, _ = core.registry.upsert("v", "acc", DeviceInfo("d/1", "Lamp", "M", SCHEMA))
    core.registry.apply_state(rec, {"power": True}, 1000, None)
    core.registry.apply_availability(rec, True, 1000, None)
    core.registry.raise_event(rec, DeviceEvent("d/1", "press", "info", {"n": 1}, 1500))
    assert core.mqtt.on("base/v/d%2F1") == [{"power": True, "last_seen": 1000}]
    assert core.mqtt.on("base/v/d%2F1/availability") == [
        {"state": "online", "since": 1000, "reason": None}
    ]
    assert core.mqtt.on("base/v/d%2F1/event") == [
        {"event": "press", "level": "info", "params": {"n": 1}, "ts": 1500}
    ]
    (added,) = core.mqtt.on("base/bridge/event")
    assert added["type"] == "device_added" and added["device"] == "d/1"
    retained = {t: r for t, _, _, r, _ in core.mqtt.sent}
    assert retained["base/v/d%2F1"] and not retained["base/v/d%2F1/event"]


async def test_removal_clears_every_retained_topic(core: Core) -> None:
    core.publisher.per_property_topics = True
    core.publisher.start()
    rec, _ = core.registry.upsert("v", "acc", DeviceInfo("d1", "Lamp", "M", SCHEMA))
    core.registry.apply_state(rec, {"power": True, "set": 2}, 1000, None)
    assert core.mqtt.on("base/v/d1/set_") == [2]  # a property named like a sub-topic
    core.registry.remove(rec)
    for topic in ("base/v/d1", "base/v/d1/power", "base/v/d1/set_"):
        assert core.mqtt.on(topic)[-1] == b""
    assert core.mqtt.on("base/bridge/event")[-1]["type"] == "device_removed"


async def test_attention_is_announced_once_and_accounts_snapshot_follows(core: Core) -> None:
    core.publisher.start()
    desc = {"vendor": "v", "name": "acc", "state": "attention", "error": "refused"}
    core.bus.emit(AccountLinkChanged("v", "acc", desc, needs_attention=True))
    core.bus.emit(AccountLinkChanged("v", "acc", desc, needs_attention=False))
    events = [e for e in core.mqtt.on("base/bridge/event") if e["type"] == "account_attention"]
    assert len(events) == 1 and events[0]["reason"] == "refused"
    core.publisher._publish_accounts()
    assert core.mqtt.on("base/bridge/accounts")[-1] == [desc]


async def test_reconnect_republishes_every_retained_topic(core: Core) -> None:
    core.publisher.start()
    rec, _ = core.registry.upsert("v", "acc", DeviceInfo("d1", "Lamp", "M", SCHEMA))
    core.registry.apply_state(rec, {"power": True}, 1000, None)
    core.registry.apply_availability(rec, True, 1000, None)
    core.mqtt.sent.clear()
    core.bus.emit(MqttConnected())
    topics = [t for t, *_ in core.mqtt.sent]
    for topic in ("base/bridge/state", "base/v/d1", "base/v/d1/availability",
                  "base/bridge/devices", "base/bridge/accounts", "base/bridge/health"):  # fmt: skip
        assert topic in topics
    assert core.mqtt.on("base/bridge/state") == [{"state": "online"}]


async def test_stop_unsubscribes(core: Core) -> None:
    core.publisher.start()
    core.publisher.stop()
    core.mqtt.sent.clear()
    rec, _ = core.registry.upsert("v", "acc", DeviceInfo("d1", "Lamp", "M", SCHEMA))
    core.registry.apply_state(rec, {"power": True}, 1000, None)
    assert core.mqtt.sent == []
