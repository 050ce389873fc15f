"""Cluster mode on ``/metrics``: each instance shows the live instances, its slots and how they
changed, its NATS link, and the commands it routed to the owner or ran for a peer. Two gateways
on a real nats-server and mosquitto, scraped over HTTP."""

from __future__ import annotations

from typing import Any

import aiohttp

from emulators.tencent import TencentCloud
from gateway.app import Gateway
from tests.cluster.conftest import quick_accounts
from tests.helpers import emulator, eventually, metric_families, metric_value

ACCOUNTS = 8

cloud = emulator(lambda: TencentCloud(devices=1, latency=0.0))


async def _scrape(http: aiohttp.ClientSession, gw: Gateway) -> dict[str, Any]:
    assert gw.observability.http is not None
    async with http.get(f"{gw.observability.http.url}/metrics") as resp:
        assert resp.status == 200
        return metric_families(await resp.text())


def _one(fams: dict[str, Any], family: str, **labels: str) -> float:
    """The one sample of ``family`` with ``labels`` (a counter's is ``<family>_total``)."""
    assert family in fams, f"/metrics has no {family}"
    sample = f"{family}_total" if fams[family].type == "counter" else family
    found = metric_value(fams, family, sample, **labels)
    assert found is not None, f"/metrics has no {sample} with {labels}"
    return found


async def test_metrics_show_each_instances_view_of_the_cluster(
    instance: Any, http: aiohttp.ClientSession, cloud: TencentCloud
) -> None:
    accounts = quick_accounts(cloud, ACCOUNTS)
    web = {"http": {"listen": "127.0.0.1:0"}}
    a, b = [await instance(name, accounts, gateway=web) for name in ("gw-a", "gw-b")]
    pages: dict[str, dict[str, Any]] = {}

    async def split() -> bool:
        for gw in (a, b):
            pages[gw.config.cluster.instance_id] = await _scrape(http, gw)  # type: ignore[union-attr]
        return all(
            _one(p, "cloud2mqtt_cluster_instances") == 2
            and _one(p, "cloud2mqtt_cluster_slots_held") == 2
            for p in pages.values()
        ) and all(None not in gw.cluster.leases.owners().values() for gw in (a, b))  # type: ignore[union-attr]

    await eventually(split, "each instance's /metrics shows 2 instances and 2 of the 4 slots, "
                     "and each has seen who holds every slot", timeout=20)  # fmt: skip
    for page in pages.values():
        assert _one(page, "cloud2mqtt_cluster_slots") == 4
        assert _one(page, "cloud2mqtt_cluster_nats_connected") == 1
        assert _one(page, "cloud2mqtt_cluster_slot_changes", change="claimed") >= 2
        assert _one(page, "cloud2mqtt_cluster_slot_changes", change="fenced") == 0
        assert _one(page, "cloud2mqtt_cluster_lease_round_failures") == 0
        for outcome in ("answered", "timeout", "unavailable", "unknown"):
            assert _one(page, "cloud2mqtt_cluster_routed_commands", outcome=outcome) == 0

    # gw-a asks the owner to run a command for a device of one of gw-b's accounts, and asks
    # about a device no instance has: one answered, one unknown on gw-a; one run for a peer on gw-b
    await eventually(lambda: b.account_keys() and b.registry.account_devices(*b.account_keys()[0]),
                     "gw-b lists the devices of an account it runs")  # fmt: skip
    [device] = b.registry.account_devices(*b.account_keys()[0])
    assert a.cluster is not None and b.cluster is not None
    _, result = await a.cluster.router.device_command("tencent", device, "get", {})
    assert result.status == "ok", result
    _, result = await a.cluster.router.device_command("tencent", "no-such-device", "get", {})
    assert result.code == "invalid", result
    on_a, on_b = await _scrape(http, a), await _scrape(http, b)
    assert _one(on_a, "cloud2mqtt_cluster_routed_commands", outcome="answered") == 1
    assert _one(on_a, "cloud2mqtt_cluster_routed_commands", outcome="unknown") == 1
    assert _one(on_b, "cloud2mqtt_cluster_peer_requests") == 1

    # gw-a stops: it releases its slots; gw-b claims them and is alone
    claimed = _one(on_b, "cloud2mqtt_cluster_slot_changes", change="claimed")
    released = a.cluster.leases.changes["released"] if a.cluster.leases is not None else -1
    assert released == 0
    await a.stop()

    async def alone() -> bool:
        pages["gw-b"] = await _scrape(http, b)
        return (_one(pages["gw-b"], "cloud2mqtt_cluster_instances") == 1
                and _one(pages["gw-b"], "cloud2mqtt_cluster_slots_held") == 4)  # fmt: skip

    await eventually(alone, "gw-b's /metrics shows it alone with all 4 slots", timeout=20)
    assert _one(pages["gw-b"], "cloud2mqtt_cluster_slot_changes", change="claimed") == claimed + 2
