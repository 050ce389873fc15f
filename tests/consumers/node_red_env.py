"""A cached Node-RED 4 install for the consumer tests, outside the repository.

``npm install node-red@4`` into ``${XDG_CACHE_HOME:-~/.cache}/cloud2mqtt/node-red-4``, once;
a stamp names the resolved version. Run by ``tests/consumers/conftest.py`` at collection time
(outside every per-test timeout) and by hand: ``python tests/consumers/node_red_env.py``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

try:
    from .ha_env import EnvUnavailable, _locked, cache_root, run_by_hand
except ImportError:  # run as a script
    from ha_env import EnvUnavailable, _locked, cache_root, run_by_hand  # type: ignore[no-redef]

NODE_RED_SPEC = "node-red@4"
RECIPE = 1
INSTALL_TIMEOUT = 900.0


@dataclass(frozen=True)
class NodeRedEnv:
    prefix: Path
    node_red: Path
    version: str


def ensure(log: Callable[[str], None] = print, timeout: float = INSTALL_TIMEOUT) -> NodeRedEnv:
    npm = shutil.which("npm")
    node = shutil.which("node")
    if npm is None or node is None:
        raise EnvUnavailable("node/npm not installed")
    major = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout
    if not major.startswith("v") or int(major[1:].split(".")[0]) < 18:
        raise EnvUnavailable(f"Node-RED 4 needs Node 18+, found {major.strip()}")
    prefix = cache_root() / "node-red-4"
    stamp = prefix / "cloud2mqtt-stamp.json"
    bin_path = prefix / "node_modules" / ".bin" / "node-red"
    with _locked(cache_root() / "node-red-4.lock"):
        try:
            got = json.loads(stamp.read_text())
            if got.get("recipe") == RECIPE and got.get("spec") == NODE_RED_SPEC and bin_path.exists():
                return NodeRedEnv(prefix, bin_path, got["version"])
        except (OSError, ValueError):
            pass
        started = time.monotonic()
        log(f"installing {NODE_RED_SPEC} into {prefix} (first run only)")
        prefix.mkdir(parents=True, exist_ok=True)
        (prefix / "package.json").write_text('{"name": "c2m-node-red", "private": true}\n')
        proc = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--omit=dev", "--prefix", str(prefix),
             NODE_RED_SPEC],
            capture_output=True, text=True, timeout=timeout,
        )
        if proc.returncode != 0 or not bin_path.exists():
            raise EnvUnavailable(f"npm install {NODE_RED_SPEC} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        pkg = json.loads((prefix / "node_modules" / "node-red" / "package.json").read_text())
        stamp.write_text(json.dumps({"recipe": RECIPE, "spec": NODE_RED_SPEC, "version": pkg["version"]}))
        log(f"Node-RED {pkg['version']} installed in {time.monotonic() - started:.0f}s")
        return NodeRedEnv(prefix, bin_path, pkg["version"])


if __name__ == "__main__":
    run_by_hand(ensure, lambda env: env.node_red)
