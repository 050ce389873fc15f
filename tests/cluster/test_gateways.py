"""Two gateways in cluster mode end to end: real nats-server, real mosquitto, the Tencent
emulator. The accounts are split between the two; when one stops, the other takes its accounts
over, reusing their sessions, and no account ever runs on both at once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest

from emulators.tencent import TencentCloud
from gateway.topics import encode_id
from tests.cluster.conftest import quick_accounts
from tests.helpers import emulator, eventually

B = "cloud2mqtt"
ACCOUNTS = 12

cloud = emulator(lambda: TencentCloud(devices=1, latency=0.0))


async def test_two_gateways_split_the_accounts_and_one_takes_over(
    instance: Any, probe: Any, cloud: TencentCloud
) -> None:
    accounts = quick_accounts(cloud, ACCOUNTS)
    everything = {("tencent", f"acct{i}") for i in range(ACCOUNTS)}
    a = await instance("gw-a", accounts, slots=8)
    b = await instance("gw-b", accounts, slots=8)
    overlap: list[set[tuple[str, str]]] = []

    async def watch() -> None:  # the gateways share this loop: each sample is consistent
        while True:
            both = set(a.account_keys()) & set(b.account_keys())
            if both:
                overlap.append(both)
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    try:
        await eventually(
            lambda: (
                set(a.account_keys()) | set(b.account_keys()) == everything
                and a.cluster is not None
                and len(a.cluster.leases.held()) == 4  # type: ignore[union-attr]
                and b.cluster is not None
                and len(b.cluster.leases.held()) == 4
            ),  # type: ignore[union-attr]
            "the slots split 4/4 and every account runs somewhere",
            timeout=20,
        )
        on_a = set(a.account_keys())
        assert on_a and set(b.account_keys()) == everything - on_a
        for i in range(ACCOUNTS):
            [device] = cloud.device_ids(f"user-{i}")
            await probe.wait_for(
                f"{B}/tencent/{encode_id(device)}/availability", lambda p: p["state"] == "online"
            )
        logins = cloud.stats["logins"]
        assert logins == ACCOUNTS
        info = await probe.wait_for(
            f"{B}/bridge/info",
            lambda p: "cluster" in p and set(p["cluster"]["accounts"].values()) == {"gw-a", "gw-b"},
        )
        owners = info["cluster"]["accounts"]
        assert {k for k, v in owners.items() if v == "gw-a"} == {f"tencent/{n}" for _, n in on_a}

        # each command reaches one instance, which runs it or has its owner run it: one reply
        [x_acct] = sorted(on_a)[:1]
        [y_acct] = sorted(everything - on_a)[:1]
        [x] = cloud.device_ids(f"user-{x_acct[1].removeprefix('acct')}")
        [y] = cloud.device_ids(f"user-{y_acct[1].removeprefix('acct')}")
        for n, device in enumerate([x, y, x, y]):
            probe.publish(f"{B}/tencent/{encode_id(device)}/get", {"transaction": f"t{n}"})
        for n, device in enumerate([x, y, x, y]):
            reply = await probe.wait_for(
                f"{B}/tencent/{encode_id(device)}/response/get",
                lambda p, n=n: p.get("transaction") == f"t{n}",
            )
            assert reply["status"] == "ok", reply
        replies = [
            p["transaction"]
            for d in (x, y)
            for p in probe.find(f"{B}/tencent/{encode_id(d)}/response/get")
        ]
        assert sorted(replies) == ["t0", "t1", "t2", "t3"], "exactly one reply per command"

        mark = probe.mark()
        await a.stop()  # its accounts stop, its slots are freed: b takes them over at once
        await eventually(lambda: set(b.account_keys()) == everything, timeout=10)
        for _, name in sorted(on_a):
            [device] = cloud.device_ids(f"user-{name.removeprefix('acct')}")
            await probe.wait_for(
                f"{B}/tencent/{encode_id(device)}/availability",
                lambda p: p["state"] == "online", start=mark,
            )  # fmt: skip
        assert cloud.stats["logins"] == logins, "a moved account reuses its session's token"
        await probe.wait_for(
            f"{B}/bridge/info",
            lambda p: "cluster" in p and set(p["cluster"]["accounts"].values()) == {"gw-b"},
            start=mark,
        )
        assert overlap == []
    finally:
        watcher.cancel()


async def test_an_instance_with_another_slot_count_does_not_start(
    instance: Any, cloud: TencentCloud
) -> None:
    """With 4 slots on one instance and 8 on another, one account would hash into different
    slots and run on both: the second refuses to join, naming cluster.slots and both counts."""
    from gateway.errors import ConfigError

    accounts = quick_accounts(cloud, 4)
    a = await instance("gw-a", accounts, slots=4)
    everything = {("tencent", f"acct{i}") for i in range(4)}
    await eventually(lambda: set(a.account_keys()) == everything, "gw-a runs every account")
    await eventually(lambda: cloud.stats["logins"] == 4, "every account logged in on gw-a")
    with pytest.raises(ConfigError) as refused:
        await instance("gw-b", accounts, slots=8)
    assert refused.value.key == "cluster.slots"
    assert "this instance has slots = 8, the cluster uses 4" in str(refused.value)
    assert "running: gw-a" in str(refused.value)
    assert cloud.stats["logins"] == 4, "no account logged in twice"
    assert a.cluster is not None and a.cluster.leases is not None
    await a.cluster.leases.tick()
    assert a.cluster.leases.live() == ["gw-a"] and set(a.account_keys()) == everything


async def test_no_nats_means_no_start(tmp_path: Any) -> None:
    """Without NATS the instance cannot lease, so it must run nothing: start() fails with one
    clear error (``cloud2mqtt run`` prints it and exits 1) instead of retrying forever."""
    try:
        import nats  # noqa: F401
    except ImportError:
        pytest.skip("nats-py is not installed")
    from gateway.cluster.node import Cluster, ClusterUnavailable
    from gateway.config import ClusterConfig
    from gateway.mosquitto import free_port

    async def nothing(key: Any) -> None: ...

    port = free_port()
    cluster = Cluster(
        ClusterConfig(servers=[f"nats://127.0.0.1:{port}"], instance_id="x"), [],
        start_account=lambda account: None, stop_account=nothing,
    )  # fmt: skip
    with pytest.raises(ClusterUnavailable, match=f"127.0.0.1:{port}"):
        async with asyncio.timeout(20):
            await cluster.start()
    await cluster.stop()


def test_a_single_instance_never_imports_nats() -> None:
    code = (
        "import sys; from gateway.app import Gateway; from gateway.cli import main; "
        "from gateway.config import parse_config; Gateway(parse_config({})); "
        "print(sorted(m for m in sys.modules if m == 'nats' or m.startswith(('nats.', 'gateway.cluster'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


async def test_a_nats_restart_stops_the_accounts_in_time_and_they_run_again_after(
    instance: Any, nats_server: Any, probe: Any, cloud: TencentCloud
) -> None:
    """NATS goes away (an upgrade, a crash): the instance cannot renew its leases, so it stops
    every account before a lease could expire anywhere else, and, cut off, reads bridge/state
    offline (no instance serves: consumers must not show stale devices as available). When
    NATS is back (same store) it claims the slots again, bridge/state is online, and the
    accounts run again, on the sessions saved in KV."""
    accounts = quick_accounts(cloud, 4)
    everything = {("tencent", f"acct{i}") for i in range(4)}
    a = await instance("gw-a", accounts, lease_ttl=2.0)
    assert a.cluster is not None
    await eventually(lambda: set(a.account_keys()) == everything, "gw-a runs every account")
    await eventually(lambda: cloud.stats["logins"] == 4, "every account logged in once")
    leases = a.cluster.leases
    assert leases is not None

    mark = probe.mark()
    nats_server.kill()
    await eventually(lambda: a.account_keys() == [], "gw-a stopped every account", timeout=10)
    await probe.wait_for(f"{B}/bridge/state", lambda p: p == {"state": "offline"}, start=mark)
    assert a.cluster.cut_off()
    assert sorted(e["state"] for e in a.publisher.accounts()) == ["stopped"] * 4
    assert leases.changes["fenced"] == 4, "all four slots were fenced, not released"
    assert leases.held() == []

    mark = probe.mark()
    await nats_server.start()
    await probe.wait_for(f"{B}/bridge/state", lambda p: p == {"state": "online"}, start=mark)
    await eventually(lambda: set(a.account_keys()) == everything,
                     "gw-a runs every account again once NATS is back", timeout=20)  # fmt: skip
    await eventually(lambda: sorted(e["state"] for e in a.publisher.accounts()) == ["online"] * 4,
                     "every account is online again")  # fmt: skip
    assert cloud.stats["logins"] == 4, "the accounts reused their sessions from KV"
