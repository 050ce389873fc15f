"""`pip install .` without a working compiler still installs every pure rule (and the switch)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_without_compiler_ships_pure_reference(tmp_path):
    env = {**os.environ, "CC": "false", "CXX": "false"}
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path), "-q"],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    [wheel] = tmp_path.glob("cloud2mqtt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    # the switch and each owner's pure rule ship; the twins' sources too, never a build product
    for name in ("_speedups/__init__.py", "protocols/tsl.py", "protocols/tencent/push.py",
                 "gateway/mqtt/codec.py", "gateway/cli.py", "_speedups/_tsl.pyx", "_speedups/_tsl.pyi"):
        assert name in names, name
    assert not [n for n in names if n.endswith((".so", ".pyd", ".c"))], names
