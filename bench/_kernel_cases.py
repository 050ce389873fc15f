"""The inputs and the pure/compiled pairs that ``bench.kernels`` and ``bench/test_kernels.py`` time.

Inputs are what the hot path sees: a Tencent ``DeviceChange`` property report as the emulator
(and the seed) frames it, a light's schema, a 200-byte JSON state to publish.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import time
from collections.abc import Callable
from typing import Any

import _speedups
from gateway.mqtt import codec
from protocols.tencent import push, ws
from protocols.tencent.template import schema_from_template
from protocols.tsl import normalize_reference

# The compiled twins, configured by their owners (imported above); None in a pure build.
_tencent = _speedups.twin("_tencent")
_tsl = _speedups.twin("_tsl")
_mqtt = _speedups.twin("_mqtt")

NOW_MS = 1_700_000_000_000
DEVICE = "C2MLIGHT01/light_0001"
TEMPLATE = {
    "properties": [
        {"id": "power_switch", "mode": "rw", "define": {"type": "bool", "mapping": {"0": "off", "1": "on"}}},
        {"id": "brightness", "mode": "rw",
         "define": {"type": "int", "min": "0", "max": "100", "start": "0", "step": "1", "unit": "%"}},
        {"id": "color", "mode": "rw", "define": {"type": "enum", "mapping": {"0": "Red", "1": "Green", "2": "Blue"}}},
        {"id": "temperature", "mode": "r", "define": {"type": "float", "min": "-40", "max": "100", "start": "0", "step": "0.1"}},
        {"id": "name", "mode": "rw", "define": {"type": "string", "min": "0", "max": "64"}},
    ]
}
SCHEMA = schema_from_template(TEMPLATE)
PROPS = {"power_switch": 1, "brightness": "57", "color": 2, "temperature": 23.4, "name": "lamp"}
BODY = {"method": "report", "clientToken": "c2m-1234", "timestamp": NOW_MS // 1000, "params": PROPS}
FRAME = ws.device_change_frame(
    DEVICE, "Property", "Report", BODY, seq=4242, ts_ms=NOW_MS,
    topic="$thing/up/property/C2MLIGHT01/light_0001",
).encode()
PAYLOAD_B64 = ws.encode_payload(BODY)
TIME = ws.format_time(NOW_MS)
TOPIC = b"cloud2mqtt/tencent/C2MLIGHT01%2Flight_0001"
STATE = (b'{"power_switch":true,"brightness":57,"color":2,"temperature":23.4,"name":"lamp",'
         b'"last_seen":1700000000000,"pad":"' + b"x" * 200)[:198] + b'"}'
V5_PROPS = b"\x13\x03\x00\x10application/json"


def _pipeline(report: Callable[..., Any], normalize: Callable[..., Any]) -> Callable[[], Any]:
    """Frame → normalized StateChange fields: the decode + normalize pipeline."""
    schemas = {DEVICE: SCHEMA}

    def run() -> Any:
        device, props, ts, seq = report(FRAME, NOW_MS)
        values, flagged = normalize(schemas[device], props)
        return device, values, ts, seq, flagged

    return run


def _ws_general(impl: str) -> Callable[[], Any]:
    """protocols.tencent.ws's general path (parse_frame → parse_device_change → decode)."""

    def run() -> Any:
        push = ws.parse_frame(FRAME)
        change = ws.parse_device_change(push.params)  # type: ignore[union-attr]
        return ws.decode_device_change(change, now_ms=NOW_MS, schema_for={DEVICE: SCHEMA}.get)

    return run


def kernel_pairs() -> dict[str, tuple[Callable[[], Any], Callable[[], Any] | None]]:
    """name → (pure callable, compiled callable or None when not built)."""
    p, t, m = push, _tencent, _mqtt
    n = _tsl
    pairs: dict[str, tuple[Callable[[], Any], Callable[[], Any] | None]] = {
        "decode_payload": (
            lambda: p.decode_payload_py(PAYLOAD_B64),
            (lambda: t.decode_payload(PAYLOAD_B64)) if t else None,
        ),
        "tencent_time_ms": (
            lambda: p.tencent_time_ms_py(TIME),
            (lambda: t.tencent_time_ms(TIME)) if t else None,
        ),
        "tencent_report": (
            lambda: p.tencent_report_py(FRAME, NOW_MS),
            (lambda: t.tencent_report(FRAME, NOW_MS)) if t else None,
        ),
        "normalize": (
            lambda: normalize_reference(SCHEMA, PROPS),
            (lambda: n.normalize(SCHEMA, PROPS)) if n else None,
        ),
        "decode_normalize_pipeline": (
            _pipeline(p.tencent_report_py, normalize_reference),
            _pipeline(t.tencent_report, n.normalize) if t and n else None,
        ),
        "encode_publish_qos0": (
            lambda: codec.encode_publish_py(TOPIC, STATE, 0, True, 0, V5_PROPS),
            (lambda: m.encode_publish(TOPIC, STATE, 0, True, 0, V5_PROPS)) if m else None,
        ),
        "encode_publish_qos1": (
            lambda: codec.encode_publish_py(TOPIC, STATE, 1, True, 4242, V5_PROPS),
            (lambda: m.encode_publish(TOPIC, STATE, 1, True, 4242, V5_PROPS)) if m else None,
        ),
    }
    return pairs


def signer_cases() -> dict[str, Callable[[], Any]]:
    """Pure-only: why the signers get no compiled kernel (HMAC is OpenSSL already)."""
    tsign = importlib.import_module("protocols.tencent.sign")
    params = {
        "Action": "AppGetTokenByWeiXin", "AppKey": "c2m-demo-appkey", "Nonce": 123456,
        "Timestamp": int(time.time()), "RequestId": "8f5d0c1e-1a2b-4c3d-9e8f-001122334455",
        "WxOpenID": "c2m-demo-user", "NickName": "demo",
    }  # fmt: skip
    message = tsign.canonical_string(params).encode()
    keyed = hmac.new(b"c2m-demo-appsecret", digestmod=hashlib.sha256)

    def copy_sha256() -> bytes:
        mac = keyed.copy()
        mac.update(message)
        return mac.digest()

    return {
        "tencent_canonical_string": lambda: tsign.canonical_string(params),
        "tencent_sign_total": lambda: tsign.sign("c2m-demo-appsecret", params),
        "hmac_sha256_new": lambda: hmac.new(b"c2m-demo-appsecret", message, hashlib.sha256).digest(),
        "hmac_sha256_prekeyed_copy": copy_sha256,
    }
