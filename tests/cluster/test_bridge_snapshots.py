"""Cluster mode and ``bridge/accounts`` / ``bridge/devices``: each instance publishes its own
snapshots on ``bridge/instances/<id>/…``, and every instance writes the same merge of them all
on the shared topics: each account once, under the instance that runs it (gateway/instances.py).
A clean stop clears the stopping instance's own snapshots; the survivor's merge shows the
accounts it took over once, under its own name."""

from __future__ import annotations

from typing import Any

from emulators.tencent import TencentCloud
from gateway.app import Gateway
from tests.cluster.conftest import quick_accounts, retained
from tests.helpers import emulator, eventually

B = "cloud2mqtt"
ACCOUNTS = 6
ACCOUNTS_TOPIC = f"{B}/bridge/accounts"
DEVICES_TOPIC = f"{B}/bridge/devices"

cloud = emulator(lambda: TencentCloud(devices=1, latency=0.0))


def owners(*gateways: Gateway) -> dict[str, str]:
    """Who runs which account now: ``{account name: instance id}``."""
    return {
        name: gw.config.cluster.instance_id  # type: ignore[union-attr]
        for gw in gateways
        for _, name in gw.account_keys()
    }


def held(gw: Gateway) -> int:
    """How many slots the instance holds."""
    return len(gw.cluster.leases.held())  # type: ignore[union-attr]


def listed(accounts: Any) -> dict[str, str]:
    """A ``bridge/accounts`` payload as ``{account name: instance}``; fails on duplicates."""
    names = [a["name"] for a in accounts]
    assert len(names) == len(set(names)), f"an account listed twice: {sorted(names)}"
    return {a["name"]: a["instance"] for a in accounts}


async def test_bridge_accounts_and_devices_show_the_whole_cluster(
    instance: Any, mosquitto: Any, probe: Any, cloud: TencentCloud
) -> None:
    accounts = quick_accounts(cloud, ACCOUNTS)
    everything = {f"acct{i}" for i in range(ACCOUNTS)}
    devices = {d for i in range(ACCOUNTS) for d in cloud.device_ids(f"user-{i}")}
    a = await instance("gw-a", accounts)
    b = await instance("gw-b", accounts)
    await eventually(  # settled: the slots split 2/2 (of acct0-5 only slot 1 is empty)
        lambda: set(owners(a, b)) == everything and held(a) == held(b) == 2,
        "the slots split 2/2 and every account runs",
        timeout=15,
    )
    assert set(owners(a, b).values()) == {"gw-a", "gw-b"}
    split = owners(a, b)
    await probe.wait_for(ACCOUNTS_TOPIC, lambda p: listed(p) == split)
    # both instances compute the same merge (the shared topic's last writer changes nothing)
    await eventually(
        lambda: listed(a.publisher.accounts_view()) == listed(b.publisher.accounts_view()) == split,
        "both instances' merge lists every account once, under its owner",
    )
    await probe.wait_for(
        DEVICES_TOPIC, lambda p: sorted(d["id"] for d in p) == sorted(devices)
    )  # each device once
    for name in ("gw-a", "gw-b"):  # each instance's own part, retained
        own = await probe.wait_for(f"{B}/bridge/instances/{name}/accounts")
        assert {e["name"] for e in own} <= {n for n, i in split.items() if i == name}
        await probe.wait_for(f"{B}/bridge/instances/{name}/health")
    probe.publish(f"{B}/bridge/request/accounts", {"transaction": "acc"})
    reply = await probe.wait_for(
        f"{B}/bridge/response/accounts", lambda p: p.get("transaction") == "acc"
    )
    assert reply["status"] == "ok" and listed(reply["data"]["accounts"]) == split
    probe.publish(f"{B}/bridge/request/devices", {"transaction": "dev"})
    reply = await probe.wait_for(
        f"{B}/bridge/response/devices", lambda p: p.get("transaction") == "dev"
    )
    assert sorted(d["id"] for d in reply["data"]["devices"]) == sorted(devices)

    mark = probe.mark()
    await a.stop()  # b takes a's accounts over; a's own snapshots are cleared
    await eventually(lambda: set(b.account_keys()) == {("tencent", n) for n in everything})
    taken_over = dict.fromkeys(everything, "gw-b")
    await probe.wait_for(ACCOUNTS_TOPIC, lambda p: listed(p) == taken_over, start=mark)
    await probe.wait_for(
        DEVICES_TOPIC, lambda p: sorted(d["id"] for d in p) == sorted(devices), start=mark
    )
    assert probe.find(f"{B}/bridge/instances/gw-a/accounts", lambda p: p == b"", start=mark)
    kept = await retained(
        mosquitto, f"{B}/bridge/#", f"{B}/bridge/instances/gw-b/accounts", ACCOUNTS_TOPIC
    )
    assert f"{B}/bridge/instances/gw-a/accounts" not in kept
    assert f"{B}/bridge/instances/gw-a/devices" not in kept
    assert listed(kept[ACCOUNTS_TOPIC]) == taken_over
