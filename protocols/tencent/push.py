"""The hot rules of a Tencent ``DeviceChange`` push (seed 002, 设备状态推送), and their compiled twin.

Each rule is written here once, in pure Python (``*_py``); the public names are the compiled twin
``_speedups._tencent`` when it loaded (configured at import with this module's constants and
pure rules, which it declines to on anything unusual), else the pure functions. tests/
test_speedups.py holds both equal; ``bench/RESULTS.md`` has what the twin gains.

- ``decode_payload``: base64 → NULs removed → JSON (the push's ``Payload``). The official
  mini-program SDK decodes with a lenient base64 (URL-safe alphabet accepted, padding optional)
  and strips NUL bytes before ``JSON.parse``; we do the same.
- ``tencent_time_ms``: the push's ``Time`` (ISO 8601 with offset, or epoch s/ms) → epoch ms;
- ``device_ts``: the device's own ``timestamp`` when it is plausible, else the push's time;
- ``tencent_report``: a whole ``DeviceChange`` frame → the fields of a ``StateChange`` in one
  call, or ``None`` when the frame is anything but a property report (``ws.decode_report``'s
  caller then takes ``ws``'s general path, which also words the errors).
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final

import orjson

import _speedups

from ..model import EPOCH_MS_FROM

__all__ = [
    "DAY_MS",
    "NOT_REPORT_TYPES",
    "REPORT_SUBTYPES",
    "PayloadError",
    "TencentReport",
    "decode_payload",
    "decode_payload_py",
    "device_ts",
    "device_ts_py",
    "tencent_report",
    "tencent_report_py",
    "tencent_time_ms",
    "tencent_time_ms_py",
]

_URLSAFE: Final = bytes.maketrans(b"-_", b"+/")
_PAD: Final = (b"", b"", b"==", b"=")  # index by len % 4; len % 4 == 1 is invalid
_loads: Final = orjson.loads
_a2b: Final = binascii.a2b_base64


class PayloadError(ValueError):
    """The payload is not base64 of JSON."""


def decode_payload_py(data: bytes | str) -> Any:
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

DAY_MS: Final = 86_400_000
"""A device's own ``timestamp`` is used when within this of the push's ``Time``."""
NOT_REPORT_TYPES: Final = frozenset({"StatusChange", "UserDefined"})
"""``Type``s whose pushes are never property reports (whatever their SubType)."""
REPORT_SUBTYPES: Final = ("Report", "Push")
"""``SubType``s a property report comes with."""
_fromisoformat: Final = datetime.fromisoformat

TencentReport = tuple[str, dict[str, Any], int, int | None]


def tencent_time_ms_py(value: object) -> int | None:
    """``Time`` of a push: ISO 8601 (the seed prints ``+08:00``) or epoch seconds/ms; else None."""
    if isinstance(value, str) and value:
        try:
            return int(_fromisoformat(value).timestamp() * 1000)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return int(value * 1000) if value < EPOCH_MS_FROM else int(value)
    return None


def device_ts_py(body: Mapping[str, Any], fallback: int) -> int:
    """The device's own ``timestamp`` (s or ms) when within a day of the push time, else the push's."""
    raw = body.get("timestamp")
    if isinstance(raw, (int, float)) and not isinstance(raw, bool) and raw > 0:
        ms = int(raw * 1000) if raw < EPOCH_MS_FROM else int(raw)
        if abs(ms - fallback) <= DAY_MS:
            return ms
    return fallback


def tencent_report_py(frame: bytes | str, now_ms: int) -> TencentReport | None:
    """``(device, props, ts_ms, seq)`` of a ``DeviceChange`` property report, else ``None``.

    A report is a push (``"push": true``, ``action`` ``DeviceChange``) whose ``SubType`` is
    ``Report``/``Push``, whose ``Type`` is neither ``StatusChange`` nor ``UserDefined``, with a
    ``DeviceId`` of the form ``ProductId/DeviceName`` and a ``Payload`` that decodes to
    ``{"method": "report", "params": {…}}`` (also the seed's nested form), ``get_status_reply``'s
    ``data.reported``, or the legacy ``{"type": "update", "state": {"reported": …}}``. The rules
    are ``ws.decode_device_change``'s, which yields the same ``StateChange``.
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
        or type_ in NOT_REPORT_TYPES
        or subtype not in REPORT_SUBTYPES
    ):
        return None
    device = params.get("DeviceId")
    payload = params.get("Payload")
    if not isinstance(device, str) or "/" not in device or not isinstance(payload, str) or not payload:
        return None
    try:
        body = decode_payload_py(payload)
    except PayloadError:
        return None
    if type(body) is not dict:
        return None
    seq = params.get("Seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        seq = None
    ts = tencent_time_ms_py(params.get("Time")) or now_ms
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
    return device, props, device_ts_py(body, ts), seq


# --------------------------------------------------------------------------------------------
# The compiled twin

decode_payload: Callable[[bytes | str], Any] = decode_payload_py
tencent_time_ms: Callable[[object], int | None] = tencent_time_ms_py
device_ts: Callable[[Mapping[str, Any], int], int] = device_ts_py
tencent_report: Callable[[bytes | str, int], TencentReport | None] = tencent_report_py

_twin = _speedups.twin("_tencent")
if _twin is not None:
    decode_payload, tencent_time_ms, device_ts, tencent_report = _twin.configure(
        payload_error=PayloadError,
        time_ms_py=tencent_time_ms_py,
        device_ts_py=device_ts_py,
        report_py=tencent_report_py,
        day_ms=DAY_MS,
        ms_from=EPOCH_MS_FROM,
        not_report_types=NOT_REPORT_TYPES,
        report_subtypes=REPORT_SUBTYPES,
    )
