"""The normalized vocabulary every vendor maps into.

Every vendor codec in ``protocols/<vendor>`` turns its frames into these frozen events, and every
connector hands them to the gateway. Nothing here knows a vendor, a socket or a topic: the
gateway formats topics, the codecs parse bytes, and this module is the contract between them.

Values inside events are already *normalized* (see ``protocols.tsl``): booleans are ``bool``,
numbers are ``int``/``float``, dates are epoch milliseconds, enums keep their vendor value.
All timestamps are integer epoch milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson

__all__ = [
    "ACCESS",
    "EPOCH_MS_FROM",
    "PROP_TYPES",
    "ActionReply",
    "ActionSpec",
    "Availability",
    "CommandError",
    "CommandResult",
    "DeviceEvent",
    "DeviceInfo",
    "EventSpec",
    "LocalProtocolError",
    "PropType",
    "Property",
    "ProtocolError",
    "RemoteProtocolError",
    "Schema",
    "StateChange",
    "VendorError",
    "denormalize_nested",
    "json_object",
    "json_value",
]

PropType = Literal["bool", "int", "float", "enum", "string", "timestamp", "struct", "array"]
PROP_TYPES: Final = frozenset(
    {"bool", "int", "float", "enum", "string", "timestamp", "struct", "array"}
)
ACCESS: Final = frozenset({"r", "rw"})
EPOCH_MS_FROM: Final = 100_000_000_000
"""Vendors send epoch times in seconds or in milliseconds: a positive number below this is
seconds (100e9 s is the year 5138), from it on milliseconds (100e9 ms is March 1973)."""

#: ``unavailable``: cluster mode only, no instance runs the account right now (it is moving)
ErrorCode = Literal[
    "offline", "rejected", "invalid", "auth", "throttled", "vendor", "timeout", "unavailable"
]


# --------------------------------------------------------------------------------------------
# Errors: "we broke the rules" (local) vs "the peer did" (remote), as h11 splits them.


class ProtocolError(Exception):
    """Base class of every codec error."""


class LocalProtocolError(ProtocolError):
    """We were asked to build something the vendor protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something we cannot make sense of (garbled frame, bad envelope)."""


def json_value(data: str | bytes | bytearray, what: str) -> Any:
    """``data`` parsed as JSON; ``RemoteProtocolError("<what> is not JSON: …")`` when it is not."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise RemoteProtocolError(f"{what} is not JSON: {exc}") from None


def json_object(data: str | bytes | bytearray, what: str) -> dict[str, Any]:
    """``data`` parsed as a JSON object; ``RemoteProtocolError`` ("<what> is not JSON: …" or
    "<what> is not a JSON object") when it is not one."""
    doc = json_value(data, what)
    if not isinstance(doc, dict):
        raise RemoteProtocolError(f"{what} is not a JSON object")
    return doc


class VendorError(Exception):
    """The vendor answered a well-formed request with an error.

    ``code`` is the normalized category of the reply contract (``auth``, ``throttled`` …);
    ``vendor_code`` is the vendor's own code, kept verbatim for the user.
    """

    def __init__(self, code: ErrorCode, vendor_code: object, message: str) -> None:
        super().__init__(f"{vendor_code}: {message}")
        self.code: ErrorCode = code
        self.vendor_code = vendor_code
        self.message = message


class CommandError(Exception):
    """A command that cannot be carried out; becomes an ``error`` reply, never a crash."""

    def __init__(self, code: ErrorCode, message: str, vendor_code: object = None) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.vendor_code = vendor_code


# --------------------------------------------------------------------------------------------
# Schema


@dataclass(frozen=True, slots=True)
class Property:
    """One property of a device (also used for event/action parameters and struct fields).

    ``enum`` maps each vendor value to its label; for ``bool`` it may hold the labels of
    ``False``/``True``. ``fields`` describes a struct, ``item`` an array element.
    ``length`` bounds strings (characters) and arrays (elements).
    """

    id: str
    name: str = ""
    type: PropType = "string"
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    enum: Mapping[Any, str] | None = None
    access: Literal["r", "rw"] = "rw"
    fields: tuple[Property, ...] = ()
    item: Property | None = None
    length: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "name": self.name or self.id, "type": self.type}
        out["access"] = self.access
        for key in ("unit", "min", "max", "step", "length"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.enum is not None:
            out["enum"] = {str(k): v for k, v in self.enum.items()}
        if self.fields:
            out["fields"] = [f.to_json() for f in self.fields]
        if self.item is not None:
            out["item"] = self.item.to_json()
        return out


@dataclass(frozen=True, slots=True)
class EventSpec:
    id: str
    name: str = ""
    level: str = "info"
    params: tuple[Property, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name or self.id,
            "level": self.level,
            "params": [p.to_json() for p in self.params],
        }


@dataclass(frozen=True, slots=True)
class ActionSpec:
    id: str
    name: str = ""
    input: tuple[Property, ...] = ()
    output: tuple[Property, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name or self.id,
            "input": [p.to_json() for p in self.input],
            "output": [p.to_json() for p in self.output],
        }


@dataclass(frozen=True, slots=True)
class Schema:
    """What a device has: properties, events and actions, mapped from the vendor's thing model.

    ``passthrough`` marks a schema that does not know every property (an unknown CoolKit uiid,
    say): values not described are accepted as they are instead of being rejected.
    """

    properties: tuple[Property, ...] = ()
    events: tuple[EventSpec, ...] = ()
    actions: tuple[ActionSpec, ...] = ()
    passthrough: bool = False
    _by_id: dict[str, Property] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        # A frozen dataclass may still fill its own private cache once, at construction.
        self._by_id.update((p.id, p) for p in self.properties)

    def prop(self, prop_id: str) -> Property | None:
        return self._by_id.get(prop_id)

    def action(self, action_id: str) -> ActionSpec | None:
        for a in self.actions:
            if a.id == action_id:
                return a
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "properties": [p.to_json() for p in self.properties],
            "events": [e.to_json() for e in self.events],
            "actions": [a.to_json() for a in self.actions],
            "passthrough": self.passthrough,
        }


EMPTY_SCHEMA: Final = Schema(passthrough=True)


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A device as its account lists it. ``device`` is the vendor's stable id."""

    device: str
    name: str = ""
    model: str = ""
    schema: Schema = EMPTY_SCHEMA
    online: bool | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Events a codec produces


@dataclass(slots=True)
class StateChange:
    """Properties reported by (or read from) a device.

    Not frozen, unlike its neighbours: one is built per pushed message, and a frozen slotted
    dataclass costs four times as much to build (820 against 205 ns for these six fields on
    this project's machine: each field goes through ``object.__setattr__``). Treat it as
    immutable all the same.

    ``prop_ts`` optionally gives a per-property timestamp (Aliyun items carry one each); the
    registry drops any property older than the one it holds.

    ``precision_ms`` is the resolution of those times as the vendor gives them: a Tencent push
    carries whole seconds (seed 002 ``Time``), a state read milliseconds. The registry compares
    at the coarser of the two, and a tie goes to the newcomer, so a report in the same second
    as a read is not taken for an older one.
    """

    device: str
    props: Mapping[str, Any]
    ts_ms: int
    seq: int | None = None
    prop_ts: Mapping[str, int] | None = None
    precision_ms: int = 1


@dataclass(frozen=True, slots=True)
class Availability:
    device: str
    online: bool
    ts_ms: int
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    device: str
    event_id: str
    level: str
    params: Mapping[str, Any]
    ts_ms: int


@dataclass(frozen=True, slots=True)
class ActionReply:
    """A device's answer to an action (Tencent ``action_reply``, Aliyun service output)."""

    device: str
    action_id: str
    output: Mapping[str, Any]
    ts_ms: int
    client_token: str | None = None
    code: int = 0
    message: str = ""


@dataclass(frozen=True, slots=True)
class CommandResult:
    """The outcome of one command, as the reply contract spells it."""

    status: Literal["ok", "error", "timeout"]
    data: Mapping[str, Any] | None = None
    code: ErrorCode | None = None
    vendor_code: object = None
    message: str = ""

    @classmethod
    def ok(cls, data: Mapping[str, Any] | None = None) -> CommandResult:
        return cls("ok", data)

    @classmethod
    def error(cls, code: ErrorCode, message: str, vendor_code: object = None) -> CommandResult:
        return cls("error", None, code, vendor_code, message)


def denormalize_nested(
    prop: Property | None, value: Any, leaf: Callable[[Property | None, Any], Any]
) -> Any:
    """A value in a vendor's spelling: a struct's fields and an array's items are walked (each
    with its own ``Property``), every other value is spelled by the vendor's ``leaf`` rule."""
    if prop is not None:
        if prop.type == "struct" and isinstance(value, Mapping):
            by_id = {f.id: f for f in prop.fields}
            return {k: denormalize_nested(by_id.get(k), v, leaf) for k, v in value.items()}
        if prop.type == "array" and isinstance(value, (list, tuple)):
            return [denormalize_nested(prop.item, v, leaf) for v in value]
    return leaf(prop, value)
