"""``python -m tests.fuzz [--seconds N] [--only NAME ...] [--dir .fuzz]``: run every harness.

Each harness runs N seconds in its own process (atheris instruments the decoders it imports);
the corpus it grows is kept in ``DIR/corpus/<name>`` (so a second run starts where the first
ended) and a crashing input is saved in ``DIR/crashes/<name>``. Prints one JSON line per harness
(``runs`` is the number of inputs it ran) and exits 1 when any harness crashed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

HARNESSES = ("tencent_ws", "coolkit_ws", "aliyun", "xky", "websocket", "mqtt_codec", "kernels")
ROOT = Path(__file__).resolve().parents[2]
_DONE = re.compile(r"Done (\d+) runs in (\d+) second")
_RESULT = re.compile(r"^fuzz-result (\{.*\})$", re.M)


def run_harness(name: str, seconds: float, workdir: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one harness in a subprocess; its result: runs, engine, crashed, and the output tail."""
    corpus = workdir / "corpus" / name
    crashes = workdir / "crashes" / name
    cmd = [sys.executable, "-m", "tests.fuzz._runner", name, "--seconds", str(seconds),
           "--corpus", str(corpus), "--crashes", str(crashes)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False,
                          timeout=seconds * 3 + 120, env={**os.environ, **(env or {})})
    out = proc.stdout + proc.stderr
    found = _RESULT.search(proc.stdout)
    if found:
        result: dict[str, Any] = json.loads(found.group(1))
    else:
        done = _DONE.search(out)
        result = {"harness": name, "engine": "atheris", "runs": int(done.group(1)) if done else 0,
                  "crashed": proc.returncode != 0}
    result["returncode"] = proc.returncode
    result["corpus"] = sum(1 for _ in corpus.iterdir()) if corpus.exists() else 0
    result["tail"] = out[-3000:] if result["crashed"] or proc.returncode else ""
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    ap.add_argument("--seconds", type=float, default=60, help="per harness (default 60)")
    ap.add_argument("--only", nargs="*", choices=HARNESSES, default=list(HARNESSES))
    ap.add_argument("--dir", type=Path, default=ROOT / ".fuzz")
    args = ap.parse_args(argv)
    failed = False
    total = 0
    for name in args.only:
        result = run_harness(name, args.seconds, args.dir)
        total += result["runs"]
        failed |= bool(result["crashed"] or result["returncode"])
        tail = result.pop("tail")
        print(json.dumps(result), flush=True)
        if tail:
            print(tail, file=sys.stderr)
    print(json.dumps({"total_runs": total, "harnesses": len(args.only), "seconds_each": args.seconds}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
