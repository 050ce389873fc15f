"""The Aliyun emulator as a server: signature checks, the CONNECT-checking MQTT front, bind rules.

Real sockets only: HTTP over aiohttp, MQTT through the front with paho (an independent client),
and the official ``alibabacloud-iot-api-gateway`` client as a peer of the emulator's verifier.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import paho.mqtt.client as paho
import pytest

from emulators.aliyun import LIGHT_PK, AliyunCloud
from gateway.mqtt import codec
from protocols.aliyun import (
    build_bind,
    build_request,
    down_topics,
    mqtt_credentials,
    sign_request,
    string_to_sign,
)
from tests.helpers import eventually


@pytest.fixture
async def cloud() -> AsyncIterator[AliyunCloud]:
    async with AliyunCloud(devices=2) as c:
        yield c


async def _post(cloud: AliyunCloud, path: str, params: dict[str, Any], *, secret: str | None = None,
                token: str | None = None, extra: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    body = build_request("1.0.0", params, token if token is not None else cloud.account.iot_token)
    headers = sign_request(cloud.app_key, secret or cloud.app_secret, "POST", path, extra, body=body)
    async with aiohttp.ClientSession() as http, http.post(cloud.url + path, data=body, headers=headers) as resp:
        raw = await resp.read()
        return resp.status, dict(resp.headers), orjson.loads(raw) if raw else None


async def test_signed_call_and_signature_rejection(cloud: AliyunCloud) -> None:
    status, _, doc = await _post(cloud, "/uc/listBindingByAccount", {"pageNo": 1, "pageSize": 1})
    assert status == 200 and doc["code"] == 200
    assert doc["data"]["total"] == 2 and len(doc["data"]["data"]) == 1

    status, headers, _ = await _post(cloud, "/uc/listBindingByAccount", {"pageNo": 1, "pageSize": 1}, secret="wrong")
    assert status == 401
    message = headers["X-Ca-Error-Message"]
    assert message.startswith("Invalid Signature, Server StringToSign:`POST")
    assert "\n" not in message and "/uc/listBindingByAccount" in message
    assert cloud.stats["signature_rejected"] == 1


async def test_colon_joined_signature_headers_are_accepted(cloud: AliyunCloud) -> None:
    body = build_request("1.0.0", {"input": "hi"})
    headers = {
        "accept": "application/json",
        "content-type": "application/json",
        "x-ca-key": cloud.app_key,
        "x-ca-nonce": "nonce-colon-1",
        "x-ca-timestamp": str(int(time.time() * 1000)),
        "x-ca-signature-headers": "x-ca-key:x-ca-nonce:x-ca-timestamp",  # the seed's spelling
    }
    from protocols.aliyun.signing import content_md5, sign

    headers["content-md5"] = content_md5(body)
    headers["x-ca-signature"] = sign(cloud.app_secret, string_to_sign("POST", "/kit/debug/ping", headers))
    async with aiohttp.ClientSession() as http, \
            http.post(cloud.url + "/kit/debug/ping", data=body, headers=headers) as resp:
        assert resp.status == 200
        assert (await resp.json(content_type=None))["data"] == "hi"
        # The same nonce again is a replay.
    async with aiohttp.ClientSession() as http, \
            http.post(cloud.url + "/kit/debug/ping", data=body, headers=headers) as resp:
        assert resp.status == 400 and resp.headers["X-Ca-Error-Message"] == "Nonce Used"


async def test_api_error_codes(cloud: AliyunCloud) -> None:
    _, _, doc = await _post(cloud, "/thing/tsl/get", {"iotId": "nope"})
    assert doc["code"] == 2063
    _, _, doc = await _post(cloud, "/thing/tsl/get", {"iotId": cloud.device_ids()[0]}, token="stale")
    assert doc["code"] == 401
    _, _, doc = await _post(cloud, "/uc/listBindingByAccount", {"pageNo": 0, "pageSize": 500})
    assert doc["code"] == 460
    light = cloud.device_ids(LIGHT_PK)[0]
    _, _, doc = await _post(cloud, "/thing/properties/set", {"iotId": light, "items": {"LastOnTime": "1"}})
    assert doc["code"] == 460  # read-only
    cloud.devices[light].status = 3
    _, _, doc = await _post(cloud, "/thing/properties/set", {"iotId": light, "items": {"Brightness": 1}})
    assert doc["code"] == 28504
    cloud.throttle(1)
    status, headers, _ = await _post(cloud, "/thing/tsl/get", {"iotId": light})
    assert status == 429 and headers["X-Ca-Error-Code"] == "T429PR"
    cloud.set_tsl_as_string(True)
    _, _, doc = await _post(cloud, "/thing/tsl/get", {"iotId": light})
    assert isinstance(doc["data"], str) and "LightSwitch" in doc["data"]


@pytest.mark.peer
async def test_peer_official_client_accepted_by_emulator(cloud: AliyunCloud) -> None:
    """The official IoT API client signs; the emulator's verifier (our signer) accepts it."""
    try:
        from alibabacloud_iot_api_gateway.client import Client
        from alibabacloud_iot_api_gateway.models import CommonParams, Config, IoTApiRequest
        from alibabacloud_tea_util.models import RuntimeOptions
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("alibabacloud-iot-api-gateway not installed")

    def call(secret: str) -> Any:
        client = Client(Config(app_key=cloud.app_key, app_secret=secret, domain=f"{cloud.host}:{cloud.port}"))
        req = IoTApiRequest(version="1.0", params={"input": "peer"}, request=CommonParams(api_ver="1.0.0"))
        return client.do_request("/kit/debug/ping", "http", "POST", None, req, RuntimeOptions())

    ok = await asyncio.to_thread(call, cloud.app_secret)
    assert ok.status_code == 200 and orjson.loads(ok.body)["data"] == "peer"
    bad = await asyncio.to_thread(call, "not-the-secret")
    assert bad.status_code == 401


class _Paho:
    """A plain paho client through the emulator's MQTT front."""

    def __init__(self, port: int, client_id: str, username: str, password: str, v5: bool = False) -> None:
        self.rc: list[Any] = []
        self.messages: list[tuple[str, bytes]] = []
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        )
        self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.disconnected.set()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.subacks: set[int] = set()
        self.client.on_subscribe = lambda c, u, mid, *a: self.subacks.add(mid)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.rc.append(rc)
        self.connected.set()

    async def wait(self, event: threading.Event) -> None:
        await eventually(event.is_set, "the paho client's event")

    async def subscribe(self, topics: list[str]) -> None:
        """Subscribe and wait for every SUBACK (no fixed sleep)."""
        mids = {self.client.subscribe(topic, 1)[1] for topic in topics}
        await eventually(lambda: mids <= self.subacks, f"SUBACKs for {topics}")

    async def wait_message(self, suffix: str) -> bytes:
        def found() -> bytes | None:
            return next((p for t, p in self.messages if t.endswith(suffix)), None)

        payload: bytes = await eventually(found, f"a message on …{suffix}")
        return payload

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@contextlib.asynccontextmanager
async def front_client(
    cloud: AliyunCloud,
    secret: str | None = None,
    *,
    device: tuple[str, str] | None = None,
    timestamp: int | None = None,
    v5: bool = False,
) -> AsyncIterator[_Paho]:
    """A paho client through the front once its CONNECT is answered (closed at the end): the
    app's own credentials unless ``secret`` or ``device`` (product key, name) say otherwise."""
    pk, dn = device or (cloud.app_product_key, cloud.app_device_name)
    ts = int(time.time() * 1000) if timestamp is None else timestamp
    creds = mqtt_credentials(pk, dn, secret or cloud.app_device_secret, ts, secure_mode=3)
    client = _Paho(cloud.mqtt_port, creds.client_id, creds.username, creds.password, v5=v5)
    try:
        await client.wait(client.connected)
        yield client
    finally:
        client.close()


@pytest.mark.parametrize("v5", [False, True])
async def test_connect_refused_for_bad_credentials(cloud: AliyunCloud, v5: bool) -> None:
    async with front_client(cloud, "wrong-secret", timestamp=1, v5=v5) as client:
        assert client.rc[0].is_failure
        assert client.rc[0].getName() == "Bad user name or password"
        assert cloud.stats["connect_refused"] == 1
        assert cloud.stats["connect_ok"] == 0
    # An unknown device is "not authorized".
    async with front_client(cloud, "x", device=("otherPk", "otherDn"), timestamp=1) as client:
        assert client.rc[0].getName() == "Not authorized"


async def test_bind_push_and_bind_codes(cloud: AliyunCloud) -> None:
    pk, dn = cloud.app_product_key, cloud.app_device_name
    async with front_client(cloud) as client:
        assert not client.rc[0].is_failure
        await client.subscribe(list(down_topics(pk, dn)))
        topic, payload = build_bind(pk, dn, "bad-token", "x", msg_id="b1")
        client.client.publish(topic, payload, 1)
        reply = orjson.loads(await client.wait_message("account/bind_reply"))
        assert reply == {"id": "b1", "code": 2043, "message": "check iotToken failed"}
        client.messages.clear()
        cloud.set_bind_code(2152)
        topic, payload = build_bind(pk, dn, cloud.account.iot_token, "x", msg_id="b2")
        client.client.publish(topic, payload, 1)
        assert orjson.loads(await client.wait_message("account/bind_reply"))["code"] == 2152
        client.messages.clear()
        cloud.set_bind_code(None)
        topic, payload = build_bind(pk, dn, cloud.account.iot_token, "x", msg_id="b3")
        client.client.publish(topic, payload, 1)
        assert orjson.loads(await client.wait_message("account/bind_reply"))["code"] == 200
        light = cloud.device_ids(LIGHT_PK)[0]
        cloud.set_property(light, {"Brightness": 7})
        push = orjson.loads(await client.wait_message("thing/properties"))
        assert push["params"]["iotId"] == light
        assert push["params"]["items"]["Brightness"]["value"] == 7
        cloud.topo_add("sub1", light)
        topo = orjson.loads(await client.wait_message("thing/topo/add/status"))
        assert topo["param"]["subIotId"] == "sub1"


async def test_push_after_bind_comes_in_the_same_write_as_bind_reply(cloud: AliyunCloud) -> None:
    """The ``push_after_bind`` knob: the bind reply, an event and a property report of the
    account's first device reach the app in one write, so a client reads them in one batch."""
    pk, dn = cloud.app_product_key, cloud.app_device_name
    creds = mqtt_credentials(pk, dn, cloud.app_device_secret, int(time.time() * 1000), secure_mode=3)
    cloud.set_push_after_bind()
    reader, writer = await asyncio.open_connection("127.0.0.1", cloud.mqtt_port)
    parser = codec.Parser()

    async def next_batch() -> list[codec.Packet]:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            assert chunk, "the front closed the connection"
            if batch := parser.feed(chunk):
                return batch

    try:
        writer.write(codec.encode_connect(codec.Connect(
            creds.client_id, protocol=4, username=creds.username, password=creds.password.encode(),
        )))  # fmt: skip
        assert [p[0] for p in await next_batch()] == [codec.CONNACK]
        writer.write(codec.encode_subscribe(1, [(t, 1) for t in down_topics(pk, dn)], 4))
        assert [p[0] for p in await next_batch()] == [codec.SUBACK]
        topic, payload = build_bind(pk, dn, cloud.account.iot_token, "x", msg_id="b1")
        writer.write(codec.encode_publish(topic, payload))
        batch = [codec.decode_publish(flags, body, 4) for ptype, flags, body in await next_batch()]
        assert [m.topic.rsplit("/app/down/", 1)[1] for m in batch] == [
            "account/bind_reply", "thing/events", "thing/properties",
        ]
        assert orjson.loads(batch[0].payload)["code"] == 200
        light = cloud.device_ids(LIGHT_PK)[0]
        event = orjson.loads(batch[1].payload)["params"]
        assert event["iotId"] == light and event["identifier"] == "Error"
        assert orjson.loads(batch[2].payload)["params"]["iotId"] == light
        assert cloud.stats["pushes_after_bind"] == 2
    finally:
        writer.close()


async def test_front_refuses_root_wildcard(cloud: AliyunCloud) -> None:
    async with front_client(cloud) as client:
        client.client.subscribe("#", 1)
        await client.wait(client.disconnected)
        assert cloud.stats["acl_refused"] == 1


async def test_control_endpoint(cloud: AliyunCloud) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(cloud.url + "/_control/throttle", json={"count": 2}) as resp:
            assert (await resp.json())["ok"] is True
        assert cloud.throttle_count == 2
        async with http.post(cloud.url + "/_control/nonsense", json={}) as resp:
            assert resp.status == 404
        async with http.get(cloud.url + "/_control/stats") as resp:
            assert isinstance(await resp.json(), dict)
