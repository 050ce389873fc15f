"""Reading one ``[[accounts]]`` table: typed fields whose errors name ``<key>.<field>``.

Every connector validates its own keys (``Connector.parse_options``); this is the one way they
read a string, a number or a boolean, so a wrong value gets the same kind of message for every
vendor and a bool is never taken for a number.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal, overload

from ..errors import ConfigError, ConfigErrors, did_you_mean

__all__ = ["OptionReader"]


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
