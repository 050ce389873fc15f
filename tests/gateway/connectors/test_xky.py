"""The XiakeCloud polling connector against the emulator over real HTTP, with a recording context
standing in for the gateway (the full path through the gateway and mosquitto is in
``test_xky_integration.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from emulators.xky import XkyCloud
from gateway.connectors.xky import XkyConnector, XkyOptions
from gateway.errors import ConfigError
from gateway.tokens import TokenStore
from protocols.model import (
    CommandError,
    VendorError,
)
from tests.helpers import RecordingContext, emulator, eventually

cloud = emulator(lambda: XkyCloud(devices=3))


@pytest.fixture
def store() -> TokenStore:
    return TokenStore(None)


Start = Callable[..., Awaitable[tuple[XkyConnector, RecordingContext]]]


@pytest.fixture
async def start(
    cloud: XkyCloud, http: aiohttp.ClientSession, store: TokenStore
) -> AsyncIterator[Start]:
    tasks: list[asyncio.Task[None]] = []

    async def starter(**overrides: Any) -> tuple[XkyConnector, RecordingContext]:
        raw = cloud.account_config(poll_interval=0.05, min_poll_interval=0.05, poll_jitter=0.2)
        raw.update(overrides)
        for k in ("vendor", "name"):
            raw.pop(k)
        ctx = RecordingContext("xky", "test", store.slot("xky", "test"))
        conn = XkyConnector(XkyConnector.parse_options(raw, "accounts[0]"), ctx, http)
        tasks.append(asyncio.create_task(conn.run()))
        return conn, ctx

    yield starter
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def polls(cloud: XkyCloud, n: int = 2) -> None:
    """Wait until ``n`` more listings have been answered (and the one after it has started)."""
    target = cloud.count("/get_device_list") + n + 1
    await eventually(lambda: cloud.count("/get_device_list") >= target)


async def test_first_poll_is_a_full_sync(cloud: XkyCloud, start: Start, store: TokenStore) -> None:
    _conn, ctx = await start()
    await eventually(lambda: ("online", None, False) in ctx.links)
    assert ctx.calls[0] == ("devices", sorted(cloud.devices))
    states = {c.device: c.props for _, c in ctx.since(0, "state")}
    sn = next(iter(cloud.devices))
    assert states[sn] == {
        "name": f"device {sn}",
        "desc": "",
        "tags": [],
        "node": "1",
        "online": True,
    }
    assert {a.device for _, a in ctx.since(0, "availability")} == set(cloud.devices)
    assert ctx.links[0][0] == "connecting"
    saved = store.get("xky/test")
    assert saved is not None and saved["session"] in cloud.sessions and saved["account"] == "demo"
    assert ctx.counts["logins"] == 1


async def test_only_changes_are_published(cloud: XkyCloud, start: Start) -> None:
    _conn, ctx = await start()
    await eventually(lambda: ("online", None, False) in ctx.links)
    mark = ctx.mark()
    await polls(cloud)
    assert ctx.since(mark) == []  # nothing changed, nothing published

    a, b = sorted(cloud.devices)[:2]
    cloud.update_device(a, desc="moved")
    cloud.set_online(b, False)
    await eventually(lambda: len(ctx.since(mark)) >= 3)
    await polls(cloud)
    got = ctx.since(mark)
    assert sorted((v.device, dict(v.props)) for k, v in got if k == "state") == [
        (a, {"desc": "moved"}),
        (b, {"online": False}),
    ]
    assert [(v.device, v.online) for k, v in got if k == "availability"] == [(b, False)]
    assert not [c for c in got if c[0] in ("device", "devices")]


async def test_added_renamed_and_removed_devices(cloud: XkyCloud, start: Start) -> None:
    _conn, ctx = await start()
    await eventually(lambda: ("online", None, False) in ctx.links)
    mark = ctx.mark()
    new = cloud.add_device("cafe0001", name="newcomer", online=False)
    await eventually(lambda: bool(ctx.since(mark, "availability")))
    got = ctx.since(mark)
    assert got[0][0] == "device" and got[0][1].device == new and got[0][1].name == "newcomer"
    assert got[1][0] == "state" and got[1][1].props["name"] == "newcomer"
    assert got[2][0] == "availability" and got[2][1].online is False

    mark = ctx.mark()
    cloud.update_device(new, name="renamed")
    await eventually(lambda: bool(ctx.since(mark, "state")))
    assert [c[1].name for c in ctx.since(mark, "device")] == ["renamed"]

    mark = ctx.mark()
    gone = sorted(cloud.devices)[0]
    cloud.remove_device(gone)
    await eventually(lambda: bool(ctx.since(mark, "devices")))
    assert ctx.since(mark, "devices") == [("devices", sorted(cloud.devices))]
    assert gone not in ctx.since(mark, "devices")[0][1]


async def test_session_expiry_logs_in_again_without_republishing(
    cloud: XkyCloud, start: Start
) -> None:
    _conn, ctx = await start()
    await eventually(lambda: ("online", None, False) in ctx.links)
    mark = ctx.mark()
    cloud.expire_sessions()
    await eventually(lambda: cloud.count("/login") == 2)
    await polls(cloud)
    assert ctx.since(mark) == []
    assert ctx.counts["logins"] == 2
    assert all(state == "online" for state, _, _ in ctx.links[1:])


async def test_a_persisted_session_is_reused_and_replaced_when_rejected(
    cloud: XkyCloud, start: Start, store: TokenStore
) -> None:
    _conn, ctx = await start()
    await eventually(lambda: ("online", None, False) in ctx.links)
    _conn2, ctx2 = await start()
    await eventually(lambda: ("online", None, False) in ctx2.links)
    assert cloud.count("/login") == 1  # the second connector used the saved session
    store.put("xky/test", {"session": "stale", "account": "demo", "subaccount": "",
                           "base_url": cloud.url})  # fmt: skip
    _conn3, ctx3 = await start()
    await eventually(lambda: ("online", None, False) in ctx3.links)
    assert cloud.count("/login") == 2
    assert store.get("xky/test")["session"] != "stale"  # type: ignore[index]


async def test_malformed_replies_are_counted_and_skipped(cloud: XkyCloud, start: Start) -> None:
    _conn, ctx = await start()
    await eventually(lambda: ("online", None, False) in ctx.links)
    mark = ctx.mark()
    for kind in ("garble", "shape", "record"):
        cloud.malformed(kind=kind, path="/get_device_list")
        want = len(ctx.bad) + 1
        await eventually(lambda: len(ctx.bad) >= want)  # noqa: B023
    await polls(cloud)
    assert [c for _, _, c in ctx.bad] == ["bad_frames"] * 3
    assert "malformed" in ctx.bad[0][0]
    assert ctx.since(mark) == []  # no device removed, nothing republished
    assert not [s for s, _, _ in ctx.links if s != "online" and s != "connecting"]


async def test_server_errors_back_off_and_resync(cloud: XkyCloud, start: Start) -> None:
    _conn, ctx = await start()
    await eventually(lambda: ("online", None, False) in ctx.links)
    mark, links = ctx.mark(), len(ctx.links)
    cloud.fail(status=502, path="/get_device_list")
    await eventually(lambda: len(ctx.since(mark, "devices")) == 1)
    assert [s for s, _, _ in ctx.links[links:]][:2] == ["backoff", "online"]
    assert "502" in (ctx.links[links][1] or "")
    # after an outage the whole state is published again (the gateway may have marked it offline)
    assert len(ctx.since(mark, "state")) == len(cloud.devices)


async def test_slow_replies_time_out_and_back_off(cloud: XkyCloud, start: Start) -> None:
    _conn, ctx = await start(request_timeout=0.1)
    await eventually(lambda: ("online", None, False) in ctx.links)
    links = len(ctx.links)
    cloud.slow(1.0, path="/get_device_list")
    await eventually(lambda: len(ctx.links) > links + 1)
    assert ctx.links[links][0] == "backoff" and "TimeoutError" in (ctx.links[links][1] or "")
    assert ctx.links[links + 1][0] == "online"


async def test_bad_credentials_need_attention(
    cloud: XkyCloud, start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _conn, ctx = await start(password="s3cret-pw")
    await eventually(lambda: bool(ctx.links[1:]))
    state, error, attention = ctx.links[1]
    assert (state, attention) == ("attention", True)
    assert error is not None and "1001" in error
    assert "s3cret-pw" not in error and "s3cret-pw" not in caplog.text
    assert not ctx.since(0, "devices")


async def test_sub_account_polls_its_own_devices(cloud: XkyCloud, start: Start) -> None:
    _conn, ctx = await start(subaccount="kid", password="kid-pass")
    await eventually(lambda: ("online", None, False) in ctx.links)
    sub = next(iter(cloud.subs.values()))
    assert ctx.calls[0] == ("devices", sorted(sub.devices))


async def test_never_polls_faster_than_the_minimum(cloud: XkyCloud, start: Start) -> None:
    _conn, ctx = await start(poll_interval=0.1, min_poll_interval=0.1, poll_jitter=0.5)
    await eventually(lambda: ("online", None, False) in ctx.links)
    cloud.expire_sessions()  # a re-login retry is paced too
    cloud.fail(count=2, status=500, path="/get_device_list")
    await eventually(lambda: cloud.count("/get_device_list") >= 8)
    starts = [c.at for c in cloud.calls if c.path == "/get_device_list"]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.1 * 0.95  # a lower bound only: sleeping never ends early


async def test_set_round_trip(cloud: XkyCloud, start: Start) -> None:
    conn, ctx = await start()
    await eventually(lambda: ("online", None, False) in ctx.links)
    sn = sorted(cloud.devices)[0]
    cloud.update_device(sn, desc="set elsewhere")  # not polled yet, must not be reverted
    mark = ctx.mark()
    result = await conn.set(sn, {"name": "Kitchen phone", "tags": ["a", "b"]})
    assert result.status == "ok"
    dev = cloud.devices[sn]
    assert (dev.name, dev.desc, dev.tags) == ("Kitchen phone", "set elsewhere", ["a", "b"])
    set_call = [c for c in cloud.calls if c.path == "/set_device"][-1]
    assert set_call.method == "POST"
    assert set_call.args == {"sn": sn, "name": "Kitchen phone", "desc": "set elsewhere",
                             "tags": ["a", "b"], "session": set_call.args["session"], "source": True}  # fmt: skip
    states = [dict(c.props) for _, c in ctx.since(mark, "state") if c.device == sn]
    assert states[0] == {"name": "Kitchen phone", "desc": "set elsewhere", "tags": ["a", "b"]}
    assert [c.name for _, c in ctx.since(mark, "device")] == ["Kitchen phone"]
    await polls(cloud)  # the next listings agree with what set published: nothing more
    assert len([c for _, c in ctx.since(mark, "state") if c.device == sn]) == 1


async def test_set_rejects_what_is_not_writable_or_unknown(cloud: XkyCloud, start: Start) -> None:
    conn, ctx = await start()
    await eventually(lambda: ("online", None, False) in ctx.links)
    sn = sorted(cloud.devices)[0]
    for props in ({"online": False}, {"node": "2"}, {"name": "x", "color": "red"}):
        with pytest.raises(CommandError) as exc:
            await conn.set(sn, props)
        assert exc.value.code == "invalid"
    with pytest.raises(CommandError) as exc:
        await conn.set("nope", {"name": "x"})
    assert exc.value.code == "invalid"
    assert cloud.count("/set_device") == 0


async def test_set_after_session_expiry_and_vendor_errors(cloud: XkyCloud, start: Start) -> None:
    conn, ctx = await start()
    await eventually(lambda: ("online", None, False) in ctx.links)
    sn = sorted(cloud.devices)[0]
    cloud.expire_sessions()
    assert (await conn.set(sn, {"desc": "after expiry"})).status == "ok"
    assert cloud.devices[sn].desc == "after expiry"
    cloud.malformed(kind="garble", path="/set_device")
    with pytest.raises(CommandError) as exc:
        await conn.set(sn, {"desc": "x"})
    assert exc.value.code == "vendor" and ctx.bad
    cloud.fail(status=503, path="/get_device")
    with pytest.raises(VendorError):
        await conn.set(sn, {"desc": "x"})


async def test_request_multi_device(cloud: XkyCloud, start: Start) -> None:
    conn, _ctx = await start()
    sns = sorted(cloud.devices)[:2]
    result = await conn.request("multi_device", {"account": "test", "sns": sns})
    assert result.status == "ok" and result.data == {"sns": sns}
    assert cloud.multi == sns
    for bad in ({"account": "test"}, {"sns": "a"}, {"sns": [1]}, {"sns": [""]}):
        with pytest.raises(CommandError) as exc:
            await conn.request("multi_device", bad)
        assert exc.value.code == "invalid"
    with pytest.raises(VendorError) as verr:
        await conn.request("multi_device", {"sns": ["unknown"]})
    assert verr.value.code == "invalid"
    assert (await conn.request("other", {})).status == "error"


async def test_close_logs_out_only_when_asked(
    cloud: XkyCloud, start: Start, store: TokenStore
) -> None:
    conn, ctx = await start()
    await eventually(lambda: ("online", None, False) in ctx.links)
    await conn.close()
    assert cloud.count("/logout") == 0 and store.get("xky/test") is not None
    conn2, ctx2 = await start(logout_on_close=True)
    await eventually(lambda: ("online", None, False) in ctx2.links)
    await conn2.close()
    assert cloud.count("/logout") == 1 and store.get("xky/test") is None


def test_parse_options() -> None:
    opts = XkyConnector.parse_options(
        {"account": "a", "password": "p", "poll_interval": 60}, "accounts[3]"
    )
    assert opts == XkyOptions("a", "p", poll_interval=60.0)
    bad: list[tuple[dict[str, Any], str]] = [
        ({"password": "p"}, "account"),
        ({"account": "", "password": "p"}, "account"),
        ({"account": "a"}, "password"),
        ({"account": "a", "password": "p", "poll_interval": 1}, "poll_interval"),
        ({"account": "a", "password": "p", "min_poll_interval": 0}, "min_poll_interval"),
        ({"account": "a", "password": "p", "poll_interval": "5"}, "poll_interval"),
        ({"account": "a", "password": "p", "poll_jitter": 1.5}, "poll_jitter"),
        ({"account": "a", "password": "p", "base_url": "ftp://x"}, "base_url"),
        ({"account": "a", "password": "p", "logout_on_close": "yes"}, "logout_on_close"),
        ({"account": "a", "password": "p", "sessoin": "x"}, "sessoin"),
        ({"account": 5, "password": "p"}, "account"),
    ]
    for raw, field in bad:
        with pytest.raises(ConfigError) as exc:
            XkyConnector.parse_options(raw, "accounts[3]")
        assert exc.value.key == f"accounts[3].{field}"


async def test_an_empty_account_still_syncs_its_empty_list(cloud: XkyCloud, start: Start) -> None:
    for sn in list(cloud.devices):
        cloud.remove_device(sn)
    _conn, ctx = await start()
    await eventually(lambda: ("online", None, False) in ctx.links)
    assert ctx.calls == [("devices", [])]
