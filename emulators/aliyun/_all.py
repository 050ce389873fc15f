"""An emulated Aliyun Living IoT platform (seed 004): API gateway + MQTT app channel.

Two endpoints, as the real platform has:

**HTTP API gateway** (aiohttp). Every request is checked as the gateway would (seed 3. 加签机制):
``X-Ca-Key`` must be the AppKey (else 400 ``Invalid AppKey``); ``X-Ca-Signature`` must equal our
own HMAC-SHA256 over our own string-to-sign, built from the names in ``X-Ca-Signature-Headers``
(``,`` or ``:`` joined, both accepted), else **401** with ``X-Ca-Error-Message: Invalid
Signature, Server StringToSign:`…``` (newlines removed, as the seed says); a ``Content-MD5`` must
match the body; an ``X-Ca-Timestamp`` must be within 15 minutes; a nonce may not repeat. Then
flow control (HTTP 429 ``T429PR`` when throttled), then the service: the ``{id, version,
request: {apiVer, iotToken}, params}`` envelope, the ``iotToken``, and the thing APIs, answering
``{code, message, localizedMsg, data}`` with the seed's codes (401 token, 460 parameters, 2063
unknown iotId, 2065 not bound, 28504 offline).

**MQTT endpoint**: a small asyncio TCP front reads the client's CONNECT (``gateway.mqtt.codec``),
verifies the Aliyun credentials (client id extension, ``deviceName&productKey``, HMAC password;
``protocols.aliyun.verify_credentials``) and answers a refused CONNACK (4 bad credentials,
5 unknown device; 0x86/0x87 for MQTT 5) on mismatch. Otherwise it splices the connection byte
for byte to a private mosquitto that the emulator starts itself (no home-made broker). The
front watches (does not alter) what the client sends: SUBSCRIBE to a topic outside the
client's own ``/sys/{pk}/{dn}/`` tree (such as the root ``#``) or PUBLISH elsewhere closes the
connection, as the real platform refuses them. The emulator's own client (``MqttClient``)
connects to mosquitto directly: it answers ``app/up/account/bind`` (200; 2043 rejected
iotToken; 2152 account active elsewhere) and ``unbind``, and publishes the device pushes on
``/sys/{pk}/{dn}/app/down/...`` to every app bound to the owning account. A binding ends when
its MQTT connection closes, so a reconnecting client must bind again.

Devices are simulated from their product's TSL: property changes (``push_interval`` for
random sensor drift), events, status; ``set``/``service invoke`` change devices and push the
change.

Misbehaviour, in-process or by ``POST /_control/<fault>`` with a JSON body:

- ``drop_mqtt``                      close every MQTT connection;
- ``throttle``  ``{"count": n}``     the next n API calls get HTTP 429 (``-1``: until cleared, 0 clears);
- ``reject_token``                   the current iotToken becomes invalid (API 401, bind 2043);
- ``bind_code`` ``{"code": 2152}``   answer binds with this code (``null`` clears);
- ``garble``    ``{"count": n}``     the next n pushes are not JSON;
- ``refuse_connect`` ``{"on": true}`` refuse every CONNECT (rc 5);
- ``tsl_as_string`` ``{"on": true}`` ``/thing/tsl/get`` returns ``data`` as a JSON string;
- ``set_property`` ``{"iot_id", "props", "time"?}``, ``emit_event`` ``{"iot_id", "identifier",
  "value", "type"}``, ``set_status`` ``{"iot_id", "status"}``, ``add_device``, ``remove_device``,
  ``topo_add`` ``{"sub_iot_id", "gw_iot_id", "status"}``, ``ota_progress`` ``{"iot_id", "step"}``;
- ``reset``                          forget pending faults.

``GET /_control/stats`` returns the counters tests assert on (API calls per path, binds,
CONNECTs accepted and refused, 429s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import itertools
import logging
import random
import secrets
import ssl
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from gateway.mosquitto import Mosquitto
from gateway.mqtt import codec
from gateway.mqtt.client import MqttClient
from protocols.aliyun import (
    API,
    build_response,
    content_md5,
    down_topic,
    encode_push,
    parse_client_id,
    parse_request,
    signature_for,
    verify_credentials,
)
from protocols.model import RemoteProtocolError

from ..base import SimulatedCloud, add_common_arguments, control_response, serve_forever

__all__ = ["AliyunCloud", "add_arguments", "demo_cloud", "serve"]

log = logging.getLogger("cloud2mqtt.sim.aliyun")

NONCE_WINDOW_MS = 15 * 60 * 1000


def now_ms() -> int:
    return int(time.time() * 1000)


# ----------------------------------------------------------------------------------- products

LIGHT_PK = "a1LightPk01"
SENSOR_PK = "a1SensorPk2"

PRODUCTS: dict[str, dict[str, Any]] = {
    LIGHT_PK: {
        "schema": "http://aliyun/iot/thing/desc/schema",
        "profile": {"productKey": LIGHT_PK},
        "properties": [
            {"identifier": "LightSwitch", "name": "主灯开关", "accessMode": "rw", "required": True,
             "dataType": {"type": "bool", "specs": {"0": "关闭", "1": "开启"}}},
            {"identifier": "Brightness", "name": "亮度", "accessMode": "rw",
             "dataType": {"type": "int", "specs": {"min": "0", "max": "100", "step": "1", "unit": "%"}}},
            {"identifier": "ColorTemperature", "name": "色温", "accessMode": "rw",
             "dataType": {"type": "int", "specs": {"min": "2700", "max": "6500", "step": "100", "unit": "K"}}},
            {"identifier": "WorkMode", "name": "工作模式", "accessMode": "rw",
             "dataType": {"type": "enum", "specs": {"0": "手动", "1": "阅读", "2": "影院"}}},
            {"identifier": "HSVColor", "name": "颜色", "accessMode": "rw",
             "dataType": {"type": "struct", "specs": [
                 {"identifier": "Hue", "name": "色调", "dataType": {"type": "double", "specs": {"min": "0", "max": "360"}}},
                 {"identifier": "Saturation", "name": "饱和度", "dataType": {"type": "double", "specs": {"min": "0", "max": "100"}}},
                 {"identifier": "Value", "name": "明度", "dataType": {"type": "double", "specs": {"min": "0", "max": "100"}}}]}},
            {"identifier": "LastOnTime", "name": "上次开灯", "accessMode": "r",
             "dataType": {"type": "date", "specs": {}}},
        ],
        "events": [
            {"identifier": "post", "name": "post", "type": "info", "method": "thing.event.property.post",
             "outputData": []},
            {"identifier": "Error", "name": "故障上报", "type": "error", "method": "thing.event.Error.post",
             "outputData": [{"identifier": "ErrorCode", "name": "故障代码",
                             "dataType": {"type": "enum", "specs": {"0": "正常", "1": "过热"}}}]},
        ],
        "services": [
            {"identifier": "set", "name": "set", "callType": "async", "method": "thing.service.property.set",
             "inputData": [], "outputData": []},
            {"identifier": "get", "name": "get", "callType": "sync", "method": "thing.service.property.get",
             "inputData": ["LightSwitch", "Brightness"], "outputData": []},
            {"identifier": "ToggleLightSwitch", "name": "翻转主灯开关", "callType": "async",
             "method": "thing.service.ToggleLightSwitch", "inputData": [], "outputData": []},
            {"identifier": "Blink", "name": "闪烁", "callType": "sync", "method": "thing.service.Blink",
             "inputData": [{"identifier": "times", "name": "次数",
                            "dataType": {"type": "int", "specs": {"min": "1", "max": "10"}}}],
             "outputData": [{"identifier": "blinked", "name": "已闪烁",
                             "dataType": {"type": "int", "specs": {}}}]},
        ],
    },
    SENSOR_PK: {
        "schema": "http://aliyun/iot/thing/desc/schema",
        "profile": {"productKey": SENSOR_PK},
        "properties": [
            {"identifier": "CurrentTemperature", "name": "温度", "accessMode": "r",
             "dataType": {"type": "float", "specs": {"min": "-40", "max": "120", "step": "0.1", "unit": "°C"}}},
            {"identifier": "CurrentHumidity", "name": "湿度", "accessMode": "r",
             "dataType": {"type": "int", "specs": {"min": "0", "max": "100", "step": "1", "unit": "%"}}},
            {"identifier": "BatteryPercentage", "name": "电量", "accessMode": "r",
             "dataType": {"type": "double", "specs": {"min": "0", "max": "100", "unit": "%"}}},
            {"identifier": "Label", "name": "标签", "accessMode": "rw",
             "dataType": {"type": "text", "specs": {"length": "32"}}},
            {"identifier": "History", "name": "历史", "accessMode": "r",
             "dataType": {"type": "array", "specs": {"size": "8", "item": {"type": "double"}}}},
            {"identifier": "ReportInterval", "name": "上报间隔", "accessMode": "rw",
             "dataType": {"type": "int", "specs": {"min": "10", "max": "3600", "unit": "s"}}},
        ],
        "events": [
            {"identifier": "LowBattery", "name": "低电量", "type": "alert", "method": "thing.event.LowBattery.post",
             "outputData": [{"identifier": "level", "name": "电量",
                             "dataType": {"type": "double", "specs": {}}}]},
        ],
        "services": [
            {"identifier": "Calibrate", "name": "校准", "callType": "sync", "method": "thing.service.Calibrate",
             "inputData": [{"identifier": "offset", "name": "偏移",
                            "dataType": {"type": "float", "specs": {"min": "-5", "max": "5"}}}],
             "outputData": [{"identifier": "result", "name": "结果", "dataType": {"type": "text", "specs": {}}}]},
        ],
    },
}

_INITIAL: dict[str, dict[str, Any]] = {
    LIGHT_PK: {"LightSwitch": 0, "Brightness": 60, "ColorTemperature": 4000, "WorkMode": 0,
               "HSVColor": {"Hue": 30.0, "Saturation": 50.0, "Value": 80.0}, "LastOnTime": "1700000000000"},
    SENSOR_PK: {"CurrentTemperature": 21.5, "CurrentHumidity": 40, "BatteryPercentage": 93.0,
                "Label": "hall", "History": [21.0, 21.2], "ReportInterval": 60},
}


# ----------------------------------------------------------------------------------- state


class _Reject(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class SimDevice:
    iot_id: str
    product_key: str
    device_name: str
    nick_name: str
    owner: str  # identityId
    status: int = 1
    status_time: int = field(default_factory=now_ms)
    props: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {"time", "value"}

    def listing(self) -> dict[str, Any]:
        return {
            "identityId": self.owner,
            "iotId": self.iot_id,
            "deviceName": self.device_name,
            "productKey": self.product_key,
            "productName": "智能灯" if self.product_key == LIGHT_PK else "温湿度传感器",
            "productModel": "L-1" if self.product_key == LIGHT_PK else "TH-2",
            "categoryKey": "Light" if self.product_key == LIGHT_PK else "TempHumiditySensor",
            "nickName": self.nick_name,
            "netType": "NET_WIFI",
            "thingType": "DEVICE",
            "status": self.status,
            "owned": 1,
            "nodeType": "DEVICE",
            "identityAlias": "133xxx",
            "isSubDevice": False,
            "gmtModified": self.status_time,
        }


@dataclass
class SimAccount:
    identity_id: str
    iot_token: str
    refresh_token: str
    token_expires_ms: int


@dataclass(eq=False)
class _Front:
    """One client connection through the MQTT front, spliced to mosquitto."""

    writer: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    identity: tuple[str, str] | None = None  # (productKey, deviceName)

    def close(self) -> None:
        # abort(), not close(): a dropped link is abrupt, and a TLS close would wait for a peer
        # that may never answer.
        for w in (self.writer, self.upstream):
            if w is not None:
                with contextlib.suppress(Exception):
                    w.transport.abort()


def _topic_allowed(topic: str, pk: str, dn: str) -> bool:
    return topic.startswith(f"/sys/{pk}/{dn}/")


def _subscribe_filters(body: bytes, protocol: int) -> list[str]:
    pos = 2
    if protocol == 5:
        _, pos = codec.decode_props(body, pos)
    filters = []
    while pos < len(body):
        n = int.from_bytes(body[pos : pos + 2], "big")
        filters.append(body[pos + 2 : pos + 2 + n].decode("utf-8", "replace"))
        pos += 2 + n + 1
    return filters


class AliyunCloud(SimulatedCloud):
    """One emulated Living platform: an app (AppKey/AppSecret + its MQTT virtual device) and
    one user account with devices."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        mqtt_port: int = 0,
        mqtt_ssl: ssl.SSLContext | None = None,
        app_key: str = "28365017",
        app_secret: str = "emulator-app-secret",
        app_product_key: str = "a1AppPk0001",
        app_device_name: str = "appDevice0001",
        app_device_secret: str = "emulator-device-secret",
        identity_id: str = "50e0op0c2b1d6c8e5bd4a1f0e3b5d3c2",
        devices: int = 3,
        token_lifetime: float = 72000.0,
        push_interval: float | None = None,
        page_size_max: int = 100,
        seed: int = 0,
    ) -> None:
        self.host = host
        self.port = port
        self.mqtt_port = mqtt_port
        self.mqtt_ssl = mqtt_ssl  # TLS on the MQTT front (securemode 2), as the real endpoint
        self.app_key = app_key
        self.app_secret = app_secret
        self.app_devices: dict[tuple[str, str], str] = {(app_product_key, app_device_name): app_device_secret}
        self.app_product_key = app_product_key
        self.app_device_name = app_device_name
        self.app_device_secret = app_device_secret
        self.token_lifetime = token_lifetime
        self.push_interval = push_interval
        self.page_size_max = page_size_max
        self.rng = random.Random(seed)
        self.products = copy.deepcopy(PRODUCTS)
        self.account = SimAccount(
            identity_id, self._new_token(), self._new_token(), now_ms() + int(token_lifetime * 1000)
        )
        self.devices: dict[str, SimDevice] = {}
        self.binds: dict[tuple[str, str], str] = {}  # app (pk, dn) -> identityId
        self.stats: Counter[str] = Counter()
        # faults
        self.throttle_count = 0
        self.bind_code: int | None = None
        self.garble_count = 0
        self.refuse_all = False
        self.tsl_as_string = False
        self._nonces: deque[tuple[int, str]] = deque()
        self._nonce_set: set[str] = set()
        self._fronts: set[_Front] = set()
        self._seq = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._front_server: asyncio.Server | None = None
        self.broker: Mosquitto | None = None
        self.client: MqttClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        for i in range(devices):
            self.add_device(LIGHT_PK if i % 2 == 0 else SENSOR_PK)

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self.broker = Mosquitto()
        await self.broker.start()
        self.client = MqttClient(
            self.broker.host,
            self.broker.port,
            client_id=f"aliyun-emulator-{uuid.uuid4().hex[:8]}",
            protocol=4,
            keepalive=30,
            on_message=self._on_up,
            reconnect=True,
        )
        await self.client.connect()
        await self.client.subscribe([("/sys/+/+/app/up/account/bind", 1), ("/sys/+/+/app/up/account/unbind", 1)])
        self._front_server = await asyncio.start_server(
            self._front, self.host, self.mqtt_port, ssl=self.mqtt_ssl
        )
        self.mqtt_port = self._front_server.sockets[0].getsockname()[1]
        app = web.Application()
        app.router.add_post("/_control/{fault}", self._control)
        app.router.add_get("/_control/stats", self._stats)
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = self._runner.addresses[0][1]
        if self.push_interval:
            self._tasks.append(asyncio.create_task(self._drift(self.push_interval)))
        log.info("aliyun emulator: API %s, MQTT %s:%s", self.url, self.host, self.mqtt_port)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._front_server is not None:
            self._front_server.close()
            for front in list(self._fronts):
                front.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._front_server.wait_closed(), 2)
            self._front_server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.client is not None:
            await self.client.disconnect()
            self.client = None
        if self.broker is not None:
            await self.broker.stop()
            self.broker.cleanup()
            self.broker = None

    def account_config(self, name: str = "demo", **overrides: Any) -> dict[str, Any]:
        """The ``[[accounts]]`` table that points a gateway at this emulator."""
        cfg: dict[str, Any] = {
            "vendor": "aliyun",
            "name": name,
            "api_url": self.url,
            "app_key": self.app_key,
            "app_secret": self.app_secret,
            "iot_token": self.account.iot_token,
            "mqtt_host": self.host,
            "mqtt_port": self.mqtt_port,
            "tls": self.mqtt_ssl is not None,
            "product_key": self.app_product_key,
            "device_name": self.app_device_name,
            "device_secret": self.app_device_secret,
        }
        cfg.update(overrides)
        return cfg

    # ------------------------------------------------------------------ driving devices

    @staticmethod
    def _new_token() -> str:
        return secrets.token_hex(16)

    def add_device(self, product_key: str = LIGHT_PK, nick_name: str | None = None, iot_id: str | None = None) -> str:
        n = next(self._seq)
        iot_id = iot_id or f"{secrets.token_hex(8)}{n:06d}"
        ts = now_ms()
        props = {k: {"time": ts, "value": copy.deepcopy(v)} for k, v in _INITIAL.get(product_key, {}).items()}
        kind = "灯" if product_key == LIGHT_PK else "传感器"
        self.devices[iot_id] = SimDevice(
            iot_id, product_key, f"dev{n:04d}", nick_name or f"{kind} {n}", self.account.identity_id, props=props
        )
        return iot_id

    def remove_device(self, iot_id: str) -> None:
        self.devices.pop(iot_id)

    def device_ids(self, product_key: str | None = None) -> list[str]:
        return [d.iot_id for d in self.devices.values() if product_key is None or d.product_key == product_key]

    def set_property(self, iot_id: str, props: dict[str, Any], time: int | None = None) -> None:
        """The device reports property values (pushed to bound apps); ``time`` may be in the past."""
        dev = self.devices[iot_id]
        ts = time if time is not None else now_ms()
        items = {}
        for key, value in props.items():
            item = {"time": ts, "value": value}
            current = dev.props.get(key)
            if current is None or current["time"] <= ts:
                dev.props[key] = item
            items[key] = item
        self._push(dev, "thing/properties", "thing.properties",
                   {"iotId": iot_id, "productKey": dev.product_key, "deviceName": dev.device_name, "items": items})

    def emit_event(self, iot_id: str, identifier: str, value: dict[str, Any] | None = None, type: str = "info") -> None:
        dev = self.devices[iot_id]
        self._push(dev, "thing/events", "thing.events", {
            "identifier": identifier, "name": identifier, "type": type, "iotId": iot_id,
            "productKey": dev.product_key, "deviceName": dev.device_name,
            "value": value or {}, "time": now_ms(),
        })

    def set_status(self, iot_id: str, status: int) -> None:
        dev = self.devices[iot_id]
        dev.status = status
        dev.status_time = now_ms()
        self._push(dev, "thing/status", "thing.status", {
            "iotId": iot_id, "productKey": dev.product_key, "deviceName": dev.device_name,
            "status": {"time": dev.status_time, "value": status},
        })

    def topo_add(self, sub_iot_id: str, gw_iot_id: str, status: int = 0) -> None:
        gw = self.devices[gw_iot_id]
        self._push(gw, "thing/topo/add/status", "thing.topo.add.status", {
            "status": status, "subIotId": sub_iot_id, "subProductKey": "", "subDeviceName": "",
            "oldGwIotId": "", "oldGwProductKey": "", "oldGwDeviceName": "",
            "newGwIotId": gw_iot_id, "newGwProductKey": gw.product_key, "newGwDeviceName": gw.device_name,
        }, key="param")

    def ota_progress(self, iot_id: str, step: int, upgrade_status: int = 1) -> None:
        dev = self.devices[iot_id]
        self._push(dev, "ota/device/forward", "ota.device.forward", {
            "iotId": iot_id, "srcVersion": "1.0.0", "destVersion": "1.1.0", "step": step,
            "desc": "", "upgradeStatus": upgrade_status,
        })

    # ------------------------------------------------------------------ faults

    def drop_mqtt(self) -> int:
        n = len(self._fronts)
        for front in list(self._fronts):
            front.close()
        return n

    def throttle(self, count: int = 1) -> None:
        self.throttle_count = count

    def reject_token(self) -> None:
        self.account.iot_token = self._new_token()

    def set_bind_code(self, code: int | None = None) -> None:
        self.bind_code = code

    def garble(self, count: int = 1) -> None:
        self.garble_count = count

    def refuse_connect(self, on: bool = True) -> None:
        self.refuse_all = on

    def set_tsl_as_string(self, on: bool = True) -> None:
        self.tsl_as_string = on

    def reset(self) -> None:
        self.throttle_count = 0
        self.bind_code = None
        self.garble_count = 0
        self.refuse_all = False

    async def _control(self, request: web.Request) -> web.Response:
        return await control_response(request, {
            "drop_mqtt": self.drop_mqtt,
            "throttle": self.throttle,
            "reject_token": self.reject_token,
            "bind_code": self.set_bind_code,
            "garble": self.garble,
            "refuse_connect": self.refuse_connect,
            "tsl_as_string": self.set_tsl_as_string,
            "set_property": self.set_property,
            "emit_event": self.emit_event,
            "set_status": self.set_status,
            "add_device": self.add_device,
            "remove_device": self.remove_device,
            "topo_add": self.topo_add,
            "ota_progress": self.ota_progress,
            "reset": self.reset,
        })  # fmt: skip

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(dict(self.stats))

    # ------------------------------------------------------------------ pushes

    def _push(self, dev: SimDevice, suffix: str, method: str, params: dict[str, Any], key: str = "params") -> None:
        payload = encode_push(str(next(self._seq)), method, params, key)
        for (pk, dn), identity in list(self.binds.items()):
            if identity != dev.owner:
                continue
            out = payload
            if self.garble_count:
                self.garble_count -= 1
                out = b"\x00{garbled" + payload[:10]
            if self.client is not None:
                self.client.publish(down_topic(pk, dn, suffix), out, qos=1)
                self.stats["pushes"] += 1

    async def _drift(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            sensors = [d for d in self.devices.values() if d.product_key == SENSOR_PK and d.status == 1]
            if not sensors:
                continue
            dev = self.rng.choice(sensors)
            temp = round(float(dev.props["CurrentTemperature"]["value"]) + self.rng.uniform(-0.5, 0.5), 1)
            self.set_property(dev.iot_id, {"CurrentTemperature": temp})

    # ------------------------------------------------------------------ MQTT: bind / unbind

    def _on_up(self, topic: str, payload: bytes, props: dict[str, Any]) -> None:
        parts = topic.split("/")
        # /sys/{pk}/{dn}/app/up/account/bind
        if len(parts) != 8:
            return
        pk, dn, action = parts[2], parts[3], parts[7]
        try:
            doc = orjson.loads(payload)
            msg_id = str(doc.get("id", ""))
        except (orjson.JSONDecodeError, AttributeError):
            return
        reply = down_topic(pk, dn, f"account/{action}_reply")
        if action == "unbind":
            self.stats["unbinds"] += 1
            self.binds.pop((pk, dn), None)
            self._publish(reply, {"id": msg_id, "code": 200, "message": "success"})
            return
        self.stats["binds"] += 1
        params = doc.get("params") if isinstance(doc.get("params"), dict) else {}
        token = params.get("iotToken")
        if self.bind_code is not None:
            code, message = self.bind_code, "bind refused"
            if code == 2152:
                message = "account is already active in another session"
            elif code == 2043:
                message = "check iotToken failed"
        elif token != self.account.iot_token or now_ms() > self.account.token_expires_ms:
            code, message = 2043, "check iotToken failed"
        else:
            code, message = 200, "success"
        if code == 200:
            self.binds[(pk, dn)] = self.account.identity_id
            self.stats["binds_ok"] += 1
        else:
            self.stats["binds_refused"] += 1
        self._publish(reply, {"id": msg_id, "code": code, "message": message})

    def _publish(self, topic: str, body: dict[str, Any]) -> None:
        if self.client is not None:
            self.client.publish(topic, orjson.dumps(body), qos=1)

    # ------------------------------------------------------------------ MQTT: the front

    def _secret_for(self, pk: str, dn: str) -> str | None:
        return self.app_devices.get((pk, dn))

    async def _front(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        front = _Front(writer)
        self._fronts.add(front)
        try:
            await self._front_session(front, reader, writer)
        except (OSError, asyncio.IncompleteReadError, codec.MqttProtocolError) as exc:
            log.debug("MQTT front connection ended: %s", exc)
        finally:
            self._fronts.discard(front)
            front.close()
            if front.identity is not None and not any(
                f.identity == front.identity for f in self._fronts
            ):
                # The platform forgets the binding of a connection that is gone.
                self.binds.pop(front.identity, None)

    async def _front_session(
        self, front: _Front, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        parser = codec.Parser(max_size=1 << 20)
        raw = bytearray()
        packets: list[codec.Packet] = []
        while not packets:
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            if not chunk:
                return
            raw += chunk
            packets = parser.feed(chunk)
        ptype, _flags, body = packets[0]
        if ptype != codec.CONNECT:
            self.stats["connect_garbage"] += 1
            return
        connect = codec.decode_connect(body)
        protocol = connect.protocol if connect.protocol in (4, 5) else 4
        result: tuple[str, str] | int
        if self.refuse_all:
            result = 5
        else:
            result = verify_credentials(connect.client_id, connect.username, connect.password, self._secret_for)
        if isinstance(result, int):
            self.stats["connect_refused"] += 1
            rc = {4: 0x86, 5: 0x87}[result] if protocol == 5 else result
            writer.write(codec.encode_connack(rc, protocol))
            await writer.drain()
            log.info("MQTT CONNECT refused (rc %s) for client id %s", rc, parse_client_id(connect.client_id)[0])
            return
        front.identity = result
        assert self.broker is not None
        up_reader, up_writer = await asyncio.open_connection(self.broker.host, self.broker.port)
        front.upstream = up_writer
        self.stats["connect_ok"] += 1
        up_writer.write(bytes(raw))
        # Packets after CONNECT in the same read are watched like all later ones.
        for ptype, flags, pbody in packets[1:]:
            if not self._allowed(result, ptype, flags, pbody, protocol):
                return
        down = asyncio.create_task(self._pipe(up_reader, writer))
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                for ptype, flags, pbody in parser.feed(chunk):
                    if not self._allowed(result, ptype, flags, pbody, protocol):
                        return
                up_writer.write(chunk)
                await up_writer.drain()
        finally:
            down.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await down

    def _allowed(self, ident: tuple[str, str], ptype: int, flags: int, body: bytes, protocol: int) -> bool:
        pk, dn = ident
        if ptype == codec.SUBSCRIBE:
            for topic in _subscribe_filters(body, protocol):
                if not _topic_allowed(topic, pk, dn):
                    self.stats["acl_refused"] += 1
                    log.info("MQTT SUBSCRIBE to %r refused for %s&%s", topic, dn, pk)
                    return False
        elif ptype == codec.PUBLISH:
            topic = codec.decode_publish(flags, body, protocol).topic
            if not _topic_allowed(topic, pk, dn):
                self.stats["acl_refused"] += 1
                log.info("MQTT PUBLISH to %r refused for %s&%s", topic, dn, pk)
                return False
        return True

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                writer.write(chunk)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    # ------------------------------------------------------------------ HTTP API gateway

    def _gateway_error(self, status: int, message: str, code: str = "") -> web.Response:
        headers = {"X-Ca-Error-Message": message}
        if code:
            headers["X-Ca-Error-Code"] = code
        return web.Response(status=status, headers=headers)

    def _check_nonce(self, nonce: str) -> bool:
        now = now_ms()
        while self._nonces and self._nonces[0][0] < now - NONCE_WINDOW_MS:
            self._nonce_set.discard(self._nonces.popleft()[1])
        if nonce in self._nonce_set:
            return False
        self._nonces.append((now, nonce))
        self._nonce_set.add(nonce)
        return True

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        path = request.path
        self.stats[f"http {path}"] += 1
        headers = {k.lower(): v for k, v in request.headers.items()}
        if headers.get("x-ca-key") != self.app_key:
            return self._gateway_error(400, "Invalid AppKey", "A400AK")
        given = headers.get("x-ca-signature", "")
        query = dict(parse_qsl(request.query_string, keep_blank_values=True))
        expected, text = signature_for(self.app_secret, request.method, path, headers, query, body)
        if given != expected:
            self.stats["signature_rejected"] += 1
            return self._gateway_error(
                401, f"Invalid Signature, Server StringToSign:`{text.replace(chr(10), '')}`", "A401AC"
            )
        if "content-md5" in headers and headers["content-md5"] != content_md5(body):
            return self._gateway_error(400, "Invalid Content-MD5", "A400IM")
        ts = headers.get("x-ca-timestamp")
        if ts is not None:
            try:
                if abs(int(ts) - now_ms()) > NONCE_WINDOW_MS:
                    return self._gateway_error(400, "Invalid Timestamp", "A400IT")
            except ValueError:
                return self._gateway_error(400, "Invalid Timestamp", "A400IT")
        nonce = headers.get("x-ca-nonce")
        if nonce is not None and not self._check_nonce(nonce):
            return self._gateway_error(400, "Nonce Used", "A400IN")
        if self.throttle_count:
            if self.throttle_count > 0:
                self.throttle_count -= 1
            self.stats["throttled"] += 1
            return self._gateway_error(429, "Throttled by PLUGIN Flow Control", "T429PR")
        self.stats[f"api {path}"] += 1
        try:
            req = parse_request(body)
        except RemoteProtocolError as exc:
            return web.Response(body=build_response("", 460, None, f"request parameter error: {exc}"),
                                content_type="application/json")
        handler = self._routes().get(path)
        if handler is None:
            return web.Response(body=build_response(req.id, 404, None, "service not found"),
                                content_type="application/json")
        try:
            if path not in ("/kit/debug/ping", "/account/checkOrRefreshSession"):
                self._check_token(req.iot_token)
            data = handler(dict(req.params))
        except _Reject as rej:
            return web.Response(body=build_response(req.id, rej.code, None, rej.message),
                                content_type="application/json")
        return web.Response(body=build_response(req.id, 200, data), content_type="application/json")

    def _routes(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        return {
            API["ping"].path: lambda p: p.get("input"),
            API["list_bindings"].path: self._api_list_bindings,
            API["tsl"].path: self._api_tsl,
            API["properties_get"].path: self._api_properties_get,
            API["properties_set"].path: self._api_properties_set,
            API["service_invoke"].path: self._api_service_invoke,
            API["status_get"].path: self._api_status_get,
            API["refresh_session"].path: self._api_refresh_session,
        }

    def _check_token(self, token: str | None) -> None:
        if not token or token != self.account.iot_token:
            raise _Reject(401, "request auth error")
        if now_ms() > self.account.token_expires_ms:
            raise _Reject(401, "iotToken expired")

    def _device(self, params: dict[str, Any]) -> SimDevice:
        iot_id = params.get("iotId")
        if not isinstance(iot_id, str) or not iot_id:
            raise _Reject(20050, "iotId required")
        dev = self.devices.get(iot_id)
        if dev is None:
            raise _Reject(2063, "iotId not exist")
        if dev.owner != self.account.identity_id:
            raise _Reject(2065, "identityId and iotId not bound")
        return dev

    def _api_list_bindings(self, params: dict[str, Any]) -> Any:
        page_no, page_size = params.get("pageNo"), params.get("pageSize")
        if not isinstance(page_no, int) or not isinstance(page_size, int) or page_no < 1 \
                or not 1 <= page_size <= self.page_size_max:
            raise _Reject(460, "invalid count or offset")
        mine = [d for d in self.devices.values() if d.owner == self.account.identity_id]
        page = mine[(page_no - 1) * page_size : page_no * page_size]
        return {"total": len(mine), "pageNo": page_no, "pageSize": page_size, "data": [d.listing() for d in page]}

    def _api_tsl(self, params: dict[str, Any]) -> Any:
        dev = self._device(params)
        tsl = dict(self.products[dev.product_key])
        tsl["profile"] = {"productKey": dev.product_key, "deviceName": dev.device_name}
        return orjson.dumps(tsl).decode() if self.tsl_as_string else tsl

    def _api_properties_get(self, params: dict[str, Any]) -> Any:
        dev = self._device(params)
        return copy.deepcopy(dev.props)

    def _api_status_get(self, params: dict[str, Any]) -> Any:
        dev = self._device(params)
        return {"status": dev.status, "time": dev.status_time}

    def _tsl_props(self, dev: SimDevice) -> dict[str, dict[str, Any]]:
        return {p["identifier"]: p for p in self.products[dev.product_key]["properties"]}

    def _api_properties_set(self, params: dict[str, Any]) -> Any:
        dev = self._device(params)
        items = params.get("items")
        if not isinstance(items, dict) or not items:
            raise _Reject(460, "request parameter error: items")
        spec = self._tsl_props(dev)
        for key in items:
            if key not in spec:
                raise _Reject(460, f"request parameter error: unknown property {key}")
            if spec[key].get("accessMode") != "rw":
                raise _Reject(460, f"request parameter error: {key} is read-only")
        if dev.status != 1:
            raise _Reject(28504, "device is offline")
        self.stats["sets"] += 1
        self.set_property(dev.iot_id, items)
        return None

    def _api_service_invoke(self, params: dict[str, Any]) -> Any:
        dev = self._device(params)
        ident = params.get("identifier")
        services = {s["identifier"]: s for s in self.products[dev.product_key]["services"]}
        if not isinstance(ident, str) or ident not in services:
            raise _Reject(460, f"request parameter error: unknown service {ident}")
        args = params.get("args") if isinstance(params.get("args"), dict) else {}
        if dev.status != 1:
            raise _Reject(28504, "device is offline")
        self.stats["invokes"] += 1
        output: dict[str, Any] = {}
        if ident == "ToggleLightSwitch":
            current = dev.props.get("LightSwitch", {}).get("value", 0)
            self.set_property(dev.iot_id, {"LightSwitch": 0 if current else 1})
        elif ident == "Blink":
            output = {"blinked": int(args.get("times", 1))}
        elif ident == "Calibrate":
            offset = float(args.get("offset", 0))
            value = float(dev.props["CurrentTemperature"]["value"]) + offset
            self.set_property(dev.iot_id, {"CurrentTemperature": round(value, 1)})
            output = {"result": "ok"}
        return {"data": output}

    def _api_refresh_session(self, params: dict[str, Any]) -> Any:
        request = params.get("request") if isinstance(params.get("request"), dict) else params
        if request.get("refreshToken") != self.account.refresh_token or \
                request.get("identityId") != self.account.identity_id:
            raise _Reject(2401, "refreshToken invalid!!")
        self.account.iot_token = self._new_token()
        self.account.refresh_token = self._new_token()
        self.account.token_expires_ms = now_ms() + int(self.token_lifetime * 1000)
        return {
            "identityId": self.account.identity_id,
            "iotToken": self.account.iot_token,
            "iotTokenExpire": int(self.token_lifetime),
            "refreshToken": self.account.refresh_token,
            "refreshTokenExpire": int(self.token_lifetime * 10),
        }


# ----------------------------------------------------------------------------------- CLI


def demo_cloud(devices: int = 4) -> AliyunCloud:
    """The emulator as ``cloud2mqtt demo`` runs it: a sensor change every second, free ports."""
    return AliyunCloud(devices=devices, push_interval=1.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091, help="HTTP API gateway port")
    parser.add_argument("--mqtt-port", type=int, default=0, help="MQTT front port (0: free port)")
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--push-interval", type=float, default=5.0,
                        help="seconds between simulated sensor changes (0: none)")  # fmt: skip
    parser.add_argument("--token-lifetime", type=float, default=72000.0, help="iotToken lifetime, seconds")
    parser.add_argument("--seed", type=int, default=0)


async def serve(args: argparse.Namespace) -> None:
    cloud = AliyunCloud(
        args.host,
        args.port,
        mqtt_port=args.mqtt_port,
        devices=args.devices,
        push_interval=args.push_interval or None,
        token_lifetime=args.token_lifetime,
        seed=args.seed,
    )
    await serve_forever(
        cloud,
        lambda: {
            **cloud.account_config(),
            "refresh_token": cloud.account.refresh_token,
            "identity_id": cloud.account.identity_id,
        },
        args=args,
        ports=(args.port, args.mqtt_port),
    )
