"""`_speedups` kernels, compiled vs pure reference: per-call time and ratio, as one JSON object.

``python -m bench.kernels [--number N] [--repeat R]``

Each figure is the best of R timeit repeats of N calls (the least disturbed by the other
processes on a shared box), minus the harness's own per-call cost (an empty lambda). A kernel is kept compiled when ``ratio`` >= 1.5; the pipeline
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


def best_us(fn: Any, number: int, repeat: int) -> float:
    """Best per-call time of ``fn()`` minus the cost of calling an empty lambda (the harness)."""
    empty = min(timeit.repeat(lambda: None, number=number, repeat=repeat))
    best = min(timeit.repeat(fn, number=number, repeat=repeat))
    return max(best - empty, 0.0) / number * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--number", type=int, default=20_000)
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    kernels: dict[str, Any] = {}
    for name, (pure, compiled) in kernel_pairs().items():
        row: dict[str, Any] = {"pure_us": round(best_us(pure, args.number, args.repeat), 3)}
        if compiled is not None:
            assert compiled() == pure(), name
            row["compiled_us"] = round(best_us(compiled, args.number, args.repeat), 3)
            row["ratio"] = round(row["pure_us"] / row["compiled_us"], 2)
            row["kept"] = row["ratio"] >= KEEP
        kernels[name] = row
    signers = {
        name: round(best_us(fn, args.number, args.repeat), 3) for name, fn in signer_cases().items()
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
