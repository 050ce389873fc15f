"""Aliyun end to end: emulator (API gateway + MQTT front + its mosquitto) → gateway → mosquitto → probe.

Every test runs the real connector inside the real gateway; the probe is a paho client on the
gateway's broker, so assertions are on the topic tree a user sees.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from emulators.aliyun import LIGHT_PK, SENSOR_PK, AliyunCloud
from tests.helpers import emulator, eventually, server_context, throwaway_tls

pytestmark = pytest.mark.both_loops  # gateway end to end: uvloop and asyncio

FAST = {
    "reconnect_min": 0.05,
    "reconnect_max": 0.3,
    "attention_backoff": 30.0,  # nothing retries within a test: that is the "no retry storm" check
    "throttle_cooldown": 0.5,
    "keepalive": 30,
}


cloud = emulator(lambda: AliyunCloud(devices=3))


def topic(device: str, sub: str = "") -> str:
    return f"cloud2mqtt/aliyun/{device}" + (f"/{sub}" if sub else "")


def account(cloud: AliyunCloud, **overrides: Any) -> dict[str, Any]:
    return cloud.account_config(**{**FAST, **overrides})


async def start(gateway_factory: Callable[..., Any], probe: Any, cloud: AliyunCloud, **overrides: Any) -> Any:
    gw = await gateway_factory([account(cloud, **overrides)])
    await probe.wait_for("cloud2mqtt/bridge/accounts", lambda p: p and p[0]["state"] == "online")
    return gw


async def next_attempt_delay(caplog: pytest.LogCaptureFixture) -> float:
    """Wait until the account's session has ended and its next attempt is scheduled (the
    Session logs the delay after its teardown, right before it sleeps); return the delay."""
    pattern = re.compile(r"reconnecting in ([0-9.]+)s")

    def delays() -> list[float]:
        return [float(m.group(1)) for r in caplog.records if (m := pattern.search(r.getMessage()))]

    await eventually(lambda: bool(delays()), "the session to schedule its next attempt")
    return delays()[0]


async def test_devices_schema_state_and_pushes(cloud: AliyunCloud, gateway_factory: Any, probe: Any) -> None:
    await start(gateway_factory, probe, cloud)
    light = cloud.device_ids(LIGHT_PK)[0]
    sensor = cloud.device_ids(SENSOR_PK)[0]

    # Schemas from TSL on bridge/devices.
    devices = await probe.wait_for("cloud2mqtt/bridge/devices", lambda p: len(p) == 3)
    by_id = {d["id"]: d for d in devices}
    props = {p["id"]: p for p in by_id[light]["schema"]["properties"]}
    assert props["LightSwitch"]["type"] == "bool" and props["LightSwitch"]["access"] == "rw"
    assert props["Brightness"]["max"] == 100 and props["Brightness"]["unit"] == "%"
    assert props["LastOnTime"]["type"] == "timestamp" and props["LastOnTime"]["access"] == "r"
    assert [a["id"] for a in by_id[light]["schema"]["actions"]] == ["ToggleLightSwitch", "Blink"]

    # Snapshot state, coerced by the schema (bool 0 → false, date string → ms int).
    state = await probe.wait_for(topic(light), lambda p: "LightSwitch" in p)
    assert state["LightSwitch"] is False and state["LastOnTime"] == 1700000000000
    assert (await probe.wait_for(topic(sensor), lambda p: "CurrentTemperature" in p))["CurrentTemperature"] == 21.5
    assert (await probe.wait_for(topic(light, "availability")))["state"] == "online"

    # Property push.
    cloud.set_property(light, {"Brightness": 77})
    await probe.wait_for(topic(light), lambda p: p.get("Brightness") == 77)
    # A replayed, older item is dropped by the registry; a newer one of another prop still lands.
    mark = probe.mark()
    cloud.set_property(light, {"Brightness": 10}, time=1_000)
    cloud.set_property(light, {"ColorTemperature": 3000})
    latest = await probe.wait_for(topic(light), lambda p: p.get("ColorTemperature") == 3000, start=mark)
    assert latest["Brightness"] == 77

    # Event push.
    cloud.emit_event(light, "Error", {"ErrorCode": 1}, type="error")
    ev = await probe.wait_for(topic(light, "event"))
    assert ev["event"] == "Error" and ev["level"] == "error" and ev["params"] == {"ErrorCode": 1}

    # Status pushes: 3 offline, 1 online, 8 disabled.
    cloud.set_status(sensor, 3)
    await probe.wait_for(topic(sensor, "availability"), lambda p: p["state"] == "offline")
    cloud.set_status(sensor, 1)
    await probe.wait_for(topic(sensor, "availability"), lambda p: p["state"] == "online")
    mark = probe.mark()
    cloud.set_status(sensor, 8)
    av = await probe.wait_for(topic(sensor, "availability"), lambda p: p["state"] == "offline", start=mark)
    assert av["reason"] == "disabled"

    # OTA progress arrives as an event.
    cloud.ota_progress(light, 50)
    await probe.wait_for(topic(light, "event"), lambda p: p["event"] == "ota_progress" and p["params"]["step"] == 50)


async def test_set_get_action_round_trips(cloud: AliyunCloud, gateway_factory: Any, probe: Any) -> None:
    await start(gateway_factory, probe, cloud)
    light = cloud.device_ids(LIGHT_PK)[0]
    await probe.wait_for(topic(light), lambda p: "LightSwitch" in p)

    probe.publish(topic(light, "set"), {"LightSwitch": True, "Brightness": 42, "transaction": "t1"})
    reply = await probe.wait_for(topic(light, "response/set"), lambda p: p["transaction"] == "t1")
    assert reply["status"] == "ok"
    assert cloud.devices[light].props["LightSwitch"]["value"] == 1  # denormalized to the TSL's 0/1
    await probe.wait_for(topic(light), lambda p: p.get("LightSwitch") is True and p.get("Brightness") == 42)

    probe.publish(topic(light, "set/WorkMode"), b"2")
    await probe.wait_for(topic(light), lambda p: p.get("WorkMode") == 2)

    probe.publish(topic(light, "get"), {"props": ["Brightness"], "transaction": "g1"})
    reply = await probe.wait_for(topic(light, "response/get"), lambda p: p["transaction"] == "g1")
    assert reply["status"] == "ok" and reply["data"] == {"Brightness": 42}

    probe.publish(topic(light, "action"), {"action": "Blink", "params": {"times": 3}, "transaction": "a1"})
    reply = await probe.wait_for(topic(light, "response/action"), lambda p: p["transaction"] == "a1")
    assert reply["status"] == "ok" and reply["data"] == {"blinked": 3}

    probe.publish(topic(light, "action"), {"action": "ToggleLightSwitch", "transaction": "a2"})
    reply = await probe.wait_for(topic(light, "response/action"), lambda p: p["transaction"] == "a2")
    assert reply["status"] == "ok"
    await probe.wait_for(topic(light), lambda p: p.get("LightSwitch") is False)

    # Invalid values never reach the cloud; the cloud's own refusals come back with its code.
    sets = cloud.stats["sets"]
    probe.publish(topic(light, "set"), {"Brightness": 500, "transaction": "bad"})
    reply = await probe.wait_for(topic(light, "response/set"), lambda p: p["transaction"] == "bad")
    assert reply["status"] == "error" and reply["error"]["code"] == "invalid"
    assert cloud.stats["sets"] == sets

    cloud.devices[light].status = 3  # offline in the cloud, not yet pushed
    probe.publish(topic(light, "set"), {"Brightness": 5, "transaction": "off"})
    reply = await probe.wait_for(topic(light, "response/set"), lambda p: p["transaction"] == "off")
    assert reply["error"] == {"code": "offline", "vendor_code": 28504, "message": "device is offline"}


async def test_throttling_opens_the_breaker(cloud: AliyunCloud, gateway_factory: Any, probe: Any) -> None:
    await start(gateway_factory, probe, cloud, throttle_cooldown=1.5)
    light = cloud.device_ids(LIGHT_PK)[0]
    await probe.wait_for(topic(light), lambda p: "LightSwitch" in p)
    cloud.throttle(-1)
    probe.publish(topic(light, "set"), {"Brightness": 1, "transaction": "t1"})
    reply = await probe.wait_for(topic(light, "response/set"), lambda p: p["transaction"] == "t1")
    assert reply["status"] == "error" and reply["error"]["code"] == "throttled"
    # While the breaker is open, commands fail fast without reaching the platform.
    for i in range(3):
        probe.publish(topic(light, "set"), {"Brightness": 2, "transaction": f"f{i}"})
        reply = await probe.wait_for(topic(light, "response/set"), lambda p, i=i: p["transaction"] == f"f{i}")
        assert reply["error"]["code"] == "throttled"
    assert cloud.stats["throttled"] == 1
    cloud.throttle(0)
    # Once it closes, calls go through again.
    tries = iter(range(100))

    async def goes_through() -> bool:
        n = next(tries)
        probe.publish(topic(light, "set"), {"Brightness": 3, "transaction": f"r{n}"})
        reply = await probe.wait_for(topic(light, "response/set"), lambda p: p["transaction"] == f"r{n}")
        return bool(reply["status"] == "ok")

    await eventually(goes_through, "a set goes through once the breaker closes", interval=0.2)
    assert cloud.stats["throttled"] == 1


async def test_throttled_resync_waits(cloud: AliyunCloud, gateway_factory: Any, probe: Any) -> None:
    cloud.throttle(1)  # the first API call after bind (the device list) is throttled
    await start(gateway_factory, probe, cloud, throttle_cooldown=0.2)
    light = cloud.device_ids(LIGHT_PK)[0]
    await probe.wait_for(topic(light), lambda p: "LightSwitch" in p)
    assert cloud.stats["throttled"] == 1
    assert cloud.stats["binds_ok"] == 1  # waited for the breaker instead of reconnecting


async def test_reconnect_rebinds_and_resyncs(cloud: AliyunCloud, gateway_factory: Any, probe: Any) -> None:
    await start(gateway_factory, probe, cloud)
    light = cloud.device_ids(LIGHT_PK)[0]
    await probe.wait_for(topic(light), lambda p: p.get("Brightness") == 60)
    assert cloud.stats["binds_ok"] == 1
    lists = cloud.stats["api /uc/listBindingByAccount"]

    # A change while the link is down is never pushed: only the resync can bring it.
    cloud.devices[light].props["Brightness"] = {"time": int(time.time() * 1000), "value": 33}
    assert cloud.drop_mqtt() == 1
    await probe.wait_for(topic(light), lambda p: p.get("Brightness") == 33)
    await eventually(lambda: cloud.stats["binds_ok"] == 2, "the second bind")
    assert cloud.stats["api /uc/listBindingByAccount"] > lists
    assert cloud.stats["connect_ok"] == 2

    # And pushes flow on the new binding.
    cloud.set_property(light, {"Brightness": 12})
    await probe.wait_for(topic(light), lambda p: p.get("Brightness") == 12)


async def test_rejected_iot_token_flags_account_without_retry_storm(
    cloud: AliyunCloud, gateway_factory: Any, probe: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cloud2mqtt.aliyun")
    await gateway_factory([account(cloud, iot_token="not-a-valid-token")])
    accounts = await probe.wait_for("cloud2mqtt/bridge/accounts", lambda p: p and p[0]["attention"])
    assert accounts[0]["state"] == "attention" and "2043" in accounts[0]["error"]
    event = await probe.wait_for("cloud2mqtt/bridge/event", lambda p: p["type"] == "account_attention")
    assert event["account"] == "demo"
    # Settled: the session is over and the next attempt waits out the attention backoff.
    assert await next_attempt_delay(caplog) >= FAST["attention_backoff"] / 2
    assert cloud.stats["binds"] == 1  # backed off: no second try within the attention backoff
    assert cloud.stats["connect_ok"] == 1


async def test_bind_2152_active_elsewhere_flags_account(
    cloud: AliyunCloud, gateway_factory: Any, probe: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cloud2mqtt.aliyun")
    cloud.set_bind_code(2152)
    await gateway_factory([account(cloud)])
    accounts = await probe.wait_for("cloud2mqtt/bridge/accounts", lambda p: p and p[0]["attention"])
    assert "2152" in accounts[0]["error"]
    assert await next_attempt_delay(caplog) >= FAST["attention_backoff"] / 2
    assert cloud.stats["binds"] == 1


async def test_rejected_token_is_refreshed_when_possible(cloud: AliyunCloud, gateway_factory: Any, probe: Any) -> None:
    cloud.reject_token()  # the configured iotToken is dead, but a refresh token is configured
    await start(
        gateway_factory, probe, cloud,
        iot_token="dead-token",
        refresh_token=cloud.account.refresh_token,
        identity_id=cloud.account.identity_id,
    )
    assert cloud.stats["binds_refused"] == 1 and cloud.stats["binds_ok"] == 1
    assert cloud.stats["api /account/checkOrRefreshSession"] == 1
    light = cloud.device_ids(LIGHT_PK)[0]
    await probe.wait_for(topic(light), lambda p: "LightSwitch" in p)


async def test_signature_rejection_flags_account(cloud: AliyunCloud, gateway_factory: Any, probe: Any) -> None:
    await gateway_factory([account(cloud, app_secret="wrong-secret")])
    accounts = await probe.wait_for("cloud2mqtt/bridge/accounts", lambda p: p and p[0]["attention"])
    assert "Invalid Signature" in accounts[0]["error"]
    assert cloud.stats["signature_rejected"] == 1


async def test_connect_refused_for_bad_device_secret(cloud: AliyunCloud, gateway_factory: Any, probe: Any) -> None:
    await gateway_factory([account(cloud, device_secret="wrong")])
    accounts = await probe.wait_for("cloud2mqtt/bridge/accounts", lambda p: p and p[0]["attention"])
    assert "refused" in accounts[0]["error"]
    assert cloud.stats["connect_refused"] == 1 and cloud.stats["connect_ok"] == 0


async def test_garbled_push_is_counted_not_fatal(cloud: AliyunCloud, gateway_factory: Any, probe: Any) -> None:
    cloud.set_tsl_as_string(True)  # data of /thing/tsl/get as a JSON string is accepted too
    await start(gateway_factory, probe, cloud)
    light = cloud.device_ids(LIGHT_PK)[0]
    devices = await probe.wait_for("cloud2mqtt/bridge/devices", lambda p: len(p) == 3)
    assert any(p["id"] == "Brightness" for p in next(d for d in devices if d["id"] == light)["schema"]["properties"])
    cloud.garble(1)
    cloud.set_property(light, {"Brightness": 1})
    cloud.set_property(light, {"Brightness": 2})
    await probe.wait_for(topic(light), lambda p: p.get("Brightness") == 2)
    health = await probe.wait_for(
        "cloud2mqtt/bridge/health", lambda p: p.get("counters", {}).get("bad_frames", {}).get("aliyun") == 1
    )
    assert health["counters"]["bad_frames"]["aliyun"] == 1


async def test_topo_add_resyncs_device_list(cloud: AliyunCloud, gateway_factory: Any, probe: Any) -> None:
    await start(gateway_factory, probe, cloud)
    gw_dev = cloud.device_ids(LIGHT_PK)[0]
    sub = cloud.add_device(SENSOR_PK, "子设备")
    cloud.topo_add(sub, gw_dev)
    await probe.wait_for(topic(sub), lambda p: "CurrentTemperature" in p)
    ev = await probe.wait_for(topic(gw_dev, "event"), lambda p: p["event"] == "topo_add")
    assert ev["params"]["subIotId"] == sub


async def test_token_rejected_mid_session(cloud: AliyunCloud, gateway_factory: Any, probe: Any) -> None:
    await start(gateway_factory, probe, cloud)
    light = cloud.device_ids(LIGHT_PK)[0]
    await probe.wait_for(topic(light), lambda p: "LightSwitch" in p)
    cloud.reject_token()
    probe.publish(topic(light, "set"), {"Brightness": 9, "transaction": "x1"})
    reply = await probe.wait_for(topic(light, "response/set"), lambda p: p["transaction"] == "x1")
    assert reply["error"]["code"] == "auth" and reply["error"]["vendor_code"] == 401
    accounts = await probe.wait_for("cloud2mqtt/bridge/accounts", lambda p: p and p[0]["attention"])
    assert "iotToken" in accounts[0]["error"]
    # Pushes still flow on the bound channel meanwhile.
    cloud.set_property(light, {"Brightness": 8})
    await probe.wait_for(topic(light), lambda p: p.get("Brightness") == 8)


async def test_token_rejected_mid_session_is_refreshed(
    cloud: AliyunCloud, gateway_factory: Any, probe: Any
) -> None:
    await start(
        gateway_factory, probe, cloud,
        refresh_token=cloud.account.refresh_token, identity_id=cloud.account.identity_id,
    )
    light = cloud.device_ids(LIGHT_PK)[0]
    await probe.wait_for(topic(light), lambda p: "LightSwitch" in p)
    cloud.reject_token()
    probe.publish(topic(light, "set"), {"Brightness": 9, "transaction": "y1"})
    reply = await probe.wait_for(topic(light, "response/set"), lambda p: p["transaction"] == "y1")
    assert reply["error"]["code"] == "auth"
    await eventually(lambda: cloud.stats["binds_ok"] == 2, "the bind after the refresh")  # refreshed, then bound again
    assert cloud.stats["api /account/checkOrRefreshSession"] == 1
    probe.publish(topic(light, "set"), {"Brightness": 11, "transaction": "y2"})
    reply = await probe.wait_for(topic(light, "response/set"), lambda p: p["transaction"] == "y2")
    assert reply["status"] == "ok"
    await probe.wait_for(topic(light), lambda p: p.get("Brightness") == 11)



@pytest.fixture
async def tls_cloud(tmp_path: Any) -> AsyncIterator[tuple[AliyunCloud, str]]:
    """An emulator whose MQTT front speaks TLS with a certificate of a throwaway CA."""
    tls = throwaway_tls(tmp_path)
    c = AliyunCloud(devices=1, mqtt_ssl=server_context(tls))
    await c.start()
    yield c, str(tls.ca)
    await c.stop()


async def test_tls_app_channel(tls_cloud: tuple[AliyunCloud, str], gateway_factory: Any, probe: Any) -> None:
    """securemode=2 over TLS, the certificate checked against a configured CA file."""
    cloud, ca_file = tls_cloud
    await start(gateway_factory, probe, cloud, ca_file=ca_file)
    light = cloud.device_ids(LIGHT_PK)[0]
    await probe.wait_for(topic(light), lambda p: "LightSwitch" in p)
    cloud.set_property(light, {"Brightness": 5})
    await probe.wait_for(topic(light), lambda p: p.get("Brightness") == 5)
    assert cloud.stats["connect_ok"] == 1


async def test_pushes_in_the_same_read_as_bind_reply_are_kept(
    cloud: AliyunCloud, gateway_factory: Any, probe: Any
) -> None:
    """Seed 004 §6.1.2: pushes may follow the bind at once, in the very read that carries
    ``bind_reply``; they are held until the device list is in, then applied (issue 11 #7)."""
    cloud.set_push_after_bind()
    await start(gateway_factory, probe, cloud)
    assert cloud.stats["pushes_after_bind"] == 2  # an event and a property report, one write
    light = cloud.device_ids(LIGHT_PK)[0]
    ev = await probe.wait_for(topic(light, "event"), lambda p: p["event"] == "Error")
    assert ev["level"] == "error"
    mark = probe.mark()
    health = await probe.wait_for("cloud2mqtt/bridge/health", start=mark)
    assert "aliyun" not in health["counters"].get("unknown_device", {})


async def test_throttled_resync_keeps_the_link_and_devices_online(
    cloud: AliyunCloud, gateway_factory: Any, probe: Any
) -> None:
    """A 429 while the app channel is up: no BACKOFF, no device offline, pushes still flow,
    and the resync is tried again when the breaker lets a call through (issue 11 #9)."""
    await gateway_factory(
        [account(cloud, throttle_cooldown=1.0, throttle_cap=1.0)], offline_grace=0.3
    )
    await probe.wait_for("cloud2mqtt/bridge/accounts", lambda p: p and p[0]["state"] == "online")
    light = cloud.device_ids(LIGHT_PK)[0]
    await probe.wait_for(topic(light, "availability"), lambda p: p["state"] == "online")
    mark = probe.mark()
    cloud.throttle(-1)
    sub = cloud.add_device(SENSOR_PK, "子设备")
    cloud.topo_add(sub, light)  # asks for a resync, which the platform throttles
    # The breaker's probe after the 1 s cooldown (three times the offline grace) is throttled too.
    await eventually(lambda: cloud.stats["throttled"] >= 2, "the throttled resync to be retried")
    cloud.set_property(light, {"Brightness": 7})
    await probe.wait_for(topic(light), lambda p: p.get("Brightness") == 7, start=mark)
    assert probe.find(topic(light, "availability"), lambda p: p["state"] == "offline", start=mark) == []
    assert all(a[0]["state"] == "online" for a in probe.find("cloud2mqtt/bridge/accounts", start=mark))
    cloud.throttle(0)
    await probe.wait_for(topic(sub), lambda p: "CurrentTemperature" in p)


async def test_reconnect_while_throttled_goes_online_and_resyncs_later(
    cloud: AliyunCloud, gateway_factory: Any, probe: Any
) -> None:
    """The device list is in from before: a throttled resync after a reconnect does not keep
    the account away; the state missed meanwhile comes with the resync once the 429s end."""
    await start(gateway_factory, probe, cloud, throttle_cooldown=0.5, throttle_cap=0.5)
    light = cloud.device_ids(LIGHT_PK)[0]
    await probe.wait_for(topic(light), lambda p: p.get("Brightness") == 60)
    since = (await probe.wait_for("cloud2mqtt/bridge/accounts"))[0]["since"]
    cloud.throttle(-1)
    cloud.devices[light].props["Brightness"] = {"time": int(time.time() * 1000), "value": 33}
    assert cloud.drop_mqtt() == 1
    await probe.wait_for(
        "cloud2mqtt/bridge/accounts", lambda p: p[0]["state"] == "online" and p[0]["since"] > since
    )
    assert cloud.stats["binds_ok"] == 2 and cloud.stats["throttled"] >= 1
    cloud.set_property(light, {"ColorTemperature": 3000})  # pushes flow on the new binding
    state = await probe.wait_for(topic(light), lambda p: p.get("ColorTemperature") == 3000)
    assert state["Brightness"] == 60  # not resynced yet
    cloud.throttle(0)
    await probe.wait_for(topic(light), lambda p: p.get("Brightness") == 33)
