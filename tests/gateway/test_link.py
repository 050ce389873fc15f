"""The account link over plain values: normalize once, count once, grace, link states."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.events import AccountLinkChanged, StateChanged
from gateway.link import AccountLink, LinkState
from gateway.tokens import TokenStore
from protocols.model import DeviceInfo, Property, Schema, StateChange

from ..helpers import eventually
from .conftest import Core

SCHEMA = Schema(properties=(Property("power", type="bool"), Property("level", type="int", max=10)))


class NoFlow:
    congested = False

    async def drain(self) -> None:
        return None


def link(core: Core, grace: float = 60.0) -> AccountLink:
    return AccountLink(
        "v", "acc", registry=core.registry, bus=core.bus, health=core.health,
        tokens=TokenStore(None).slot("v", "acc"), flow=NoFlow(), offline_grace=grace,
    )  # fmt: skip


async def test_values_are_normalized_once_and_misfits_counted_once(core: Core) -> None:
    seen: list[StateChanged] = []
    core.bus.subscribe(StateChanged, seen.append)
    acc = link(core)
    acc.devices([DeviceInfo("d1", "Lamp", "M", SCHEMA)])
    acc.state(StateChange("d1", {"power": 1, "level": "many"}, 1000))
    assert seen[0].changed == {"power": True, "level": "many"}  # misfit kept as sent, flagged
    assert core.health.counters["flagged_values"]["v"] == 1


async def test_state_for_an_unlisted_device_is_counted_not_published(core: Core) -> None:
    acc = link(core)
    acc.state(StateChange("ghost", {"power": 1}, 1000))
    assert core.health.counters["unknown_device"]["v"] == 1
    assert len(core.registry) == 0


async def test_link_changes_are_emitted_and_attention_flagged_once(core: Core) -> None:
    seen: list[AccountLinkChanged] = []
    core.bus.subscribe(AccountLinkChanged, seen.append)
    acc = link(core)
    acc.link(LinkState.CONNECTING)
    acc.link(LinkState.ATTENTION, "refused")
    acc.link(LinkState.ATTENTION, "refused")
    acc.link(LinkState.ONLINE)
    assert [(e.description["state"], e.needs_attention) for e in seen] == [
        ("connecting", False), ("attention", True), ("online", False),
    ]  # fmt: skip
    acc.link(LinkState.STOPPED)


async def test_devices_go_offline_after_the_grace_and_not_when_back_in_time(core: Core) -> None:
    acc = link(core, grace=0.05)
    acc.devices([DeviceInfo("d1", "Lamp", "M", SCHEMA, online=True)])
    rec: Any = core.registry.get("v", "d1")
    acc.link(LinkState.BACKOFF, "socket closed")
    await eventually(lambda: rec.online is False, "device marked offline after the grace")
    assert rec.reason == "cloud_disconnected"
    acc.link(LinkState.ONLINE)
    acc.devices([DeviceInfo("d1", "Lamp", "M", SCHEMA, online=True)])
    acc.link(LinkState.BACKOFF, "again")
    acc.link(LinkState.ONLINE)  # back within the grace: the timer is cancelled
    await asyncio.sleep(0)
    assert acc._grace is None and rec.online is True
    acc.link(LinkState.STOPPED)
