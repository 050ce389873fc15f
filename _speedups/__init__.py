"""The switch for the compiled kernels, and the compiled twins themselves (nothing else).

Each hot-path rule lives in the module that owns it, in pure Python, and that module picks its
compiled twin from here (yarl's ``_quoting.py`` pattern)::

    twin = _speedups.twin("_tsl")          # the compiled module, or None
    if twin is not None:
        normalize = twin.configure(...)    # the owner passes its own constants and rules

- ``_speedups._tsl``: ``normalize``, owned by ``protocols.tsl``;
- ``_speedups._tencent``: ``decode_payload``, ``tencent_report``, ``tencent_time_ms``,
  ``device_ts``, owned by ``protocols.tencent.push``;
- ``_speedups._mqtt``: ``encode_publish``, owned by ``gateway.mqtt.codec``.

A twin never imports its owner (nothing here imports ``protocols`` or ``gateway``): the owner
calls the twin's ``configure(...)`` once at import with the constants and the pure functions the
twin needs (bool spellings, limits, error classes, the reference it declines to), so no rule or
constant is copied by hand. Hypothesis tests hold both builds equal (tests/speedups/test_speedups.py).

Switches, read once at import:

- ``CLOUD2MQTT_PURE=1``: every owner uses its pure rule (``IMPLEMENTATION == "python"``);
- ``CLOUD2MQTT_REQUIRE_COMPILED=1``: a twin that does not load is an ``ImportError`` (so CI
  cannot silently test the fallback); both set at once is an ``ImportError`` too.

``IMPLEMENTATION`` is ``"cython"`` when every twin loaded, else ``"python"``: all or nothing, so
one build is never half compiled.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Final

__all__ = ["IMPLEMENTATION", "PURE", "REQUIRE_COMPILED", "TWINS", "twin"]


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


PURE: Final = _flag("CLOUD2MQTT_PURE")
REQUIRE_COMPILED: Final = _flag("CLOUD2MQTT_REQUIRE_COMPILED")
TWINS: Final = ("_mqtt", "_tencent", "_tsl")

if PURE and REQUIRE_COMPILED:
    raise ImportError("CLOUD2MQTT_PURE and CLOUD2MQTT_REQUIRE_COMPILED are both set")


def _load() -> dict[str, ModuleType]:
    if PURE:
        return {}
    loaded: dict[str, ModuleType] = {}
    for name in TWINS:
        try:
            loaded[name] = importlib.import_module(f"{__name__}.{name}")
        except ImportError as exc:
            if REQUIRE_COMPILED:
                raise ImportError(
                    f"CLOUD2MQTT_REQUIRE_COMPILED=1 but the compiled module _speedups.{name} did "
                    f"not load ({exc}); build it with `pip install -e .` and a C compiler"
                ) from exc
            return {}
    return loaded


_LOADED: Final = _load()
IMPLEMENTATION: Final = "cython" if _LOADED else "python"


def twin(name: str) -> ModuleType | None:
    """The compiled twin ``name`` (one of ``TWINS``), or ``None`` when the build is pure.

    The caller is the twin's owner: it must call the twin's ``configure(...)`` before using any
    kernel of it (a kernel called before that raises ``RuntimeError``).
    """
    if name not in TWINS:
        raise KeyError(f"no compiled twin named {name!r}")
    return _LOADED.get(name)
