"""Precomputed logging switches for the hot path, and the run-time log level.

``log.isEnabledFor(DEBUG)`` is cheap but not free; per-message code asks ``DEBUG.on`` (one
attribute read) instead. ``set_level`` changes the level of every ``cloud2mqtt`` logger at run
time (``bridge/request/options``) and recomputes the switch; ``refresh()`` does only the
latter (after the CLI configured logging).
"""

from __future__ import annotations

import logging

__all__ = ["DEBUG", "LEVELS", "current_level", "refresh", "set_level"]

LEVELS = ("debug", "info", "warning", "error")

_ROOT = logging.getLogger("cloud2mqtt")


class _Switch:
    """``on`` is True while ``cloud2mqtt`` debug lines are emitted."""

    __slots__ = ("on",)

    def __init__(self) -> None:
        self.on = False


DEBUG = _Switch()


def refresh() -> None:
    """Recompute ``DEBUG.on`` from the effective level of the ``cloud2mqtt`` logger."""
    DEBUG.on = _ROOT.isEnabledFor(logging.DEBUG)


def set_level(level: str) -> None:
    """Set the level of every ``cloud2mqtt`` logger (not persisted) and recompute the switch."""
    level = level.lower()
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}")
    _ROOT.setLevel(level.upper())
    # a handler that filters below the new level would hide what was asked for
    root = logging.getLogger()
    if root.level > _ROOT.level:
        for handler in root.handlers:
            if handler.level > _ROOT.level:
                handler.setLevel(_ROOT.level)
    refresh()


def current_level() -> str:
    """The effective level of the ``cloud2mqtt`` loggers, as ``bridge/info`` shows it."""
    return logging.getLevelName(_ROOT.getEffectiveLevel()).lower()
