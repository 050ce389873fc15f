"""The CoolKit emulator behaves as the seeds' server: signatures, tokens, sessions, heartbeats, rates.

Raw clients over real HTTP/WebSocket on 127.0.0.1, built with the shared codec.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import websockets

from emulators.coolkit import CoolkitCloud
from protocols.coolkit import rest
from protocols.coolkit import ws as ckws
from protocols.coolkit.sign import Signer
from protocols.model import VendorError

FAST = {"rate_min_interval": 0.02, "rate_window": 5.0, "user_online_interval": 0.05, "hb_interval": 1.0, "hb_grace": 0.5}


@pytest.fixture
async def cloud() -> AsyncIterator[CoolkitCloud]:
    async with CoolkitCloud(**FAST) as c:  # type: ignore[arg-type]
        yield c


def hosts(cloud: CoolkitCloud) -> rest.Hosts:
    base = f"{cloud.url}/{{region}}"
    return rest.Hosts(base, base, base)


def app(cloud: CoolkitCloud, secret: str | None = None) -> rest.App:
    """The emulator's developer app (``secret``: sign with another, wrong, APP SECRET)."""
    return rest.App(cloud.appid, Signer(secret or cloud.app_secret), hosts(cloud))


async def send(http: aiohttp.ClientSession, req: rest.HttpRequest, version: rest.Version = 2) -> Any:
    await asyncio.sleep(0.03)  # stay inside the emulator's per-endpoint interval
    async with http.request(req.method, req.url, headers=dict(req.headers), data=req.body) as resp:
        return rest.parse_envelope(resp.status, await resp.read(), version)


def login(cloud: CoolkitCloud, region: str = "eu", version: rest.Version = 2, password: str = "demo-pass",
          secret: str | None = None) -> rest.HttpRequest:  # fmt: skip
    return rest.login_request(
        app(cloud, secret), version, region, nonce="abcd1234", password=password, country_code="+44", email="demo@example.com", ts=1,
    )  # fmt: skip


async def test_login_redirect_and_errors(cloud: CoolkitCloud, http: aiohttp.ClientSession) -> None:
    with pytest.raises(rest.RegionRedirect) as redirect:
        await send(http, login(cloud, "us"))
    assert redirect.value.region == "eu"
    with pytest.raises(VendorError) as bad_sign:
        await send(http, login(cloud, secret="wrong-secret"))
    assert bad_sign.value.vendor_code == 406
    with pytest.raises(VendorError) as bad_pw:
        await send(http, login(cloud, password="nope"))
    assert bad_pw.value.vendor_code == 10001
    result = rest.parse_login(await send(http, login(cloud)))
    assert result.region == "eu" and result.apikey == cloud.users["demo@example.com"].apikey
    with pytest.raises(rest.RegionRedirect) as v1_redirect:
        await send(http, login(cloud, "cn", version=1), 1)
    assert v1_redirect.value.vendor_code == 301 and v1_redirect.value.region == "eu"


async def test_refresh_rotates_and_old_tokens_die(cloud: CoolkitCloud, http: aiohttp.ClientSession) -> None:
    first = rest.parse_login(await send(http, login(cloud)))
    req = rest.refresh_request(app(cloud), 2, "eu", nonce="n", rt=first.rt)
    at, rt = rest.parse_refresh(await send(http, req))
    assert rt != first.rt and at != first.at
    with pytest.raises(VendorError) as stale:
        await send(http, req)  # the old rt is gone
    assert stale.value.vendor_code == 405
    with pytest.raises(VendorError) as old_at:
        await send(http, rest.family_request(hosts(cloud), "eu", at=first.at, nonce="n"))
    assert old_at.value.vendor_code == 401
    fam = rest.parse_family(await send(http, rest.family_request(hosts(cloud), "eu", at=at, nonce="n")))
    assert fam.apikey == first.apikey
    cloud.expire_tokens()
    with pytest.raises(VendorError) as expired:
        await send(http, rest.family_request(hosts(cloud), "eu", at=at, nonce="n"))
    assert expired.value.vendor_code == 402


async def test_v1_refresh_signed_query(cloud: CoolkitCloud, http: aiohttp.ClientSession) -> None:
    first = rest.parse_login(await send(http, login(cloud, version=1), 1))
    req = rest.refresh_request(app(cloud), 1, "eu", nonce="abcdefgh", rt=first.rt, ts=5)
    at, _ = rest.parse_refresh(await send(http, req, 1))
    doc = await send(http, rest.v1_devices_request(app(cloud), "eu", at=at, nonce="n", ts=1), 1)
    things, bad = rest.parse_v1_devices(doc, first.apikey)
    assert not bad and any(t.shared for t in things) and len(things) == 8
    forged = rest.HttpRequest("GET", req.url.replace("ts=5", "ts=6"), req.endpoint, req.headers)
    with pytest.raises(VendorError) as forged_err:
        await send(http, forged, 1)
    assert forged_err.value.vendor_code == 406


async def test_thing_list_paging(http: aiohttp.ClientSession) -> None:
    async with CoolkitCloud(extra_devices=40, **FAST) as cloud:  # type: ignore[arg-type]
        at = rest.parse_login(await send(http, login(cloud))).at
        with pytest.raises(VendorError) as too_big:
            await send(http, rest.thing_page_request(hosts(cloud), "eu", at=at, nonce="n", begin_index=-9999999, num=0))
        assert too_big.value.vendor_code == 500
        pager = rest.ThingPager(30, cloud.users["demo@example.com"].apikey)
        pages = 0
        while pager.begin_index is not None:
            pages += 1
            pager.feed(await send(http, rest.thing_page_request(
                hosts(cloud), "eu", at=at, nonce="n", begin_index=pager.begin_index, num=30)))  # fmt: skip
        assert pages == 2 and pager.total == 49
        assert len(pager.things) == 49
        assert sum(t.kind == "group" for t in pager.things) == 1
        assert [t.id for t in pager.things if t.shared] == ["10000000a1"]


async def test_rate_rules(cloud: CoolkitCloud, http: aiohttp.ClientSession) -> None:
    cloud.rate_min_interval = 0.5
    at = rest.parse_login(await send(http, login(cloud))).at
    req = rest.family_request(hosts(cloud), "eu", at=at, nonce="n")
    await send(http, req)
    async with http.get(req.url, headers=dict(req.headers)) as resp:
        doc = orjson.loads(await resp.read())
    assert doc["error"] == rest.RATE_LIMITED
    assert cloud.violations


async def ws_login(cloud: CoolkitCloud, http: aiohttp.ClientSession, version: rest.Version = 2) -> tuple[Any, ckws.WsSession, rest.LoginResult]:
    result = rest.parse_login(await send(http, login(cloud, version=version), version))
    async with http.get(f"{cloud.url}/eu/dispatch/app") as resp:
        d = rest.parse_dispatch(resp.status, await resp.read())
    conn = await websockets.connect(d.url("ws"), compression=None)
    s = ckws.WsSession(version, cloud.appid, result.at, result.apikey)
    await conn.send(s.handshake(now_ms=1000, nonce="abcdefgh"))
    ev = s.receive(await conn.recv())
    assert isinstance(ev, ckws.HandshakeDone)
    return conn, s, result


async def test_ws_handshake_commands_and_pushes(cloud: CoolkitCloud, http: aiohttp.ClientSession) -> None:
    conn, s, _ = await ws_login(cloud, http)
    assert s.heartbeat.interval == 1.0
    await conn.send("ping")
    assert s.receive(await conn.recv()) == ckws.Pong()
    seq, frame = s.command("update", now_ms=2000, deviceid="1000000001", owner_apikey=None, params={"switch": "on"})
    await conn.send(frame)
    events = [s.receive(await conn.recv()) for _ in range(2)]
    assert ckws.CommandReply(seq, 0, "1000000001", None) in events
    assert ckws.DeviceUpdate("1000000001", {"switch": "on"}, s.apikey) in events
    # shared device: owner apikey + selfApikey
    owner = cloud.devices["10000000a1"].owner
    seq, frame = s.command("query", now_ms=2000, deviceid="10000000a1", owner_apikey=owner, params=["switch"])
    await conn.send(frame)
    reply = s.receive(await conn.recv())
    assert isinstance(reply, ckws.CommandReply) and reply.error == 0 and reply.params == {"switch": "off"}
    # offline device: 504
    seq, frame = s.command("update", now_ms=2000, deviceid="1000000006", owner_apikey=None, params={"switch": "on"})
    await conn.send(frame)
    reply = s.receive(await conn.recv())
    assert isinstance(reply, ckws.CommandReply) and reply.error == 504
    # a replayed sequence is refused
    await conn.send(frame.replace('"switch":"on"', '"switch":"off"'))
    assert orjson.loads(await conn.recv())["error"] == 400
    await cloud.set_online("1000000001", False)
    assert s.receive(await conn.recv()) == ckws.SysMsg("1000000001", False, {"online": False})
    await conn.close()


async def test_ws_v1_hbl_and_heartbeat_drop(cloud: CoolkitCloud, http: aiohttp.ClientSession) -> None:
    result = rest.parse_login(await send(http, login(cloud, version=1), 1))
    conn = await websockets.connect(f"ws://127.0.0.1:{cloud.ws_port}/api/ws", compression=None)
    s = ckws.WsSession(1, cloud.appid, result.at, result.apikey)
    await conn.send(s.handshake(now_ms=1000, nonce="abcdefgh"))
    raw = await conn.recv()
    assert '"hbl":1' in str(raw)
    s.receive(raw)
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(conn.recv(), 10)  # silent client: dropped after hbInterval + grace


async def test_second_login_takes_the_session(cloud: CoolkitCloud, http: aiohttp.ClientSession) -> None:
    conn, s, first = await ws_login(cloud, http)
    await send(http, login(cloud))  # another client logs in
    ev = s.receive(await conn.recv())
    assert ev == ckws.ServerError(406, "Authentication Failed")
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(conn.recv(), 5)
    conn2 = await websockets.connect(f"ws://127.0.0.1:{cloud.ws_port}/api/ws", compression=None)
    s2 = ckws.WsSession(2, cloud.appid, first.at, first.apikey)
    await conn2.send(s2.handshake(now_ms=1000, nonce="abcdefgh"))
    assert s2.receive(await conn2.recv()) == ckws.HandshakeFailed(406, "Authentication Failed")


async def test_user_online_repeats_are_refused(cloud: CoolkitCloud, http: aiohttp.ClientSession) -> None:
    cloud.user_online_interval = 30.0
    conn, _s, first = await ws_login(cloud, http)
    await conn.close()
    conn2 = await websockets.connect(f"ws://127.0.0.1:{cloud.ws_port}/api/ws", compression=None)
    s2 = ckws.WsSession(2, cloud.appid, first.at, first.apikey)
    await conn2.send(s2.handshake(now_ms=1000, nonce="abcdefgh"))
    ev = s2.receive(await conn2.recv())
    assert isinstance(ev, ckws.HandshakeFailed) and ev.error == rest.RATE_LIMITED
    assert cloud.violations


async def test_control_endpoint(cloud: CoolkitCloud, http: aiohttp.ClientSession) -> None:
    conn, s, _ = await ws_login(cloud, http)
    async with http.post(f"{cloud.url}/_control/push", json={"deviceid": "1000000004", "params": {"currentTemperature": "22.0"}}) as resp:
        assert resp.status == 200
    ev = s.receive(await conn.recv())
    assert ev == ckws.DeviceUpdate("1000000004", {"currentTemperature": "22.0"}, s.apikey)
    async with http.post(f"{cloud.url}/_control/garble", json={"count": 1}) as resp:
        assert resp.status == 200
    with pytest.raises(Exception):  # noqa: B017 - RemoteProtocolError
        s.receive(await conn.recv())
    async with http.post(f"{cloud.url}/_control/nonsense") as resp:
        assert resp.status == 404
    await conn.close()
