"""Emulated vendor clouds, faithful to the seeds: for the demo, the tests and the benchmarks.

Each vendor module provides:
- ``add_arguments(parser)`` and ``async serve(args)`` for ``cloud2mqtt simulate <vendor>``;
- a cloud class with ``async start()``/``async stop()`` that tests and the demo run in-process,
  a ``control`` object (or HTTP endpoint) to inject faults, and ``account_config()`` returning the
  ``[[accounts]]`` table that points a gateway at it.
"""

from __future__ import annotations

SIMULATORS: dict[str, str] = {
    "tencent": "gateway.simulators.tencent",
    "coolkit": "gateway.simulators.coolkit",
    "aliyun": "gateway.simulators.aliyun",
    "xky": "gateway.simulators.xky",
}
