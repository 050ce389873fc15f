"""The Tencent connector against the emulator over real sockets.

A small recording ``AccountContext`` stands in for the gateway here (unit level); the
integration tests run the same connector inside the real gateway with a real mosquitto.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from emulators.tencent import TencentCloud
from gateway.connectors.tencent import TencentConnector, TencentOptions
from gateway.errors import ConfigError
from gateway.rates import Deferred, LocalPacer
from gateway.tokens import TokenStore
from protocols.model import (
    CommandError,
    VendorError,
)
from tests.helpers import RecordingContext, emulator

cloud = emulator(lambda: TencentCloud(devices=4, latency=0.01))


@pytest.fixture
def store(tmp_path: Path) -> TokenStore:
    return TokenStore(tmp_path / "tokens.json")


class Running:
    def __init__(
        self, connector: TencentConnector, ctx: RecordingContext, task: asyncio.Task[None]
    ) -> None:
        self.connector, self.ctx, self.task = connector, ctx, task


@pytest.fixture
async def start(
    http: aiohttp.ClientSession, store: TokenStore
) -> AsyncIterator[Callable[..., Any]]:
    running: list[Running] = []

    async def _start(cloud: TencentCloud, **overrides: Any) -> Running:
        fast = {"heartbeat": 0.2, "backoff_base": 0.05, "backoff_cap": 0.2}
        fast.update(attention_backoff=0.05, attention_cap=0.2)
        cfg = cloud.account_config("t", **{**fast, **overrides})
        for key in ("vendor", "name"):
            cfg.pop(key)
        options = TencentConnector.parse_options(cfg, "accounts[0]")
        ctx = RecordingContext("tencent", "t", store.slot("tencent", "t"))
        connector = TencentConnector(options, ctx, http)
        task = asyncio.create_task(connector.run())
        r = Running(connector, ctx, task)
        running.append(r)
        return r

    yield _start
    for r in running:
        r.task.cancel()
        await asyncio.gather(r.task, return_exceptions=True)


async def online(r: Running) -> None:
    await r.ctx.until(lambda: r.ctx.link_state == "online")


async def test_startup_lists_subscribes_and_resyncs(
    cloud: TencentCloud, start: Any, store: TokenStore
) -> None:
    r = await start(cloud)
    await online(r)
    ctx = r.ctx
    ids = cloud.device_ids()
    assert [i.device for i in ctx.listings[-1]] == ids
    light = ctx.infos[ids[0]]
    assert light.name == "light 1" and light.model == "C2M light"
    assert (
        light.schema.prop("power_switch") is not None
        and light.schema.action("light_blink") is not None
    )
    assert ctx.infos[ids[1]].schema.prop("temperature").access == "r"  # type: ignore[union-attr]
    assert {a.device for a in ctx.avail if a.online} == set(ids)
    assert ctx.latest(ids[0]) == {"power_switch": 0, "brightness": 50, "color": 0}
    assert ctx.token_expiry is not None
    assert cloud.stats["active_push"] == 1 and cloud.stats["heartbeats"] >= 1
    saved = store.get("tencent/t")
    assert saved is not None and saved["token"] in cloud.tokens

    # Pushes flow: a report, an event, availability.
    cloud.report(ids[1], {"temperature": 30.5})
    cloud.event(ids[1], "low_voltage", {"voltage": 2.5})
    cloud.set_online(ids[0], False)
    await ctx.until(lambda: any(not a.online for a in ctx.avail) and ctx.events)
    await ctx.until(lambda: ctx.latest(ids[1]).get("temperature") == 30.5)
    assert ctx.events[0].event_id == "low_voltage" and ctx.events[0].level == "alert"
    assert ctx.events[0].params == {"voltage": 2.5}
    assert ctx.drains == 0  # only a congested MQTT side pauses reading (test_websocket_client)


async def test_commands(cloud: TencentCloud, start: Any) -> None:
    r = await start(cloud)
    await online(r)
    ctx, conn = r.ctx, r.connector
    light = cloud.device_ids()[0]
    result = await conn.set(light, {"power_switch": True, "color": 2})
    assert result.status == "ok"
    await ctx.until(
        lambda: ctx.latest(light).get("power_switch") == 1 and ctx.latest(light).get("color") == 2
    )
    assert cloud.devices[light].values["power_switch"] == 1  # denormalized: True -> 1
    await ctx.until(lambda: any(e.event_id == "control" for e in ctx.events))
    control = next(e for e in ctx.events if e.event_id == "control")
    assert control.params == {"power_switch": 1, "color": 2}

    got = await conn.get(light, ["power_switch"])  # as read: the command handler normalizes
    assert got.status == "ok" and got.data is not None and got.data["power_switch"] == 1

    done = await conn.action(light, "light_blink", {"color": 1, "time": 3})
    assert done.status == "ok" and done.data is not None and done.data["output"] == {"result": 1}

    with pytest.raises(VendorError) as err:
        await conn.set(
            light, {"brightness": 500}
        )  # the gateway validates first; the cloud also refuses
    assert err.value.vendor_code == "InvalidParameterValue" and err.value.code == "invalid"
    with pytest.raises(CommandError):
        await conn.set("NOPE/x", {"a": 1})
    cloud.devices[light].online = False
    with pytest.raises(VendorError) as err:
        await conn.set(light, {"brightness": 5})
    assert err.value.code == "offline"


async def test_async_actions_matched_by_client_token(cloud: TencentCloud, start: Any) -> None:
    r = await start(cloud, action_mode="async")
    await online(r)
    light = cloud.device_ids()[0]
    results = await asyncio.gather(
        *(r.connector.action(light, "light_blink", {"time": i}) for i in range(3))
    )
    tokens = {res.data["client_token"] for res in results if res.data}
    assert len(tokens) == 3 and all(
        res.data and res.data["output"] == {"result": 1} for res in results
    )


async def test_reconnect_resubscribes_and_resyncs(cloud: TencentCloud, start: Any) -> None:
    r = await start(cloud)
    await online(r)
    ctx = r.ctx
    light = cloud.device_ids()[0]
    listings = len(ctx.listings)
    cloud.drop_sockets()
    cloud.devices[light].values["brightness"] = 77  # changed while the link was down: no push
    await ctx.until(lambda: cloud.stats["active_push"] == 2 and ctx.link_state == "online")
    assert len(ctx.listings) == listings + 1
    await ctx.until(lambda: ctx.latest(light).get("brightness") == 77)
    states = [s for s, _, _ in ctx.links]
    assert "backoff" in states[states.index("online") :]
    cloud.report(light, {"brightness": 78})
    await ctx.until(lambda: ctx.latest(light).get("brightness") == 78)


async def test_bind_and_unbind_refresh_the_device_list(cloud: TencentCloud, start: Any) -> None:
    r = await start(cloud)
    await online(r)
    ctx = r.ctx
    added = cloud.add_device()
    await ctx.until(lambda: added in ctx.infos and bool(ctx.latest(added)))  # listed, then resynced
    assert cloud.stats["active_push"] >= 2
    cloud.report(added, {"brightness": 7} if added.startswith("C2MLIGHT01") else {"humidity": 7})
    await ctx.until(lambda: 7 in ctx.latest(added).values())
    gone = cloud.device_ids()[0]
    cloud.remove_device(gone)
    await ctx.until(lambda: gone not in ctx.infos)


async def test_idle_close_is_a_reconnect_too(start: Any) -> None:
    cloud = TencentCloud(devices=2, idle_timeout=0.3)
    await cloud.start()
    try:
        r = await start(cloud, heartbeat=60.0)  # heartbeats too rare: the emulator closes (1000)
        await online(r)
        await r.ctx.until(
            lambda: cloud.stats["idle_closed"] >= 1 and cloud.stats["active_push"] >= 2
        )
    finally:
        await cloud.stop()


async def test_stalled_socket_is_replaced(cloud: TencentCloud, start: Any) -> None:
    r = await start(cloud, reply_timeout=0.2)
    await online(r)
    cloud.stall(1.0)  # the cloud answers nothing for a while: two lost heartbeats end the session
    await r.ctx.until(lambda: r.ctx.counts.get("heartbeat_errors", 0) >= 2)
    await r.ctx.until(lambda: cloud.stats["active_push"] >= 2 and r.ctx.link_state == "online")
    light = cloud.device_ids()[0]
    cloud.report(light, {"brightness": 9})
    await r.ctx.until(lambda: r.ctx.latest(light).get("brightness") == 9)


async def test_a_stall_that_still_answers_pings_is_found_by_an_app_probe(
    cloud: TencentCloud, start: Any
) -> None:
    """Issue 11 finding 8: the cloud held every frame while the WebSocket kept answering
    pings; with heartbeats 60 s apart nothing noticed. The probe after stall_timeout / 2 of
    silence needs an application answer, so the stall ends the session and a resync follows."""
    r = await start(cloud, heartbeat=60.0, stall_timeout=0.6, ping_interval=0.1)
    await online(r)
    pushes = cloud.stats["active_push"]
    cloud.stall(3.0)
    await r.ctx.until(lambda: r.ctx.counts.get("stalls", 0) >= 1)
    assert any(s == "backoff" and e and "stalled" in e for s, e, _ in r.ctx.links)
    await r.ctx.until(lambda: cloud.stats["active_push"] > pushes and r.ctx.link_state == "online")


async def test_bad_frames_counted_and_skipped(cloud: TencentCloud, start: Any) -> None:
    r = await start(cloud)
    await online(r)
    ctx = r.ctx
    light = cloud.device_ids()[0]
    cloud.garble(4)
    for n in range(4):
        cloud.report(light, {"brightness": n})
    cloud.report(light, {"brightness": 42})
    await ctx.until(lambda: ctx.latest(light).get("brightness") == 42)
    assert ctx.counts.get("bad_frames") == 4
    assert ctx.link_state == "online"


async def test_a_garbled_push_for_a_known_device_rereads_its_state(
    cloud: TencentCloud, start: Any
) -> None:
    """Issue 11 finding 8: the push was lost, so the device's state is read at once rather
    than left stale until its next push; counted once, the read itself counted as a re-read."""
    r = await start(cloud)
    await online(r)
    ctx = r.ctx
    light = cloud.device_ids()[0]
    cloud.garble_payloads(1)
    cloud.report(light, {"brightness": 17})  # cut short on the wire: its value is lost
    await ctx.until(lambda: ctx.counts.get("rereads", 0) == 1)
    assert ctx.counts.get("bad_frames") == 1 and ctx.bad[0][1] == light
    assert ctx.latest(light).get("brightness") == 17  # the re-read brought the value


async def test_token_expiry_relogin_once(cloud: TencentCloud, start: Any) -> None:
    r = await start(cloud)
    await online(r)
    logins = cloud.stats["logins"]
    cloud.expire_tokens()
    result = await r.connector.get(cloud.device_ids()[0], [])
    assert result.status == "ok"
    assert cloud.stats["logins"] == logins + 1
    cloud.expire_tokens()
    cloud.refuse_logins(-1)
    with pytest.raises(VendorError) as err:  # an auth reply for the command, not an internal error
        await r.connector.get(cloud.device_ids()[0], [])
    assert (err.value.code, err.value.vendor_code) == (
        "auth",
        "InvalidParameterValue.ErrorUserNotExists",
    )


async def test_heartbeat_auth_error_relogs_and_resubscribes(
    cloud: TencentCloud, start: Any
) -> None:
    r = await start(cloud)
    await online(r)
    logins, pushes = cloud.stats["logins"], cloud.stats["active_push"]
    cloud.expire_tokens()
    await r.ctx.until(
        lambda: cloud.stats["logins"] > logins and cloud.stats["active_push"] > pushes
    )
    cloud.heartbeat_errors(1)
    await r.ctx.until(lambda: r.ctx.counts.get("heartbeat_errors", 0) >= 1)


async def test_refused_login_needs_attention(cloud: TencentCloud, start: Any) -> None:
    cloud.refuse_logins(-1)
    r = await start(cloud)
    await r.ctx.until(lambda: any(att for _, _, att in r.ctx.links))
    state, error, _ = next(link for link in r.ctx.links if link[2])
    assert state == "attention" and error is not None and "ErrorUserNotExists" in error
    cloud.refuse_logins(0)
    await online(r)


async def test_persisted_token_reused(cloud: TencentCloud, start: Any) -> None:
    first = await start(cloud)
    await online(first)
    first.task.cancel()
    await asyncio.gather(first.task, return_exceptions=True)
    logins = cloud.stats["logins"]
    second = await start(cloud)
    await online(second)
    assert cloud.stats["logins"] == logins


async def test_pre_issued_token(
    cloud: TencentCloud, start: Any, http: aiohttp.ClientSession
) -> None:
    from tests.emulators.test_tencent import Client

    client = Client(cloud, http)
    token = await client.login()
    r = await start(cloud, app_secret=None, wx_open_id=None, access_token=token)
    await online(r)
    assert cloud.stats["logins"] == 1  # only the test's own login
    cloud.expire_tokens()
    with pytest.raises(VendorError) as err:
        await r.connector.get(cloud.device_ids()[0], [])
    assert err.value.code == "auth"
    await r.ctx.until(lambda: any(att for _, _, att in r.ctx.links))


def _opts(**raw: Any) -> TencentOptions:
    base: dict[str, Any] = {"app_key": "k", "app_secret": "s", "wx_open_id": "o"}
    base.update(raw)
    return TencentConnector.parse_options(
        {k: v for k, v in base.items() if v is not None}, "accounts[3]"
    )


def test_options() -> None:
    opts = _opts()
    assert opts.ws_url == "wss://iot.cloud.tencent.com/iotstudio_v2_weapp_1"
    assert opts.api_url == "https://iot.cloud.tencent.com/api/exploreropen"
    assert opts.heartbeat == 50.0
    assert _opts(region="oversea").api_url.startswith("https://oversea.")
    assert _opts(app_secret=None, wx_open_id=None, access_token="t").access_token == "t"
    for raw, key in [
        ({"app_key": None}, "accounts[3].app_key"),
        ({"bogus": 1}, "accounts[3].bogus"),
        ({"ws_url": "http://x"}, "accounts[3].ws_url"),
        ({"heartbeat": 0}, "accounts[3].heartbeat"),
        ({"wx_open_id": None}, "accounts[3].wx_open_id"),
        ({"action_mode": "later"}, "accounts[3].action_mode"),
        ({"region": "mars"}, "accounts[3].region"),
    ]:
        with pytest.raises(ConfigError) as err:
            _opts(**raw)
        assert err.value.key == key


class StarvedPacer(LocalPacer):
    """The process pacer, except that optional calls to ``starve``'s endpoints are refused as
    a low budget refuses them (issue 15: optional calls degrade first)."""

    def __init__(self, starve: set[str]) -> None:
        super().__init__()
        self.starve = starve

    async def acquire(self, kind: str, *scopes: Any, endpoint: str | None = None,
                      optional: bool = False, max_wait: float | None = None) -> None:  # fmt: skip
        if optional and endpoint in self.starve:
            raise Deferred(f"{endpoint}: budget low (test)", 1.0)
        await super().acquire(kind, *scopes, endpoint=endpoint, optional=optional,
                              max_wait=max_wait)  # fmt: skip


async def test_a_periodic_refresh_rereads_the_devices_that_stayed_quiet(
    cloud: TencentCloud, start: Any
) -> None:
    """A push the cloud lost leaves a quiet device stale for good; the periodic refresh reads
    the state of every device that reported nothing since the last one."""
    r = await start(cloud, refresh_interval=0.2)
    await online(r)
    light = cloud.device_ids()[0]
    cloud.devices[light].values["brightness"] = 77  # changed in the cloud, the push lost
    await r.ctx.until(lambda: r.ctx.latest(light).get("brightness") == 77)
    assert r.ctx.counts.get("quiet_resyncs", 0) >= 1


async def test_only_the_quiet_devices_are_reread(cloud: TencentCloud, start: Any) -> None:
    r = await start(cloud, refresh_interval=3600.0)
    await online(r)
    ids = cloud.device_ids()
    cloud.report(ids[1], {"temperature": 21.5})
    await r.ctx.until(lambda: r.ctx.latest(ids[1]).get("temperature") == 21.5)
    await r.connector._resync_quiet(set(ids))  # what the periodic refresh calls
    assert r.ctx.counts.get("quiet_resyncs") == len(ids) - 1  # all but the one that reported


async def test_quiet_device_resync_is_skipped_when_the_budget_runs_low(
    cloud: TencentCloud, start: Any
) -> None:
    """Optional calls degrade first: the resync of quiet devices is skipped (counted, not
    queued) while a command still goes through."""
    pacer = StarvedPacer({"AppGetDeviceStatuses", "AppGetDeviceData"})
    r = await start(cloud, refresh_interval=0.2)
    r.connector.use_pacer(pacer)  # before the task first runs
    await online(r)
    light = cloud.device_ids()[0]
    await r.ctx.until(lambda: r.ctx.counts.get("quiet_resyncs_deferred", 0) >= 1)
    assert "quiet_resyncs" not in r.ctx.counts
    result = await r.connector.set(light, {"brightness": 12})
    assert result.ok
