"""TSL normalization: vendor values in, schema-typed values out (and back for commands).

Clouds are loose about types: booleans arrive as ``0``/``1``/``"on"``/``"true"``, numbers as
strings, dates as strings of milliseconds. Downstream flows should not care, so every value is
coerced through the device's ``Schema`` once, here, for every vendor alike.

A value that does not fit its schema is *kept as it came* and its property id is returned in
``flagged`` so the gateway can count it — data is never silently dropped, and a bad value never
raises. Properties the schema does not describe pass through untouched.

Commands go the other way through ``validate``: a value that the schema forbids (read-only,
out of range, not in the enum, wrong type) raises ``CommandError("invalid")`` before any vendor
is called. Vendor-specific spelling (``"on"`` for CoolKit, ``1`` for Tencent) is the vendor
codec's job, after validation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Final

import _speedups

from .model import EPOCH_MS_FROM, CommandError, Property, Schema

__all__ = [
    "FALSE_WORDS",
    "NOT_COERCIBLE",
    "TRUE_WORDS",
    "coerce",
    "normalize",
    "normalize_reference",
    "validate",
    "validate_props",
]

TRUE_WORDS: Final = frozenset({"1", "true", "on", "yes", "open"})
FALSE_WORDS: Final = frozenset({"0", "false", "off", "no", "close", "closed"})


class _NotCoercible:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_COERCIBLE"


NOT_COERCIBLE: Final = _NotCoercible()


def _to_number(value: Any, integral: bool) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if integral and value.is_integer():
            return int(value)
        return value if math.isfinite(value) else NOT_COERCIBLE
    if isinstance(value, str):
        text = value.strip()
        try:
            if integral:
                return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            return NOT_COERCIBLE
        if not math.isfinite(number):
            return NOT_COERCIBLE
        if integral and number.is_integer():
            return int(number)
        return number
    return NOT_COERCIBLE


def coerce(prop: Property, value: Any) -> Any:
    """Coerce one vendor value to the property's type, or return ``NOT_COERCIBLE``."""
    kind = prop.type
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)):
            if value in (0, 1):
                return bool(value)
            return NOT_COERCIBLE
        if isinstance(value, str):
            low = value.strip().lower()
            if low in TRUE_WORDS:
                return True
            if low in FALSE_WORDS:
                return False
        return NOT_COERCIBLE
    if kind == "int":
        return _to_number(value, True)
    if kind == "float":
        return _to_number(value, False)
    if kind == "timestamp":
        # Dates are epoch milliseconds. Vendors send seconds (Tencent), ms, or ms as a string.
        number = _to_number(value, True)
        if isinstance(number, float):
            number = int(number)
        elif not isinstance(number, int):
            return NOT_COERCIBLE
        return number * 1000 if 0 < number < EPOCH_MS_FROM else number
    if kind == "enum":
        if prop.enum is None:
            return value
        try:
            if value in prop.enum:
                return value
        except TypeError:  # an unhashable value (list, dict) is no enum value: flag it, never raise
            return NOT_COERCIBLE
        # Enum keys are often strings of ints on one side and ints on the other.
        if isinstance(value, str):
            number = _to_number(value, True)
            if number is not NOT_COERCIBLE and number in prop.enum:
                return number
        elif isinstance(value, int) and not isinstance(value, bool) and str(value) in prop.enum:
            return str(value)
        return NOT_COERCIBLE
    if kind == "string":
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        return NOT_COERCIBLE
    if kind == "struct":
        if not isinstance(value, Mapping):
            return NOT_COERCIBLE
        by_id = {f.id: f for f in prop.fields}
        fields: dict[str, Any] = {}
        for key, item in value.items():
            field_prop = by_id.get(key)
            if field_prop is None:
                fields[key] = item
                continue
            coerced = coerce(field_prop, item)
            if coerced is NOT_COERCIBLE:
                return NOT_COERCIBLE
            fields[key] = coerced
        return fields
    if kind == "array":
        if not isinstance(value, (list, tuple)):
            return NOT_COERCIBLE
        if prop.item is None:
            return list(value)
        items = []
        for item in value:
            coerced = coerce(prop.item, item)
            if coerced is NOT_COERCIBLE:
                return NOT_COERCIBLE
            items.append(coerced)
        return items
    return value


def normalize_reference(
    schema: Schema, props: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """Coerce every described property; return the values and the ids that did not fit."""
    out: dict[str, Any] = {}
    flagged: list[str] = []
    lookup = schema.prop
    for key, value in props.items():
        prop = lookup(key)
        if prop is None:
            out[key] = value
            continue
        coerced = coerce(prop, value)
        if coerced is NOT_COERCIBLE:
            flagged.append(key)
            out[key] = value
        else:
            out[key] = coerced
    return out, flagged


normalize: Callable[[Schema, Mapping[str, Any]], tuple[dict[str, Any], list[str]]]
normalize = normalize_reference
"""``normalize_reference``, or its compiled twin ``_speedups._tsl`` when that loaded, bound here
to this module's ``coerce`` and constants (tests/speedups/test_speedups.py proves equal results for every
schema type and value spelling, ``bench/RESULTS.md`` the gain)."""

_twin = _speedups.twin("_tsl")
if _twin is not None:
    normalize = _twin.configure(
        coerce=coerce,
        not_coercible=NOT_COERCIBLE,
        true_words=TRUE_WORDS,
        false_words=FALSE_WORDS,
        ms_from=EPOCH_MS_FROM,
    )


def validate(prop: Property, value: Any, *, writing: bool = True) -> Any:
    """Check a command value against its property and return it in normalized form."""
    if writing and prop.access != "rw":
        raise CommandError("invalid", f"property {prop.id!r} is read-only")
    if value is None:
        raise CommandError("invalid", f"property {prop.id!r} needs a value")
    coerced = coerce(prop, value)
    if coerced is NOT_COERCIBLE:
        raise CommandError("invalid", f"{value!r} is not a valid {prop.type} for {prop.id!r}")
    if prop.type in ("int", "float") and not isinstance(coerced, bool):
        if prop.min is not None and coerced < prop.min:
            raise CommandError("invalid", f"{prop.id!r}: {coerced} is below the minimum {prop.min:g}")
        if prop.max is not None and coerced > prop.max:
            raise CommandError("invalid", f"{prop.id!r}: {coerced} is above the maximum {prop.max:g}")
        if prop.type == "int" and isinstance(coerced, float):
            raise CommandError("invalid", f"{prop.id!r}: {coerced} is not an integer")
    if prop.type == "string" and prop.length is not None and len(coerced) > prop.length:
        raise CommandError("invalid", f"{prop.id!r}: longer than {prop.length} characters")
    if prop.type == "array" and prop.length is not None and len(coerced) > prop.length:
        raise CommandError("invalid", f"{prop.id!r}: more than {prop.length} elements")
    if prop.type == "struct":
        for f in prop.fields:
            if f.id in coerced:
                coerced[f.id] = validate(f, coerced[f.id], writing=False)
    return coerced


def validate_props(schema: Schema, props: Mapping[str, Any]) -> dict[str, Any]:
    """Validate every property of a ``set`` command; unknown ids are rejected unless passthrough."""
    if not props:
        raise CommandError("invalid", "no property to set")
    out: dict[str, Any] = {}
    for key, value in props.items():
        prop = schema.prop(key)
        if prop is None:
            if schema.passthrough:
                out[key] = value
                continue
            raise CommandError("invalid", f"unknown property {key!r}")
        out[key] = validate(prop, value)
    return out
