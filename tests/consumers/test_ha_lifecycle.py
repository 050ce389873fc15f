"""The discovery consumer's lifecycle against a real Home Assistant: a birth message on the
status topic gets every config published again (a live subscriber sees them within 10 s — the
configs are retained, so "entities are back after a restart" alone would pass without birth
handling), and a removed device's empty retained config makes Home Assistant drop it.

The consumer is driven with the gateway's own registry records; once the gateway wires it to
its event bus, the same assertions hold with the bus driving it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import paho.mqtt.client as paho
import pytest

from emulators.tencent import TencentCloud
from gateway.consumers.homeassistant import HomeAssistantDiscovery, HomeAssistantSettings, unique_id

from ..conftest import Probe
from .harness import HomeAssistant, eventually

pytestmark = pytest.mark.consumer


@pytest.fixture
async def cloud() -> AsyncIterator[TencentCloud]:
    async with TencentCloud(devices=3, latency=0.01) as c:
        yield c


class PahoLink:
    """``publish``/``subscribe`` callables for the consumer over a real MQTT client, with
    callbacks delivered on the event loop (as the gateway's client does)."""

    def __init__(self, host: str, port: int, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.callbacks: dict[str, Any] = {}
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="c2m-ha-consumer")
        self.client.on_message = lambda c, u, m: loop.call_soon_threadsafe(
            self.callbacks[m.topic], m.topic, m.payload
        )
        self.client.connect(host, port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain)

    def subscribe(self, topic: str, callback: Any) -> None:
        self.callbacks[topic] = callback
        self.client.subscribe(topic, qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def test_birth_republishes_and_removal_clears(
    home_assistant: HomeAssistant, gateway_factory: Any, probe: Probe, mosquitto: Any,
    cloud: TencentCloud,
) -> None:
    gw = await gateway_factory([cloud.account_config("home", heartbeat=0.5)])
    ids = cloud.device_ids()
    await probe.wait_for("cloud2mqtt/bridge/devices", lambda p: isinstance(p, list) and len(p) == len(ids))
    link = PahoLink(mosquitto.host, mosquitto.port, asyncio.get_running_loop())
    consumer = HomeAssistantDiscovery(
        None, HomeAssistantSettings(enabled=True, batch=1, interval=0.05),
        bridge_state_topic="cloud2mqtt/bridge/state", publish=link.publish, subscribe=link.subscribe,
    )
    try:
        link.subscribe(consumer.settings.status, consumer.on_status)
        for rec in gw.registry:
            consumer.device_changed(rec)
        ha = home_assistant
        uids = [unique_id("tencent", "home", d) for d in ids]
        for uid in uids:
            await eventually(lambda uid=uid: ha.entities_of_device(uid), f"entities of {uid}",
                             context=ha.log_tail)
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
        consumer.device_removed(rec)
        gone_uid = unique_id("tencent", "home", gone)

        async def dropped() -> bool:
            return await ha.entities_of_device(gone_uid) == []

        await eventually(dropped, f"Home Assistant dropped {gone_uid}", context=ha.log_tail)
        assert all([await ha.entities_of_device(u) for u in uids[:-1]])
        assert ha.problems() == []
    finally:
        consumer.stop()
        link.close()
