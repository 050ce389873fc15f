"""The rate model against the emulators, through the whole gateway (real sockets, real broker).

- the CoolKit emulator's rate rules (it answers 429 and records each violation) are never
  tripped by a gateway with 50 CoolKit accounts starting at once;
- 200 Tencent accounts dropped at once reconnect at the configured rate (connect times are
  taken by the emulator), show the wait on ``bridge/accounts``, and carry their budget;
- no vendor call bypasses the model: the HTTP, WebSocket and MQTT connect entry points are
  patched in-process to record any call made while no pacer slot is held, for all four vendors.

(No ``both_loops`` marker: the pacing is loop-independent and the 200-account test is the
heaviest of the suite, so these run on the default loop only.)
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

import gateway.wsclient
from emulators.aliyun import AliyunCloud
from emulators.coolkit import CoolkitCloud
from emulators.tencent import TencentCloud
from emulators.xky import XkyCloud
from gateway.mqtt.client import MqttClient
from gateway.rates import slot_held
from gateway.topics import encode_id
from tests.helpers import eventually, max_in_any_second

B = "cloud2mqtt"


def all_online(gw: Any, vendor: str, names: list[str]) -> bool:
    return all(gw.link((vendor, n)).link_state == "online" for n in names)


async def test_50_coolkit_accounts_starting_at_once_never_trip_the_rules(
    gateway_factory: Any,
) -> None:
    # The seed's rules scaled down (both sides alike) so the test takes seconds, not minutes.
    rules = {"rate_min_interval": 0.05, "rate_window": 2.0, "rate_max_calls": 100,
             "user_online_interval": 0.2}  # fmt: skip
    async with CoolkitCloud(hb_interval=30.0, **rules) as cloud:
        names = [f"ck{i}" for i in range(50)]
        accounts = []
        for i, name in enumerate(names):
            cloud.add_user(f"u{i}@example.com", "pw", "eu")
            cfg = cloud.account_config(name, f"u{i}@example.com", backoff_base=0.05)
            for key in rules:  # the [rates.coolkit] table sets them, not each account
                cfg.pop(key)
            accounts.append(cfg)
        # The gateway keeps 0.1 s where the emulator demands 0.05 s: at a tenth of the seed's
        # 500 ms, a busy loop's and a fresh TCP connection's jitter (tens of ms) is no longer
        # small against the interval, as the 5 % slack is against the real one.
        gw = await gateway_factory(accounts, rates={"coolkit": {
            "endpoint_interval": 0.1, "window_seconds": 2.0, "window_calls": 100,
            "account_connect_interval": 0.2, "connect_per_second": 20, "connect_burst": 5,
        }})  # fmt: skip
        await eventually(lambda: all_online(gw, "coolkit", names), "all 50 accounts online",
                         timeout=90)  # fmt: skip
        assert cloud.violations == []
        assert len(cloud.calls) > rules["rate_max_calls"]  # more than one window: paced
        budget = gw.link(("coolkit", "ck7")).describe()["budget"]
        assert budget["ip"]["calls"]["limit"] == 100 and budget["ip"]["calls"]["window_s"] == 2.0
        assert budget["ip"]["calls"]["share"] <= budget["ip"]["calls"]["used"]
        assert budget["total_calls"] >= 5 and budget["by_endpoint"]["WS userOnline"] == 1


async def test_200_tencent_accounts_dropped_at_once_reconnect_at_the_configured_rate(
    gateway_factory: Any, probe: Any
) -> None:
    rate, burst, n = 50.0, 10, 200
    async with TencentCloud(devices=1, latency=0.0) as cloud:
        names = [f"t{i}" for i in range(n)]
        accounts = [
            cloud.account_config(name, open_id=f"user{i}", heartbeat=30.0, backoff_base=0.05,
                                 backoff_cap=0.2, refresh_interval=0)
            for i, name in enumerate(names)
        ]
        gw = await gateway_factory(
            accounts, rates={"tencent": {"connect_per_second": rate, "connect_burst": burst}}
        )
        await eventually(lambda: all_online(gw, "tencent", names), "all online at start-up",
                         timeout=120)  # fmt: skip
        # The pacer grants at most rate + burst per second (test_rates.py checks it exactly on
        # a fake clock); the emulator sees each handshake after its own latency, so allow 10 %.
        limit = (rate + burst) * 1.1
        started = list(cloud.connect_times)
        assert len(started) == n and max_in_any_second(started) <= limit

        mark = probe.mark()
        dropped_at = time.monotonic()
        assert cloud.drop_sockets() == n
        await eventually(lambda: gw.pacer.waiting().get("tencent", 0) > n // 2,
                         "most accounts waiting for a connect slot")  # fmt: skip
        await eventually(
            lambda: len([t for t in cloud.connect_times if t > dropped_at]) >= n
            and all_online(gw, "tencent", names),
            "all reconnected", timeout=120,
        )  # fmt: skip
        again = [t for t in cloud.connect_times if t > dropped_at]
        assert len(again) == n  # one connect each: no retry storm
        # paced: never more than rate + burst in any second, spread over ≈ (N - burst) / rate
        assert max_in_any_second(again) <= limit
        assert max(again) - min(again) >= 0.8 * (n - burst) / rate
        # progress was visible on bridge/accounts while they waited, and each carries its budget
        waiting = await probe.wait_for(
            f"{B}/bridge/accounts",
            lambda p: isinstance(p, list) and any(a.get("waiting_for_slot") for a in p),
            start=mark,
        )
        assert {a["state"] for a in waiting if a["waiting_for_slot"]} <= {"connecting", "backoff"}
        entry = gw.link(("tencent", "t3")).describe()
        connects = entry["budget"]["ip"]["connects"]
        assert connects["limit"] == burst + rate * 60 and connects["share"] == 2
        assert entry["budget"]["ip"]["calls"]["limit"] is None  # none documented
        assert entry["budget"]["by_endpoint"]["WS connect"] == 2
        assert entry["waiting_for_slot"] is False


# ------------------------------------------------------------------------------ no bypass


@pytest.fixture
def entry_points(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str, bool]]]:
    """Patch the three ways out to a vendor; record (path, target, slot held) for each call."""
    seen: list[tuple[str, str, bool]] = []
    request = aiohttp.ClientSession._request
    ws_connect = gateway.wsclient.connect
    mqtt_connect = MqttClient.connect

    def _request(self: Any, method: str, url: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(("http", f"{method} {url}", slot_held()))
        return request(self, method, url, *args, **kwargs)

    async def _ws(url: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(("ws", url, slot_held()))
        return await ws_connect(url, *args, **kwargs)

    async def _mqtt(self: MqttClient, *args: Any, **kwargs: Any) -> Any:
        seen.append(("mqtt", f"{self.client_id}@{self.host}:{self.port}", slot_held()))
        return await mqtt_connect(self, *args, **kwargs)

    monkeypatch.setattr(aiohttp.ClientSession, "_request", _request)
    monkeypatch.setattr(gateway.wsclient, "connect", _ws)
    monkeypatch.setattr(MqttClient, "connect", _mqtt)
    yield seen


@pytest.fixture
async def clouds() -> AsyncIterator[tuple[TencentCloud, CoolkitCloud, XkyCloud, AliyunCloud]]:
    """The four emulators, set up before the gateway and so torn down after it."""
    async with (
        TencentCloud(devices=2, latency=0.0) as tencent,
        CoolkitCloud(rate_min_interval=0.02, rate_window=5.0, user_online_interval=0.05) as coolkit,
        XkyCloud(devices=2, seed=7) as xky,
        AliyunCloud(devices=2) as aliyun,
    ):
        yield tencent, coolkit, xky, aliyun


async def test_no_vendor_call_bypasses_the_model(
    clouds: Any, gateway_factory: Any, probe: Any, entry_points: list[tuple[str, str, bool]]
) -> None:
    tencent, coolkit, xky, aliyun = clouds
    accounts = [
        tencent.account_config("t", heartbeat=0.3, backoff_base=0.05, refresh_interval=0.5),
        coolkit.account_config("c", backoff_base=0.05),
        xky.account_config("x", poll_interval=0.2, min_poll_interval=0.1),
        aliyun.account_config("a", reconnect_min=0.05, reconnect_max=0.3, keepalive=30),
    ]
    gw = await gateway_factory(accounts)
    keys = [("tencent", "t"), ("coolkit", "c"), ("xky", "x"), ("aliyun", "a")]
    await eventually(lambda: all(gw.link(k).link_state == "online" for k in keys))
    # commands, a reconnect, a token renewal, refreshes and polls: every path out
    light = encode_id(tencent.device_ids()[0])
    probe.publish(f"{B}/tencent/{light}/set", {"power_switch": True, "transaction": "t1"})
    probe.publish(f"{B}/coolkit/1000000001/set", {"switch": True, "transaction": "c1"})
    for topic in (f"{B}/tencent/{light}/response/set", f"{B}/coolkit/1000000001/response/set"):
        reply = await probe.wait_for(topic)
        assert reply["status"] == "ok", reply
    mark = len(entry_points)
    tencent.drop_sockets()
    tencent.expire_tokens()
    coolkit.expire_tokens()
    coolkit.drop()
    aliyun.drop_mqtt()
    await eventually(lambda: len({p for p, _, _ in entry_points[mark:]}) >= 2)
    await eventually(lambda: all(gw.link(k).link_state == "online" for k in keys))
    polls = sum(1 for c in xky.calls if c.path.endswith("get_device_list"))
    await eventually(lambda: sum(1 for c in xky.calls if c.path.endswith("get_device_list"))
                     >= polls + 3, "more polls")  # fmt: skip
    await eventually(lambda: tencent.calls.count("AppGetFamilyList") >= 3, "a refresh ran")
    # the gateway's own broker clients (client ids "gw-0", "gw-0-presence-…") are not vendor calls
    vendor = [e for e in entry_points if not (e[0] == "mqtt" and e[1].startswith("gw-"))]
    assert {p for p, _, _ in vendor} >= {"http", "ws", "mqtt"}
    bypassed = [(p, target) for p, target, held in vendor if not held]
    assert bypassed == []
    for key in keys:
        budget = gw.link(key).describe()["budget"]
        assert budget["total_calls"] > 0 and budget["by_endpoint"]
