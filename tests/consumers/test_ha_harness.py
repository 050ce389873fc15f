"""The Home Assistant harness itself: a real Home Assistant 2025.4, headless, on the test's
mosquitto, picks up one hand-written device-based discovery config and its switch's command
reaches MQTT. If this fails, the discovery tests' failures say nothing about our configs."""

from __future__ import annotations

import orjson
import pytest

from ..conftest import Probe
from .harness import HomeAssistant, eventually

pytestmark = pytest.mark.consumer

DEVICE_ID = "c2m_harness_plug"
CONFIG = {
    "dev": {"ids": [DEVICE_ID], "name": "Harness plug", "mf": "cloud2mqtt tests", "mdl": "hand-written"},
    "o": {"name": "cloud2mqtt tests"},
    "cmps": {
        "plug": {
            "p": "switch",
            "unique_id": f"{DEVICE_ID}_plug",
            "name": "Plug",
            "state_topic": "harness/plug",
            "value_template": "{{ 'ON' if value_json.switch else 'OFF' }}",
            "command_topic": "harness/plug/set",
            "command_template": '{"switch": {{ "true" if value == "ON" else "false" }}}',
        }
    },
}


async def test_device_discovery_switch_round_trip(home_assistant: HomeAssistant, probe: Probe) -> None:
    probe.publish("harness/plug", {"switch": False}, retain=True)
    probe.publish(f"homeassistant/device/{DEVICE_ID}/config", CONFIG, retain=True)

    entities = await eventually(
        lambda: home_assistant.entities_of_device(DEVICE_ID),
        f"Home Assistant created an entity for device {DEVICE_ID}",
        context=home_assistant.log_tail,
    )
    assert len(entities) == 1 and entities[0].startswith("switch."), entities
    switch = entities[0]
    await home_assistant.wait_entity(switch, lambda s: s["state"] == "off")

    mark = probe.mark()
    await home_assistant.call("switch", "turn_on", entity_id=switch)
    sent = await probe.wait_for("harness/plug/set", start=mark)
    assert sent == {"switch": True}, sent

    probe.publish("harness/plug", orjson.dumps({"switch": True}), retain=True)
    await home_assistant.wait_entity(switch, lambda s: s["state"] == "on")
