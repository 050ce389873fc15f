"""The topic tree, command/reply contract and state rules, on a real mosquitto."""

from __future__ import annotations

import asyncio

import pytest

from gateway.link import LinkState
from gateway.presence import InstanceConflict
from protocols.model import Availability, DeviceEvent, StateChange, VendorError
from tests.dummy_connector import INSTANCES, DummyConnector
from tests.helpers import eventually

pytestmark = pytest.mark.both_loops  # gateway end to end: uvloop and asyncio

B = "cloud2mqtt"
LAMP = f"{B}/dummy/lamp%2F1"


async def start(gateway_factory, **opts):
    gw = await gateway_factory(
        [{"vendor": "dummy", "name": "acc", "devices": ["lamp/1", "lamp-2"]}],
        connectors={"dummy": DummyConnector},
        **opts,
    )
    for _ in range(100):
        if "acc" in INSTANCES and gw.registry.get("dummy", "lamp/1"):
            break
        await asyncio.sleep(0.02)
    return gw, INSTANCES["acc"]


async def test_state_availability_event_and_bridge_topics(gateway_factory, probe):
    _gw, dummy = await start(gateway_factory)
    await probe.wait_for(f"{B}/bridge/state", lambda p: p == {"state": "online"})
    await probe.wait_for(f"{LAMP}/availability", lambda p: p["state"] == "online")
    dummy.ctx.state(StateChange("lamp/1", {"power": "on", "brightness": "42", "temperature": "21.5"}, 1000))
    state = await probe.wait_for(LAMP, lambda p: p.get("power") is True)
    assert state == {"power": True, "brightness": 42, "temperature": 21.5, "last_seen": 1000}
    # an older replayed value is dropped, a newer one merged
    dummy.ctx.state(StateChange("lamp/1", {"brightness": 5}, 900))
    dummy.ctx.state(StateChange("lamp/1", {"brightness": 7}, 1100))
    state = await probe.wait_for(LAMP, lambda p: p.get("brightness") == 7)
    assert not probe.find(LAMP, lambda p: p.get("brightness") == 5)
    dummy.ctx.availability(Availability("lamp/1", False, 1200, "device"))
    av = await probe.wait_for(f"{LAMP}/availability", lambda p: p["state"] == "offline")
    assert av == {"state": "offline", "since": 1200, "reason": "device"}
    dummy.ctx.event(DeviceEvent("lamp/1", "overheat", "alert", {"t": 90}, 1300))
    ev = await probe.wait_for(f"{LAMP}/event")
    assert ev == {"event": "overheat", "level": "alert", "params": {"t": 90}, "ts": 1300}
    devices = await probe.wait_for(f"{B}/bridge/devices", lambda p: len(p) == 2)
    assert {d["id"] for d in devices} == {"lamp/1", "lamp-2"}
    assert devices[1]["schema"]["properties"][1]["max"] == 100
    accounts = await probe.wait_for(f"{B}/bridge/accounts", lambda p: p and p[0]["state"] == "online")
    assert accounts[0]["name"] == "acc"
    # a value that does not fit is kept, flagged and counted
    dummy.ctx.state(StateChange("lamp/1", {"brightness": "bright"}, 1400))
    await probe.wait_for(LAMP, lambda p: p.get("brightness") == "bright")
    health = await probe.wait_for(
        f"{B}/bridge/health", lambda p: p["counters"].get("flagged_values", {}).get("dummy") == 1
    )
    assert health["devices"] == 2


async def test_set_get_action_replies(gateway_factory, probe):
    _gw, dummy = await start(gateway_factory)
    await probe.wait_for(f"{LAMP}/availability")
    probe.publish(f"{LAMP}/set", {"power": True, "brightness": 10, "transaction": "t1"})
    reply = await probe.wait_for(f"{LAMP}/response/set", lambda p: p["transaction"] == "t1")
    assert reply == {"status": "ok", "transaction": "t1"}
    assert dummy.calls[-1] == ("set", ("lamp/1", {"power": True, "brightness": 10}))
    # invalid: out of range, read-only, unknown, wrong type -> rejected before any vendor call
    n = len(dummy.calls)
    for i, bad in enumerate([{"brightness": 101}, {"temperature": 3}, {"nope": 1}, {"power": "maybe"}]):
        probe.publish(f"{LAMP}/set", {**bad, "transaction": f"bad{i}"})
        reply = await probe.wait_for(f"{LAMP}/response/set", lambda p, i=i: p["transaction"] == f"bad{i}")
        assert reply["status"] == "error" and reply["error"]["code"] == "invalid", reply
    probe.publish(f"{LAMP}/set", b"{not json")
    await probe.wait_for(f"{LAMP}/response/set", lambda p: p["status"] == "error" and "JSON" in p["error"]["message"])
    assert len(dummy.calls) == n
    # a bare value on set/<prop>; a property named "set" uses "set_"
    probe.publish(f"{LAMP}/set/brightness", b"55")
    await probe.wait_for(LAMP, lambda p: p.get("brightness") == 55)
    probe.publish(f"{LAMP}/set/set_", b"3")
    await probe.wait_for(LAMP, lambda p: p.get("set") == 3)
    # action, validated against the action's inputs
    probe.publish(f"{LAMP}/action", {"action": "blink", "params": {"times": 2}, "transaction": "a1"})
    reply = await probe.wait_for(f"{LAMP}/response/action", lambda p: p["transaction"] == "a1")
    assert reply == {"status": "ok", "transaction": "a1", "data": {"done": True}}
    probe.publish(f"{LAMP}/action", {"action": "blink", "params": {"times": 9}, "transaction": "a2"})
    reply = await probe.wait_for(f"{LAMP}/response/action", lambda p: p["transaction"] == "a2")
    assert reply["error"]["code"] == "invalid"
    # vendor error and timeout
    dummy.fail = VendorError("rejected", 1234, "device says no")
    probe.publish(f"{LAMP}/set", {"power": False, "transaction": "v1"})
    reply = await probe.wait_for(f"{LAMP}/response/set", lambda p: p["transaction"] == "v1")
    assert reply["error"] == {"code": "rejected", "vendor_code": 1234, "message": "device says no"}
    dummy.fail = None
    dummy.hang = True
    probe.publish(f"{LAMP}/set", {"power": False, "transaction": "slow"})
    reply = await probe.wait_for(f"{LAMP}/response/set", lambda p: p["transaction"] == "slow", timeout=10)
    assert reply["status"] == "timeout" and reply["error"]["code"] == "timeout"
    # MQTT 5 response topic + correlation data
    dummy.hang = False
    probe.publish(f"{LAMP}/set", {"power": True}, response_topic="my/replies", correlation=b"\x01\x02")
    reply = await probe.wait_for("my/replies")
    assert reply["status"] == "ok"
    idx = [i for i, m in enumerate(probe.messages) if m[0] == "my/replies"][-1]
    assert probe.props[idx].CorrelationData == b"\x01\x02"
    # unknown device
    probe.publish(f"{B}/dummy/ghost/set", {"power": True})
    reply = await probe.wait_for(f"{B}/dummy/ghost/response/set")
    assert reply["error"]["code"] == "invalid"
    health = await probe.wait_for(f"{B}/bridge/health", lambda p: p["counters"].get("bad_commands", {}).get("dummy", 0) >= 7)
    assert health


async def test_offline_device_rejects_command(gateway_factory, probe):
    _gw, dummy = await start(gateway_factory)
    dummy.ctx.availability(Availability("lamp/1", False, 5, "device"))
    probe.publish(f"{LAMP}/set", {"power": True, "transaction": "x"})
    reply = await probe.wait_for(f"{LAMP}/response/set")
    assert reply["error"]["code"] == "offline"


async def test_removed_device_clears_retained_and_grace_marks_offline(gateway_factory, probe):
    _gw, dummy = await start(gateway_factory, offline_grace=0.3)
    dummy.ctx.state(StateChange("lamp-2", {"power": 1}, 10))
    await probe.wait_for(f"{B}/dummy/lamp-2", lambda p: isinstance(p, dict) and p.get("power") is True)
    dummy.ctx.devices(dummy.infos(["lamp/1"]))
    await probe.wait_for(f"{B}/dummy/lamp-2", lambda p: p == b"")
    await probe.wait_for(f"{B}/dummy/lamp-2/availability", lambda p: p == b"")
    ev = await probe.wait_for(f"{B}/bridge/event", lambda p: p["type"] == "device_removed")
    assert ev["device"] == "lamp-2"
    # the cloud link drops: after the grace period the account's devices go offline
    dummy.ctx.link(LinkState.BACKOFF, "socket closed")
    av = await probe.wait_for(f"{LAMP}/availability", lambda p: p["state"] == "offline")
    assert av["reason"] == "cloud_disconnected"
    dummy.ctx.link(LinkState.ONLINE)
    dummy.ctx.devices(dummy.infos(["lamp/1"]))
    await probe.wait_for(f"{LAMP}/availability", lambda p: p["state"] == "online", start=probe.mark() - 1)


async def test_republish_after_broker_restart_and_offline_on_stop(gateway_factory, mosquitto, probe):
    gw, dummy = await start(gateway_factory)
    dummy.ctx.state(StateChange("lamp/1", {"brightness": 33}, 10))
    await probe.wait_for(LAMP, lambda p: p.get("brightness") == 33)
    await mosquitto.restart()  # persistence off: the broker forgets every retained message
    probe2 = type(probe)(mosquitto.host, mosquitto.port)
    try:
        await probe2.ready()
        await probe2.wait_for(LAMP, lambda p: p.get("brightness") == 33, timeout=20)
        await probe2.wait_for(f"{B}/bridge/state", lambda p: p == {"state": "online"})
        # commands still work: subscriptions were renewed
        probe2.publish(f"{LAMP}/set", {"brightness": 34})
        await probe2.wait_for(LAMP, lambda p: p.get("brightness") == 34)
        await gw.stop()
        await probe2.wait_for(f"{B}/bridge/state", lambda p: p == {"state": "offline"})
    finally:
        probe2.close()


@pytest.mark.parametrize("payload", [b"\xff\xfe", b"[1,2]", b'{"props": "x"}'])
async def test_bad_get_payloads_are_answered(gateway_factory, probe, payload):
    await start(gateway_factory)
    probe.publish(f"{LAMP}/get", payload)
    reply = await probe.wait_for(f"{LAMP}/response/get")
    assert reply["status"] == "error"


async def test_starts_without_a_broker_and_publishes_what_happened_meanwhile(
    gateway_factory, mosquitto, probe
):
    """Issue 11 finding 4: no broker at start-up is not an exit; the vendor side runs and what
    it reports waits in the outage buffer until the broker is there."""
    await mosquitto.stop()
    gw, dummy = await start(gateway_factory)
    assert not gw.mqtt.connected
    dummy.ctx.state(StateChange("lamp/1", {"brightness": 21}, 10))
    dummy.ctx.event(DeviceEvent("lamp/1", "press", "info", {"n": 1}, 11))
    assert gw.mqtt.buffered >= 2
    await mosquitto.start()
    probe2 = type(probe)(mosquitto.host, mosquitto.port)
    try:
        await probe2.ready()
        await probe2.wait_for(LAMP, lambda p: p.get("brightness") == 21, timeout=20)
        await probe2.wait_for(f"{B}/bridge/state", lambda p: p == {"state": "online"})
    finally:
        probe2.close()


async def test_a_second_instance_on_the_same_base_topic_refuses_to_start(
    gateway_factory, mosquitto, probe
):
    """Issue 12.9: two instances on one broker and base topic took over each other's session
    (same client id) or answered every command twice; the second now refuses, saying why."""
    first, _ = await start(gateway_factory, instance_id="first")
    ann = await probe.wait_for(f"{B}/bridge/instances/first", lambda p: p.get("state") == "online")
    assert ann["id"] == "first" and ann["pid"]
    with pytest.raises(InstanceConflict, match="another cloud2mqtt instance \\(first"):
        await gateway_factory(
            [{"vendor": "dummy", "name": "acc", "devices": ["lamp/1"]}],
            connectors={"dummy": DummyConnector},
            instance_id="second",
        )
    # the first keeps its session: still online, never displaced
    assert first.mqtt.connected
    assert not probe.find(f"{B}/bridge/state", lambda p: p == {"state": "offline"})
    await first.stop()
    await probe.wait_for(f"{B}/bridge/instances/first", lambda p: p.get("state") == "offline")


async def test_a_wildcard_response_topic_is_answered_invalid_and_the_link_stays(
    gateway_factory, probe
):
    """Issue 11 finding 1, end to end: a command whose MQTT 5 Response Topic holds a wildcard
    made the gateway publish to it, mosquitto dropped the link, and the resent packet kept it
    down for good. Now: one `invalid` reply on the normal response topic, the link stays up,
    and the next command is answered as usual."""
    gw, _dummy = await start(gateway_factory)
    probe.publish(f"{LAMP}/get", {"transaction": "w1"}, response_topic="x/#", correlation=b"c")
    reply = await probe.wait_for(f"{LAMP}/response/get", lambda p: p.get("transaction") == "w1")
    assert reply["error"]["code"] == "invalid" and "Response Topic" in reply["error"]["message"]
    probe.publish(f"{LAMP}/set", {"power": True, "transaction": "w2"})
    ok = await probe.wait_for(f"{LAMP}/response/set", lambda p: p.get("transaction") == "w2")
    assert ok["status"] == "ok"
    assert gw.mqtt.connected and gw.mqtt.stats()["reconnects"] == 0
    assert not probe.find(f"{B}/bridge/state", lambda p: p == {"state": "offline"})


async def test_stop_account_gives_a_hanging_leave_only_its_close_timeout(gateway_factory):
    """Cluster self-fencing stops accounts within the lease margin: a connector whose graceful
    leave hangs is cut off after ``close_timeout`` and the account is stopped all the same."""
    gw, dummy = await start(gateway_factory)
    dummy.close_hangs = True
    await gw.stop_account(("dummy", "acc"), close_timeout=0.05)
    assert ("dummy", "acc") not in gw.account_keys()


async def test_stop_answers_the_commands_in_flight(gateway_factory, probe):
    """A clean stop first takes no new command, then lets those in flight answer (here: the
    vendor never answers, so the reply is the command's own timeout) before the accounts go."""
    gw, dummy = await start(gateway_factory, command_timeout=0.3)
    dummy.hang = True
    probe.publish(f"{LAMP}/set", {"power": True, "transaction": "in-flight"})
    await eventually(lambda: dummy.calls, "the command reached the vendor")
    await gw.stop()
    reply = await probe.wait_for(f"{LAMP}/response/set", lambda p: p["transaction"] == "in-flight")
    assert reply["status"] == "timeout"
    assert len(probe.find(f"{LAMP}/response/set")) == 1
