"""Cluster mode, ``bridge/health`` and ``bridge/info``: each instance publishes its own health on
``bridge/instances/<id>/health``, and ``bridge/health`` is the sum of the live instances'
snapshots (gateway/instances.py ``merge_health``), with each one's own fields under
``instances``; ``bridge/info`` likewise keeps what they say alike (``merge_info``). An instance
that stops cleanly, or dies, stops counting. Real nats-server,
mosquitto and the Tencent emulator; the dead instance is a ``cloud2mqtt run`` process killed
with SIGKILL."""

from __future__ import annotations

import signal
from typing import Any

from emulators.tencent import TencentCloud
from gateway.app import Gateway
from gateway.instances import merge_health
from tests.cluster.conftest import quick_accounts, retained
from tests.conftest import Probe
from tests.helpers import emulator, eventually

B = "cloud2mqtt"
HEALTH = f"{B}/bridge/health"
INFO = f"{B}/bridge/info"
ACCOUNTS = 6  # over 4 slots: both instances run some

cloud = emulator(lambda: TencentCloud(devices=1, latency=0.0))


def own(name: str) -> str:
    return f"{B}/bridge/instances/{name}/health"


def summed(probe: Probe, names: list[str], devices: int) -> Any:
    """A predicate over ``bridge/health``: the merge of exactly ``names``, equal to the sum of
    the snapshots those instances published (found by their ``ts``), counting ``devices``."""

    def check(merged: Any) -> bool:
        counted = merged.get("instances") or {}
        if sorted(counted) != names or merged.get("devices") != devices:
            return False
        published = {}
        for name in names:
            found = probe.find(own(name), lambda p, n=name: p and p["ts"] == counted[n]["ts"])
            if not found:
                return False
            published[name] = found[-1]
        return bool(merged == merge_health(published))

    return check


def running(*gateways: Gateway) -> int:
    return sum(len(gw.account_keys()) for gw in gateways)


async def test_bridge_health_sums_both_instances_and_drops_one_that_stopped(
    instance: Any, probe: Probe, cloud: TencentCloud
) -> None:
    accounts = quick_accounts(cloud, ACCOUNTS)
    a = await instance("gw-a", accounts)
    b = await instance("gw-b", accounts)
    await eventually(
        lambda: running(a, b) == ACCOUNTS and a.account_keys() and b.account_keys(),
        "every account runs, some on each instance", timeout=15,
    )  # fmt: skip
    merged = await probe.wait_for(HEALTH, summed(probe, ["gw-a", "gw-b"], ACCOUNTS), timeout=15)
    assert merged["accounts"]["total"] == ACCOUNTS
    for name in ("gw-a", "gw-b"):
        assert {"pid", "speedups", "ts", "uptime_s"} <= set(merged["instances"][name])
        assert merged["instances"][name]["mqtt"] == {"connected": True}
    assert "pid" not in merged and "instance" not in merged

    mark = probe.mark()
    probe.publish(f"{B}/bridge/request/health", {"transaction": "h"})
    reply = await probe.wait_for(
        f"{B}/bridge/response/health", lambda p: p.get("transaction") == "h", start=mark
    )
    assert reply["status"] == "ok" and reply["data"]["answered_by"] in ("gw-a", "gw-b")
    assert sorted(reply["data"]["instances"]) == ["gw-a", "gw-b"]
    assert reply["data"]["devices"] == ACCOUNTS

    # bridge/info is the cluster's too: what both say alike, and each one's own apart
    info = await probe.wait_for(
        INFO, lambda p: sorted(p.get("instances") or {}) == ["gw-a", "gw-b"]
        and set(p["cluster"]["accounts"].values()) == {"gw-a", "gw-b"}, timeout=15,
    )  # fmt: skip
    assert info["version"] and info["config"]["gateway"]["base_topic"] == B
    assert sorted(info["cluster"]["live"]) == ["gw-a", "gw-b"] and "held" not in info["cluster"]
    for gw in (a, b):
        mine = info["instances"][gw.cluster.instance_id]  # type: ignore[union-attr]
        assert mine["config"]["gateway"]["instance_id"] == gw.cluster.instance_id  # type: ignore[union-attr]
        assert mine["held"] == gw.cluster.leases.held()  # type: ignore[union-attr]

    mark = probe.mark()
    await a.stop()  # a clears its own health; b runs everything and counts alone
    await eventually(lambda: running(b) == ACCOUNTS, "gw-b runs every account", timeout=15)
    await probe.wait_for(HEALTH, summed(probe, ["gw-b"], ACCOUNTS), timeout=15, start=mark)
    assert probe.find(own("gw-a"), lambda p: p == b"", start=mark), "a cleared its own health"
    await probe.wait_for(
        INFO, lambda p: sorted(p.get("instances") or {}) == ["gw-b"]
        and set(p["cluster"]["accounts"].values()) == {"gw-b"}, timeout=15, start=mark,
    )  # fmt: skip


async def test_a_dead_instances_retained_health_stops_counting_once_its_presence_expires(
    instance_process: Any, instance: Any, mosquitto: Any, probe: Probe, cloud: TencentCloud
) -> None:
    accounts = quick_accounts(cloud, ACCOUNTS)
    proc = await instance_process("gw-a", accounts)
    b = await instance("gw-b", accounts)
    await probe.wait_for(
        HEALTH, lambda p: sorted(p.get("instances") or {}) == ["gw-a", "gw-b"], timeout=20
    )
    mark = probe.mark()
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    await eventually(lambda: running(b) == ACCOUNTS, "gw-b took every account over", timeout=15)
    await probe.wait_for(HEALTH, summed(probe, ["gw-b"], ACCOUNTS), timeout=15, start=mark)
    # the dead instance's own health is still retained: it is the liveness that dropped it
    kept = await retained(mosquitto, f"{B}/bridge/#", own("gw-a"), own("gw-b"), HEALTH)
    assert kept[own("gw-a")]["instance"] == "gw-a"
    assert sorted(kept[HEALTH]["instances"]) == ["gw-b"]
