"""`_speedups` kernels, compiled vs pure reference: per-call time and ratio, as one JSON object.

``python -m bench.kernels [--number N] [--repeat R]``

Each figure is the best of R timeit repeats of N calls (the least disturbed by the other
processes on a shared box), minus the harness's own per-call cost (an empty lambda). The pure
and compiled repeats alternate, so a burst of noise from a neighbour hits both sides rather
than all seven repeats of one. A kernel is kept compiled when ``ratio`` >= 1.5; the pipeline
target (Tencent decode + TSL normalize) is >= 3.
"""

from __future__ import annotations

import argparse
import json
import timeit
from typing import Any

from ._kernel_cases import kernel_pairs, signer_cases
from ._proc import machine

KEEP = 1.5
PIPELINE_TARGET = 3.0


def best_us(*fns: Any, number: int, repeat: int) -> list[float]:
    """Best per-call time of each ``fn()`` minus the cost of calling an empty lambda (the
    harness), their repeats interleaved."""
    timers = [timeit.Timer(fn) for fn in (lambda: None, *fns)]
    best = [float("inf")] * len(timers)
    for _ in range(repeat):
        for i, timer in enumerate(timers):
            best[i] = min(best[i], timer.timeit(number))
    return [max(b - best[0], 0.0) / number * 1e6 for b in best[1:]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--number", type=int, default=20_000)
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    kernels: dict[str, Any] = {}
    for name, (pure, compiled) in kernel_pairs().items():
        if compiled is None:
            (pure_us,) = best_us(pure, number=args.number, repeat=args.repeat)
            kernels[name] = {"pure_us": round(pure_us, 3)}
            continue
        assert compiled() == pure(), name
        pure_us, compiled_us = best_us(pure, compiled, number=args.number, repeat=args.repeat)
        row: dict[str, Any] = {"pure_us": round(pure_us, 3), "compiled_us": round(compiled_us, 3)}
        row["ratio"] = round(pure_us / compiled_us, 2)
        row["kept"] = row["ratio"] >= KEEP
        kernels[name] = row
    signers = {
        name: round(best_us(fn, number=args.number, repeat=args.repeat)[0], 3)
        for name, fn in signer_cases().items()
    }
    pipeline = kernels["decode_normalize_pipeline"].get("ratio", 0.0)
    print(json.dumps({
        "bench": "kernels",
        "kernels": kernels,
        "signers_pure_us": signers,
        "targets": {"pipeline_ratio_ge_3": pipeline >= PIPELINE_TARGET},
        "machine": machine(),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
