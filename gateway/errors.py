"""Errors of the runtime (the codecs' errors live in ``protocols.model``).

Configuration problems come in two shapes: one ``ConfigError`` names one key (and its line when
the file has it); ``ConfigErrors`` carries every problem of a file at once, so a user fixes them
in one pass instead of one run each. ``ConfigErrors`` is a ``ConfigError`` (its ``key``,
``message`` and ``line`` are the first problem's), so code that catches one catches both.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["ConfigError", "ConfigErrors", "did_you_mean"]


class ConfigError(Exception):
    """A configuration problem, naming the key (``accounts[2].app_secret``) and line if known."""

    def __init__(self, key: str, message: str, line: int | None = None) -> None:
        super().__init__(key, message, line)
        self.key = key
        self.message = message
        self.line = line

    def __str__(self) -> str:
        where = self.key + (f" (line {self.line})" if self.line else "")
        return f"{where}: {self.message}"

    def with_line(self, line: int | None) -> ConfigError:
        """This error with ``line`` filled in when it has none."""
        if self.line is not None or line is None:
            return self
        return ConfigError(self.key, self.message, line)


class ConfigErrors(ConfigError):
    """Every problem found in one configuration, ordered by line (the unlocated ones last)."""

    def __init__(self, errors: Iterable[ConfigError]) -> None:
        flat: list[ConfigError] = []
        for error in errors:
            flat.extend(error.errors if isinstance(error, ConfigErrors) else (error,))
        if not flat:
            raise ValueError("ConfigErrors needs at least one error")
        flat.sort(key=lambda e: (e.line is None, e.line or 0))
        first = flat[0]
        super().__init__(first.key, first.message, first.line)
        self.errors: list[ConfigError] = flat

    def __str__(self) -> str:
        if len(self.errors) == 1:
            return str(self.errors[0])
        return f"{len(self.errors)} problems:\n" + "\n".join(f"  {e}" for e in self.errors)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'region'?)`` for a misspelt key, or ``""`` when nothing is close."""
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    if not close:
        close = [k for k in sorted(known) if k.lower() == name.lower()][:1]
    return f" (did you mean {close[0]!r}?)" if close else ""
