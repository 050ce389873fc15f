"""Cluster mode and ``bridge/state``: the instances share one base topic, so it reads offline
only when no instance serves it — not when one of several leaves cleanly, and not for longer
than a round trip when one dies (its will) while others run."""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as paho

from emulators.tencent import TencentCloud
from gateway.publisher import OFFLINE
from tests.conftest import Probe
from tests.helpers import emulator, eventually

B = "cloud2mqtt"
STATE = f"{B}/bridge/state"

cloud = emulator(lambda: TencentCloud(devices=1, latency=0.0))


async def retained_state(mosquitto: Any) -> Any:
    fresh = Probe(mosquitto.host, mosquitto.port, STATE)
    try:
        await fresh.ready()
        return await fresh.wait_for(STATE)
    finally:
        fresh.close()


async def test_bridge_state_reads_offline_only_when_no_instance_serves(
    instance: Any, mosquitto: Any, probe: Any, cloud: TencentCloud
) -> None:
    accounts = [cloud.account_config("acct0", open_id="user-0")]
    a = await instance("gw-a", accounts)
    b = await instance("gw-b", accounts)
    await eventually(
        lambda: all(gw.cluster is not None and gw.cluster.others_serve() for gw in (a, b)),
        "each instance sees the other",
        timeout=15,
    )

    mark = probe.mark()
    await b.stop()  # leaves cleanly while a serves on
    assert await retained_state(mosquitto) == {"state": "online"}
    assert not probe.find(STATE, lambda p: p == {"state": "offline"}, start=mark)

    # A peer that dies without a goodbye: the broker publishes its will; a puts state back.
    mark = probe.mark()
    ghost = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="gw-ghost",
                        protocol=paho.MQTTv5)  # fmt: skip
    ghost.will_set(STATE, OFFLINE, qos=1, retain=True)
    ghost.connect(mosquitto.host, mosquitto.port)
    ghost.loop_read()  # its CONNACK: the will is armed
    ghost.socket().close()  # gone, no DISCONNECT
    await probe.wait_for(STATE, lambda p: p == {"state": "offline"}, start=mark)
    dead = next(i for i, (t, p, _) in enumerate(probe.messages)
                if i >= mark and t == STATE and p == {"state": "offline"})  # fmt: skip
    await probe.wait_for(STATE, lambda p: p == {"state": "online"}, start=dead + 1)
    assert await retained_state(mosquitto) == {"state": "online"}

    await a.stop()  # the last instance leaves: now the gateway is offline
    assert await retained_state(mosquitto) == {"state": "offline"}
