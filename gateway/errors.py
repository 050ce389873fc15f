"""Errors of the runtime (the codecs' errors live in ``protocols.model``)."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration problem, naming the key (``accounts[2].app_secret``) and line if known."""

    def __init__(self, key: str, message: str, line: int | None = None) -> None:
        where = f"{key}" + (f" (line {line})" if line else "")
        super().__init__(f"{where}: {message}")
        self.key = key
        self.message = message
        self.line = line
