"""Cluster mode and the rate model: instances behind one egress IP share the vendors' per-IP
budgets, each pacing to its part, so together they keep the documented limit."""

from __future__ import annotations

import time
from typing import Any

import orjson

from emulators.tencent import TencentCloud
from gateway.cluster.leases import LEASES_BUCKET, slot_of
from gateway.rates import ip_scope
from tests.helpers import emulator, eventually, max_in_any_second

IP = ip_scope("tencent")

cloud = emulator(lambda: TencentCloud(devices=1, latency=0.0))


async def test_two_instances_each_pace_to_half_of_the_per_ip_budget(
    instance: Any, cloud: TencentCloud
) -> None:
    accounts = [cloud.account_config(f"acct{i}", open_id=f"user-{i}") for i in range(2)]
    a = await instance("gw-a", accounts)
    b = await instance("gw-b", accounts)
    await eventually(  # once the accounts are up, neither has more demand than the other
        lambda: a.pacer.instances == 2 and b.pacer.instances == 2
        and a.pacer.part(IP) == b.pacer.part(IP) == 0.5,
        "both instances count two live instances sharing the egress IP, half each",
        timeout=15,
    )
    assert a.pacer._scope(("ip", "tencent")).rates.connect_per_second == 2.5  # 5/s shared
    await b.stop()
    await eventually(lambda: a.pacer.instances == 1, "the survivor takes the whole budget back",
                     timeout=15)  # fmt: skip
    assert a.pacer._scope(("ip", "tencent")).rates.connect_per_second == 5.0


async def test_instances_with_their_own_egress_keep_the_whole_budget(
    instance: Any, cloud: TencentCloud
) -> None:
    accounts = [cloud.account_config("acct0", open_id="user-0")]
    gws = [await instance(name, accounts, shared_egress=False) for name in ("gw-a", "gw-b")]
    await eventually(
        lambda: all(gw.cluster.leases is not None and len(gw.cluster.leases.live()) == 2
                    for gw in gws),
        "both instances see each other",
        timeout=15,
    )  # fmt: skip
    assert [gw.pacer.instances for gw in gws] == [1, 1]


async def test_a_busy_instance_borrows_the_idle_ones_part_and_both_keep_the_rate(
    instance: Any, cloud: TencentCloud
) -> None:
    """Two instances behind one IP, two slots: one runs 40 accounts, the other 1. All drop at
    once (a vendor outage): the busy one has 40 connects to make while the other has one. Its
    part of the per-IP connect budget grows far above 1/2 (each lease round publishes its
    backlog), so it connects faster than half the rate allows; together the two never exceed
    the vendor's rate, as the emulator counts the connects."""
    rate, burst = 10.0, 2
    slot = {name: slot_of("tencent", name, 2) for name in (f"acct{i}" for i in range(200))}
    busy_names = [n for n, s in slot.items() if s == 0][:40]
    idle_names = [n for n, s in slot.items() if s == 1][:1]
    accounts = [
        cloud.account_config(name, open_id=f"user-{name}", heartbeat=30.0, backoff_base=0.05,
                             backoff_cap=0.3, refresh_interval=0)
        for name in busy_names + idle_names
    ]  # fmt: skip
    options = {"rates": {"tencent": {"connect_per_second": rate, "connect_burst": burst}}}
    gws = [await instance(name, accounts, gateway=options, slots=2) for name in ("gw-a", "gw-b")]

    def online(names: list[str]) -> bool:
        links = [gw.link(("tencent", n)) for n in names for gw in gws]
        return sum(1 for link in links if link is not None and link.link_state == "online") == len(names)

    await eventually(
        lambda: all(gw.cluster.leases is not None and len(gw.cluster.leases.held()) == 1
                    for gw in gws) and online(busy_names + idle_names),
        "each instance holds one slot and every account is online", timeout=60,
    )  # fmt: skip
    busy, idle = sorted(gws, key=lambda gw: gw.cluster.leases.held() != [0])

    dropped_at = time.monotonic()
    assert cloud.drop_sockets() == len(accounts)
    await eventually(
        lambda: busy.pacer.part(IP) > 0.75 and idle.pacer.part(IP) < 0.25,
        "the busy instance's part of the per-IP budget grew, the idle one's shrank", timeout=30,
    )  # fmt: skip
    assert busy.pacer.part(IP) + idle.pacer.part(IP) <= 1.0
    await eventually(
        lambda: len([t for t in cloud.connect_times if t > dropped_at]) >= len(accounts)
        and online(busy_names + idle_names),
        "every account reconnected", timeout=90,
    )  # fmt: skip
    again = [t for t in cloud.connect_times if t > dropped_at]
    # together: never more than rate + burst in any second (10 % for the emulator's latency)
    assert max_in_any_second(again) <= (rate + burst) * 1.1
    # at its half the busy one could have made at most rate/2 + burst/2 connects in a second,
    # the idle one 1 more: more than that in some second came from the borrowed part
    assert max_in_any_second(again) > rate / 2 + burst / 2 + len(idle_names)


async def test_a_peer_publishing_a_malformed_demand_is_counted_and_all_share_equally(
    instance: Any, cloud: TencentCloud, nats_client: Any
) -> None:
    a = await instance("gw-a", [cloud.account_config("acct0", open_id="user-0")])
    kv = await (await nats_client()).jetstream().key_value(LEASES_BUCKET)
    expires = int((time.time() + 600) * 1000)
    await kv.put("instance.gw-x", orjson.dumps({"expires": expires, "demand": {"ip/tencent": "lots"}}))
    assert a.cluster is not None
    await eventually(lambda: a.cluster.bad_demands > 0 and a.pacer.instances == 2,  # type: ignore[union-attr]
                     "gw-a counts gw-x live and its demand malformed")  # fmt: skip
    assert a.pacer.part(IP) == 0.5
