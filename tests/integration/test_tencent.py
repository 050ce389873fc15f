"""Tencent end to end: emulator (HTTP + WebSocket) → gateway → real mosquitto → a paho client,
and commands back the other way."""

from __future__ import annotations

from typing import Any

import pytest

from emulators.tencent import TencentCloud
from gateway.topics import encode_id
from tests.helpers import emulator

pytestmark = pytest.mark.both_loops  # gateway end to end: uvloop and asyncio

B = "cloud2mqtt"


cloud = emulator(lambda: TencentCloud(devices=4, latency=0.01))


def topic(device: str) -> str:
    return f"{B}/tencent/{encode_id(device)}"


async def start(
    gateway_factory: Any, probe: Any, cloud: TencentCloud, **gateway_opts: Any
) -> list[str]:
    cfg = cloud.account_config("home", heartbeat=0.5, backoff_base=0.05, backoff_cap=0.3)
    await gateway_factory([cfg], **gateway_opts)
    ids = cloud.device_ids()
    for device in ids:
        await probe.wait_for(
            f"{topic(device)}/availability", lambda p: p and p["state"] == "online"
        )
    # online once the start-up resync is complete (availability comes first, state reads after:
    # a test that changes a value now must not see a start-up read still in flight)
    await probe.wait_for(f"{B}/bridge/accounts", lambda p: p and p[0]["state"] == "online")
    return ids


async def test_state_availability_events(
    gateway_factory: Any, probe: Any, cloud: TencentCloud
) -> None:
    light, sensor, *_ = await start(gateway_factory, probe, cloud)
    state = await probe.wait_for(topic(light), lambda p: isinstance(p, dict) and "brightness" in p)
    assert (state["power_switch"], state["brightness"], state["color"]) == (False, 50, 0)
    assert isinstance(state["last_seen"], int)
    devices = await probe.wait_for(f"{B}/bridge/devices", lambda p: len(p) == 4)
    light_desc = next(d for d in devices if d["id"] == light)
    assert (light_desc["name"], light_desc["model"]) == ("light 1", "C2M light")
    assert {p["id"] for p in light_desc["schema"]["properties"]} == {
        "power_switch",
        "brightness",
        "color",
    }
    assert [a["id"] for a in light_desc["schema"]["actions"]] == ["light_blink"]
    accounts = await probe.wait_for(
        f"{B}/bridge/accounts", lambda p: p and p[0]["state"] == "online"
    )
    assert accounts[0]["vendor"] == "tencent" and accounts[0]["token_expires"]

    mark = probe.mark()
    cloud.report(sensor, {"temperature": 30.5})
    await probe.wait_for(topic(sensor), lambda p: p.get("temperature") == 30.5, start=mark)
    cloud.event(sensor, "low_voltage", {"voltage": 2.5})
    event = await probe.wait_for(f"{topic(sensor)}/event", start=mark)
    assert (event["event"], event["level"], event["params"]) == (
        "low_voltage",
        "alert",
        {"voltage": 2.5},
    )
    cloud.set_online(light, False)
    await probe.wait_for(
        f"{topic(light)}/availability", lambda p: p["state"] == "offline", start=mark
    )
    cloud.set_online(light, True)
    await probe.wait_for(
        f"{topic(light)}/availability", lambda p: p["state"] == "online", start=mark
    )


async def test_commands(gateway_factory: Any, probe: Any, cloud: TencentCloud) -> None:
    light, sensor, *_ = await start(gateway_factory, probe, cloud, command_timeout=1.0)
    t = topic(light)
    mark = probe.mark()
    probe.publish(f"{t}/set", {"power_switch": True, "color": 2, "transaction": "t1"})
    reply = await probe.wait_for(f"{t}/response/set", lambda p: p.get("transaction") == "t1")
    assert reply["status"] == "ok"
    await probe.wait_for(
        t, lambda p: p.get("power_switch") is True and p.get("color") == 2, start=mark
    )
    control = await probe.wait_for(f"{t}/event", lambda p: p["event"] == "control", start=mark)
    assert control["params"] == {"power_switch": 1, "color": 2}
    assert cloud.devices[light].values["power_switch"] == 1

    probe.publish(f"{t}/set/brightness", b"75")
    await probe.wait_for(t, lambda p: p.get("brightness") == 75, start=mark)

    # Invalid values are answered without any call to the cloud.
    calls = list(cloud.calls)
    probe.publish(f"{t}/set", {"brightness": 500, "transaction": "t2"})
    reply = await probe.wait_for(f"{t}/response/set", lambda p: p.get("transaction") == "t2")
    assert reply["status"] == "error" and reply["error"]["code"] == "invalid"
    probe.publish(f"{topic(sensor)}/set", {"temperature": 1, "transaction": "t3"})
    reply = await probe.wait_for(
        f"{topic(sensor)}/response/set", lambda p: p.get("transaction") == "t3"
    )
    assert reply["error"]["code"] == "invalid"
    assert "AppControlDeviceData" not in list(cloud.calls)[len(calls) :]

    probe.publish(
        f"{t}/action", {"action": "light_blink", "params": {"time": 3}, "transaction": "a1"}
    )
    reply = await probe.wait_for(f"{t}/response/action", lambda p: p.get("transaction") == "a1")
    assert reply["status"] == "ok" and reply["data"]["output"] == {"result": 1}

    probe.publish(f"{t}/get", {"props": ["brightness"], "transaction": "g1"})
    reply = await probe.wait_for(f"{t}/response/get", lambda p: p.get("transaction") == "g1")
    assert reply["status"] == "ok" and reply["data"] == {"brightness": 75}

    cloud.slow(3.0)
    probe.publish(f"{t}/set", {"brightness": 10, "transaction": "t4"})
    reply = await probe.wait_for(f"{t}/response/set", lambda p: p.get("transaction") == "t4")
    assert reply["status"] == "timeout"
    cloud.slow(0)


async def test_resync_after_the_socket_drops(
    gateway_factory: Any, probe: Any, cloud: TencentCloud
) -> None:
    light, *_ = await start(gateway_factory, probe, cloud)
    mark = probe.mark()
    cloud.drop_sockets()
    cloud.devices[light].values["brightness"] = 77  # changed during the gap: no push for it
    cloud.devices[light].updated["brightness"] += 1
    await probe.wait_for(topic(light), lambda p: p.get("brightness") == 77, start=mark)
    assert cloud.stats["active_push"] >= 2
    await probe.wait_for(
        f"{B}/bridge/accounts", lambda p: p and p[0]["state"] == "online", start=mark
    )
    cloud.report(light, {"brightness": 78})
    await probe.wait_for(topic(light), lambda p: p.get("brightness") == 78, start=mark)


async def test_garbage_counted_while_others_flow(
    gateway_factory: Any, probe: Any, cloud: TencentCloud
) -> None:
    light, sensor, *_ = await start(gateway_factory, probe, cloud)
    mark = probe.mark()
    cloud.garble(2)
    cloud.report(light, {"brightness": 1})
    cloud.report(light, {"brightness": 2})
    cloud.report(sensor, {"humidity": 61})
    cloud.report(light, {"brightness": 3})
    await probe.wait_for(topic(sensor), lambda p: p.get("humidity") == 61, start=mark)
    await probe.wait_for(topic(light), lambda p: p.get("brightness") == 3, start=mark)
    health = await probe.wait_for(
        f"{B}/bridge/health",
        lambda p: p["counters"].get("bad_frames", {}).get("tencent") == 2,
        start=mark,
    )
    assert health["counters"]["bad_frames"]["tencent"] == 2


async def test_republish_after_broker_restart(
    gateway_factory: Any, probe: Any, mosquitto: Any, cloud: TencentCloud
) -> None:
    light, *_ = await start(gateway_factory, probe, cloud)
    await probe.wait_for(topic(light), lambda p: isinstance(p, dict) and p.get("brightness") == 50)
    await mosquitto.restart()
    probe2 = type(probe)(mosquitto.host, mosquitto.port)
    try:
        await probe2.ready()
        await probe2.wait_for(
            topic(light), lambda p: isinstance(p, dict) and p.get("brightness") == 50, timeout=20
        )
        await probe2.wait_for(f"{topic(light)}/availability", lambda p: p["state"] == "online")
        probe2.publish(f"{topic(light)}/set", {"brightness": 12})
        await probe2.wait_for(topic(light), lambda p: p.get("brightness") == 12)
    finally:
        probe2.close()
