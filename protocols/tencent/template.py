"""Tencent data templates (数据模板 / 物模型) → ``Schema``, and command values back to the wire.

A product's data template arrives from ``AppGetProducts`` as ``Products[i].DataTemplate``: the
seed prints it as an object, the official SDK demo ``JSON.parse``s it as a string, so both are
accepted. Its shape (seed 002 获取产品信息; the embedded C SDK's ``example_config.json``)::

    {"version": "1.0", "profile": {"ProductId": …, "CategoryId": …},
     "properties": [{"id", "name", "desc", "required", "mode": "r"|"rw",
                     "define": {"type": "bool"|"int"|"float"|"enum"|"stringenum"|"string"|
                                         "timestamp"|"struct"|"array", …}}],
     "events":  [{"id", "name", "type": "info"|"alert"|"fault", "params": [{"id","name","define"}]}],
     "actions": [{"id", "name", "input": […], "output": […]}]}

Quirks handled here: ``min``/``max``/``step``/``start`` are *strings* (``"0.0"``); for ``string``
``min``/``max`` bound the length; ``mapping`` keys are strings (``{"0": "关", "1": "开"}``), while
devices send ``enum`` values as integers; ``struct`` members are ``specs[]`` whose type sits under
``dataType`` (not ``define``); ``array`` carries ``arrayInfo``; the seed's first example nests
``properties``/``events``/``actions`` inside ``profile``. A property of a type we do not know is
left out and the schema is marked ``passthrough`` so its values still flow.

Commands go back through ``denormalize``: Tencent devices take ``bool`` as ``1``/``0`` and
``timestamp`` in seconds; structs recurse.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final, Literal, cast

import orjson

from ..model import (
    ActionSpec,
    EventSpec,
    LocalProtocolError,
    Property,
    PropType,
    RemoteProtocolError,
    Schema,
    denormalize_nested,
)

__all__ = [
    "EVENT_LEVELS",
    "denormalize",
    "denormalize_value",
    "parse_template",
    "schema_from_template",
]

EVENT_LEVELS: Final = frozenset({"info", "alert", "fault"})
_SIMPLE: Final[Mapping[str, PropType]] = {
    "bool": "bool",
    "int": "int",
    "float": "float",
    "enum": "enum",
    "stringenum": "enum",
    "string": "string",
    "timestamp": "timestamp",
    "struct": "struct",
    "array": "array",
}


class _Unknown(Exception):
    """A property type this module does not know; the caller skips it and goes passthrough."""


def parse_template(raw: object) -> dict[str, Any]:
    """The template as a dict, from a JSON string or an object (``RemoteProtocolError`` if neither)."""
    if isinstance(raw, (str, bytes, bytearray)):
        if not raw:
            return {}
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise RemoteProtocolError(f"DataTemplate is not JSON: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise RemoteProtocolError(f"DataTemplate must be an object, not {type(raw).__name__}")
    return dict(raw)


def _number(text: object) -> float | None:
    if text is None or text == "" or isinstance(text, bool):
        return None
    try:
        number = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _as_int_if_integral(number: float | None) -> float | None:
    if number is not None and number.is_integer():
        return int(number)
    return number


def _mapping(raw: object, *, int_keys: bool) -> dict[Any, str] | None:
    if not isinstance(raw, Mapping) or not raw:
        return None
    out: dict[Any, str] = {}
    for key, label in raw.items():
        out_key: Any = key
        if int_keys:
            try:
                out_key = int(key)
            except (TypeError, ValueError):
                return {str(k): str(v) for k, v in raw.items()}  # not all ints: keep strings
        out[out_key] = str(label)
    return out


def _property(
    pid: str, name: str, define: Mapping[str, Any], access: Literal["r", "rw"]
) -> Property:
    vendor_type = str(define.get("type", "")).lower()
    kind = _SIMPLE.get(vendor_type)
    if kind is None:
        raise _Unknown(vendor_type)
    unit = define.get("unit")
    unit_text = str(unit) if unit not in (None, "") else None
    if kind in ("int", "float"):
        lo, hi, step = (
            _number(define.get("min")),
            _number(define.get("max")),
            _number(define.get("step")),
        )
        if kind == "int":
            lo, hi, step = (
                _as_int_if_integral(lo),
                _as_int_if_integral(hi),
                _as_int_if_integral(step),
            )
        return Property(pid, name, kind, unit=unit_text, min=lo, max=hi, step=step, access=access)
    if kind == "bool":
        mapping = _mapping(define.get("mapping"), int_keys=True)
        labels = None
        if mapping is not None:
            labels = {bool(k): v for k, v in mapping.items() if k in (0, 1)} or None
        return Property(pid, name, "bool", enum=labels, access=access)
    if kind == "enum":
        mapping = _mapping(define.get("mapping"), int_keys=vendor_type == "enum")
        return Property(pid, name, "enum", enum=mapping, access=access)
    if kind == "string":
        hi = _number(define.get("max"))
        return Property(
            pid, name, "string", length=int(hi) if hi is not None else None, access=access
        )
    if kind == "timestamp":
        return Property(pid, name, "timestamp", access=access)
    if kind == "struct":
        fields = []
        for spec in define.get("specs") or ():
            if not isinstance(spec, Mapping) or not spec.get("id"):
                continue
            inner = spec.get("dataType") or spec.get("define") or {}
            if isinstance(inner, Mapping):
                fields.append(_property(str(spec["id"]), str(spec.get("name", "")), inner, access))
        return Property(pid, name, "struct", fields=tuple(fields), access=access)
    # array
    info = define.get("arrayInfo") or define.get("item") or {}
    item = None
    if isinstance(info, Mapping) and info.get("type"):
        item = _property("item", "", info, access)
    size = _number(define.get("max") or define.get("size"))
    return Property(
        pid, name, "array", item=item, length=int(size) if size else None, access=access
    )


def _params(items: object, access: Literal["r", "rw"]) -> tuple[tuple[Property, ...], bool]:
    """Properties of a list of ``{"id","name","define"}``; the flag says one was unknown."""
    out: list[Property] = []
    unknown = False
    if not isinstance(items, Iterable) or isinstance(items, (str, bytes, Mapping)):
        return (), False
    for item in items:
        if not isinstance(item, Mapping) or not item.get("id"):
            continue
        define = item.get("define") or item.get("dataType") or {}
        if not isinstance(define, Mapping):
            continue
        try:
            out.append(_property(str(item["id"]), str(item.get("name", "")), define, access))
        except _Unknown:
            unknown = True
    return tuple(out), unknown


def _section(template: Mapping[str, Any], key: str) -> object:
    value = template.get(key)
    if value is None:
        profile = template.get("profile")
        if isinstance(profile, Mapping):
            value = profile.get(key)
    return value or ()


def _entries(template: Mapping[str, Any], key: str) -> Iterator[Mapping[str, Any]]:
    """The items of one template section (a list) that are objects with an ``id``."""
    raw = _section(template, key)
    if isinstance(raw, Iterable) and not isinstance(raw, (str, bytes, Mapping)):
        for item in raw:
            if isinstance(item, Mapping) and item.get("id"):
                yield item


def schema_from_template(raw: object) -> Schema:
    """Map a data template (string or object) to the normalized ``Schema``."""
    template = parse_template(raw)
    passthrough = False
    properties: list[Property] = []
    for item in _entries(template, "properties"):
        define = item.get("define") or {}
        access: Literal["r", "rw"] = "r" if str(item.get("mode", "rw")).lower() == "r" else "rw"
        if not isinstance(define, Mapping):
            passthrough = True
            continue
        try:
            properties.append(_property(str(item["id"]), str(item.get("name", "")), define, access))
        except _Unknown:
            passthrough = True
    events: list[EventSpec] = []
    for item in _entries(template, "events"):
        level = str(item.get("type", "info")).lower()
        params, _ = _params(item.get("params"), "r")
        events.append(
            EventSpec(
                str(item["id"]),
                str(item.get("name", "")),
                level if level in EVENT_LEVELS else "info",
                params,
            )
        )
    actions: list[ActionSpec] = []
    for item in _entries(template, "actions"):
        inputs, _ = _params(item.get("input"), "rw")
        outputs, _ = _params(item.get("output"), "r")
        actions.append(ActionSpec(str(item["id"]), str(item.get("name", "")), inputs, outputs))
    if not properties and not events and not actions:
        passthrough = True  # nothing described: let values through rather than reject them all
    return Schema(tuple(properties), tuple(events), tuple(actions), passthrough=passthrough)


# --------------------------------------------------------------------------------------------
# Commands: normalized (validated) values → what a Tencent device expects


def denormalize_value(prop: Property | None, value: Any) -> Any:
    """One validated value in Tencent's spelling: bool → 1/0, timestamp ms → s, structs recurse."""
    return denormalize_nested(prop, value, _denormalize_leaf)


def _denormalize_leaf(prop: Property | None, value: Any) -> Any:
    if prop is None:
        return 1 if value is True else 0 if value is False else value
    kind = prop.type
    if kind == "bool":
        return 1 if value else 0
    if kind == "timestamp":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LocalProtocolError(f"{prop.id!r}: timestamp must be a number")
        return int(value) // 1000
    if (
        kind == "enum"
        and isinstance(value, str)
        and prop.enum is not None
        and value not in prop.enum
    ):
        try:
            return int(value)
        except ValueError:
            return value
    return value


def denormalize(params: Iterable[Property] | Schema, values: Mapping[str, Any]) -> dict[str, Any]:
    """All values of a ``set`` (schema) or an action input (its params) in Tencent's spelling."""
    if isinstance(params, Schema):
        lookup = params.prop
    else:
        by_id = {p.id: p for p in params}
        lookup = cast(Any, by_id.get)
    return {key: denormalize_value(lookup(key), value) for key, value in values.items()}
