"""The Tencent emulator's device model: products and their data templates, users, devices,
tokens, and the values a device reports (seed 002).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from protocols.model import Schema
from protocols.tencent.template import schema_from_template

from ..base import Reject

ERR_SIGNATURE: Final = "InvalidParameterValue.InvalidSignature"
ERR_TIMESTAMP: Final = "InvalidParameterValue.TimestampExpired"
ERR_NONCE: Final = "InvalidParameterValue.NonceUsed"
ERR_APP: Final = "ResourceNotFound.AppNotExists"
ERR_TOKEN: Final = "InvalidParameterValue.InvalidAccessToken"
ERR_MISSING: Final = "ErrorRequiredParamNotFound"
ERR_ACTION: Final = "InvalidAction"
ERR_JSON: Final = "InvalidParameterValue.InvalidJSON"
ERR_PARAM: Final = "InvalidParameterValue"
ERR_LOGIN: Final = "InvalidParameterValue.ErrorUserNotExists"
ERR_DEVICE: Final = "ResourceNotFound.DeviceNotExist"
ERR_OFFLINE: Final = "FailedOperation.DeviceOffline"
ERR_FAMILY: Final = "UnauthorizedOperation.NoPermissionToFamily"
ERR_PRODUCT: Final = "UnauthorizedOperation.APPNoPermissionToStudioProduct"

#: the ``timestamp`` of device messages: epoch seconds (seed 002), ``0`` (also in the seed), ms
REPORT_TIMESTAMPS: Final = ("s", "zero", "ms")
#: how ``AppGetProducts`` sends ``DataTemplate``: the seed's object, the SDK demo's JSON string,
#: or one of each (light: object, sensor: string)
TEMPLATE_FORMS: Final = ("mixed", "object", "string")

LIGHT_PRODUCT: Final = "C2MLIGHT01"
SENSOR_PRODUCT: Final = "C2MSENSOR1"
WS_PATH: Final = "/iotstudio_v2_weapp_1"
API_PREFIX: Final = "/api/exploreropen"

LIGHT_TEMPLATE: Final[dict[str, Any]] = {
    "version": "1.0",
    "profile": {"ProductId": LIGHT_PRODUCT, "CategoryId": "141"},
    "properties": [
        {"id": "power_switch", "name": "电灯开关", "desc": "", "required": True, "mode": "rw",
         "define": {"type": "bool", "mapping": {"0": "关", "1": "开"}}},
        {"id": "brightness", "name": "亮度", "desc": "", "mode": "rw",
         "define": {"type": "int", "unit": "%", "step": "1", "min": "0", "max": "100", "start": "1"}},
        {"id": "color", "name": "颜色", "desc": "", "mode": "rw",
         "define": {"type": "enum", "mapping": {"0": "Red", "1": "Green", "2": "Blue"}}},
    ],
    "events": [
        {"id": "status_report", "name": "DeviceStatus", "desc": "", "type": "info", "required": False,
         "params": [
             {"id": "status", "name": "running_state", "define": {"type": "bool", "mapping": {"0": "normal", "1": "fault"}}},
             {"id": "message", "name": "Message", "define": {"type": "string", "min": "0", "max": "64"}},
         ]},
    ],
    "actions": [
        {"id": "light_blink", "name": "闪烁", "desc": "", "required": False,
         "input": [
             {"id": "color", "name": "color", "define": {"type": "enum", "mapping": {"0": "Red", "1": "Green", "2": "Blue"}}},
             {"id": "time", "name": "time", "define": {"type": "int", "min": "0", "max": "60", "step": "1", "unit": "s"}},
             {"id": "total_time", "name": "total_time", "define": {"type": "int", "min": "0", "max": "600", "step": "1", "unit": "s"}},
         ],
         "output": [{"id": "result", "name": "result", "define": {"type": "int", "min": "0", "max": "1", "step": "1"}}]},
    ],
}  # fmt: skip

SENSOR_TEMPLATE: Final[dict[str, Any]] = {
    "version": "1.0",
    "profile": {"ProductId": SENSOR_PRODUCT, "CategoryId": "3"},
    "properties": [
        {"id": "temperature", "name": "温度", "desc": "", "mode": "r",
         "define": {"type": "float", "unit": "℃", "step": "0.1", "min": "-40.0", "max": "125.0", "start": "0"}},
        {"id": "humidity", "name": "湿度", "desc": "", "mode": "r",
         "define": {"type": "int", "unit": "%", "step": "1", "min": "0", "max": "100", "start": "0"}},
    ],
    "events": [
        {"id": "low_voltage", "name": "LowVoltage", "desc": "", "type": "alert", "required": False,
         "params": [{"id": "voltage", "name": "Voltage",
                     "define": {"type": "float", "unit": "V", "step": "0.1", "min": "0.0", "max": "24.0", "start": "1"}}]},
    ],
    "actions": [],
}  # fmt: skip

PRODUCTS: Final = {
    # The seed prints DataTemplate as an object; the official SDK demo JSON.parses a string.
    # Send one of each so both paths of a client run.
    LIGHT_PRODUCT: ("light", "C2M light", LIGHT_TEMPLATE, False),
    SENSOR_PRODUCT: ("sensor", "C2M sensor", SENSOR_TEMPLATE, True),
}
SCHEMAS: Final = {pid: schema_from_template(tpl) for pid, (_, _, tpl, _) in PRODUCTS.items()}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def required_list(body: Mapping[str, Any], key: str) -> list[Any]:
    """``body[key]``, which a call must send as a list (``ERR_MISSING`` naming it otherwise)."""
    value = body.get(key)
    if not isinstance(value, list):
        raise Reject(ERR_MISSING, key)
    return value


@dataclass
class SimDevice:
    device_id: str
    product_id: str
    name: str
    kind: str
    owner: str
    family_id: str
    alias: str
    online: bool = True
    values: dict[str, Any] = field(default_factory=dict)  # wire form (bool as 0/1)
    updated: dict[str, int] = field(default_factory=dict)
    created: int = 0

    @property
    def schema(self) -> Schema:
        return SCHEMAS[self.product_id]


@dataclass
class SimUser:
    uid: str
    open_id: str
    nick: str
    family_id: str
    devices: list[str] = field(default_factory=list)


@dataclass
class SimToken:
    token: str
    uid: str
    expires: float  # epoch seconds


class DeviceModel:
    """Users and their devices (mixed into ``TencentCloud``; no I/O of its own).

    State it shares (set by ``TencentCloud.__init__``): ``_uids``, ``_watchers``,
    ``devices``, ``open_id``, ``options``, ``rng``, ``users``, ``users_by_openid``.
    From the other concerns it calls ``_push_to_user``.
    """

    def user_for(self, open_id: str, nick: str = "") -> SimUser:
        user = self.users_by_openid.get(open_id)
        if user is not None:
            return user
        index = len(self.users)
        uid = str(next(self._uids))
        user = SimUser(uid, open_id, nick or open_id, f"f{index:04d}{secrets.token_hex(6)}")
        self.users[uid] = user
        self.users_by_openid[open_id] = user
        for j in range(self.options.devices):
            self._add_device(user, index, j)
        return user

    def _add_device(self, user: SimUser, index: int, j: int) -> SimDevice:
        product = LIGHT_PRODUCT if j % 2 == 0 else SENSOR_PRODUCT
        kind = PRODUCTS[product][0]
        name = f"{kind}-{index}-{j + 1}"
        now = now_ms()
        dev = SimDevice(f"{product}/{name}", product, name, kind, user.uid, user.family_id,
                        f"{kind} {j + 1}", created=now // 1000)  # fmt: skip
        if kind == "light":
            dev.values = {"power_switch": 0, "brightness": 50, "color": 0}
        else:
            dev.values = {"temperature": round(20 + self.rng.random() * 5, 1), "humidity": 45}
        dev.updated = dict.fromkeys(dev.values, now)
        self.devices[dev.device_id] = dev
        user.devices.append(dev.device_id)
        return dev

    def add_device(self, open_id: str | None = None) -> str:
        """Bind a new device to the user; a ``StatusChange``/``Bind`` push tells their sockets."""
        user = self.user_for(open_id or self.open_id)
        index = list(self.users).index(user.uid)
        dev = self._add_device(user, index, len(user.devices))
        self._push_to_user(user, dev, "Bind")
        return dev.device_id

    def remove_device(self, device: str) -> None:
        """Unbind a device; ``StatusChange``/``Unbind`` goes to its owner's sockets."""
        dev = self.devices.pop(device)
        user = self.users[dev.owner]
        user.devices.remove(device)
        self._push_to_user(user, dev, "Unbind")
        for sock in self._watchers.pop(device, set()):
            sock.subscribed.pop(device, None)

    def device_ids(self, open_id: str | None = None) -> list[str]:
        return list(self.user_for(open_id or self.open_id).devices)

    def _random_values(self, dev: SimDevice) -> dict[str, Any]:
        if dev.kind == "light":
            which = self.rng.randrange(3)
            if which == 0:
                return {"power_switch": 1 - int(dev.values.get("power_switch", 0))}
            if which == 1:
                return {"brightness": self.rng.randrange(101)}
            return {"color": self.rng.randrange(3)}
        temp = float(dev.values.get("temperature", 21.0)) + self.rng.uniform(-0.5, 0.5)
        return {
            "temperature": round(min(max(temp, -40.0), 125.0), 1),
            "humidity": self.rng.randrange(30, 70),
        }
