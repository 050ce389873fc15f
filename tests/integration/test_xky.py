"""XiakeCloud end to end: emulator over HTTP → gateway (polling connector) → real mosquitto →
a paho client, and commands back the other way."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from emulators.xky import XkyCloud
from tests.helpers import emulator, eventually

pytestmark = pytest.mark.both_loops  # gateway end to end: uvloop and asyncio

B = "cloud2mqtt"


cloud = emulator(lambda: XkyCloud(devices=3, seed=7))


async def start(gateway_factory: Any, probe: Any, cloud: XkyCloud, **overrides: Any) -> list[str]:
    cfg = cloud.account_config("home", poll_interval=0.2, min_poll_interval=0.1, **overrides)
    await gateway_factory([cfg])
    sns = sorted(cloud.devices)
    for sn in sns:
        await probe.wait_for(f"{B}/xky/{sn}/availability", lambda p: p and p["state"] == "online")
    return sns


async def polls(cloud: XkyCloud, n: int = 2) -> None:
    target = cloud.count("/get_device_list") + n + 1
    await eventually(lambda: cloud.count("/get_device_list") >= target, f"{n} more polls")


async def settled(gateway_factory: Any, probe: Any, cloud: XkyCloud) -> tuple[list[str], int]:
    """Started and polled on: the serials, and a probe mark after the snapshot was published."""
    sns = await start(gateway_factory, probe, cloud)
    await polls(cloud)
    return sns, probe.mark()


def device_messages(probe: Any, start: int) -> list[tuple[str, Any]]:
    return [(t, p) for t, p, _ in probe.messages[start:] if t.startswith(f"{B}/xky/")]


async def test_login_publishes_devices_and_account(
    gateway_factory: Any, probe: Any, cloud: XkyCloud
) -> None:
    sns = await start(gateway_factory, probe, cloud)
    state = await probe.wait_for(f"{B}/xky/{sns[0]}", lambda p: isinstance(p, dict) and "name" in p)
    assert state["name"] == f"device {sns[0]}"
    assert (state["desc"], state["tags"], state["online"]) == ("", [], True)
    assert isinstance(state["last_seen"], int)
    accounts = await probe.wait_for(
        f"{B}/bridge/accounts", lambda p: p and p[0]["state"] == "online"
    )
    assert accounts[0]["vendor"] == "xky" and accounts[0]["name"] == "home"
    devices = await probe.wait_for(f"{B}/bridge/devices", lambda p: len(p) == 3)
    props = {p["id"]: p["access"] for p in devices[0]["schema"]["properties"]}
    assert props == {"name": "rw", "desc": "rw", "tags": "rw", "node": "r", "online": "r"}
    assert cloud.count("/login") == 1
    login = next(c for c in cloud.calls if c.path == "/login")
    assert login.method == "POST" and login.args["source"] is True


async def test_session_expiry_and_relogin(
    gateway_factory: Any, probe: Any, cloud: XkyCloud
) -> None:
    sns = await start(gateway_factory, probe, cloud)
    mark = probe.mark()
    cloud.expire_sessions()
    async with asyncio.timeout(10):
        while cloud.count("/login") < 2:
            await asyncio.sleep(0.02)
    await polls(cloud)
    assert device_messages(probe, mark) == []  # a re-login is not an outage: nothing republished
    cloud.update_device(sns[1], desc="after re-login")
    await probe.wait_for(f"{B}/xky/{sns[1]}", lambda p: p and p.get("desc") == "after re-login")
    assert not probe.find(
        f"{B}/bridge/accounts", lambda p: p and p[0]["state"] != "online", start=mark
    )


async def test_only_changes_are_published(
    gateway_factory: Any, probe: Any, cloud: XkyCloud
) -> None:
    sns, mark = await settled(gateway_factory, probe, cloud)
    await polls(cloud, 3)
    assert device_messages(probe, mark) == []
    cloud.update_device(sns[0], tags=["kitchen"])
    cloud.set_online(sns[2], False)
    await probe.wait_for(
        f"{B}/xky/{sns[2]}/availability", lambda p: p["state"] == "offline", start=mark
    )
    await probe.wait_for(
        f"{B}/xky/{sns[0]}", lambda p: p and p.get("tags") == ["kitchen"], start=mark
    )
    await polls(cloud)
    topics = sorted(t for t, _ in device_messages(probe, mark))
    assert topics == sorted(
        [f"{B}/xky/{sns[0]}", f"{B}/xky/{sns[2]}", f"{B}/xky/{sns[2]}/availability"]
    )


async def test_device_added_and_removed(gateway_factory: Any, probe: Any, cloud: XkyCloud) -> None:
    sns = await start(gateway_factory, probe, cloud)
    new = cloud.add_device("0badcafe", name="newcomer")
    ev = await probe.wait_for(
        f"{B}/bridge/event", lambda p: p["type"] == "device_added" and p["device"] == new
    )
    assert ev["vendor"] == "xky" and ev["account"] == "home"
    await probe.wait_for(f"{B}/xky/{new}", lambda p: p and p.get("name") == "newcomer")
    mark = probe.mark()
    cloud.remove_device(sns[0])
    ev = await probe.wait_for(
        f"{B}/bridge/event", lambda p: p["type"] == "device_removed", start=mark
    )
    assert ev["device"] == sns[0]
    await probe.wait_for(
        f"{B}/xky/{sns[0]}", lambda p: p == b"", start=mark
    )  # retained state cleared
    await probe.wait_for(f"{B}/xky/{sns[0]}/availability", lambda p: p == b"", start=mark)
    devices = await probe.wait_for(f"{B}/bridge/devices", lambda p: len(p) == 3, start=mark)
    assert sns[0] not in {d["id"] for d in devices}


async def test_set_round_trip(gateway_factory: Any, probe: Any, cloud: XkyCloud) -> None:
    sns = await start(gateway_factory, probe, cloud)
    sn = sns[1]
    probe.publish(f"{B}/xky/{sn}/set", {"name": "Phone 7", "tags": ["a", "b"], "transaction": "t1"})
    reply = await probe.wait_for(f"{B}/xky/{sn}/response/set", lambda p: p["transaction"] == "t1")
    assert reply == {"status": "ok", "transaction": "t1"}
    dev = cloud.devices[sn]
    assert (dev.name, dev.tags) == ("Phone 7", ["a", "b"])
    await probe.wait_for(
        f"{B}/xky/{sn}", lambda p: p and p.get("name") == "Phone 7" and p["tags"] == ["a", "b"]
    )
    probe.publish(f"{B}/xky/{sn}/set/desc", b'"by topic"')
    await probe.wait_for(f"{B}/xky/{sn}", lambda p: p and p.get("desc") == "by topic")
    assert cloud.devices[sn].desc == "by topic"
    # read-only and unknown properties are rejected before any call to the cloud
    calls = cloud.count("/set_device")
    for i, bad in enumerate(
        [{"online": False}, {"node": "2"}, {"volume": 3}, {"tags": "notalist"}]
    ):
        probe.publish(f"{B}/xky/{sn}/set", {**bad, "transaction": f"bad{i}"})
        reply = await probe.wait_for(
            f"{B}/xky/{sn}/response/set", lambda p, i=i: p["transaction"] == f"bad{i}"
        )
        assert reply["status"] == "error" and reply["error"]["code"] == "invalid", reply
    assert cloud.count("/set_device") == calls
    # a cloud error comes back per the reply contract
    cloud.fail(status=503, path="/set_device")
    probe.publish(f"{B}/xky/{sn}/set", {"name": "x", "transaction": "v1"})
    reply = await probe.wait_for(f"{B}/xky/{sn}/response/set", lambda p: p["transaction"] == "v1")
    assert reply["status"] == "error" and reply["error"]["vendor_code"] == "http 503"


async def test_bridge_request_multi_device(
    gateway_factory: Any, probe: Any, cloud: XkyCloud
) -> None:
    sns = await start(gateway_factory, probe, cloud)
    probe.publish(
        f"{B}/bridge/request/multi_device", {"account": "home", "sns": sns[:2], "transaction": "m1"}
    )
    reply = await probe.wait_for(
        f"{B}/bridge/response/multi_device", lambda p: p["transaction"] == "m1"
    )
    assert reply["status"] == "ok" and reply["data"] == {"sns": sns[:2]}
    assert cloud.multi == sns[:2]
    probe.publish(
        f"{B}/bridge/request/multi_device", {"account": "home", "sns": "nope", "transaction": "m2"}
    )
    reply = await probe.wait_for(
        f"{B}/bridge/response/multi_device", lambda p: p["transaction"] == "m2"
    )
    assert reply["error"]["code"] == "invalid"
    probe.publish(
        f"{B}/bridge/request/multi_device",
        {"account": "home", "sns": ["ghost"], "transaction": "m3"},
    )
    reply = await probe.wait_for(
        f"{B}/bridge/response/multi_device", lambda p: p["transaction"] == "m3"
    )
    assert reply["status"] == "error" and reply["error"]["vendor_code"] == 404
    assert cloud.multi == sns[:2]


async def test_malformed_response_is_counted_and_skipped(
    gateway_factory: Any, probe: Any, cloud: XkyCloud
) -> None:
    sns, mark = await settled(gateway_factory, probe, cloud)
    cloud.malformed(kind="record", path="/get_device_list")  # one record without a serial
    cloud.malformed(kind="garble", path="/get_device_list")
    health = await probe.wait_for(
        f"{B}/bridge/health",
        lambda p: p["counters"].get("bad_frames", {}).get("xky") == 2,
        start=mark,
    )
    assert health["devices"] == 3
    await polls(cloud)
    assert device_messages(probe, mark) == []  # nothing removed, nothing republished
    assert not probe.find(f"{B}/bridge/event", start=mark)
    cloud.update_device(sns[0], desc="still polling")
    await probe.wait_for(f"{B}/xky/{sns[0]}", lambda p: p and p.get("desc") == "still polling")
