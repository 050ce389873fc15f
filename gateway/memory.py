"""Give freed heap memory back to the system after bursts (mass start-up, mass reconnects).

Thousands of accounts starting at once allocate and free a great deal (HTTP replies, device
lists, TLS handshakes) in between the objects that live on; glibc keeps the freed pages. At
10,000 connections that was ~5 KiB per idle connection of RSS that held nothing
(bench/scale.py). ``malloc_trim(0)`` returns them; elsewhere (musl, macOS) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable

__all__ = ["trim_heap"]


def _find_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_TRIM = _find_trim()


def trim_heap() -> bool:
    """Collect cyclic garbage, then hand free heap pages back; True when glibc did it."""
    gc.collect()
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
