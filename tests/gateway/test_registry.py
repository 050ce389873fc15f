"""The registry's state rules over plain values: merge, stale drops, precision, events."""

from __future__ import annotations

from typing import Any

from gateway.events import (
    AvailabilityChanged,
    DeviceAdded,
    DeviceRemoved,
    EventBus,
    SchemaChanged,
    StateChanged,
)
from gateway.registry import Registry
from gateway.topics import Topics
from protocols.model import DeviceInfo, Property, Schema

SCHEMA = Schema(properties=(Property("power", type="bool"), Property("level", type="int")))


def make() -> tuple[Registry, list[Any]]:
    bus = EventBus()
    seen: list[Any] = []
    for kind in (DeviceAdded, DeviceRemoved, SchemaChanged, StateChanged, AvailabilityChanged):
        bus.subscribe(kind, seen.append)
    return Registry(Topics("base"), bus), seen


def info(device: str = "d1", name: str = "Lamp", schema: Schema = SCHEMA) -> DeviceInfo:
    return DeviceInfo(device, name, "M1", schema)


def test_upsert_emits_added_once_then_schema_changed_only_on_change() -> None:
    reg, seen = make()
    rec, added = reg.upsert("v", "acc", info())
    assert added and rec.topic == "base/v/d1"
    reg.upsert("v", "acc", info())
    reg.upsert("v", "acc", info(name="Renamed"))
    assert [type(e) for e in seen] == [DeviceAdded, SchemaChanged]


def test_device_shared_into_two_accounts_stays_with_the_first() -> None:
    reg, _ = make()
    reg.upsert("v", "first", info())
    rec, added = reg.upsert("v", "second", info(name="other"))
    assert not added and rec.account == "first" and rec.info.name == "Lamp"


def test_newer_values_win_older_ones_are_dropped_and_counted() -> None:
    reg, seen = make()
    rec, _ = reg.upsert("v", "acc", info())
    assert reg.apply_state(rec, {"power": True}, 2000, None) == ({"power": True}, 0)
    assert reg.apply_state(rec, {"power": False}, 1000, None) == ({}, 1)
    assert rec.state == {"power": True}
    changes = [e for e in seen if isinstance(e, StateChanged)]
    assert [(e.changed, e.ts_ms) for e in changes] == [({"power": True}, 2000)]


def test_second_resolution_push_in_the_same_second_as_a_ms_read_is_not_stale() -> None:
    """Issue 11 finding 6: a read stamped 1700000000_900 ms, then a pushed report stamped with
    the same whole second (1700000000_000 at 1 s precision) must win, not be dropped."""
    reg, _ = make()
    rec, _ = reg.upsert("v", "acc", info())
    reg.apply_state(rec, {"power": False}, 1_700_000_000_900, None)
    changed, stale = reg.apply_state(rec, {"power": True}, 1_700_000_000_000, None, 1000)
    assert (changed, stale) == ({"power": True}, 0)
    # the stored time did not go back: a ms-precise read from before the read above still loses
    assert reg.apply_state(rec, {"power": False}, 1_700_000_000_500, None) == ({}, 1)
    # a push from an earlier second is still stale
    assert reg.apply_state(rec, {"power": False}, 1_699_999_999_000, None, 1000) == ({}, 1)


def test_per_property_times_override_the_change_time() -> None:
    reg, _ = make()
    rec, _ = reg.upsert("v", "acc", info())
    reg.apply_state(rec, {"power": True, "level": 1}, 5000, {"power": 5000, "level": 5000})
    changed, stale = reg.apply_state(rec, {"power": False, "level": 2}, 6000, {"power": 4000})
    assert (changed, stale) == ({"level": 2}, 1)


def test_availability_emits_only_on_change_and_since_moves_on_flip() -> None:
    reg, seen = make()
    rec, _ = reg.upsert("v", "acc", info())
    assert reg.apply_availability(rec, True, 10, None)
    assert not reg.apply_availability(rec, True, 20, None)
    assert reg.apply_availability(rec, False, 30, "cloud_disconnected")
    assert (rec.online, rec.since, rec.reason) == (False, 30, "cloud_disconnected")
    assert sum(isinstance(e, AvailabilityChanged) for e in seen) == 2


def test_remove_emits_once_and_forgets_the_device() -> None:
    reg, seen = make()
    rec, _ = reg.upsert("v", "acc", info())
    reg.remove(rec)
    reg.remove(rec)
    assert reg.get("v", "d1") is None and reg.account_devices("v", "acc") == {}
    assert sum(isinstance(e, DeviceRemoved) for e in seen) == 1
