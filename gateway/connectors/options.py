"""Reading one ``[[accounts]]`` table: typed fields whose errors name ``<key>.<field>``.

A connector declares its options once, as a dataclass whose fields carry their default, checks
and help (``opt()``); ``read_options`` reads the table into it by each field's type. This is
the one way every vendor's string, number and boolean are read, so a wrong value gets the same
kind of message for every vendor and a bool is never taken for a number. What depends on
several options (a default derived from the region, "this or that") stays in the connector's
``parse_options``, after ``read_options``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, Field, dataclass, field
from types import UnionType
from typing import (
    Any,
    Final,
    Literal,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
    overload,
)

from ..errors import ConfigError, ConfigErrors, did_you_mean

__all__ = ["Opt", "OptionReader", "derived", "opt", "read_options"]

T = TypeVar("T")


class OptionReader:
    __slots__ = ("key", "raw")

    def __init__(self, raw: Mapping[str, Any], key: str) -> None:
        self.raw = raw
        self.key = key

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(f"{self.key}.{name}", message)

    def refuse_unknown(self, known: Iterable[str], message: str = "unknown key") -> None:
        """Raise one error listing every key not in ``known``, each with a "did you mean"."""
        allowed = set(known)
        unknown = [
            self.error(name, message + did_you_mean(name, allowed))
            for name in self.raw
            if name not in allowed
        ]
        if unknown:
            raise ConfigErrors(unknown)

    @overload
    def string(
        self, name: str, default: str | None = None, *, required: Literal[True], empty: bool = True
    ) -> str: ...

    @overload
    def string(
        self, name: str, default: str | None = None, *, required: bool = False, empty: bool = True
    ) -> str | None: ...

    def string(
        self, name: str, default: str | None = None, *, required: bool = False, empty: bool = True
    ) -> str | None:
        """``None`` when absent (or ``missing`` when ``required``); ``empty=False`` refuses ""."""
        value = self.raw.get(name, default)
        if value is None:
            if required:
                raise self.error(name, "missing")
            return None
        if not isinstance(value, str):
            raise self.error(name, f"expected a string, got {type(value).__name__}")
        if not empty and not value:
            raise self.error(name, "expected a non-empty string")
        return value

    def number(
        self,
        name: str,
        default: float,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        above: float | None = None,
    ) -> float:
        """A finite number (int or float, never a bool) in ``[minimum, maximum]``, ``> above``."""
        value = self.raw.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(name, f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise self.error(name, f"must be a finite number, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.error(name, f"must be at least {minimum:g}")
        if maximum is not None and value > maximum:
            raise self.error(name, f"must be at most {maximum:g}")
        if above is not None and value <= above:
            raise self.error(name, f"must be greater than {above:g}")
        return float(value)

    def integer(self, name: str, default: int) -> int:
        value = self.raw.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"expected an integer, got {value!r}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw.get(name, default)
        if not isinstance(value, bool):
            raise self.error(name, f"expected true or false, got {value!r}")
        return value


@dataclass(frozen=True, slots=True)
class Opt:
    """How one option is read and checked (the metadata ``opt()`` puts on a field)."""

    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    below: float | None = None
    #: a string that may not be empty
    nonempty: bool = False
    #: a URL whose scheme must be one of these
    schemes: tuple[str, ...] = ()
    help: str = ""


#: a field the reader leaves to the connector (derived from other options, or a nested table)
DERIVED: Final = Opt(help="derived")


def opt(default: Any = MISSING, *, help: str = "", secret: bool = False, **rules: Any) -> Any:
    """Declare an option on a connector's options dataclass: its default (none: required),
    its checks (``minimum``, ``maximum``, ``above``, ``below``, ``nonempty``, ``schemes``) and
    its help. ``read_options`` reads every field declared so, by its annotated type. A
    ``secret`` is left out of the dataclass's repr (a logged options object shows no secret)."""
    return field(default=default, repr=not secret, metadata={"opt": Opt(help=help, **rules)})


def derived(default: Any = MISSING, *, factory: Any = MISSING) -> Any:
    """A field the connector computes itself (``read_options(cls, raw, key, name=value)``)."""
    if factory is not MISSING:
        return field(default_factory=factory, metadata={"opt": DERIVED})
    return field(default=default, metadata={"opt": DERIVED})


def _read_field(o: OptionReader, f: Field[Any], kind: Any, spec: Opt) -> Any:
    name = f.name
    required = f.default is MISSING and f.default_factory is MISSING
    default: Any = None if required else f.default
    optional = False
    args = get_args(kind)
    if get_origin(kind) in (Union, UnionType) and type(None) in args:
        optional = True
        (kind,) = [a for a in args if a is not type(None)]
        args = get_args(kind)
    if optional and o.raw.get(name) is None:
        return None
    if required and o.raw.get(name) is None:
        raise o.error(name, f"missing ({spec.help})" if spec.help else "missing")
    if kind is bool:
        return o.boolean(name, default)
    if kind is int:
        number = o.integer(name, default)
        return int(o.number(name, number, minimum=spec.minimum, maximum=spec.maximum,
                            above=spec.above))  # fmt: skip
    if kind is float:
        value = o.number(name, default, minimum=spec.minimum, maximum=spec.maximum,
                         above=spec.above)  # fmt: skip
        if spec.below is not None and value >= spec.below:
            raise o.error(name, f"must be less than {spec.below:g}")
        return value
    if kind is str:
        text = o.string(name, default, required=required, empty=not spec.nonempty)
        if text and spec.schemes:
            scheme, sep, rest = text.partition("://")
            if not sep or scheme not in spec.schemes or not rest:
                raise o.error(
                    name, f"must start with {' or '.join(s + '://' for s in spec.schemes)}"
                )
        return text
    if get_origin(kind) is Literal:
        value = o.raw.get(name, default)
        if value not in args or (isinstance(value, bool) and bool not in map(type, args)):
            raise o.error(name, f"must be {' or '.join(repr(a) for a in args)}")
        return value
    if get_origin(kind) is tuple and args in ((str, ...),):
        value = o.raw.get(name, list(default or ()))
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
            raise o.error(name, "expected a list of non-empty strings")
        return tuple(value)
    raise TypeError(f"option {name}: no reader for {kind!r}")  # a bug in the declaration


def read_options(cls: type[T], raw: Mapping[str, Any], key: str, **given: Any) -> T:
    """Read the account table ``raw`` into the options dataclass ``cls``.

    Every field declared with ``opt()`` is read by its annotated type and checked; fields
    declared with ``derived()`` come from ``given`` (or keep their default). Unknown keys and
    every bad value are reported together (``ConfigErrors``), each naming ``<key>.<field>``.
    Cross-field rules stay with the connector, after this returns.
    """
    o = OptionReader(raw, key)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    readable = [f for f in fields if f.metadata.get("opt", DERIVED) is not DERIVED]
    o.refuse_unknown(f.name for f in readable)
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    errors: list[ConfigError] = []
    for f in readable:
        try:
            values[f.name] = _read_field(o, f, hints[f.name], f.metadata["opt"])
        except ConfigError as exc:
            errors.append(exc)
    if errors:
        raise ConfigErrors(errors)
    return cls(**values, **given)
