"""The compiled kernels against their pure rules, on fuzzed input (both builds in one process).

The first byte picks the kernel; the rest is its input (a frame, a payload, a JSON document of
properties, a time, PUBLISH arguments). Oracle: the compiled twin gives what the pure rule gives
(same value, or the same exception class), and each raises only what it declares:
``PayloadError`` for ``decode_payload``, nothing for the others on these inputs. In a pure build
only the declared-errors half runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

import _speedups
from gateway.mqtt import codec
from protocols import tsl
from protocols.model import Property, Schema
from protocols.tencent import push, ws
from tests.fuzz._common import NOW_MS

_tencent = _speedups.twin("_tencent")
_tsl = _speedups.twin("_tsl")
_mqtt = _speedups.twin("_mqtt")

_SCALARS = ("bool", "int", "float", "timestamp", "string")
SCHEMA = Schema((
    *(Property(t, type=t) for t in _SCALARS),  # type: ignore[arg-type]
    Property("e", type="enum", enum={0: "a", 1: "b", "2": "c"}),
    Property("s", type="struct", fields=tuple(Property(t, type=t) for t in _SCALARS)),  # type: ignore[arg-type]
    Property("a", type="array", item=Property("i", type="timestamp")),
))


def _outcome(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    try:
        return ("ok", repr(fn(*args)))
    except Exception as exc:
        return ("raise", type(exc))


def _same(pure: Callable[..., Any], twin: Callable[..., Any] | None, *args: Any,
          declared: tuple[type[Exception], ...] = ()) -> None:
    expected = _outcome(pure, *args)
    if expected[0] == "raise":
        assert issubclass(expected[1], declared), (pure.__name__, expected, args)
    if twin is not None:
        got = _outcome(twin, *args)
        assert got == expected, (pure.__name__, got, expected, args)


def _frame(body: bytes) -> bytes:
    return ws.device_change_frame("P/d", "Property", "Report", body, seq=1, ts_ms=NOW_MS).encode()


SEEDS = [
    b"\x00" + _frame(b'{"method":"report","timestamp":1700000000.5,"params":{"bool":"on","t":2.5}}'),
    b"\x01" + ws.encode_payload({"method": "report", "params": {"x": 1}}).encode(),
    b"\x02" + b'{"bool":"1","int":"57","float":"nan","timestamp":1700000000.5,"string":3,'
    b'"e":"1","s":{"timestamp":"1700000000.5","int":1.0},"a":[1,"2.5",1e20]}',
    b"\x03" + b"2023-11-15T06:13:20+08:00",
    b"\x04" + b"1700000000.5",
    b"\x05" + b"\x01\x00\x07t/topic\x00payload",
]


def _normalize(doc: Any) -> None:
    if isinstance(doc, dict):
        _same(tsl.normalize_reference, _tsl.normalize if _tsl else None, SCHEMA, doc)
        import types

        _same(tsl.normalize_reference, _tsl.normalize if _tsl else None, SCHEMA, types.MappingProxyType(doc))
    # every value of the document, as each property's value
    values = list(doc.values()) if isinstance(doc, dict) else doc if isinstance(doc, list) else [doc]
    for value in values[:8]:
        props = {p.id: value for p in SCHEMA.properties}
        _same(tsl.normalize_reference, _tsl.normalize if _tsl else None, SCHEMA, props)


def one_input(data: bytes) -> None:
    if not data:
        return
    pick, rest = data[0] % 6, data[1:]
    t = _tencent
    if pick == 0:
        for frame in (rest, rest.decode("latin-1")):
            _same(push.tencent_report_py, t.tencent_report if t else None, frame, NOW_MS)
    elif pick == 1:
        for payload in (rest, rest.decode("latin-1")):
            _same(push.decode_payload_py, t.decode_payload if t else None, payload,
                  declared=(push.PayloadError,))
    elif pick == 2:
        try:
            doc = orjson.loads(rest)
        except orjson.JSONDecodeError:
            doc = rest.decode("latin-1")
        _normalize(doc)
    elif pick in (3, 4):
        text = rest.decode("latin-1")
        values: list[Any] = [text]
        try:
            values.append(orjson.loads(rest))
        except orjson.JSONDecodeError:
            pass
        for value in values:
            if isinstance(value, (dict, list)):
                continue
            _same(push.tencent_time_ms_py, t.tencent_time_ms if t else None, value)
            for fallback in (NOW_MS, 0):
                _same(push.device_ts_py, t.device_ts if t else None, {"timestamp": value}, fallback)
    else:
        if len(rest) < 3:
            return
        qos, retain_dup, n = rest[0] % 4, rest[1], rest[2]
        topic, payload = rest[3 : 3 + n], rest[3 + n :]
        props = payload[:4] if retain_dup & 4 else None
        args = (topic.decode("latin-1") if retain_dup & 8 else topic, payload, qos,
                bool(retain_dup & 1), int.from_bytes(rest[:2], "big") if qos else 0, props,
                bool(retain_dup & 2))
        _same(codec.encode_publish_py, _mqtt.encode_publish if _mqtt else None, *args)
