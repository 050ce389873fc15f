"""Pure-Python reference of every kernel. The compiled module must match it exactly.

Kernels (the hot path of one vendor push, frame in → MQTT packet out):

- ``decode_payload``: base64 → NULs removed → JSON (the Tencent ``Payload``);
- ``tencent_report``: a whole Tencent ``DeviceChange`` frame → the fields of a ``StateChange``
  in one call, or ``None`` when the frame is anything but a property report (the caller then
  takes ``protocols.tencent.ws``'s general path, which also words the errors);
- ``tencent_time_ms``: the push's ``Time`` (ISO 8601 with offset, or epoch s/ms) → epoch ms;
- ``normalize``: TSL normalization of a property dict through a ``Schema``; its reference is
  ``protocols.tsl.normalize_reference`` (one source for the rules, imported lazily because
  ``protocols.tsl`` itself picks the compiled kernel from here);
- ``encode_publish``: one MQTT PUBLISH packet (topic + properties + payload).

``decode_payload`` is the Tencent push decode (seed 002, 设备状态推送: ``Payload`` is base64 of
the device's JSON message). The official mini-program SDK decodes with a lenient base64 (URL-safe
alphabet accepted, padding optional) and strips NUL bytes before ``JSON.parse``; we do the same.
"""

from __future__ import annotations

import binascii
import struct
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import orjson

if TYPE_CHECKING:
    from protocols.model import Schema

__all__ = [
    "PayloadError",
    "decode_payload",
    "encode_publish",
    "normalize",
    "tencent_report",
    "tencent_time_ms",
]

_URLSAFE: Final = bytes.maketrans(b"-_", b"+/")
_PAD: Final = (b"", b"", b"==", b"=")  # index by len % 4; len % 4 == 1 is invalid
_loads: Final = orjson.loads
_a2b: Final = binascii.a2b_base64


class PayloadError(ValueError):
    """The payload is not base64 of JSON."""


def decode_payload(data: bytes | str) -> Any:
    """base64 (standard or URL-safe, padding optional) → NUL bytes removed → JSON."""
    if isinstance(data, str):
        try:
            raw = data.encode("ascii")
        except UnicodeEncodeError:
            raise PayloadError("payload is not ASCII base64") from None
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
    else:
        raise PayloadError(f"payload must be str or bytes, not {type(data).__name__}")
    raw = raw.strip().rstrip(b"=").translate(_URLSAFE)
    rem = len(raw) % 4
    if rem == 1:
        raise PayloadError("truncated base64 payload")
    try:
        decoded = _a2b(raw + _PAD[rem], strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise PayloadError(f"invalid base64 payload: {exc}") from None
    if b"\x00" in decoded:
        decoded = decoded.replace(b"\x00", b"")
    try:
        return _loads(decoded)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"payload is not JSON: {exc}") from None


# --------------------------------------------------------------------------------------------
# Tencent DeviceChange → StateChange fields (seed 002, 设备状态推送)

_DAY_MS: Final = 86_400_000
_NOT_REPORT: Final = frozenset({"StatusChange", "UserDefined"})
_fromisoformat: Final = datetime.fromisoformat

TencentReport = tuple[str, dict[str, Any], int, int | None]


def tencent_time_ms(value: object) -> int | None:
    """``Time`` of a push: ISO 8601 (the seed prints ``+08:00``) or epoch seconds/ms; else None."""
    if isinstance(value, str) and value:
        try:
            return int(_fromisoformat(value).timestamp() * 1000)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return int(value * 1000) if value < 100_000_000_000 else int(value)
    return None


def device_ts(body: Mapping[str, Any], fallback: int) -> int:
    """The device's own ``timestamp`` (s or ms) when within a day of the push time, else the push's."""
    raw = body.get("timestamp")
    if isinstance(raw, (int, float)) and not isinstance(raw, bool) and raw > 0:
        ms = int(raw * 1000) if raw < 100_000_000_000 else int(raw)
        if abs(ms - fallback) <= _DAY_MS:
            return ms
    return fallback


def tencent_report(frame: bytes | str, now_ms: int) -> TencentReport | None:
    """``(device, props, ts_ms, seq)`` of a ``DeviceChange`` property report, else ``None``.

    A report is a push (``"push": true``, ``action`` ``DeviceChange``) whose ``SubType`` is
    ``Report``/``Push``, whose ``Type`` is neither ``StatusChange`` nor ``UserDefined``, with a
    ``DeviceId`` of the form ``ProductId/DeviceName`` and a ``Payload`` that decodes to
    ``{"method": "report", "params": {…}}`` (also the seed's nested form), ``get_status_reply``'s
    ``data.reported``, or the legacy ``{"type": "update", "state": {"reported": …}}``. The rules
    are ``protocols.tencent.ws.decode_device_change``'s, which yields the same ``StateChange``.
    """
    try:
        obj = _loads(frame)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict or not obj.get("push") or obj.get("action") != "DeviceChange":
        return None
    params = obj.get("params")
    if type(params) is not dict:
        return None
    type_ = params.get("Type")
    subtype = params.get("SubType")
    if (
        not isinstance(type_, str)
        or type_ in _NOT_REPORT
        or (subtype != "Report" and subtype != "Push")
    ):
        return None
    device = params.get("DeviceId")
    payload = params.get("Payload")
    if not isinstance(device, str) or "/" not in device or not isinstance(payload, str) or not payload:
        return None
    try:
        body = decode_payload(payload)
    except PayloadError:
        return None
    if type(body) is not dict:
        return None
    seq = params.get("Seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        seq = None
    ts = tencent_time_ms(params.get("Time")) or now_ms
    method = body.get("method")
    if method == "report":
        props = body.get("params")
        if type(props) is dict and props.get("method") == "report" and type(props.get("params")) is dict:
            body, props = props, props["params"]
    elif method == "get_status_reply":
        data = body.get("data")
        props = data.get("reported") if type(data) is dict else None
    elif method is None and body.get("type") == "update":
        state = body.get("state")
        props = state.get("reported") if type(state) is dict else None
    else:
        return None
    if type(props) is not dict:
        return None
    return device, props, device_ts(body, ts), seq


# --------------------------------------------------------------------------------------------
# TSL normalization


def normalize(schema: Schema, props: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``protocols.tsl.normalize_reference``: coerce every described property, flag misfits."""
    from protocols.tsl import normalize_reference

    return normalize_reference(schema, props)


# --------------------------------------------------------------------------------------------
# MQTT PUBLISH


def encode_publish(
    topic: str | bytes,
    payload: bytes,
    qos: int = 0,
    retain: bool = False,
    packet_id: int = 0,
    props: bytes | None = None,
    dup: bool = False,
) -> bytes:
    """One PUBLISH packet. ``props`` is the *encoded* v5 property block (``None`` for v3.1.1),
    so a caller that sends the same properties on every message encodes them once."""
    tb = topic.encode("utf-8") if isinstance(topic, str) else topic
    if qos:
        head = struct.pack("!H", len(tb)) + tb + struct.pack("!H", packet_id)
    else:
        head = struct.pack("!H", len(tb)) + tb
    if props is not None:
        head += props
    n = len(head) + len(payload)
    first = 0x30 | (qos << 1) | (1 if retain else 0) | (8 if dup else 0)
    if n < 128:
        return bytes((first, n)) + head + payload
    out = bytearray((first,))
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            break
    return bytes(out) + head + payload
