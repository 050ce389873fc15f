"""``AliyunCloud``: the emulated Living platform, assembled from its concerns.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import logging
import ssl
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from gateway.mosquitto import Mosquitto
from gateway.mqtt.client import MqttClient

from ..base import BUILD_ONLY, CloudOptions, SimulatedCloud, cancel_tasks
from .faults import Faults
from .http_api import HttpApi
from .model import (
    LIGHT_PK,
    PRODUCTS,
    SENSOR_PK,
    DeviceModel,
    SimAccount,
    SimDevice,
    now_ms,
)
from .mqtt import Front, MqttChannel

log = logging.getLogger("cloud2mqtt.sim.aliyun")


@dataclass(frozen=True, kw_only=True)
class AliyunOptions(CloudOptions):
    """The knobs of an ``AliyunCloud``: the app (AppKey/AppSecret and its MQTT virtual device),
    the account and its devices, the MQTT front."""

    mqtt_port: int = 0
    #: TLS on the MQTT front (securemode 2), as the real endpoint has
    mqtt_ssl: ssl.SSLContext | None = None
    app_key: str = "28365017"
    app_secret: str = "emulator-app-secret"
    app_product_key: str = "a1AppPk0001"
    app_device_name: str = "appDevice0001"
    app_device_secret: str = "emulator-device-secret"
    identity_id: str = field(default="50e0op0c2b1d6c8e5bd4a1f0e3b5d3c2", metadata=BUILD_ONLY)
    devices: int = field(default=3, metadata=BUILD_ONLY)
    token_lifetime: float = 72000.0
    push_interval: float | None = None
    page_size_max: int = 100


class AliyunCloud(DeviceModel, HttpApi, MqttChannel, Faults, SimulatedCloud):
    """One emulated Living platform: an app (AppKey/AppSecret + its MQTT virtual device) and
    one user account with devices."""

    vendor = "aliyun"
    Options = AliyunOptions
    options: AliyunOptions

    def __init__(self, options: AliyunOptions | None = None, /, **knobs: Any) -> None:
        super().__init__(options, **knobs)
        app_device = (self.app_product_key, self.app_device_name)
        self.app_devices: dict[tuple[str, str], str] = {app_device: self.app_device_secret}
        self.products = copy.deepcopy(PRODUCTS)
        self.account = SimAccount(
            self.options.identity_id,
            self._new_token(),
            self._new_token(),
            now_ms() + int(self.token_lifetime * 1000),
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
        self.push_after_bind = False
        self._captured: list[tuple[str, bytes]] | None = None  # pushes taken for push_after_bind
        self._nonces: deque[tuple[int, str]] = deque()
        self._nonce_set: set[str] = set()
        self._fronts: set[Front] = set()
        self._seq = itertools.count(1)
        self._front_server: asyncio.Server | None = None
        self.broker: Mosquitto | None = None
        self.client: MqttClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        for i in range(self.options.devices):
            self.add_device(LIGHT_PK if i % 2 == 0 else SENSOR_PK)

    # ------------------------------------------------------------------ lifecycle

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
        app = self._http_app()
        app.router.add_get("/_control/stats", self._stats)
        app.router.add_route("*", "/{path:.*}", self._handle)
        await self._serve_http(app)
        if self.push_interval:
            self._tasks.append(asyncio.create_task(self._drift(self.push_interval)))
        log.info("aliyun emulator: API %s, MQTT %s:%s", self.url, self.host, self.mqtt_port)

    async def stop(self) -> None:
        await cancel_tasks(self._tasks)
        self._tasks.clear()
        if self._front_server is not None:
            self._front_server.close()
            for front in list(self._fronts):
                front.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._front_server.wait_closed(), 2)
            self._front_server = None
        await self._stop_http()
        if self.client is not None:
            await self.client.disconnect()
            self.client = None
        if self.broker is not None:
            await self.broker.stop()
            self.broker.cleanup()
            self.broker = None

    def _account_settings(self) -> dict[str, Any]:
        return dict(
            api_url=self.url,
            app_key=self.app_key,
            app_secret=self.app_secret,
            iot_token=self.account.iot_token,
            mqtt_host=self.host,
            mqtt_port=self.mqtt_port,
            tls=self.mqtt_ssl is not None,
            product_key=self.app_product_key,
            device_name=self.app_device_name,
            device_secret=self.app_device_secret,
        )

