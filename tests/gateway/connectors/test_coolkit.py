"""CoolkitConnector against the emulator over real sockets, with a recording AccountContext.

(The gateway + MQTT path is covered by ``test_coolkit_integration.py``; these tests look at the
connector's own decisions: tokens, redirects, resync, heartbeats, session rules, rate limits.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from emulators.coolkit import CoolkitCloud
from gateway.connectors.coolkit import CoolkitConnector, CoolkitOptions
from gateway.errors import ConfigError
from gateway.link import LinkState
from gateway.tokens import TokenStore
from protocols.model import Availability, CommandError
from tests.helpers import RecordingContext, emulator, eventually

FAST_CLOUD: dict[str, Any] = {
    "rate_min_interval": 0.02, "rate_window": 5.0, "rate_max_calls": 300,
    "user_online_interval": 0.05, "hb_interval": 1.0, "hb_grace": 0.5,
}  # fmt: skip
FAST_OPTS: dict[str, Any] = {"backoff_base": 0.05, "backoff_cap": 0.2, "attention_backoff": 0.4,
                             "attention_cap": 0.8, "heartbeat_grace": 0.5, "command_interval": 0.0}  # fmt: skip


cloud = emulator(lambda: CoolkitCloud(**FAST_CLOUD))


class Running:
    def __init__(
        self, conn: CoolkitConnector, ctx: RecordingContext, task: asyncio.Task[None]
    ) -> None:
        self.conn, self.ctx, self.task = conn, ctx, task

    def online(self) -> bool:
        return self.ctx.link_state is LinkState.ONLINE

    def resynced(self) -> bool:
        """Listed again (a reconnect's resync) and back online."""
        return len(self.ctx.listings) >= 2 and self.online()


@pytest.fixture
async def start(tmp_path: Path, http: aiohttp.ClientSession) -> AsyncIterator[Callable[..., Any]]:
    running: list[Running] = []
    store = TokenStore(tmp_path / "tokens.json")

    async def factory(cfg: dict[str, Any], wait_online: bool = True, account: str = "demo") -> Running:
        raw = {k: v for k, v in {**cfg, **FAST_OPTS}.items() if k not in ("vendor", "name")}
        opts = CoolkitConnector.parse_options(raw, "accounts[0]")
        ctx = RecordingContext("coolkit", account, store.slot("coolkit", account))
        conn = CoolkitConnector(opts, ctx, http)
        r = Running(conn, ctx, asyncio.create_task(conn.run()))
        running.append(r)
        if wait_online:
            await eventually(r.online, "the account is online")
        return r

    yield factory
    for r in running:
        r.task.cancel()
        await asyncio.gather(r.task, return_exceptions=True)
        await r.conn.close()


def test_parse_options_errors() -> None:
    base = {"app_id": "a", "app_secret": "s", "email": "e@x", "password": "p"}
    assert isinstance(CoolkitConnector.parse_options(base, "k"), CoolkitOptions)
    for bad, key in (
        ({**base, "region": "mars"}, "k.region"),
        ({"app_id": "a", "app_secret": "s"}, "k.email"),
        ({**base, "password": None}, "k.password"),
        ({"app_id": "a", "app_secret": "s", "at": "x"}, "k.email"),
        ({**base, "api_version": 3}, "k.api_version"),
        ({**base, "bogus": 1}, "k.bogus"),
        ({**base, "page_size": 100}, "k.page_size"),
    ):
        with pytest.raises(ConfigError) as err:
            CoolkitConnector.parse_options(bad, "k")
        assert err.value.key == key
    opts = CoolkitConnector.parse_options({**base, "password": "secret-pw"}, "k")
    assert "secret-pw" not in repr(opts) and "s'" not in repr(opts).split("app_id")[1][:20]


async def test_login_redirect_sync_and_tokens_persist(cloud: CoolkitCloud, start: Any, tmp_path: Path) -> None:
    r = await start(cloud.account_config(region="us"))  # the account lives in eu: 10004 redirect
    ctx = r.ctx
    assert cloud.logins == ["demo@example.com"]
    assert set(ctx.infos) == {"1000000001", "1000000002", "1000000003", "1000000004", "1000000005",
                              "1000000006", "1000000007", "10000000a1", "group:g-lights"}  # fmt: skip
    assert ctx.infos["10000000a1"].extra["shared"] is True
    assert ctx.infos["1000000007"].schema.passthrough
    assert ctx.normalized("1000000002") == {"switch_0": False, "switch_1": False, "rssi": -61, "fwVersion": "3.5.0"}
    assert ctx.normalized("1000000005")["power"] == 512.3
    assert Availability("1000000006", False, 0) in [Availability(a.device, a.online, 0) for a in ctx.avail]
    stored = ctx.tokens.load()
    assert stored and stored["region"] == "eu" and stored["apikey"] == cloud.users["demo@example.com"].apikey
    assert (tmp_path / "tokens.json").stat().st_mode & 0o777 == 0o600
    # A restart reuses the stored tokens: no second login.
    r.task.cancel()
    await asyncio.gather(r.task, return_exceptions=True)
    await r.conn.close()
    r2 = await start(cloud.account_config(region="us"))
    assert cloud.logins == ["demo@example.com"]
    assert len(r2.ctx.listings) == 1


async def test_push_set_get_and_errors(cloud: CoolkitCloud, start: Any) -> None:
    r = await start(cloud.account_config())
    ctx, conn = r.ctx, r.conn
    await cloud.push("1000000004", {"currentTemperature": "23.5", "currentHumidity": "51"})
    await eventually(lambda: ctx.normalized("1000000004").get("currentTemperature") == 23.5)
    assert ctx.normalized("1000000004")["currentHumidity"] == 51.0
    assert (await conn.set("1000000002", {"switch_1": True})).status == "ok"
    await eventually(lambda: ctx.normalized("1000000002").get("switch_1") is True)
    assert cloud.devices["1000000002"].params["switches"][1]["switch"] == "on"
    assert (await conn.set("10000000a1", {"switch": True})).status == "ok"  # shared: selfApikey
    assert cloud.commands[-1]["selfApikey"] == cloud.users["demo@example.com"].apikey
    # get answers as read (channels flattened); the command handler normalizes and filters
    # (tests/integration/test_coolkit.py asserts the reply a client gets)
    got = await conn.get("1000000001", ["switch"])
    assert got.status == "ok" and got.data == {"switch": "off"}
    got = await conn.get("1000000002", ["switch_1"])
    assert got.status == "ok" and got.data == {"switch_0": "off", "switch_1": "on"}
    cloud.fail_504()
    with pytest.raises(CommandError) as e504:
        await conn.set("1000000001", {"switch": True})
    assert e504.value.code == "offline" and e504.value.vendor_code == 504
    assert not [a for a in ctx.avail if a.device == "1000000001" and not a.online]  # 504 ≠ offline
    with pytest.raises(CommandError) as offline:
        await conn.set("1000000006", {"switch": True})
    assert offline.value.code == "offline"
    await cloud.set_online("1000000006", True)
    await eventually(lambda: any(a.device == "1000000006" and a.online for a in ctx.avail))
    assert (await conn.set("group:g-lights", {"switch": True})).status == "ok"
    await eventually(lambda: cloud.devices["1000000001"].params["switch"] == "on")
    # never answered: the gateway's timeout cancels; nothing stays pending
    cloud.never_answer()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(conn.set("1000000001", {"switch": False}), 0.5)
    assert not conn._pending
    # one bad frame does not stop the next
    await cloud.garble()
    await cloud.push("1000000001", {"switch": "off"})
    await eventually(lambda: ctx.normalized("1000000001").get("switch") is False)
    assert any("unreadable frame" in b[0] for b in ctx.bad)


async def test_misfit_value_is_passed_raw_and_counted_once(cloud: CoolkitCloud, start: Any) -> None:
    r = await start(cloud.account_config())
    ctx = r.ctx
    assert ctx.flagged() == []  # the demo snapshot fits its schemas
    await cloud.push("1000000004", {"currentTemperature": "22.5", "currentHumidity": "unavailable"})
    await eventually(
        lambda: ctx.normalized("1000000004").get("currentTemperature") == 22.5, "the pushed reading arrives"
    )
    # The connector hands the link the values as sent; the link (here: the recorder's
    # normalized()/flagged()) normalizes them and flags the misfit, once.
    raw = [s for s in ctx.states if s.device == "1000000004" and "currentHumidity" in s.props][-1]
    assert raw.props == {"currentTemperature": "22.5", "currentHumidity": "unavailable"}
    assert ctx.normalized("1000000004")["currentHumidity"] == "unavailable"  # kept as sent
    assert ctx.flagged() == [("1000000004", "currentHumidity")]
    assert not [b for b in ctx.bad if b[2] == "bad_values"]


async def test_pending_commands_fail_when_the_socket_drops(cloud: CoolkitCloud, start: Any) -> None:
    r = await start(cloud.account_config())
    cloud.never_answer()
    task = asyncio.create_task(r.conn.set("1000000001", {"switch": True}))
    await eventually(lambda: bool(r.conn._pending))
    cloud.drop()
    with pytest.raises(CommandError) as err:
        await task
    assert "closed" in err.value.message
    await eventually(r.resynced, "reconnected and resynced")  # reconnect with resync


async def test_heartbeat_loss_reconnects_and_resyncs(cloud: CoolkitCloud, start: Any) -> None:
    r = await start(cloud.account_config())
    cloud.stall()  # the socket stays open but goes silent: no pong, no pushes
    cloud.devices["1000000001"].params["switch"] = "on"  # changed while we were deaf
    await eventually(lambda: any(s == "backoff" and e and "no traffic" in e for s, e, _ in r.ctx.links))
    await eventually(r.resynced, "reconnected and resynced")
    assert r.ctx.normalized("1000000001")["switch"] is True


async def test_a_stall_is_found_within_stall_timeout_not_hbinterval(start: Any) -> None:
    """Issue 11 finding 8: with the live cloud's hbInterval (145 s) a silent socket was dead
    only after 160 s. Silent for half of stall_timeout, the connector pings at once; nothing
    back by stall_timeout and the link is dead, whatever hbInterval says."""
    async with CoolkitCloud(**{**FAST_CLOUD, "hb_interval": 145.0}) as cloud:
        r = await start(cloud.account_config(stall_timeout=0.6))
        cloud.stall()
        cloud.devices["1000000001"].params["switch"] = "on"  # changed while we were deaf
        await eventually(lambda: any(s == "backoff" and e and "stalled" in e for s, e, _ in r.ctx.links))
        await eventually(r.resynced, "reconnected and resynced")
        assert r.ctx.normalized("1000000001")["switch"] is True


async def test_pings_keep_the_socket_alive(cloud: CoolkitCloud, start: Any) -> None:
    r = await start(cloud.account_config())
    pings = cloud.pings
    # several hbIntervals (1 s) with no pushes at all: only the pings keep the socket alive
    await eventually(lambda: cloud.pings >= pings + 3, "three pings answered")
    assert r.online() and len(r.ctx.listings) == 1
    assert len(cloud.handshakes) == 1


async def test_refresh_on_402(cloud: CoolkitCloud, start: Any) -> None:
    r = await start(cloud.account_config())
    old_rt = r.ctx.tokens.load()["rt"]
    cloud.expire_tokens()
    cloud.drop()
    await eventually(r.resynced, "reconnected and resynced")
    assert r.ctx.tokens.load()["rt"] != old_rt  # rotated and persisted
    assert cloud.logins == ["demo@example.com"]  # refreshed, not re-logged in


async def test_oauth_tokens_and_v1(cloud: CoolkitCloud, start: Any) -> None:
    r = await start(cloud.account_config(oauth=True))
    assert cloud.logins == []
    assert len(r.ctx.infos) == 9
    r1 = await start(cloud.account_config(name="v1", email="owner@example.com", version=1), account="v1")
    assert set(r1.ctx.infos) == {"10000000a1"}
    assert (await r1.conn.set("10000000a1", {"switch": True})).status == "ok"
    assert cloud.commands[-1]["ts"] == 0


async def test_session_taken_backs_off_and_flags(cloud: CoolkitCloud, start: Any) -> None:
    r = await start(cloud.account_config())
    await cloud.kick()
    await eventually(lambda: any(s == "attention" and a for s, _, a in r.ctx.links))
    _state, error, _ = r.ctx.links[-1]
    assert "session taken" in (error or "")
    logins_before = len(cloud.logins)
    await eventually(r.online)  # after the (short, in tests) hard backoff it logs in once more
    assert len(cloud.logins) <= logins_before + 1  # no re-login fight: at most that one


async def test_first_406_is_a_config_error(cloud: CoolkitCloud, start: Any) -> None:
    # An at/rt pair configured with somebody else's apikey: userOnline fails with 406 at once.
    r = await start(cloud.account_config(oauth=True, apikey="not-the-right-apikey"), wait_online=False)
    await eventually(lambda: any(s == "attention" for s, _, _ in r.ctx.links))
    error = r.ctx.links[-1][1] or ""
    assert "first attempt" in error and "session taken" not in error
    assert len(cloud.handshakes) == 1  # and no retry loop right behind it


async def test_bad_login_is_attention(cloud: CoolkitCloud, start: Any) -> None:
    r = await start(cloud.account_config(password="wrong"), wait_online=False)
    await eventually(lambda: any(s == "attention" for s, _, _ in r.ctx.links))
    assert "password" in (r.ctx.links[-1][1] or "")
    r2 = await start(cloud.account_config(name="x", app_secret="bad-secret"), wait_online=False, account="x")
    await eventually(lambda: any(s == "attention" for s, _, _ in r2.ctx.links))
    assert "app_secret" in (r2.ctx.links[-1][1] or "")


async def test_rate_rules_hold_across_accounts(start: Any) -> None:
    rules = {"rate_min_interval": 0.15, "rate_window": 2.0, "rate_max_calls": 8, "user_online_interval": 0.3}
    async with CoolkitCloud(**{**FAST_CLOUD, **rules}) as cloud:
        cloud.add_user("b@example.com", "b-pass", "eu")
        cloud.add_user("c@example.com", "c-pass", "eu")
        runs = [
            await start(cloud.account_config(name=n, email=e), wait_online=False, account=n)
            for n, e in (("a", "demo@example.com"), ("b", "b@example.com"), ("c", "c@example.com"))
        ]
        await eventually(lambda: all(r.online() for r in runs), timeout=30)
        assert cloud.violations == []
        assert len(cloud.calls) > 8  # the budget was exceeded in total, so pacing did happen


async def test_many_things_are_paged(start: Any) -> None:
    async with CoolkitCloud(extra_devices=40, **FAST_CLOUD) as cloud:
        r = await start(cloud.account_config())
        assert len(r.ctx.infos) == 49  # 30 + 19: two pages of /v2/device/thing
        assert sum(1 for _, e in cloud.calls if e == "GET /v2/device/thing") == 2


async def test_a_cancellation_during_teardown_is_not_swallowed(
    cloud: CoolkitCloud, start: Any
) -> None:
    """Stopping an account while its session tears down (after a lost link) must end it;
    swallowing that cancellation made the Session reconnect forever and ``Gateway.stop()``
    hang. The pinger here is slow to finish, so the teardown is caught while awaiting it."""
    r = await start(cloud.account_config())
    r.task.cancel()
    await asyncio.gather(r.task, return_exceptions=True)
    release = asyncio.Event()

    async def slow_pinger() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await release.wait()  # takes its time to wind down

    r.conn._pinger_task = asyncio.create_task(slow_pinger())
    await asyncio.sleep(0)  # let it start
    teardown = asyncio.create_task(r.conn.teardown())
    await eventually(lambda: r.conn._pinger_task is None, "teardown began")
    teardown.cancel()  # the account is stopped right now
    release.set()
    await asyncio.gather(teardown, return_exceptions=True)
    assert teardown.cancelled()
