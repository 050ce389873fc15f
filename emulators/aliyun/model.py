"""The Aliyun emulator's model: products and their TSL, the account, devices and what drives
them (property changes, events, status, topology, OTA).
"""

from __future__ import annotations

import copy
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

NONCE_WINDOW_MS = 15 * 60 * 1000


def now_ms() -> int:
    return int(time.time() * 1000)


# ----------------------------------------------------------------------------------- products

LIGHT_PK = "a1LightPk01"
SENSOR_PK = "a1SensorPk2"

def _item(identifier: str, name: str, type_: str, specs: Any = None, **more: Any) -> dict[str, Any]:
    """One TSL data item: ``identifier``, ``name``, ``more`` (a property's ``accessMode``,
    ``required``), then its ``dataType`` (``specs`` None: ``{}``)."""
    data_type = {"type": type_, "specs": {} if specs is None else specs}
    return {"identifier": identifier, "name": name, **more, "dataType": data_type}


PRODUCTS: dict[str, dict[str, Any]] = {
    LIGHT_PK: {
        "schema": "http://aliyun/iot/thing/desc/schema",
        "profile": {"productKey": LIGHT_PK},
        "properties": [
            _item("LightSwitch", "主灯开关", "bool", {"0": "关闭", "1": "开启"}, accessMode="rw", required=True),
            _item("Brightness", "亮度", "int", {"min": "0", "max": "100", "step": "1", "unit": "%"}, accessMode="rw"),
            _item("ColorTemperature", "色温", "int", {"min": "2700", "max": "6500", "step": "100", "unit": "K"},
                  accessMode="rw"),
            _item("WorkMode", "工作模式", "enum", {"0": "手动", "1": "阅读", "2": "影院"}, accessMode="rw"),
            _item("HSVColor", "颜色", "struct", [
                _item("Hue", "色调", "double", {"min": "0", "max": "360"}),
                _item("Saturation", "饱和度", "double", {"min": "0", "max": "100"}),
                _item("Value", "明度", "double", {"min": "0", "max": "100"}),
            ], accessMode="rw"),
            _item("LastOnTime", "上次开灯", "date", accessMode="r"),
        ],
        "events": [
            {"identifier": "post", "name": "post", "type": "info", "method": "thing.event.property.post",
             "outputData": []},
            {"identifier": "Error", "name": "故障上报", "type": "error", "method": "thing.event.Error.post",
             "outputData": [_item("ErrorCode", "故障代码", "enum", {"0": "正常", "1": "过热"})]},
        ],
        "services": [
            {"identifier": "set", "name": "set", "callType": "async", "method": "thing.service.property.set",
             "inputData": [], "outputData": []},
            {"identifier": "get", "name": "get", "callType": "sync", "method": "thing.service.property.get",
             "inputData": ["LightSwitch", "Brightness"], "outputData": []},
            {"identifier": "ToggleLightSwitch", "name": "翻转主灯开关", "callType": "async",
             "method": "thing.service.ToggleLightSwitch", "inputData": [], "outputData": []},
            {"identifier": "Blink", "name": "闪烁", "callType": "sync", "method": "thing.service.Blink",
             "inputData": [_item("times", "次数", "int", {"min": "1", "max": "10"})],
             "outputData": [_item("blinked", "已闪烁", "int")]},
        ],
    },
    SENSOR_PK: {
        "schema": "http://aliyun/iot/thing/desc/schema",
        "profile": {"productKey": SENSOR_PK},
        "properties": [
            _item("CurrentTemperature", "温度", "float", {"min": "-40", "max": "120", "step": "0.1", "unit": "°C"},
                  accessMode="r"),
            _item("CurrentHumidity", "湿度", "int", {"min": "0", "max": "100", "step": "1", "unit": "%"}, accessMode="r"),
            _item("BatteryPercentage", "电量", "double", {"min": "0", "max": "100", "unit": "%"}, accessMode="r"),
            _item("Label", "标签", "text", {"length": "32"}, accessMode="rw"),
            _item("History", "历史", "array", {"size": "8", "item": {"type": "double"}}, accessMode="r"),
            _item("ReportInterval", "上报间隔", "int", {"min": "10", "max": "3600", "unit": "s"}, accessMode="rw"),
        ],
        "events": [
            {"identifier": "LowBattery", "name": "低电量", "type": "alert", "method": "thing.event.LowBattery.post",
             "outputData": [_item("level", "电量", "double")]},
        ],
        "services": [
            {"identifier": "Calibrate", "name": "校准", "callType": "sync", "method": "thing.service.Calibrate",
             "inputData": [_item("offset", "偏移", "float", {"min": "-5", "max": "5"})],
             "outputData": [_item("result", "结果", "text")]},
        ],
    },
}


INITIAL: dict[str, dict[str, Any]] = {
    LIGHT_PK: {"LightSwitch": 0, "Brightness": 60, "ColorTemperature": 4000, "WorkMode": 0,
               "HSVColor": {"Hue": 30.0, "Saturation": 50.0, "Value": 80.0}, "LastOnTime": "1700000000000"},
    SENSOR_PK: {"CurrentTemperature": 21.5, "CurrentHumidity": 40, "BatteryPercentage": 93.0,
                "Label": "hall", "History": [21.0, 21.2], "ReportInterval": 60},
}


# ----------------------------------------------------------------------------------- state


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


class DeviceModel:
    """The account's devices (mixed into ``AliyunCloud``); changes go out through ``_push``.

    State it shares (set by ``AliyunCloud.__init__``): ``_seq``, ``account``, ``devices``.
    From the other concerns it calls ``_push``.
    """


    @staticmethod
    def _new_token() -> str:
        return secrets.token_hex(16)

    def add_device(self, product_key: str = LIGHT_PK, nick_name: str | None = None, iot_id: str | None = None) -> str:
        n = next(self._seq)
        iot_id = iot_id or f"{secrets.token_hex(8)}{n:06d}"
        ts = now_ms()
        props = {k: {"time": ts, "value": copy.deepcopy(v)} for k, v in INITIAL.get(product_key, {}).items()}
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

