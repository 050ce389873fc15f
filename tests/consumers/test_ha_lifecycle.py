"""The discovery consumer's lifecycle against a real Home Assistant: a birth message on the
status topic gets every config published again (a live subscriber sees them within 10 s — the
configs are retained, so "entities are back after a restart" alone would pass without birth
handling), and a removed device's empty retained config makes Home Assistant drop it.

The consumer is driven with the gateway's own registry records; once the gateway wires it to
its event bus, the same assertions hold with the bus driving it.
"""

from __future__ import annotations

from typing import Any

import pytest

from emulators.tencent import TencentCloud
from gateway.consumers.homeassistant import unique_id
from tests.helpers import emulator

from ..conftest import Probe
from .harness import HomeAssistant, eventually

pytestmark = pytest.mark.consumer


cloud = emulator(lambda: TencentCloud(devices=3, latency=0.01))


async def test_birth_republishes_and_removal_clears(
    home_assistant: HomeAssistant,
    gateway_factory: Any,
    probe: Probe,
    mosquitto: Any,
    cloud: TencentCloud,
) -> None:
    gw = await gateway_factory(
        [cloud.account_config("home", heartbeat=0.5)], homeassistant={"enabled": True}
    )
    ids = cloud.device_ids()
    await probe.wait_for(
        "cloud2mqtt/bridge/devices", lambda p: isinstance(p, list) and len(p) == len(ids)
    )
    consumer = gw.homeassistant  # the gateway's own discovery consumer
    ha = home_assistant
    uids = [unique_id("tencent", "home", d) for d in ids]
    for uid in uids:
        await eventually(
            lambda uid=uid: ha.entities_of_device(uid), f"entities of {uid}", context=ha.log_tail
        )
    config_topics = sorted(t for cfgs in consumer.configs.values() for t, _ in cfgs)
    assert len(config_topics) == len(ids)

    # Home Assistant's birth: every config again, live (not retained replays), within 10 s.
    mark = probe.mark()
    probe.publish(consumer.settings.status, b"online", retain=False)

    def republished() -> bool:
        with probe._lock:
            fresh = {t for t, p, retained in probe.messages[mark:] if p and not retained}
        return fresh >= set(config_topics)

    await eventually(republished, "every discovery config published again after the birth", 10.0)

    # A device that vanished: its config is cleared and Home Assistant drops it.
    gone = ids[-1]
    rec = gw.registry.get("tencent", gone)
    assert rec is not None
    gw.registry.remove(rec)  # as a device list without it does: DeviceRemoved on the bus
    gone_uid = unique_id("tencent", "home", gone)

    async def dropped() -> bool:
        return await ha.entities_of_device(gone_uid) == []

    await eventually(dropped, f"Home Assistant dropped {gone_uid}", context=ha.log_tail)
    assert all([await ha.entities_of_device(u) for u in uids[:-1]])
    assert ha.problems() == []
