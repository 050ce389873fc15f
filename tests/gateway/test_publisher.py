"""The publisher over plain values: registry events become the topic tree."""

from __future__ import annotations

import orjson

from gateway.events import AccountLinkChanged, MqttConnected
from gateway.instances import InstanceSnapshots
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


def clustered(
    core: Core, owners: dict[str, str | None], others: bool = True, live: tuple[str, ...] = ()
) -> None:
    """Make ``core``'s publisher instance ``gw-a`` of a cluster (gateway/instances.py)."""
    core.publisher.cluster = InstanceSnapshots(
        "gw-a", lambda: lambda vendor, account: owners.get(account), live=lambda: live
    )
    core.publisher.others_serve = lambda: others


async def test_cluster_mode_publishes_its_own_snapshot_and_the_merge_on_change_only(
    core: Core,
) -> None:
    clustered(core, {"a1": "gw-a", "b1": "gw-b"})
    core.publisher.start()
    desc = {"vendor": "v", "name": "a1", "state": "online"}
    core.bus.emit(AccountLinkChanged("v", "a1", desc, needs_attention=False))
    core.publisher._publish_accounts()
    core.publisher._publish_accounts()  # unchanged: written once
    assert core.mqtt.on("base/bridge/instances/gw-a/accounts") == [[desc]]
    assert core.mqtt.on("base/bridge/accounts") == [[{**desc, "instance": "gw-a"}]]
    peer = {"vendor": "v", "name": "b1", "state": "online"}
    core.publisher.on_instance_snapshot("base/bridge/instances/gw-b/accounts", orjson.dumps([peer]))
    core.publisher._publish_accounts()
    assert core.mqtt.on("base/bridge/accounts")[-1] == [
        {**desc, "instance": "gw-a"}, {**peer, "instance": "gw-b"},
    ]  # fmt: skip
    assert core.publisher.accounts_view() == core.mqtt.on("base/bridge/accounts")[-1]
    assert len(core.mqtt.on("base/bridge/instances/gw-a/accounts")) == 1


async def test_cluster_goodbye_clears_the_instances_own_snapshots(core: Core) -> None:
    clustered(core, {"a1": "gw-a"})
    core.publisher.start()
    core.bus.emit(AccountLinkChanged("v", "a1", {"vendor": "v", "name": "a1", "state": "x"}))
    core.publisher._publish_accounts()
    before = len(core.mqtt.on("base/bridge/accounts"))
    core.publisher.goodbye()  # others serve: they write the merge
    assert len(core.mqtt.on("base/bridge/accounts")) == before
    for kind in ("accounts", "devices", "health", "info"):
        assert core.mqtt.on(f"base/bridge/instances/gw-a/{kind}")[-1] == b""
    assert core.mqtt.on("base/bridge/state") == [{"state": "online"}]
    clustered(core, {}, others=False)
    core.publisher.goodbye()  # the last one: its accounts as they are, and offline
    assert core.mqtt.on("base/bridge/accounts")[-1] == [
        {"vendor": "v", "name": "a1", "state": "x", "instance": "gw-a"}
    ]
    assert core.mqtt.on("base/bridge/state")[-1] == {"state": "offline"}
    assert "base/bridge/instances/gw-a/accounts" in core.publisher.retained_topics()


async def test_cluster_health_is_its_own_on_the_instance_topic_and_the_live_sum_on_bridge_health(
    core: Core,
) -> None:
    clustered(core, {"a1": "gw-a", "b1": "gw-b"}, live=("gw-a", "gw-b"))
    core.publisher.start()
    for name in ("a1", "b1"):  # b1 moved to gw-b: still listed here, stopped, with its device
        desc = {"vendor": "v", "name": name, "state": "online" if name == "a1" else "stopped"}
        core.bus.emit(AccountLinkChanged("v", name, desc, needs_attention=False))
        core.registry.upsert("v", name, DeviceInfo(f"d-{name}", "Lamp", "M", SCHEMA))
    peer = orjson.dumps({"ts": 1, "uptime_s": 9, "pid": 2, "devices": 5, "instance": "gw-b",
                         "accounts": {"total": 1, "online": 1}})  # fmt: skip
    core.publisher.on_instance_snapshot("base/bridge/instances/gw-b/health", peer)
    assert core.mqtt.on("base/bridge/health") == [], "nothing merged before its own health"
    core.publisher.publish_health()
    (own,) = core.mqtt.on("base/bridge/instances/gw-a/health")
    assert own["instance"] == "gw-a" and own["devices"] == 1, "only what runs here counts"
    assert own["accounts"] == {"total": 1, "online": 1}
    (merged,) = core.mqtt.on("base/bridge/health")
    assert merged["devices"] == 6 and merged["accounts"] == {"total": 2, "online": 2}
    assert sorted(merged["instances"]) == ["gw-a", "gw-b"]
    assert merged["instances"]["gw-b"] == {"pid": 2, "ts": 1, "uptime_s": 9}
    core.publisher.on_instance_snapshot("base/bridge/instances/gw-b/health", peer)
    core.publisher.snapshots_changed()
    assert len(core.mqtt.on("base/bridge/health")) == 1, "unchanged: written once"
    core.publisher.on_instance_snapshot("base/bridge/instances/gw-b/health", b"")  # gw-b left
    assert list(core.mqtt.on("base/bridge/health")[-1]["instances"]) == ["gw-a"]
    answer = core.publisher.health_view()  # bridge/request/health
    assert answer["answered_by"] == "gw-a" and list(answer["instances"]) == ["gw-a"]


async def test_a_single_instances_health_request_is_its_own_snapshot(core: Core) -> None:
    core.publisher.start()
    answer = core.publisher.health_view()
    assert "instances" not in answer and "answered_by" not in answer and "pid" in answer


async def test_cluster_reconnect_republishes_only_the_devices_that_run_here(core: Core) -> None:
    """An account that moved to gw-b stays in gw-a's registry (stopped); gw-a's reconnect must
    not overwrite gw-b's newer retained state and availability with its old ones."""
    clustered(core, {"a1": "gw-a", "moved": "gw-b"})
    core.publisher.start()
    for account, device in (("a1", "mine"), ("moved", "theirs")):
        rec, _ = core.registry.upsert("v", account, DeviceInfo(device, "Lamp", "M", SCHEMA))
        core.registry.apply_state(rec, {"power": True}, 1000, None)
        core.registry.apply_availability(rec, True, 1000, None)
    core.mqtt.sent.clear()
    core.bus.emit(MqttConnected())
    topics = {t for t, *_ in core.mqtt.sent}
    assert {"base/v/mine", "base/v/mine/availability"} <= topics
    assert not {"base/v/theirs", "base/v/theirs/availability"} & topics

