"""Cluster mode and the rate model: instances behind one egress IP share the vendors' per-IP
budgets, each pacing to its part, so together they keep the documented limit."""

from __future__ import annotations

from typing import Any

from emulators.tencent import TencentCloud
from tests.helpers import emulator, eventually

cloud = emulator(lambda: TencentCloud(devices=1, latency=0.0))


async def test_two_instances_each_pace_to_half_of_the_per_ip_budget(
    instance: Any, cloud: TencentCloud
) -> None:
    accounts = [cloud.account_config(f"acct{i}", open_id=f"user-{i}") for i in range(2)]
    a = await instance("gw-a", accounts)
    b = await instance("gw-b", accounts)
    await eventually(
        lambda: a.pacer.instances == 2 and b.pacer.instances == 2,
        "both instances count two live instances sharing the egress IP",
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
