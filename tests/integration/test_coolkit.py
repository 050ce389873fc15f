"""CoolKit end to end: emulator (HTTP + WebSocket) → gateway (CoolkitConnector) → real mosquitto →
a paho client, and commands back the other way. Intervals are shrunk through options."""

from __future__ import annotations

from typing import Any

import pytest

from emulators.coolkit import CoolkitCloud
from tests.conftest import Probe
from tests.helpers import emulator, eventually

pytestmark = pytest.mark.both_loops  # gateway end to end: uvloop and asyncio

B = "cloud2mqtt"
D = f"{B}/coolkit"
CLOUD: dict[str, Any] = {
    "rate_min_interval": 0.02, "rate_window": 5.0, "user_online_interval": 0.05,
    "hb_interval": 1.0, "hb_grace": 0.5,
}  # fmt: skip
FAST: dict[str, Any] = {
    "backoff_base": 0.05, "backoff_cap": 0.2, "attention_backoff": 0.6, "attention_cap": 1.0,
    "heartbeat_grace": 0.5, "command_interval": 0.0,
}  # fmt: skip


cloud = emulator(lambda: CoolkitCloud(**CLOUD))


async def start(gateway_factory: Any, probe: Any, cloud: CoolkitCloud, **overrides: Any) -> None:
    cfg = cloud.account_config(**{**FAST, **overrides})
    await gateway_factory([cfg], command_timeout=1.5)
    await probe.wait_for(f"{D}/1000000001/availability", lambda p: p and p["state"] == "online")
    await probe.wait_for(f"{B}/bridge/accounts", lambda p: p and p[0]["state"] == "online")


async def test_login_redirect_snapshot_and_push(
    gateway_factory: Any, probe: Any, cloud: CoolkitCloud, mosquitto: Any
) -> None:
    await start(gateway_factory, probe, cloud, region="us")  # the account lives in eu: 10004
    assert cloud.logins == ["demo@example.com"]
    two = await probe.wait_for(f"{D}/1000000002", lambda p: isinstance(p, dict) and "switch_0" in p)
    assert (two["switch_0"], two["switch_1"]) == (False, False)
    pow_state = await probe.wait_for(f"{D}/1000000005", lambda p: isinstance(p, dict) and "power" in p)
    assert pow_state["power"] == 512.3 and pow_state["switch"] is True
    await probe.wait_for(f"{D}/1000000006/availability", lambda p: p and p["state"] == "offline")
    await probe.wait_for(f"{D}/10000000a1", lambda p: isinstance(p, dict) and p.get("switch") is False)
    await probe.wait_for(f"{D}/group:g-lights", lambda p: isinstance(p, dict) and p.get("switch") is False)
    devices = await probe.wait_for(f"{B}/bridge/devices", lambda p: isinstance(p, list) and len(p) >= 9)
    by_id = {d.get("id", d.get("device")): d for d in devices}
    two_schema = next(d for k, d in by_id.items() if "1000000002" in str(k))["schema"]
    assert {p["id"] for p in two_schema["properties"]} >= {"switch_0", "switch_1"}

    mark = probe.mark()
    await cloud.push("1000000004", {"currentTemperature": "23.5", "currentHumidity": "55"})
    th = await probe.wait_for(f"{D}/1000000004", lambda p: isinstance(p, dict) and p.get("currentTemperature") == 23.5, start=mark)
    assert th["currentHumidity"] == 55
    late = Probe(mosquitto.host, mosquitto.port, f"{D}/1000000004")  # a client arriving later
    try:
        await late.ready()
        await late.wait_for(f"{D}/1000000004", lambda p: isinstance(p, dict) and p.get("currentTemperature") == 23.5)
        assert all(retained for _, _, retained in late.messages[:1])
    finally:
        late.close()
    await cloud.set_online("1000000006", True)
    await probe.wait_for(f"{D}/1000000006/availability", lambda p: p and p["state"] == "online", start=mark)


async def test_misfit_value_is_kept_and_counted_once(gateway_factory: Any, probe: Any, cloud: CoolkitCloud) -> None:
    await start(gateway_factory, probe, cloud)
    mark = probe.mark()
    await cloud.push("1000000004", {"currentTemperature": "22.5", "currentHumidity": "unavailable"})
    th = await probe.wait_for(f"{D}/1000000004", lambda p: isinstance(p, dict) and p.get("currentTemperature") == 22.5, start=mark)
    assert th["currentHumidity"] == "unavailable"  # kept as sent
    seen = probe.mark()  # a health snapshot taken after the state was applied
    health = await probe.wait_for(f"{B}/bridge/health", lambda p: isinstance(p, dict), start=seen)
    counters = health["counters"]
    assert counters.get("flagged_values", {}).get("coolkit") == 1, counters
    assert "bad_values" not in counters, counters


async def test_set_round_trip_and_errors(gateway_factory: Any, probe: Any, cloud: CoolkitCloud) -> None:
    await start(gateway_factory, probe, cloud)
    mark = probe.mark()
    probe.publish(f"{D}/1000000001/set", {"switch": True, "transaction": "t1"})
    reply = await probe.wait_for(f"{D}/1000000001/response/set", lambda p: p.get("transaction") == "t1")
    assert reply["status"] == "ok", reply
    assert cloud.devices["1000000001"].params["switch"] == "on"
    await probe.wait_for(f"{D}/1000000001", lambda p: isinstance(p, dict) and p.get("switch") is True, start=mark)

    probe.publish(f"{D}/1000000002/set/switch_1", "true")
    await probe.wait_for(f"{D}/1000000002", lambda p: isinstance(p, dict) and p.get("switch_1") is True, start=mark)
    assert cloud.commands[-1]["params"] == {"switches": [{"switch": "on", "outlet": 1}]}

    # get: the connector answers as read; the reply is normalized, only what was asked for
    probe.publish(f"{D}/1000000001/get", {"props": ["switch"], "transaction": "g1"})
    reply = await probe.wait_for(f"{D}/1000000001/response/get", lambda p: p.get("transaction") == "g1")
    assert reply["status"] == "ok" and reply["data"] == {"switch": True}, reply
    probe.publish(f"{D}/1000000002/get", {"props": ["switch_1"], "transaction": "g2"})
    reply = await probe.wait_for(f"{D}/1000000002/response/get", lambda p: p.get("transaction") == "g2")
    assert reply["status"] == "ok" and reply["data"] == {"switch_1": True}, reply
    probe.publish(f"{D}/1000000004/get", {"props": ["currentTemperature"], "transaction": "g3"})
    reply = await probe.wait_for(f"{D}/1000000004/response/get", lambda p: p.get("transaction") == "g3")
    assert reply["status"] == "ok" and reply["data"] == {"currentTemperature": 21.5}, reply

    cloud.fail_504()
    probe.publish(f"{D}/1000000001/set", {"switch": False, "transaction": "t504"})
    reply = await probe.wait_for(f"{D}/1000000001/response/set", lambda p: p.get("transaction") == "t504")
    assert reply["status"] == "error" and reply["error"]["code"] == "offline"
    assert reply["error"]["vendor_code"] == 504
    assert not probe.find(f"{D}/1000000001/availability", lambda p: p["state"] == "offline", start=mark)

    probe.publish(f"{D}/1000000006/set", {"switch": True, "transaction": "toff"})
    reply = await probe.wait_for(f"{D}/1000000006/response/set", lambda p: p.get("transaction") == "toff")
    assert reply["status"] == "error" and reply["error"]["code"] == "offline"

    cloud.never_answer()
    probe.publish(f"{D}/1000000001/set", {"switch": True, "transaction": "tslow"})
    reply = await probe.wait_for(f"{D}/1000000001/response/set", lambda p: p.get("transaction") == "tslow")
    assert reply["status"] == "timeout"

    probe.publish(f"{D}/1000000005/set", {"power": 3, "transaction": "tro"})  # read-only
    reply = await probe.wait_for(f"{D}/1000000005/response/set", lambda p: p.get("transaction") == "tro")
    assert reply["status"] == "error" and reply["error"]["code"] == "invalid"

    probe.publish(f"{D}/1000000007/set", {"level": 5, "transaction": "tpass"})  # unknown uiid: passthrough
    reply = await probe.wait_for(f"{D}/1000000007/response/set", lambda p: p.get("transaction") == "tpass")
    assert reply["status"] == "ok" and cloud.devices["1000000007"].params["level"] == 5


async def test_expired_token_refreshes_without_login(gateway_factory: Any, probe: Any, cloud: CoolkitCloud) -> None:
    await start(gateway_factory, probe, cloud)
    handshakes = len(cloud.handshakes)
    cloud.expire_tokens()
    cloud.drop()
    await eventually(lambda: len(cloud.handshakes) > handshakes and cloud.handshakes[-1][2] == 0)
    await probe.wait_for(f"{B}/bridge/accounts", lambda p: p and p[0]["state"] == "online")
    assert cloud.logins == ["demo@example.com"]
    mark = probe.mark()
    await cloud.push("1000000001", {"switch": "on"})
    await probe.wait_for(f"{D}/1000000001", lambda p: isinstance(p, dict) and p.get("switch") is True, start=mark)


async def test_session_taken_flags_the_account(gateway_factory: Any, probe: Any, cloud: CoolkitCloud) -> None:
    await start(gateway_factory, probe, cloud)
    mark = probe.mark()
    await cloud.kick()  # the phone app logs in with the same account and APPID
    accounts = await probe.wait_for(f"{B}/bridge/accounts", lambda p: p and p[0]["attention"], start=mark)
    assert accounts[0]["state"] == "attention" and "session taken" in accounts[0]["error"]
    await probe.wait_for(f"{B}/bridge/event", lambda p: isinstance(p, dict) and "attention" in str(p), start=mark)
    # After the (test-sized) hard backoff it logs in once, not in a loop.
    await probe.wait_for(f"{B}/bridge/accounts", lambda p: p and p[0]["state"] == "online", start=mark)
    assert cloud.logins.count("demo@example.com") == 2


async def test_heartbeat_loss_reconnects_and_resyncs(gateway_factory: Any, probe: Any, cloud: CoolkitCloud) -> None:
    await start(gateway_factory, probe, cloud)
    mark = probe.mark()
    cloud.stall()  # the socket stays open but nothing comes back, not even pong
    cloud.devices["1000000003"].params["ltype"] = "color"  # changed while nothing was pushed
    await probe.wait_for(f"{D}/1000000003", lambda p: isinstance(p, dict) and p.get("ltype") == "color", start=mark)
    assert [e for _, _, e in cloud.handshakes] == [0, 0]  # one reconnect, one new userOnline
    await probe.wait_for(f"{B}/bridge/accounts", lambda p: p and p[0]["state"] == "online", start=mark)


async def test_many_accounts_stay_inside_the_rate_rules(gateway_factory: Any, probe: Any) -> None:
    rules = {"rate_min_interval": 0.1, "rate_window": 2.0, "rate_max_calls": 10, "user_online_interval": 0.2}
    async with CoolkitCloud(**{**CLOUD, **rules}) as cloud:
        cfgs = [cloud.account_config(name="a", **FAST)]
        for n in ("b", "c", "d"):
            cloud.add_user(f"{n}@example.com", f"{n}-pass", "eu")
            cloud.add_device(f"30000000{n}{n}", 1, f"switch {n}", cloud.users[f"{n}@example.com"], {"switch": "off"})
            cfgs.append(cloud.account_config(name=n, email=f"{n}@example.com", **FAST))
        await gateway_factory(cfgs)
        await probe.wait_for(
            f"{B}/bridge/accounts",
            lambda p: isinstance(p, list) and len(p) == 4 and all(a["state"] == "online" for a in p),
            timeout=30,
        )
        assert cloud.violations == []
        assert len(cloud.calls) > rules["rate_max_calls"]  # more than one window's budget: paced


async def test_v1_account_end_to_end(gateway_factory: Any, probe: Any, cloud: CoolkitCloud) -> None:
    await gateway_factory([cloud.account_config(name="legacy", version=1, region="cn", **FAST)], command_timeout=1.5)
    await probe.wait_for(f"{D}/1000000004", lambda p: isinstance(p, dict) and p.get("currentTemperature") == 21.5)
    assert cloud.logins == ["demo@example.com"]  # after the v1 301 redirect from cn
    probe.publish(f"{D}/1000000003/set", {"color": {"r": 10, "g": 20, "b": 30, "br": 40}, "transaction": "v1"})
    reply = await probe.wait_for(f"{D}/1000000003/response/set", lambda p: p.get("transaction") == "v1")
    assert reply["status"] == "ok"
    assert cloud.commands[-1]["ts"] == 0 and cloud.devices["1000000003"].params["color"]["g"] == 20
