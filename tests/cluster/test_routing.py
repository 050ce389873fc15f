"""Commands in a cluster arrive once (MQTT 5 shared subscription) and are answered once: by the
receiving instance, with the result of the instance that runs the device (NATS request/reply),
or with ``unavailable`` while no live instance runs it. Real nats-server, mosquitto and the
Tencent emulator; the crashed owner is a real ``cloud2mqtt run`` process killed with SIGKILL."""

from __future__ import annotations

import json
import signal
from typing import Any

from emulators.tencent import TencentCloud
from gateway.app import Gateway
from gateway.topics import encode_id
from tests.cluster.conftest import quick_accounts
from tests.helpers import emulator, eventually

B = "cloud2mqtt"
ACCOUNTS = 12  # over 8 slots: both instances run some (a 4/4 slot split)

RESYNCS = 6

cloud = emulator(lambda: TencentCloud(devices=1, latency=0.0))


def _accounts(cloud: TencentCloud) -> list[dict[str, Any]]:
    return quick_accounts(cloud, ACCOUNTS)


def _light(cloud: TencentCloud, account: str) -> str:
    [device] = cloud.device_ids(f"user-{account.removeprefix('acct')}")
    return f"{B}/tencent/{encode_id(device)}"


def _received(*gateways: Gateway) -> list[int]:
    return [gw.health.totals["commands"] for gw in gateways]


async def test_each_command_is_answered_once_with_the_owners_result(
    instance: Any, probe: Any, cloud: TencentCloud
) -> None:
    a, b = [await instance(name, _accounts(cloud), slots=8) for name in ("gw-a", "gw-b")]
    await eventually(
        lambda: len(a.account_keys()) + len(b.account_keys()) == ACCOUNTS
        and [len(gw.cluster.leases.held()) for gw in (a, b)] == [4, 4]  # type: ignore[union-attr]
        and all(None not in gw.cluster.leases.owners().values() for gw in (a, b)),  # type: ignore[union-attr]
        "the slots split 4/4, each instance has seen it, and every account runs", timeout=20,
    )  # fmt: skip
    on_b = sorted(name for _, name in b.account_keys())
    for i in range(ACCOUNTS):
        await probe.wait_for(f"{_light(cloud, f'acct{i}')}/availability",
                             lambda p: p["state"] == "online")  # fmt: skip

    # Commands for B's devices, sent to the group: both receive some; A routes its share to B.
    device = _light(cloud, on_b[0])
    controls, received = cloud.stats["controls"], _received(a, b)
    commands = 12
    for n in range(commands):
        probe.publish(f"{device}/set", {"brightness": n, "transaction": f"t{n}"},
                      response_topic="client/replies", correlation=f"c{n}".encode())  # fmt: skip
    for n in range(commands):
        reply = await probe.wait_for(
            f"{device}/response/set", lambda p, n=n: p.get("transaction") == f"t{n}"
        )
        assert reply["status"] == "ok", reply
    await eventually(lambda: len(probe.find("client/replies")) >= commands)
    got = [p["transaction"] for p in probe.find(f"{device}/response/set")]
    assert sorted(got) == sorted(f"t{n}" for n in range(commands)), "one reply per command"
    with probe._lock:
        correlations = sorted(
            props.CorrelationData for (topic, _, _), props in zip(probe.messages, probe.props, strict=True)
            if topic == "client/replies"
        )  # fmt: skip
    assert correlations == sorted(f"c{n}".encode() for n in range(commands))
    assert cloud.stats["controls"] - controls == commands, "the vendor saw each control once"
    per_gateway = [now - before for now, before in zip(_received(a, b), received, strict=True)]
    assert sum(per_gateway) == commands, "each command reached one instance"
    assert all(per_gateway), f"the shared subscription gave both instances some: {per_gateway}"

    # Validation runs on the owner; its refusal comes back as the one reply.
    probe.publish(f"{device}/set", {"brightness": 500, "transaction": "bad"})
    refused = await probe.wait_for(
        f"{device}/response/set", lambda p: p.get("transaction") == "bad"
    )
    assert refused["error"]["code"] == "invalid", refused

    # A device no instance runs: "unknown device" once, from whichever received it.
    probe.publish(f"{B}/tencent/NOPE%2Fnothing/get", {"transaction": "u"})
    unknown = await probe.wait_for(f"{B}/tencent/NOPE%2Fnothing/response/get")
    assert (
        unknown["error"]["code"] == "invalid" and "unknown device" in unknown["error"]["message"]
    ), unknown

    # Bridge requests: each answered once; a resync is run by the account's owner.
    mark = probe.mark()
    probe.publish(f"{B}/bridge/request/health", {"transaction": "h"})
    for i in range(RESYNCS):
        probe.publish(f"{B}/bridge/request/resync", {"account": f"acct{i}", "transaction": f"r{i}"})
    await probe.wait_for(f"{B}/bridge/response/health", start=mark)
    for i in range(RESYNCS):
        reply = await probe.wait_for(f"{B}/bridge/response/resync",
                                     lambda p, i=i: p.get("transaction") == f"r{i}", start=mark)  # fmt: skip
        assert reply["status"] == "ok" and reply["data"]["account"] == f"acct{i}", reply
    await eventually(lambda: len(probe.find(f"{B}/bridge/response/resync", start=mark)) >= RESYNCS)
    assert len(probe.find(f"{B}/bridge/response/health", start=mark)) == 1
    got = sorted(p["transaction"] for p in probe.find(f"{B}/bridge/response/resync", start=mark))
    assert got == [f"r{i}" for i in range(RESYNCS)], "one reply per bridge request"


async def test_a_command_for_a_crashed_owners_account_gets_one_unavailable_reply(
    instance_process: Any, instance: Any, probe: Any, cloud: TencentCloud
) -> None:
    # lease_ttl 3: after the crash, B waits a whole lease (3 s) before it takes the slots over
    proc = await instance_process("gw-a", _accounts(cloud), cluster={"slots": 8, "lease_ttl": 3.0})
    b = await instance("gw-b", _accounts(cloud), slots=8, lease_ttl=3.0)
    info = await probe.wait_for(
        f"{B}/bridge/instances/gw-b/info",  # gw-b's own view (bridge/info: the cluster's merge)
        lambda p: (
            p.get("cluster", {}).get("instance") == "gw-b"
            and set(p["cluster"]["accounts"].values()) == {"gw-a", "gw-b"}
        ),
        timeout=20,
    )
    on_a = sorted(
        k.split("/")[1] for k, v in info["cluster"]["accounts"].items() if v == "gw-a"
    )
    device = _light(cloud, on_a[0])
    await probe.wait_for(f"{device}/availability", lambda p: p["state"] == "online")
    mark = probe.mark()
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    # its last will: the broker has dropped it, so only B is left in the shared group
    await probe.wait_for(f"{B}/bridge/state", lambda p: p["state"] == "offline", start=mark)
    assert b.cluster is not None and b.cluster.leases is not None
    leases = b.cluster.leases
    controls = cloud.stats["controls"]

    probe.publish(f"{device}/set", {"brightness": 7, "transaction": "gone"})
    reply = await probe.wait_for(
        f"{device}/response/set", lambda p: p.get("transaction") == "gone", start=mark
    )
    assert "gw-a" in leases.owners().values(), "answered before the takeover"
    assert reply["status"] == "error" and reply["error"]["code"] == "unavailable", reply
    assert "gw-a" in reply["error"]["message"]

    # after the takeover the new owner runs it
    await eventually(lambda: len(b.account_keys()) == ACCOUNTS, timeout=15)
    await probe.wait_for(f"{device}/availability", lambda p: p["state"] == "online", start=mark)
    probe.publish(f"{device}/set", {"brightness": 8, "transaction": "back"})
    ok = await probe.wait_for(
        f"{device}/response/set", lambda p: p.get("transaction") == "back", start=mark
    )
    assert ok["status"] == "ok", ok
    assert cloud.stats["controls"] == controls + 1, "the refused command never ran"
    assert [p["transaction"] for p in probe.find(f"{device}/response/set", start=mark)] == [
        "gone", "back",
    ]  # fmt: skip


async def test_a_malformed_routed_request_is_counted_and_answered_at_once(
    instance: Any, nats_client: Any, cloud: TencentCloud
) -> None:
    """Bad input from a peer (another version, a stray publisher): a clear error back at
    once, a counter and a log line; the instance carries on."""
    from gateway.cluster.routing import subject

    a = await instance("gw-a", quick_accounts(cloud, 1), slots=4)
    nc = await nats_client()
    for garbage in (b"not json", b'{"op": "device"}', b'{"op": "teleport", "request": {}}'):
        msg = await nc.request(subject("gw-a"), garbage, timeout=5)
        answer = json.loads(msg.data)
        assert answer["result"]["status"] == "error" and answer["result"]["code"] == "invalid"
    assert a.health.counters["bad_peer_messages"]["cluster"] == 3
