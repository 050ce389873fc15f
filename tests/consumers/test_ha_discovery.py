"""Our discovery configs in a real Home Assistant 2025.4, against the real gateway and emulators.

The gateway runs with ``[homeassistant] enabled = true``: its discovery consumer publishes
every emulated device's config retained (the domains expected per device are computed here
from ``bridge/devices`` with the same pure mapping). Then, through Home Assistant's REST API:
every device's entities exist
with the expected domains and states, and switch/light/number/select/button service calls
reach the emulator and come back as state — in device and in entity mode.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from emulators.aliyun import LIGHT_PK, SENSOR_PK, AliyunCloud
from emulators.coolkit import CoolkitCloud
from emulators.tencent import TencentCloud
from gateway.consumers.homeassistant import device_config, entity_configs, unique_id

from ..conftest import Probe
from .harness import HomeAssistant, eventually

pytestmark = pytest.mark.consumer

BRIDGE = "cloud2mqtt/bridge/state"
ORIGIN = {"name": "cloud2mqtt", "sw": "test"}
# The CoolKit heartbeat stays at its default: Home Assistant shares the 2 cores, and a 1 s
# heartbeat is then lost now and then, which only adds reconnects to this test.
COOLKIT_CLOUD: dict[str, Any] = {"rate_min_interval": 0.02, "rate_window": 5.0, "user_online_interval": 0.05}


@pytest.fixture
async def clouds() -> AsyncIterator[tuple[TencentCloud, AliyunCloud, CoolkitCloud]]:
    async with (
        TencentCloud(devices=2, latency=0.01) as tencent,
        AliyunCloud(devices=2) as aliyun,
        CoolkitCloud(**COOLKIT_CLOUD) as coolkit,
    ):
        yield tencent, aliyun, coolkit


def expected_domains(devices: list[dict[str, Any]], mode: str) -> dict[str, set[str]]:
    """The entity domains each device's configs list (the gateway publishes the configs)."""
    expected: dict[str, set[str]] = {}
    for d in devices:
        uid = unique_id(d["vendor"], d["account"], d["id"])
        if mode == "device":
            _, payload, _ = device_config(d, prefix="homeassistant", bridge_state_topic=BRIDGE, origin=ORIGIN)
            domains = [c["p"] for c in payload["cmps"].values()]
        else:
            pairs, _ = entity_configs(d, prefix="homeassistant", bridge_state_topic=BRIDGE, origin=ORIGIN)
            domains = [t.split("/")[1] for t, _ in pairs]
        if domains:
            expected[uid] = set(domains)
    return expected


async def entity_of(ha: HomeAssistant, uid: str, domain: str, name_suffix: str = "") -> str:
    states = await ha.states()
    found = [
        e for e in await ha.entities_of_device(uid)
        if e.startswith(domain + ".")
        and str(states.get(e, {}).get("attributes", {}).get("friendly_name", "")).endswith(name_suffix)
    ]
    assert len(found) == 1, (uid, domain, name_suffix, found)
    return found[0]


@pytest.mark.parametrize("mode", ["device", "entity"])
async def test_emulated_devices_in_home_assistant(
    mode: str,
    clouds: tuple[TencentCloud, AliyunCloud, CoolkitCloud],
    home_assistant: HomeAssistant,
    gateway_factory: Any,
    probe: Probe,
) -> None:
    tencent, aliyun, coolkit = clouds
    await gateway_factory([
        tencent.account_config("home", heartbeat=0.5),
        aliyun.account_config("home", reconnect_min=0.05, reconnect_max=0.2),
        coolkit.account_config("home", backoff_base=0.05, backoff_cap=0.2, command_interval=0.0),
    ], homeassistant={"enabled": True, "discovery": mode})
    want = len(tencent.device_ids()) + len(aliyun.device_ids())
    devices = await probe.wait_for(
        "cloud2mqtt/bridge/devices",
        lambda p: isinstance(p, list) and sum(d["vendor"] in ("tencent", "aliyun") for d in p) >= want
        and any(d["vendor"] == "coolkit" for d in p),
        timeout=30,
    )
    expected = expected_domains(devices, mode)
    ha = home_assistant

    # Every device with something to show has exactly the entity domains its config lists.
    for uid, domains in expected.items():
        got = await eventually(
            lambda uid=uid: ha.entities_of_device(uid), f"entities of {uid}", context=ha.log_tail
        )
        await eventually(
            lambda uid=uid, domains=domains: _domains_match(ha, uid, domains),
            f"{uid} has entity domains {sorted(domains)} (has {got})", context=ha.log_tail,
        )

    t_light = tencent.device_ids()[0]
    t_uid = unique_id("tencent", "home", t_light)
    a_light = aliyun.device_ids(LIGHT_PK)[0]
    a_uid = unique_id("aliyun", "home", a_light)
    a_sensor = aliyun.device_ids(SENSOR_PK)[0]
    s_uid = unique_id("aliyun", "home", a_sensor)
    c_uid = unique_id("coolkit", "home", "1000000001")

    # switch.turn_on → CoolKit emulator → state back in Home Assistant.
    plug = await entity_of(ha, c_uid, "switch", " Switch")
    await ha.wait_entity(plug, lambda s: s["state"] == "off")
    await ha.call("switch", "turn_on", entity_id=plug)
    await ha.wait_entity(plug, lambda s: s["state"] == "on")
    assert coolkit.devices["1000000001"].params["switch"] == "on"

    # light.turn_on with a brightness → Tencent light at 40 % → brightness 102/255 in HA.
    light = await entity_of(ha, t_uid, "light")
    await ha.call("light", "turn_on", entity_id=light, brightness=102)
    st = await ha.wait_entity(light, lambda s: s["state"] == "on" and s["attributes"].get("brightness") == 102)
    assert tencent.devices[t_light].values["brightness"] == 40, st
    await ha.call("light", "turn_off", entity_id=light)
    await ha.wait_entity(light, lambda s: s["state"] == "off")

    # The Tencent colour enum stays a select: labels shown, values sent.
    color = await entity_of(ha, t_uid, "select")
    await ha.call("select", "select_option", entity_id=color, option="Green")
    await ha.wait_entity(color, lambda s: s["state"] == "Green")
    assert tencent.devices[t_light].values["color"] == 1

    # Aliyun light: colour temperature in kelvin and brightness reach the device; an hs colour
    # becomes its HSVColor struct and comes back as hs. (The device reports both a colour
    # temperature and an HSV colour and no mode, so Home Assistant shows the colour: hs.)
    a_lamp = await entity_of(ha, a_uid, "light")
    await ha.call("light", "turn_on", entity_id=a_lamp, color_temp_kelvin=3000, brightness=255)
    await ha.wait_entity(a_lamp, lambda s: s["state"] == "on" and s["attributes"].get("brightness") == 255)
    await eventually(
        lambda: aliyun.devices[a_light].props["ColorTemperature"]["value"] == 3000,
        "the Aliyun lamp's ColorTemperature is 3000 K",
    )
    assert aliyun.devices[a_light].props["Brightness"]["value"] == 100
    await ha.call("light", "turn_on", entity_id=a_lamp, hs_color=[120, 100])
    await ha.wait_entity(
        a_lamp, lambda s: [round(x) for x in s["attributes"].get("hs_color") or ()] == [120, 100]
    )
    hsv = aliyun.devices[a_light].props["HSVColor"]["value"]
    assert (hsv["Hue"], hsv["Saturation"]) == (120, 100), hsv

    # button.press → the parameterless action ToggleLightSwitch turns the lamp off.
    toggle = await entity_of(ha, a_uid, "button")
    await ha.call("button", "press", entity_id=toggle)
    await ha.wait_entity(a_lamp, lambda s: s["state"] == "off")

    # number.set_value → Aliyun sensor's ReportInterval.
    interval = await entity_of(ha, s_uid, "number")
    await ha.call("number", "set_value", entity_id=interval, value=120)
    await ha.wait_entity(interval, lambda s: float(s["state"]) == 120)
    assert aliyun.devices[a_sensor].props["ReportInterval"]["value"] == 120

    # Home Assistant had nothing to complain about in our configs, templates or payloads.
    assert ha.problems() == []


async def _domains_match(ha: HomeAssistant, uid: str, domains: set[str]) -> bool:
    return {e.split(".")[0] for e in await ha.entities_of_device(uid)} == domains

