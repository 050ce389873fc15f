"""/metrics, /healthz, /readyz, bridge/info, bridge/request/options and bridge/logging on a real
mosquitto, with the gateway in-process (the dummy connector of tests/gateway/test_app.py)."""

from __future__ import annotations

import logging
import time
from typing import Any

import aiohttp
import orjson

from gateway.events import AccountLinkChanged
from gateway.link import LinkState
from gateway.mosquitto import Mosquitto
from protocols.model import DeviceEvent, StateChange
from tests.dummy_connector import INSTANCES, DummyConnector
from tests.helpers import eventually
from tests.helpers import metric_families as families
from tests.helpers import metric_value as value

B = "cloud2mqtt"
LAMP = f"{B}/dummy/lamp%2F1"
HTTP = {"listen": "127.0.0.1:0"}


async def start(gateway_factory: Any, http: dict[str, Any] | None = HTTP, **opts: Any) -> Any:
    gw = await gateway_factory(
        [{"vendor": "dummy", "name": "acc", "devices": ["lamp/1", "lamp-2"]}],
        connectors={"dummy": DummyConnector},
        http=http,
        **opts,
    )
    await eventually(lambda: gw.registry.get("dummy", "lamp/1"), "the dummy listed lamp/1")
    return gw, INSTANCES["acc"]


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


async def test_metrics_show_counters_gauges_and_latency_per_vendor(gateway_factory, probe):
    gw, dummy = await start(gateway_factory, http={"listen": "127.0.0.1:0"})
    assert gw.observability.http is not None
    url = gw.observability.http.url
    now = time.time_ns() // 1_000_000
    for i in range(5):
        dummy.ctx.state(StateChange("lamp/1", {"brightness": i + 1}, now - 20 + i))
    dummy.ctx.state(StateChange("lamp/1", {"brightness": 99}, now - 10_000))  # stale
    dummy.ctx.state(StateChange("lamp/1", {"brightness": "bright"}, now))  # flagged
    dummy.ctx.event(DeviceEvent("lamp/1", "overheat", "alert", {}, now))
    dummy.ctx.bad_input("garbage")
    dummy.ctx.count("frames", 7)
    dummy.ctx.count("logins")
    dummy.ctx.api_call("AppGetDeviceList")
    probe.publish(f"{LAMP}/set", {"power": True, "transaction": "m1"})
    probe.publish(f"{LAMP}/set", {"brightness": 101, "transaction": "m2"})
    await probe.wait_for(f"{LAMP}/response/set", lambda p: p["transaction"] == "m2")
    await probe.wait_for(f"{LAMP}/response/set", lambda p: p["transaction"] == "m1")
    # a reconnect: the link goes down and comes back
    dummy.ctx.link(LinkState.BACKOFF, "lost")
    dummy.ctx.link(LinkState.ONLINE)

    status, text = await get(f"{url}/metrics")
    assert status == 200
    f = families(text)
    acc = {"vendor": "dummy", "account": "acc"}
    assert value(f, "cloud2mqtt_states", "cloud2mqtt_states_total", **acc) == 8  # incl. the set's echo
    assert value(f, "cloud2mqtt_events", "cloud2mqtt_events_total", **acc) == 1
    assert value(f, "cloud2mqtt_frames", "cloud2mqtt_frames_total", **acc) == 7
    assert value(f, "cloud2mqtt_bad_frames", "cloud2mqtt_bad_frames_total", **acc) == 1
    assert value(f, "cloud2mqtt_stale_dropped", "cloud2mqtt_stale_dropped_total", **acc) == 1
    assert value(f, "cloud2mqtt_flagged_values", "cloud2mqtt_flagged_values_total", **acc) == 1
    assert value(f, "cloud2mqtt_logins", "cloud2mqtt_logins_total", **acc) == 1
    assert value(f, "cloud2mqtt_reconnects", "cloud2mqtt_reconnects_total", **acc) == 1
    assert value(f, "cloud2mqtt_commands", "cloud2mqtt_commands_total", result="ok", **acc) == 1
    assert value(f, "cloud2mqtt_commands", "cloud2mqtt_commands_total", result="invalid", **acc) == 1
    assert (
        value(f, "cloud2mqtt_vendor_api_calls", "cloud2mqtt_vendor_api_calls_total",
              endpoint="AppGetDeviceList", **acc) == 1
    )  # fmt: skip
    assert value(f, "cloud2mqtt_accounts", "cloud2mqtt_accounts", vendor="dummy", state="online") == 1
    assert value(f, "cloud2mqtt_devices_online", "cloud2mqtt_devices_online", **acc) == 2
    assert value(f, "cloud2mqtt_mqtt_connected", "cloud2mqtt_mqtt_connected") == 1
    assert value(f, "cloud2mqtt_mqtt_queue_depth", "cloud2mqtt_mqtt_queue_depth") is not None
    assert value(f, "cloud2mqtt_mqtt_buffered_messages", "cloud2mqtt_mqtt_buffered_messages") == 0
    lat = f["cloud2mqtt_latency_seconds"]
    assert lat.type == "histogram"
    count = value(f, "cloud2mqtt_latency_seconds", "cloud2mqtt_latency_seconds_count", vendor="dummy")
    assert count == 7  # every accepted change but the stale one (the set's echo is from 2033)
    inf = value(f, "cloud2mqtt_latency_seconds", "cloud2mqtt_latency_seconds_bucket", vendor="dummy", le="+Inf")
    one_ms = value(f, "cloud2mqtt_latency_seconds", "cloud2mqtt_latency_seconds_bucket", vendor="dummy", le="0.001")
    assert inf == count and one_ms is not None and one_ms <= count
    assert {s.labels["le"] for s in lat.samples if s.name.endswith("_bucket")} >= {"0.001", "60.0", "+Inf"}


async def test_metrics_show_each_accounts_api_budget(gateway_factory):
    """Issue 15 on /metrics: the budget each bridge/accounts entry carries (gateway/rates.py),
    used and limit per scope and kind; no limit sample where none is known."""
    gw, _dummy = await start(gateway_factory, http={"listen": "127.0.0.1:0"})
    entry = gw.publisher._accounts[("dummy", "acc")]
    entry["budget"] = {
        "ip": {"calls": {"used": 12, "limit": 300, "window_s": 300.0},
               "connects": {"used": 1, "limit": None, "window_s": 1.0}},
        "by_endpoint": {"AppGetDeviceList": 12},
    }  # fmt: skip
    assert gw.observability.http is not None
    status, text = await get(f"{gw.observability.http.url}/metrics")
    assert status == 200
    f = families(text)
    at = {"vendor": "dummy", "account": "acc", "scope": "ip"}
    assert value(f, "cloud2mqtt_budget_used", "cloud2mqtt_budget_used", kind="calls", **at) == 12
    assert value(f, "cloud2mqtt_budget_limit", "cloud2mqtt_budget_limit", kind="calls", **at) == 300
    assert value(f, "cloud2mqtt_budget_used", "cloud2mqtt_budget_used", kind="connects", **at) == 1
    assert value(f, "cloud2mqtt_budget_limit", "cloud2mqtt_budget_limit", kind="connects", **at) is None


async def test_metrics_without_account_labels_and_whole_second_vendor(gateway_factory):
    gw, dummy = await start(gateway_factory)
    gw.observability.metrics.account_labels = False
    now = time.time_ns() // 1_000_000
    dummy.ctx.state(StateChange("lamp/1", {"brightness": 3}, now - now % 1000, precision_ms=1000))
    _, text = await get(f"{gw.observability.http.url}/metrics")
    f = families(text)
    samples = f["cloud2mqtt_states"].samples
    assert [s.labels for s in samples] == [{"vendor": "dummy"}] and samples[0].value == 1
    assert "dummy 1 s" in f["cloud2mqtt_latency_seconds"].documentation


async def test_healthz_stays_up_and_readyz_follows_the_broker(gateway_factory, mosquitto: Mosquitto):
    gw, _dummy = await start(gateway_factory)
    url = gw.observability.http.url
    await eventually(lambda: gw.observability.readiness()[0], "ready after the first sync")
    assert (await get(f"{url}/readyz"))[0] == 200
    await mosquitto.stop()
    await eventually(lambda: not gw.mqtt.connected, "the gateway saw the broker go")
    status, body = await get(f"{url}/readyz")
    assert status == 503 and orjson.loads(body)["mqtt"] == "disconnected"
    assert (await get(f"{url}/healthz"))[0] == 200
    await mosquitto.start()
    await eventually(lambda: gw.mqtt.connected, "the gateway reconnected", timeout=40)
    assert (await get(f"{url}/readyz"))[0] == 200
    assert (await get(f"{url}/healthz"))[0] == 200


async def test_readyz_waits_for_first_sync_but_not_for_attention(gateway_factory):
    gw, dummy = await start(gateway_factory)
    readiness = gw.observability.readiness
    readiness.settled.clear()
    ready, detail = readiness()
    assert not ready and detail["accounts_pending"] == ["dummy/acc"]
    status, body = await get(f"{gw.observability.http.url}/readyz")
    assert status == 503 and orjson.loads(body)["accounts_pending"] == ["dummy/acc"]
    dummy.ctx.link(LinkState.ATTENTION, "credentials refused")
    assert readiness()[0]


SECRETS = {
    "mqtt_password": "Mq77-PlantedSecret-1",
    "app_secret": "AppS3cret-PlantedSecret-2",
    "password": "Pw-PlantedSecret-3",
    "access_token": "Tok-PlantedSecret-4",
    "url_password": "UrlPw-PlantedSecret-5",
}


async def test_bridge_info_carries_no_secret(mosquitto, probe, tmp_path, caplog):
    from gateway.app import Gateway
    from gateway.config import parse_config

    caplog.set_level(logging.DEBUG, logger="cloud2mqtt")
    raw = {
        "mqtt": {"url": f"mqtt://gwuser:{SECRETS['mqtt_password']}@{mosquitto.host}:{mosquitto.port}"},
        "gateway": {"state_dir": str(tmp_path), "log_level": "debug"},
        "http": {"listen": "127.0.0.1:0"},
        "accounts": [
            {
                "vendor": "dummy", "name": "acc", "devices": ["lamp/1"],
                "app_secret": SECRETS["app_secret"], "password": SECRETS["password"],
                "access_token": SECRETS["access_token"],
                "api_url": f"https://me:{SECRETS['url_password']}@api.example/v1",
            }
        ],
    }  # fmt: skip
    # mosquitto allows anonymous clients: the planted broker password is simply not checked
    gw = Gateway(parse_config(raw, vendors={"dummy": DummyConnector}))
    await gw.start()
    try:
        info = await probe.wait_for(f"{B}/bridge/info")
        assert info["config"]["accounts"][0]["options"]["password"] == "<redacted>"
        assert info["config"]["mqtt"]["username"] == "gwuser"
        assert info["version"] and info["speedups"] and "commit" in info
        assert info["log_level"] in ("debug", "info", "warning", "error")
        await eventually(lambda: gw.registry.get("dummy", "lamp/1"), "lamp listed")
        probe.publish(f"{B}/bridge/request/health", {"transaction": "h"})
        await probe.wait_for(f"{B}/bridge/response/health")
        _, metrics = await get(f"{gw.observability.http.url}/metrics")
        _, ready = await get(f"{gw.observability.http.url}/readyz")
    finally:
        await gw.stop()
    seen = [orjson.dumps(p) if not isinstance(p, bytes) else p for _, p, _ in probe.messages]
    texts = [s.decode("utf-8", "replace") for s in seen] + [metrics, ready]
    texts += [r.getMessage() for r in caplog.records]
    assert any("bridge/info" in t for t, _, _ in probe.messages) or probe.find(f"{B}/bridge/info")
    for name, secret in SECRETS.items():
        leaks = [t[:200] for t in texts if secret in t]
        assert not leaks, f"{name} leaked: {leaks}"


async def test_options_request_changes_the_log_level(gateway_factory, probe):
    _gw, _dummy = await start(gateway_factory)
    logger = logging.getLogger("cloud2mqtt")
    before = logger.level
    try:
        probe.publish(f"{B}/bridge/request/options", {"log_level": "debug", "transaction": "o1"})
        reply = await probe.wait_for(f"{B}/bridge/response/options", lambda p: p["transaction"] == "o1")
        assert reply["status"] == "ok" and reply["data"]["options"] == {"log_level": "debug"}
        assert logger.getEffectiveLevel() == logging.DEBUG
        await probe.wait_for(f"{B}/bridge/info", lambda p: p["log_level"] == "debug")
        probe.publish(f"{B}/bridge/request/options", {"options": {"advanced": {"log_level": "error"}}, "transaction": "o2"})
        reply = await probe.wait_for(f"{B}/bridge/response/options", lambda p: p["transaction"] == "o2")
        assert reply["data"]["options"] == {"log_level": "error"}
        assert logger.getEffectiveLevel() == logging.ERROR
        probe.publish(f"{B}/bridge/request/options", {"log_level": "loud", "transaction": "o3"})
        reply = await probe.wait_for(f"{B}/bridge/response/options", lambda p: p["transaction"] == "o3")
        assert reply["status"] == "error" and reply["error"]["code"] == "invalid"
    finally:
        from gateway.logflags import refresh

        logger.setLevel(before)
        refresh()


async def test_bridge_logging_carries_warnings_rate_limited(gateway_factory, probe):
    _gw, _dummy = await start(gateway_factory)
    log = logging.getLogger("cloud2mqtt.test")
    log.warning("planted warning %d", 1)
    msg = await probe.wait_for(f"{B}/bridge/logging", lambda p: "planted warning 1" in p["message"])
    assert msg["level"] == "warning" and msg["logger"] == "cloud2mqtt.test"
    mark = probe.mark()
    for i in range(40):
        log.error("storm %d", i)
    summary = await probe.wait_for(f"{B}/bridge/logging", lambda p: "suppressed" in p, start=mark)
    storm = probe.find(f"{B}/bridge/logging", lambda p: p["message"].startswith("storm"), start=mark)
    assert len(storm) <= 10 and summary["suppressed"] == 40 - len(storm)


async def test_link_changes_reach_metrics_as_reconnects_only_after_first_online(gateway_factory):
    gw, _dummy = await start(gateway_factory)
    m = gw.observability.metrics
    key = ("dummy", "other")
    desc = {"state": "online"}
    gw.bus.emit(AccountLinkChanged("dummy", "other", {"state": "connecting"}))
    gw.bus.emit(AccountLinkChanged("dummy", "other", desc))
    assert m.reconnects[key] == 0
    gw.bus.emit(AccountLinkChanged("dummy", "other", {"state": "backoff"}))
    gw.bus.emit(AccountLinkChanged("dummy", "other", desc))
    assert m.reconnects[key] == 1
