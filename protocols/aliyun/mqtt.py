"""The MQTT app channel: credentials, topics, bind, and the pushes of seed 6.1.2 长连接服务.

The app is a virtual device (productKey, deviceName, deviceSecret). It connects like any Aliyun
IoT device (MQTT-TCP signing, Aliyun doc 73742):

- client id ``{clientId}|securemode=2,signmethod=hmacsha1,timestamp=…|`` (securemode 2 with TLS,
  3 without; ``clientId`` defaults to ``{productKey}&{deviceName}``),
- user name ``{deviceName}&{productKey}``,
- password = hex HMAC(deviceSecret) over the parameters carried in the extension, sorted by
  name and concatenated as ``name+value``: ``clientId…deviceName…productKey…timestamp…``.

Then it publishes ``/sys/{pk}/{dn}/app/up/account/bind`` with ``params.iotToken`` and receives
the user's device changes on ``/sys/{pk}/{dn}/app/down/...``. The real platform refuses
subscriptions to root wildcards, so ``down_topics`` lists the exact topics.

``decode_app_message`` maps each push to the normalized events of ``protocols.model`` (plus the
bind reply, sub-device topology and OTA progress that have no normalized event of their own).
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import orjson

from ..model import Availability, DeviceEvent, RemoteProtocolError, StateChange, json_object

__all__ = [
    "BIND_ACTIVE_ELSEWHERE",
    "BIND_OK",
    "BIND_TOKEN_REJECTED",
    "DOWN_SUFFIXES",
    "STATUS",
    "BindReply",
    "MqttCredentials",
    "OtaProgress",
    "TopoAddStatus",
    "build_bind",
    "build_unbind",
    "decode_app_message",
    "decode_items",
    "down_topic",
    "down_topics",
    "encode_push",
    "mqtt_credentials",
    "parse_client_id",
    "up_topic",
    "verify_credentials",
]

BIND_OK: Final = 200
#: Field-reported bind failures, not in the seed: an iotToken the platform rejects (expired,
#: or issued in another region), and an account already active in another session.
BIND_TOKEN_REJECTED: Final = 2043
BIND_ACTIVE_ELSEWHERE: Final = 2152

#: ``thing/status`` values (seed): 0 inactive, 1 online, 3 offline, 8 disabled.
STATUS: Final = {0: "inactive", 1: "online", 3: "offline", 8: "disabled"}

DOWN_SUFFIXES: Final = (
    "account/bind_reply",
    "account/unbind_reply",
    "thing/properties",
    "thing/events",
    "thing/status",
    "thing/topo/add/status",
    "ota/device/forward",
)

_DIGESTS: Final[dict[str, Callable[[], Any]]] = {
    "hmacsha1": hashlib.sha1,
    "hmacsha256": hashlib.sha256,
    "hmacmd5": hashlib.md5,
}


class MqttCredentials(NamedTuple):
    client_id: str
    username: str
    password: str


def _hmac_hex(secret: str, content: str, sign_method: str) -> str:
    digest = _DIGESTS.get(sign_method.lower())
    if digest is None:
        raise ValueError(f"unknown signmethod {sign_method!r}")
    return hmac.new(secret.encode("utf-8"), content.encode("utf-8"), digest).hexdigest()


def mqtt_credentials(
    product_key: str,
    device_name: str,
    device_secret: str,
    timestamp: int,
    client_id: str | None = None,
    sign_method: str = "hmacsha1",
    secure_mode: int = 2,
) -> MqttCredentials:
    """CONNECT credentials of the app device (password in lower-case hex, as linkkit sends it)."""
    cid = client_id if client_id is not None else f"{product_key}&{device_name}"
    content = f"clientId{cid}deviceName{device_name}productKey{product_key}timestamp{timestamp}"
    password = _hmac_hex(device_secret, content, sign_method)
    full = f"{cid}|securemode={secure_mode},signmethod={sign_method},timestamp={timestamp}|"
    return MqttCredentials(full, f"{device_name}&{product_key}", password)


def parse_client_id(full: str) -> tuple[str, dict[str, str]]:
    """Split ``id|k=v,k=v|`` into the bare id and its extension parameters."""
    bare, sep, rest = full.partition("|")
    ext: dict[str, str] = {}
    if sep:
        rest = rest[:-1] if rest.endswith("|") else rest
        for part in rest.split(","):
            key, eq, value = part.partition("=")
            if eq and key.strip():
                ext[key.strip()] = value.strip()
    return bare, ext


def verify_credentials(
    client_id: str,
    username: str | None,
    password: bytes | str | None,
    secret_for: Callable[[str, str], str | None],
) -> tuple[str, str] | int:
    """Check a CONNECT as the platform does: ``(productKey, deviceName)`` or a CONNACK code.

    ``secret_for(product_key, device_name)`` returns the device secret (``None``: unknown
    device). Returns 4 (bad user name or password) for a malformed identity or a wrong
    signature, 5 (not authorized) for an unknown device.
    """
    if not username or password is None:
        return 4
    dn, amp, pk = username.partition("&")
    if not amp or not dn or not pk:
        return 4
    bare, ext = parse_client_id(client_id)
    method = ext.get("signmethod", "").lower()
    if not bare or method not in _DIGESTS:
        return 4
    secret = secret_for(pk, dn)
    if secret is None:
        return 5
    fields = {"clientId": bare, "deviceName": dn, "productKey": pk}
    if "timestamp" in ext:
        fields["timestamp"] = ext["timestamp"]
    content = "".join(f"{key}{fields[key]}" for key in sorted(fields))
    expected = _hmac_hex(secret, content, method)
    given = password.decode("utf-8", "replace") if isinstance(password, bytes) else password
    if not hmac.compare_digest(expected.lower(), given.strip().lower()):
        return 4
    return pk, dn


# --------------------------------------------------------------------------------------------
# Topics and the bind exchange


def up_topic(product_key: str, device_name: str, suffix: str) -> str:
    return f"/sys/{product_key}/{device_name}/app/up/{suffix}"


def down_topic(product_key: str, device_name: str, suffix: str) -> str:
    return f"/sys/{product_key}/{device_name}/app/down/{suffix}"


def down_topics(product_key: str, device_name: str) -> list[str]:
    """The exact topics to subscribe to (no wildcards: the platform refuses root ``#``)."""
    return [down_topic(product_key, device_name, s) for s in DOWN_SUFFIXES]


def build_bind(
    product_key: str, device_name: str, iot_token: str, client_id: str, msg_id: str | None = None
) -> tuple[str, bytes]:
    """``(topic, payload)`` of the bind request; ``client_id`` is the bare MQTT client id."""
    body = {
        "id": msg_id or uuid.uuid4().hex,
        "version": "1.0",
        "request": {"clientId": client_id},
        "params": {"iotToken": iot_token},
    }
    return up_topic(product_key, device_name, "account/bind"), orjson.dumps(body)


def build_unbind(
    product_key: str, device_name: str, client_id: str, msg_id: str | None = None
) -> tuple[str, bytes]:
    body = {
        "id": msg_id or uuid.uuid4().hex,
        "version": "1.0",
        "request": {"clientId": client_id},
        "params": {},
    }
    return up_topic(product_key, device_name, "account/unbind"), orjson.dumps(body)


def encode_push(msg_id: str, method: str, params: Mapping[str, Any], key: str = "params") -> bytes:
    """A down message as the platform sends it (the emulator's side of ``decode_app_message``)."""
    return orjson.dumps({"id": msg_id, "version": "1.0", key: dict(params), "method": method})


# --------------------------------------------------------------------------------------------
# Decoding pushes


@dataclass(frozen=True, slots=True)
class BindReply:
    msg_id: str
    code: int
    message: str
    unbind: bool = False

    @property
    def ok(self) -> bool:
        return self.code == BIND_OK


@dataclass(frozen=True, slots=True)
class TopoAddStatus:
    """``thing/topo/add/status``: 0 added, 1 registered but bound to another gateway, 2 failed."""

    status: int
    sub_iot_id: str
    new_gateway: str | None
    old_gateway: str | None
    raw: Mapping[str, Any]

    @property
    def ok(self) -> bool:
        return self.status == 0


@dataclass(frozen=True, slots=True)
class OtaProgress:
    """``ota/device/forward``: step 1..100 percent, negative = failure; upgradeStatus 0..4."""

    device: str
    step: int | None
    upgrade_status: int | None
    src_version: str
    dest_version: str
    desc: str

    def to_event(self, ts_ms: int) -> DeviceEvent:
        failed = (self.step is not None and self.step < 0) or self.upgrade_status in (2, 3)
        return DeviceEvent(
            self.device,
            "ota_progress",
            "error" if failed else "info",
            {
                "step": self.step,
                "upgrade_status": self.upgrade_status,
                "src_version": self.src_version,
                "dest_version": self.dest_version,
                "desc": self.desc,
            },
            ts_ms,
        )


AppMessage = StateChange | DeviceEvent | Availability | BindReply | TopoAddStatus | OtaProgress


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _params(doc: Mapping[str, Any], key: str = "params") -> Mapping[str, Any]:
    params = doc.get(key)
    if not isinstance(params, dict):
        raise RemoteProtocolError(f"push without {key!r} object")
    return params


def _iot_id(params: Mapping[str, Any]) -> str:
    iot_id = params.get("iotId")
    if not isinstance(iot_id, str) or not iot_id:
        raise RemoteProtocolError("push without iotId")
    return iot_id


def _suffix(topic: str) -> str:
    # /sys/{pk}/{dn}/app/down/<suffix>
    parts = topic.split("/", 6)
    if len(parts) < 7 or parts[1] != "sys" or parts[4] != "app" or parts[5] != "down":
        raise RemoteProtocolError(f"not an app down topic: {topic!r}")
    return parts[6]


def decode_app_message(topic: str, payload: bytes, now_ms: int) -> AppMessage | None:
    """Decode one message of the app channel; ``None`` for a topic we do not handle.

    ``thing/properties`` keeps each item's ``time`` in ``StateChange.prop_ts`` so the registry
    drops items older than what it holds (the cloud replays buffered pushes after a gap).
    Raises ``RemoteProtocolError`` for garbage.
    """
    suffix = _suffix(topic)
    if suffix not in DOWN_SUFFIXES:
        return None
    doc = json_object(payload, "push")

    if suffix in ("account/bind_reply", "account/unbind_reply"):
        code = _int(doc.get("code"))
        if code is None:
            raise RemoteProtocolError("bind reply without code")
        return BindReply(
            str(doc.get("id") or ""),
            code,
            str(doc.get("message") or ""),
            unbind=suffix == "account/unbind_reply",
        )

    if suffix == "thing/properties":
        params = _params(doc)
        device = _iot_id(params)
        items = params.get("items")
        if not isinstance(items, dict):
            raise RemoteProtocolError("thing/properties without items")
        props, prop_ts = decode_items(items, now_ms)
        if not props:
            raise RemoteProtocolError("thing/properties with no usable item")
        return StateChange(device, props, max(prop_ts.values()), prop_ts=prop_ts)

    if suffix == "thing/events":
        params = _params(doc)
        device = _iot_id(params)
        ident = params.get("identifier")
        if not isinstance(ident, str) or not ident:
            raise RemoteProtocolError("thing/events without identifier")
        value = params.get("value")
        if value is None:
            value = {}
        if not isinstance(value, dict):
            value = {"value": value}
        level = params.get("type")
        ts = _int(params.get("time")) or _int(params.get("generateTime")) or now_ms
        return DeviceEvent(device, ident, level if isinstance(level, str) and level else "info", value, ts)

    if suffix == "thing/status":
        params = _params(doc)
        device = _iot_id(params)
        status = params.get("status")
        if isinstance(status, dict):
            value = _int(status.get("value"))
            ts = _int(status.get("time")) or now_ms
        else:
            value = _int(status)
            ts = now_ms
        if value is None or value not in STATUS:
            raise RemoteProtocolError(f"thing/status with unknown value {value!r}")
        online = value == 1
        reason = None if online else STATUS[value]
        return Availability(device, online, ts, reason)

    if suffix == "thing/topo/add/status":
        # The seed's body uses "param" here, not "params"; accept either.
        raw = doc.get("param") if isinstance(doc.get("param"), dict) else doc.get("params")
        if not isinstance(raw, dict):
            raise RemoteProtocolError("thing/topo/add/status without param")
        params = raw
        status_code = _int(params.get("status"))
        sub = params.get("subIotId")
        if status_code is None or not isinstance(sub, str):
            raise RemoteProtocolError("thing/topo/add/status without status/subIotId")
        new_gw = params.get("newGwIotId")
        old_gw = params.get("oldGwIotId")
        return TopoAddStatus(
            status_code,
            sub,
            new_gw if isinstance(new_gw, str) and new_gw else None,
            old_gw if isinstance(old_gw, str) and old_gw else None,
            params,
        )

    # ota/device/forward
    params = _params(doc)
    device = _iot_id(params)
    return OtaProgress(
        device,
        _int(params.get("step")),
        _int(params.get("upgradeStatus")),
        str(params.get("srcVersion") or ""),
        str(params.get("destVersion") or ""),
        str(params.get("desc") or ""),
    )


def decode_items(items: Mapping[str, Any], now_ms: int) -> tuple[dict[str, Any], dict[str, int]]:
    """``{"prop": {"time": ms, "value": v}}`` → (values, per-property times).

    Used for pushes and for the ``/thing/properties/get`` snapshot, which has the same shape.
    An item without ``value`` is skipped; a missing ``time`` counts as ``now_ms``.
    """
    props: dict[str, Any] = {}
    prop_ts: dict[str, int] = {}
    for key, item in items.items():
        if not isinstance(item, dict) or "value" not in item:
            continue
        props[key] = item["value"]
        prop_ts[key] = _int(item.get("time")) or now_ms
    return props, prop_ts
