"""Run one harness: ``python -m tests.fuzz._runner NAME --seconds N --corpus DIR --crashes DIR``.

Prints one last line ``fuzz-result {"harness": …, "runs": …, "engine": …}``; exits non-zero when
the harness found a crash (its input is saved under ``--crashes``).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import random
import re
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

INSTRUMENTED = ("protocols", "gateway.mqtt", "_speedups", "orjson")


def _load(name: str) -> tuple[ModuleType, str]:
    try:
        import atheris  # type: ignore[import-untyped]
    except ImportError:
        return importlib.import_module(f"tests.fuzz.fuzz_{name}"), "random"
    with atheris.instrument_imports(include=[p for p in INSTRUMENTED if p != "orjson"]):
        mod = importlib.import_module(f"tests.fuzz.fuzz_{name}")
    return mod, "atheris"


def _write_seeds(mod: ModuleType, corpus: Path) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    for seed in mod.SEEDS:
        (corpus / ("seed-" + hashlib.sha1(seed).hexdigest()[:16])).write_bytes(seed)


def _mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(6)
        if op == 0 and buf:
            del buf[rng.randrange(len(buf)) :]
        elif op == 1:
            buf.insert(rng.randint(0, len(buf)), rng.randrange(256))
        elif op == 2 and buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 3 and buf:
            i = rng.randrange(len(buf))
            del buf[i : i + rng.randint(1, 8)]
        elif op == 4:
            other = rng.choice(pool)
            i = rng.randint(0, len(buf))
            buf[i:i] = other[rng.randrange(len(other) + 1) :][: rng.randint(1, 32)]
        else:
            buf[rng.randint(0, len(buf)) :] = rng.choice(pool)[: rng.randint(0, 64)]
    return bytes(buf)


def _random_engine(mod: ModuleType, seconds: float, corpus: Path, crashes: Path) -> int:
    """A seeded mutator over the corpus: the stand-in where atheris does not install."""
    rng = random.Random(0)
    pool = [p.read_bytes() for p in sorted(corpus.iterdir())] or [b""]
    deadline = time.monotonic() + seconds
    runs = 0
    one: Callable[[bytes], None] = mod.one_input
    while time.monotonic() < deadline:
        data = _mutate(rng, rng.choice(pool), pool) if runs else pool[0]
        runs += 1
        try:
            one(data)
        except Exception:
            crashes.mkdir(parents=True, exist_ok=True)
            path = crashes / ("crash-" + hashlib.sha1(data).hexdigest())
            path.write_bytes(data)
            traceback.print_exc()
            print(f"fuzz: crash input saved to {path}", file=sys.stderr)
            return runs
    return -runs  # negative: a clean run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--crashes", type=Path, required=True)
    args = ap.parse_args(argv)
    mod, engine = _load(args.name)
    _write_seeds(mod, args.corpus)
    args.crashes.mkdir(parents=True, exist_ok=True)
    if engine == "random":
        result = _random_engine(mod, args.seconds, args.corpus, args.crashes)
        runs, crashed = abs(result), result >= 0
        print("fuzz-result " + json.dumps({"harness": args.name, "runs": runs, "engine": engine,
                                           "crashed": crashed}), flush=True)
        return 1 if crashed else 0
    import atheris

    # libFuzzer reports its run count on stderr when it ends; it exits the process itself.
    atheris.Setup(
        [sys.argv[0], str(args.corpus), f"-max_total_time={max(1, round(args.seconds))}",
         f"-artifact_prefix={args.crashes}/", "-timeout=20", "-rss_limit_mb=2048",
         "-print_final_stats=1"],
        mod.one_input,
    )
    atheris.Fuzz()
    return 0


RUNS = re.compile(r"Done (\d+) runs in")

if __name__ == "__main__":
    sys.exit(main())
