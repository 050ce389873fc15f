"""Hot-path kernels: a compiled (Cython) module when available, the pure reference otherwise.

One API, two implementations (as aiohttp, yarl and multidict do it). ``IMPLEMENTATION`` says
which one is loaded. ``CLOUD2MQTT_PURE=1`` forces the reference; ``CLOUD2MQTT_REQUIRE_COMPILED=1``
turns a missing compiled module into an ``ImportError`` so CI cannot silently test the fallback.
Type checkers see the reference, whose signatures the compiled module matches (``.pyi``).

Kernels (see ``_reference.py`` for what each does, ``bench/RESULTS.md`` for what each gains):
``decode_payload``, ``tencent_report``, ``tencent_time_ms``, ``normalize``, ``encode_publish``.
This package must not import ``protocols`` or ``gateway`` at import time: both import it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final

from ._reference import PayloadError

__all__ = [
    "IMPLEMENTATION",
    "PayloadError",
    "decode_payload",
    "encode_publish",
    "normalize",
    "tencent_report",
    "tencent_time_ms",
]

if TYPE_CHECKING:
    from ._reference import (
        decode_payload,
        encode_publish,
        normalize,
        tencent_report,
        tencent_time_ms,
    )

    IMPLEMENTATION: str
else:
    _pure = os.environ.get("CLOUD2MQTT_PURE", "") not in ("", "0")
    _required = os.environ.get("CLOUD2MQTT_REQUIRE_COMPILED", "") not in ("", "0")
    if _pure and _required:
        raise ImportError("CLOUD2MQTT_PURE and CLOUD2MQTT_REQUIRE_COMPILED are both set")
    if _pure:
        from ._reference import (
            decode_payload,
            encode_publish,
            normalize,
            tencent_report,
            tencent_time_ms,
        )

        IMPLEMENTATION = "python"
    else:
        try:
            from ._cspeedups import (
                decode_payload,
                encode_publish,
                normalize,
                tencent_report,
                tencent_time_ms,
            )
        except ImportError as exc:
            if _required:
                raise ImportError(
                    "CLOUD2MQTT_REQUIRE_COMPILED=1 but the compiled _speedups module did not "
                    f"load ({exc}); build it with `pip install -e .` and a C compiler"
                ) from exc
            from ._reference import (
                decode_payload,
                encode_publish,
                normalize,
                tencent_report,
                tencent_time_ms,
            )

            IMPLEMENTATION = "python"
        else:
            IMPLEMENTATION = "cython"

IMPLEMENTATION: Final[str]  # type: ignore[misc,no-redef]
