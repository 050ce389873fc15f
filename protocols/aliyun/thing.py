"""Thing model (TSL) → ``Schema``, command values → the TSL's spelling, and the device list.

TSL shape (seed 6.4.6 ``/thing/tsl/get``; Aliyun "TSL field descriptions")::

    {"properties": [{"identifier", "name", "accessMode": "r"|"rw",
                     "dataType": {"type": ..., "specs": ...}}],
     "events":     [{"identifier", "name", "type": "info"|"alert"|"error", "outputData": [...]}],
     "services":   [{"identifier", "name", "callType", "inputData": [...], "outputData": [...]}]}

Types: ``int`` ``float`` ``double`` (specs min/max/step/unit as *strings*), ``text`` (specs
length), ``date`` (UTC ms, sent as a string), ``bool`` (0/1, specs map value→label), ``enum``
(int keys, specs map), ``struct`` (specs is a *list* of ``{identifier, name, dataType}``),
``array`` (specs ``{size, item: {type[, specs]}}``).

The built-in ``set``/``get`` services and the ``post`` event are the platform's plumbing for
properties (``get``'s ``inputData`` is even a list of plain strings); they are not actions.
``data`` of ``/thing/tsl/get`` sometimes arrives as a JSON *string*: ``tsl_to_schema`` accepts
both. Anything malformed inside one entry skips that entry; never raises except for a document
that is not a TSL at all.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final

from ..model import (
    ActionSpec,
    DeviceInfo,
    EventSpec,
    Property,
    PropType,
    RemoteProtocolError,
    Schema,
    denormalize_nested,
    json_value,
)

__all__ = [
    "BUILTIN_EVENTS",
    "BUILTIN_SERVICES",
    "denormalize",
    "denormalize_value",
    "parse_bindings",
    "tsl_to_schema",
]

_TYPES: Final[dict[str, PropType]] = {
    "int": "int",
    "float": "float",
    "double": "float",
    "text": "string",
    "date": "timestamp",
    "bool": "bool",
    "enum": "enum",
    "struct": "struct",
    "array": "array",
}
BUILTIN_SERVICES: Final = frozenset({"set", "get"})
BUILTIN_EVENTS: Final = frozenset({"post"})


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _int(value: Any) -> int | None:
    number = _num(value)
    return int(number) if number is not None else None


def _enum_key(key: str) -> Any:
    try:
        return int(key)
    except ValueError:
        return key


def _property(entry: Any, access: str = "rw") -> Property | None:
    if not isinstance(entry, Mapping):
        return None
    ident = entry.get("identifier")
    if not isinstance(ident, str) or not ident:
        return None
    name = entry.get("name")
    name = name if isinstance(name, str) else ""
    mode = entry.get("accessMode", access)
    return _typed(ident, name, entry.get("dataType"), "r" if mode == "r" else "rw")


def _typed(ident: str, name: str, data_type: Any, access: str) -> Property:
    acc: Any = access
    if not isinstance(data_type, Mapping):
        return Property(ident, name, "string", access=acc)
    vendor_type = str(data_type.get("type", "")).lower()
    kind = _TYPES.get(vendor_type, "string")
    specs = data_type.get("specs")
    if kind in ("int", "float"):
        spec = specs if isinstance(specs, Mapping) else {}
        unit = spec.get("unit") or spec.get("unitName")
        return Property(
            ident,
            name,
            kind,
            unit=str(unit) if unit else None,
            min=_num(spec.get("min")),
            max=_num(spec.get("max")),
            step=_num(spec.get("step")),
            access=acc,
        )
    if kind == "string":
        spec = specs if isinstance(specs, Mapping) else {}
        return Property(ident, name, "string", length=_int(spec.get("length")), access=acc)
    if kind == "timestamp":
        return Property(ident, name, "timestamp", access=acc)
    if kind == "bool":
        labels: dict[Any, str] | None = None
        if isinstance(specs, Mapping):
            labels = {}
            for key, label in specs.items():
                if str(key) in ("0", "1"):
                    labels[str(key) == "1"] = str(label)
        return Property(ident, name, "bool", enum=labels or None, access=acc)
    if kind == "enum":
        values: dict[Any, str] = {}
        if isinstance(specs, Mapping):
            values = {_enum_key(str(k)): str(v) for k, v in specs.items()}
        return Property(ident, name, "enum", enum=values or None, access=acc)
    if kind == "struct":
        fields = []
        if isinstance(specs, list):
            for item in specs:
                prop = _property(item, access)
                if prop is not None:
                    fields.append(prop)
        return Property(ident, name, "struct", fields=tuple(fields), access=acc)
    # array
    spec = specs if isinstance(specs, Mapping) else {}
    item_type = spec.get("item")
    item = _typed(f"{ident}[]", "", item_type, access) if isinstance(item_type, Mapping) else None
    return Property(ident, name, "array", item=item, length=_int(spec.get("size")), access=acc)


def _params(entries: Any) -> tuple[Property, ...]:
    if not isinstance(entries, list):
        return ()
    out = []
    for entry in entries:
        prop = _property(entry)
        if prop is not None:
            out.append(prop)
    return tuple(out)


def tsl_to_schema(tsl: Mapping[str, Any] | str | bytes) -> Schema:
    """Map a TSL document (object or JSON string) to a ``Schema``."""
    if isinstance(tsl, (str, bytes)):
        tsl = json_value(tsl, "TSL")
    if not isinstance(tsl, Mapping):
        raise RemoteProtocolError("TSL is not an object")
    props = []
    for entry in tsl.get("properties") or ():
        prop = _property(entry)
        if prop is not None:
            props.append(prop)
    events = [
        EventSpec(
            ident,
            str(entry.get("name") or ""),
            level if isinstance(level := entry.get("type"), str) and level else "info",
            _params(entry.get("outputData")),
        )
        for ident, entry in _declared(tsl.get("events"), BUILTIN_EVENTS)
    ]
    actions = [
        ActionSpec(
            ident,
            str(entry.get("name") or ""),
            _params(entry.get("inputData")),
            _params(entry.get("outputData")),
        )
        for ident, entry in _declared(tsl.get("services"), BUILTIN_SERVICES)
    ]
    return Schema(tuple(props), tuple(events), tuple(actions))


def _declared(entries: Any, builtin: frozenset[str]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """``(identifier, entry)`` of each TSL event or service that is an object with an
    identifier and not one of the ``builtin`` ones."""
    for entry in entries or ():
        if not isinstance(entry, Mapping):
            continue
        ident = entry.get("identifier")
        if isinstance(ident, str) and ident and ident not in builtin:
            yield ident, entry


def denormalize_value(prop: Property | None, value: Any) -> Any:
    """A validated, normalized value in the TSL's spelling: bool → 0/1, date → ms string
    (struct fields and array items each in theirs)."""
    return denormalize_nested(prop, value, _denormalize_leaf)


def _denormalize_leaf(prop: Property | None, value: Any) -> Any:
    if prop is None:
        return int(value) if isinstance(value, bool) else value
    kind = prop.type
    if kind == "bool":
        return 1 if value else 0
    if kind == "timestamp":
        return str(int(value)) if isinstance(value, (int, float)) else value
    return value


def denormalize(props: Mapping[str, Any], schema: Schema | None) -> dict[str, Any]:
    """Denormalize every value of a ``set`` (or service arguments given as properties)."""
    lookup = schema.prop if schema is not None else (lambda _id: None)
    return {key: denormalize_value(lookup(key), value) for key, value in props.items()}


def parse_bindings(data: Any) -> tuple[list[DeviceInfo], int | None]:
    """One page of ``/uc/listBindingByAccount``: ``(devices, total)``.

    The seed's table names the id ``deviceId``, its example ``iotId``: accept both. A device's
    ``status`` is 1 online, 3 offline, 0 inactive, 8 disabled.
    """
    if not isinstance(data, Mapping):
        raise RemoteProtocolError("device list reply has no data object")
    items = data.get("data")
    if items is None:
        items = []
    if not isinstance(items, list):
        raise RemoteProtocolError("device list data.data is not a list")
    total_raw = data.get("total")
    total = total_raw if isinstance(total_raw, int) and not isinstance(total_raw, bool) else None
    infos: list[DeviceInfo] = []
    for item in items:
        if not isinstance(item, Mapping):
            continue
        iot_id = item.get("iotId") or item.get("deviceId")
        if not isinstance(iot_id, str) or not iot_id:
            continue
        status = item.get("status")
        online = (status == 1) if isinstance(status, int) else None
        name = item.get("nickName") or item.get("deviceName") or item.get("productName") or ""
        extra = {
            k: item[k]
            for k in ("productKey", "deviceName", "productName", "netType", "nodeType", "owned")
            if k in item
        }
        if isinstance(status, int):
            extra["status"] = status
        infos.append(
            DeviceInfo(
                iot_id,
                str(name),
                str(item.get("productModel") or item.get("productName") or ""),
                online=online,
                extra=extra,
            )
        )
    return infos, total
