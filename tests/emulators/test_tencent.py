"""The Tencent emulator over real HTTP and WebSocket sockets, driven with the shared codec."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from emulators.tencent import LIGHT_PRODUCT, SENSOR_PRODUCT, TencentCloud
from protocols.model import VendorError
from protocols.tencent import api, ws

_nonce = itertools.count(1)


class Client:
    """A minimal hand-driven Tencent app client (what the connector does, step by step)."""

    def __init__(self, cloud: TencentCloud, http: aiohttp.ClientSession) -> None:
        self.cloud = cloud
        self.http = http
        self.token = ""

    async def post(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.http.post(f"{self.cloud.api_url}/{kind}", data=orjson.dumps(body)) as resp:
            assert resp.status == 200
            return api.parse_response(await resp.read())

    def login_body(self, **over: Any) -> dict[str, Any]:
        body = api.appapi_body(
            "AppGetTokenByWeiXin",
            api.login_weixin_params(self.cloud.open_id, "tester"),
            app_key=over.pop("app_key", self.cloud.app_key),
            app_secret=over.pop("app_secret", self.cloud.app_secret),
            timestamp=over.pop("timestamp", int(time.time())),
            nonce=over.pop("nonce", next(_nonce)),
            request_id="r1",
        )
        body.update(over)
        return body

    async def login(self) -> str:
        self.token = api.parse_token(await self.post("appapi", self.login_body())).token
        return self.token

    async def call(self, action: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        body = api.tokenapi_body(action, params or {}, access_token=self.token, request_id="r2")
        return await self.post("tokenapi", body)


@pytest.fixture
async def cloud() -> AsyncIterator[TencentCloud]:
    async with TencentCloud(devices=4, latency=0.01) as c:
        yield c


@pytest.fixture
def client(cloud: TencentCloud, http: aiohttp.ClientSession) -> Client:
    return Client(cloud, http)


async def _rejected(coro: Any) -> str:
    with pytest.raises(VendorError) as err:
        await coro
    return str(err.value.vendor_code)


async def recv(conn: ClientConnection, timeout: float = 5) -> ws.Reply | ws.Push:
    return ws.parse_frame(await asyncio.wait_for(conn.recv(), timeout))


async def recv_push(conn: ClientConnection, **match: str) -> ws.DeviceChange:
    while True:
        frame = await recv(conn)
        if isinstance(frame, ws.Push):
            change = ws.parse_device_change(frame.params)
            if all(getattr(change, k) == v for k, v in match.items()):
                return change


@contextlib.asynccontextmanager
async def subscribed(
    cloud: TencentCloud, token: str, devices: list[str]
) -> AsyncIterator[ClientConnection]:
    """A socket that ``ActivePush``ed ``devices`` (closed at the end)."""
    async with connect(cloud.ws_url, compression=None) as conn:
        await conn.send(ws.active_push_frame("a1", devices, token))
        reply = await recv(conn)
        assert isinstance(reply, ws.Reply) and reply.req_id == "a1"
        assert ws.active_push_result(reply, devices) == tuple(devices)
        yield conn


@contextlib.asynccontextmanager
async def first_light_pushes(client: Client) -> AsyncIterator[tuple[str, ClientConnection]]:
    """Log in and subscribe to the first light: ``(light, socket)``."""
    token = await client.login()
    light = client.cloud.device_ids()[0]
    async with subscribed(client.cloud, token, [light]) as conn:
        yield light, conn


# --------------------------------------------------------------------------------------------
# appapi checks


async def test_login_checks(client: Client) -> None:
    assert await client.login()
    assert await _rejected(client.post("appapi", client.login_body(Signature="AAAA"))) == (
        "InvalidParameterValue.InvalidSignature"
    )
    assert await _rejected(client.post("appapi", client.login_body(app_secret="wrong"))) == (
        "InvalidParameterValue.InvalidSignature"
    )
    stale = client.login_body(timestamp=int(time.time()) - 3600)
    assert await _rejected(client.post("appapi", stale)) == "InvalidParameterValue.TimestampExpired"
    replay = client.login_body()
    await client.post("appapi", replay)
    assert await _rejected(client.post("appapi", replay)) == "InvalidParameterValue.NonceUsed"
    assert (
        await _rejected(client.post("appapi", client.login_body(app_key="other")))
        == "ResourceNotFound.AppNotExists"
    )
    missing = client.login_body()
    del missing["Nonce"]
    assert await _rejected(client.post("appapi", missing)) == "ErrorRequiredParamNotFound"
    async with client.http.post(f"{client.cloud.api_url}/appapi", data=b"nope") as resp:
        with pytest.raises(VendorError) as err:
            api.parse_response(await resp.read())
    assert err.value.vendor_code == "InvalidParameterValue.InvalidJSON"


async def test_refused_logins_and_tokens(cloud: TencentCloud, client: Client) -> None:
    cloud.refuse_logins(1)
    assert await _rejected(client.login()) == "InvalidParameterValue.ErrorUserNotExists"
    await client.login()
    assert (await client.call("AppGetUser"))["Data"]["NickName"] == "tester"
    client.token = "forged"
    assert await _rejected(client.call("AppGetUser")) == "InvalidParameterValue.InvalidAccessToken"
    await client.login()
    cloud.expire_tokens()
    assert await _rejected(client.call("AppGetUser")) == "InvalidParameterValue.InvalidAccessToken"
    cloud.token_lifetime = 0  # tokens issued from now on are born expired
    await client.login()
    assert (
        await _rejected(client.call("AppGetFamilyList"))
        == "InvalidParameterValue.InvalidAccessToken"
    )
    cloud.token_lifetime = 60
    await client.login()
    await client.call("AppLogoutUser")
    assert await _rejected(client.call("AppGetUser")) == "InvalidParameterValue.InvalidAccessToken"


async def test_listing_and_state(cloud: TencentCloud, client: Client) -> None:
    await client.login()
    families = api.parse_family_list(
        await client.call("AppGetFamilyList", api.family_list_params())
    )
    family = families.items[0].family_id
    first = api.parse_device_list(
        await client.call("AppGetFamilyDeviceList", api.device_list_params(family, 0, 3)), family
    )
    assert first.total == 4 and len(first.items) == 3 and first.next_offset(0) == 3
    rest = api.parse_device_list(
        await client.call("AppGetFamilyDeviceList", api.device_list_params(family, 3, 3))
    )
    ids = [d.device_id for d in first.items + rest.items]
    assert ids == cloud.device_ids()
    bad = {"FamilyId": family, "RoomId": "", "Offset": 0, "Limit": 51}
    assert await _rejected(client.call("AppGetFamilyDeviceList", bad)) == "InvalidParameterValue"
    assert await _rejected(
        client.call("AppGetFamilyDeviceList", {**bad, "FamilyId": "x", "Limit": 5})
    ) == ("UnauthorizedOperation.NoPermissionToFamily")
    cloud.devices[ids[1]].online = False
    statuses = api.parse_device_statuses(
        await client.call("AppGetDeviceStatuses", api.device_statuses_params(ids))
    )
    assert statuses == {ids[0]: True, ids[1]: False, ids[2]: True, ids[3]: True}
    values, stamps = api.parse_device_data(
        await client.call("AppGetDeviceData", api.device_data_params(ids[0]))
    )
    assert values == {"power_switch": 0, "brightness": 50, "color": 0} and set(stamps) == set(
        values
    )
    products = api.parse_products(
        await client.call("AppGetProducts", api.products_params([LIGHT_PRODUCT, SENSOR_PRODUCT]))
    )
    assert isinstance(products[LIGHT_PRODUCT].template, dict)  # object, as the seed prints it
    assert isinstance(products[SENSOR_PRODUCT].template, str)  # string, as the JS SDK parses it
    assert await _rejected(
        client.call("AppGetDeviceData", {"ProductId": "X", "DeviceName": "y"})
    ) == ("ResourceNotFound.DeviceNotExist")
    assert await _rejected(client.call("AppNoSuchThing")) == "InvalidAction"


# --------------------------------------------------------------------------------------------
# WebSocket


async def test_pushes_need_active_push_and_trace(cloud: TencentCloud, client: Client) -> None:
    token = await client.login()
    light = cloud.device_ids()[0]
    async with connect(cloud.ws_url, compression=None) as bare:
        await bare.send(ws.heartbeat_frame("h0", [light], token))
        reply = await recv(bare)
        assert isinstance(reply, ws.Reply) and ws.yunapi_result(reply)["RequestId"] == "h0"
        assert cloud.report(light, {"brightness": 1}) == 0  # no ActivePush: nothing is pushed
    async with subscribed(cloud, token, [light]) as conn:
        assert cloud.report(light, {"brightness": 2}) == 1
        change = await recv_push(conn)
        decoded = ws.decode_device_change(change, now_ms=0)
        assert decoded.events[0].props == {"brightness": 2}  # type: ignore[union-attr]
        cloud.trace_timeout = 0.0  # every trace is now too old
        assert cloud.report(light, {"brightness": 3}) == 0
        cloud.trace_timeout = 90.0
        assert cloud.stats["push_untraced"] == 1
        await conn.send(ws.heartbeat_frame("h1", [light], token))
        while not isinstance(reply := await recv(conn), ws.Reply):
            pass
        assert reply.req_id == "h1"
        assert cloud.report(light, {"brightness": 4}) == 1  # traced again


async def test_active_push_failure_form(cloud: TencentCloud, client: Client) -> None:
    await client.login()
    async with connect(cloud.ws_url, compression=None) as conn:
        await conn.send(ws.active_push_frame("a1", cloud.device_ids(), "bad-token"))
        reply = await recv(conn)
        assert isinstance(reply, ws.Reply) and reply.data == {"deviceIds": []} and reply.error == ""
        with pytest.raises(VendorError):
            ws.active_push_result(reply, cloud.device_ids())


async def test_heartbeat_errors(cloud: TencentCloud, client: Client) -> None:
    token = await client.login()
    devices = cloud.device_ids()
    async with subscribed(cloud, token, devices) as conn:
        cloud.heartbeat_errors(1)
        await conn.send(ws.heartbeat_frame("h1", devices, token))
        with pytest.raises(VendorError) as err:
            ws.yunapi_result(await recv(conn))  # type: ignore[arg-type]
        assert err.value.vendor_code == "-1"
        await conn.send(ws.heartbeat_frame("h2", ["OTHER/dev"], token))
        with pytest.raises(VendorError) as err:
            ws.yunapi_result(await recv(conn))  # type: ignore[arg-type]
        assert err.value.vendor_code == "UnauthorizedOperation.APPNoPermissionToStudioProduct"
        await conn.send(ws.heartbeat_frame("h3", devices, "expired"))
        with pytest.raises(VendorError) as err:
            ws.yunapi_result(await recv(conn))  # type: ignore[arg-type]
        assert err.value.code == "auth"
        # Any tokenapi action works over YunApi too.
        await conn.send(
            ws.yunapi_frame("y1", "AppGetDeviceData", api.device_data_params(devices[1]), token)
        )
        response = ws.yunapi_result(await recv(conn))  # type: ignore[arg-type]
        assert "temperature" in api.parse_device_data(response)[0]
        await conn.send(ws.hello_frame(5))
        reply = await recv(conn)
        assert isinstance(reply, ws.Reply) and reply.data == {"result": "hello world"}


async def test_idle_socket_closed() -> None:
    cloud = TencentCloud(idle_timeout=0.2)
    await cloud.start()
    try:
        async with connect(cloud.ws_url, compression=None) as conn:
            await asyncio.wait_for(conn.wait_closed(), 5)
            assert conn.close_code == 1000
        assert cloud.stats["idle_closed"] == 1
    finally:
        await cloud.stop()


async def test_control_and_actions(cloud: TencentCloud, client: Client) -> None:
    token = await client.login()
    light, sensor = cloud.device_ids()[:2]
    async with subscribed(cloud, token, [light, sensor]) as conn:
        await client.call(
            "AppControlDeviceData", api.control_params(light, {"power_switch": 1, "brightness": 80})
        )
        control = await recv_push(conn, type="Property", subtype="Push")
        (ev,) = ws.decode_device_change(control, now_ms=0).events
        assert ev.event_id == "control"  # type: ignore[union-attr]
        report = await recv_push(conn, type="Property", subtype="Report")
        (change,) = ws.decode_device_change(report, now_ms=0).events
        assert change.props == {"power_switch": 1, "brightness": 80}  # type: ignore[union-attr]
        assert cloud.devices[light].values["power_switch"] == 1
        for bad in ({"brightness": 101}, {"nope": 1}, {"color": 7}):
            assert await _rejected(
                client.call("AppControlDeviceData", api.control_params(light, bad))
            ) == ("InvalidParameterValue")
        read_only = api.control_params(sensor, {"temperature": 1.0})
        assert (
            await _rejected(client.call("AppControlDeviceData", read_only))
            == "InvalidParameterValue"
        )
        garbled = {**api.control_params(light, {"brightness": 1}), "Data": "{oops"}
        assert (
            await _rejected(client.call("AppControlDeviceData", garbled))
            == "InvalidParameterValue.InvalidJSON"
        )

        sync = api.parse_action_result(
            await client.call(
                "AppCallDeviceActionSync", api.action_params(light, "light_blink", {"time": 3})
            )
        )
        assert sync.ok and sync.output == {"result": 1} and sync.client_token
        pending = api.parse_action_result(
            await client.call(
                "AppCallDeviceActionAsync", api.action_params(light, "light_blink", {"color": 1})
            )
        )
        assert pending.status == "Sent"
        reply_push = await recv_push(conn, type="Action", subtype="Report")
        (reply,) = ws.decode_device_change(reply_push, now_ms=0).events
        assert reply.client_token == pending.client_token and reply.output == {"result": 1}  # type: ignore[union-attr]
        assert await _rejected(
            client.call("AppCallDeviceActionSync", api.action_params(light, "nope", {}))
        ) == ("InvalidParameterValue")
        cloud.set_online(light, False)
        offline = await recv_push(conn, subtype="Offline")
        assert offline.device == light
        assert await _rejected(
            client.call("AppControlDeviceData", api.control_params(light, {"brightness": 1}))
        ) == ("FailedOperation.DeviceOffline")


async def test_faults_over_http(cloud: TencentCloud, client: Client) -> None:
    base = cloud.api_url.split("/api/")[0]
    async with first_light_pushes(client) as (light, conn):
        async with client.http.post(f"{base}/_control/garble", json={"count": 4}) as resp:
            assert resp.status == 200
        for _ in range(4):
            cloud.report(light, {"brightness": 5})
        bad = 0
        for _ in range(4):
            try:
                frame = await recv(conn)
                ws.decode_device_change(ws.parse_device_change(frame.params), now_ms=0)  # type: ignore[union-attr]
            except Exception:
                bad += 1
        assert bad == 4
        async with client.http.post(
            f"{base}/_control/report", json={"device": light, "props": {"color": 2}}
        ) as resp:
            assert (await resp.json())["result"] == 1
        change = await recv_push(conn)
        assert ws.decode_device_change(change, now_ms=0).events[0].props == {"color": 2}  # type: ignore[union-attr]
        async with client.http.post(f"{base}/_control/drop") as resp:
            assert (await resp.json())["result"] == 1
        await asyncio.wait_for(conn.wait_closed(), 5)
        async with client.http.post(f"{base}/_control/nope") as resp:
            assert resp.status == 404
        async with client.http.get(f"{base}/_control/state") as resp:
            assert (await resp.json())["stats"]["dropped"] == 1


async def test_sdk_envelope(cloud: TencentCloud, client: Client) -> None:
    cloud.envelope = "sdk"
    async with client.http.post(
        f"{cloud.api_url}/appapi", data=orjson.dumps(client.login_body())
    ) as resp:
        body = await resp.json()
    assert body["code"] == 0 and body["data"]["Data"]["Token"]
    assert api.parse_token(api.parse_response(body)).token


async def test_cli_simulate_tencent(capsys: pytest.CaptureFixture[str]) -> None:
    """``cloud2mqtt simulate tencent --port 0 …`` through the CLI's parser, served in-process."""
    from emulators.tencent import serve
    from gateway.cli import build_parser

    args = build_parser().parse_args(
        ["simulate", "tencent", "--port", "0", "--devices", "2", "--rate", "0"]
    )
    task = asyncio.create_task(serve(args))
    try:
        cfg: dict[str, Any] = {}
        async with asyncio.timeout(10):
            while not cfg:
                await asyncio.sleep(0.02)
                out = capsys.readouterr().out
                if out.strip():
                    cfg = orjson.loads(out.strip().splitlines()[-1])
        assert cfg["vendor"] == "tencent" and cfg["ws_url"].startswith("ws://127.0.0.1:")
        async with aiohttp.ClientSession() as http:
            base = cfg["api_url"].split("/api/")[0]
            async with http.get(f"{base}/_control/state") as resp:
                assert len((await resp.json())["devices"]) == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# --------------------------------------------------------------------------------------------
# seed-shaped quirks (issue 11 finding 6 and the real cloud's habits)


def _device_message(change: ws.DeviceChange) -> bytes:
    return base64.b64decode(change.payload)


async def _control(client: Client, fault: str, body: dict[str, Any]) -> aiohttp.ClientResponse:
    base = client.cloud.api_url.split("/api/")[0]
    async with client.http.post(f"{base}/_control/{fault}", json=body) as resp:
        await resp.read()
        return resp


async def test_report_timestamps_are_seconds_by_default(cloud: TencentCloud, client: Client) -> None:
    """Seed 002: a pushed report's ``timestamp`` is epoch seconds (or 0), while
    ``AppGetDeviceData`` keeps ``LastUpdate`` in ms."""
    async with first_light_pushes(client) as (light, conn):
        before = int(time.time())
        cloud.report(light, {"brightness": 7})
        cloud.event(light, "status_report", {"status": 0, "message": "ok"})
        report = orjson.loads(_device_message(await recv_push(conn, type="Property")))
        event = orjson.loads(_device_message(await recv_push(conn, type="Event")))
        after = int(time.time())
        for body in (report, event):
            assert isinstance(body["timestamp"], int) and before <= body["timestamp"] <= after
        reply = await client.call("AppGetDeviceData", api.device_data_params(light))
        last_update = orjson.loads(reply["Data"])["brightness"]["LastUpdate"]
        assert before * 1000 <= last_update < (after + 1) * 1000  # ms, as the seed gives it

        assert (await _control(client, "report_timestamps", {"unit": "zero"})).status == 200
        cloud.report(light, {"brightness": 8})
        assert orjson.loads(_device_message(await recv_push(conn)))["timestamp"] == 0
        assert (await _control(client, "report_timestamps", {"unit": "ms"})).status == 200
        cloud.report(light, {"brightness": 9})
        stamp = orjson.loads(_device_message(await recv_push(conn)))["timestamp"]
        assert before * 1000 <= stamp <= (int(time.time()) + 1) * 1000
        assert (await _control(client, "report_timestamps", {"unit": "us"})).status == 400


async def test_nul_padded_device_messages(cloud: TencentCloud, client: Client) -> None:
    async with first_light_pushes(client) as (light, conn):
        assert (await _control(client, "nul_pad", {"count": 3})).status == 200
        cloud.report(light, {"brightness": 11})
        change = await recv_push(conn)
        raw = _device_message(change)
        assert raw.endswith(b"}\x00\x00\x00")
        assert ws.decode_device_change(change, now_ms=0).events[0].props == {"brightness": 11}  # type: ignore[union-attr]
        assert (await _control(client, "nul_pad", {"count": -1})).status == 400
        assert (await _control(client, "nul_pad", {"count": 0})).status == 200
        cloud.report(light, {"brightness": 12})
        assert _device_message(await recv_push(conn)).endswith(b"}")


async def test_templates_as_objects_or_json_strings(cloud: TencentCloud, client: Client) -> None:
    await client.login()

    async def kinds() -> set[type]:
        reply = await client.call("AppGetProducts", {"ProductIds": [LIGHT_PRODUCT, SENSOR_PRODUCT]})
        return {type(p["DataTemplate"]) for p in reply["Products"]}

    assert await kinds() == {dict, str}  # the default: one of each
    assert (await _control(client, "templates", {"form": "string"})).status == 200
    assert await kinds() == {str}
    assert (await _control(client, "templates", {"form": "object"})).status == 200
    assert await kinds() == {dict}
    assert (await _control(client, "templates", {"form": "yaml"})).status == 400


async def test_silence_stops_reading_and_sending(cloud: TencentCloud, client: Client) -> None:
    """``silence``: the socket neither sends nor reads (no pong, no heartbeat reply) until it
    ends — unlike ``stall``, which still answers WebSocket pings."""
    async with first_light_pushes(client) as (light, conn):
        resp = await _control(client, "silence", {"seconds": 0.5})
        assert resp.status == 200
        (sock,) = cloud.sockets
        assert not sock.conn.transport.is_reading()
        cloud.report(light, {"brightness": 13})
        pong = await conn.ping()
        async with asyncio.timeout(10):
            while not sock.conn.transport.is_reading():
                await asyncio.sleep(0.02)
        await asyncio.wait_for(pong, 10)
        change = await recv_push(conn)  # held while silent, delivered after
        assert ws.decode_device_change(change, now_ms=0).events[0].props == {"brightness": 13}  # type: ignore[union-attr]
        assert cloud.stats["silenced"] == 1
