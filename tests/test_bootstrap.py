"""``scripts/bootstrap`` run again with nothing changed skips the install (issue 12.1)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOOTSTRAP = ROOT / "scripts" / "bootstrap"


def bootstrap(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cwd / "scripts" / "bootstrap"), *args], cwd=cwd, env={**os.environ, **(env or {})},
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip


def test_a_second_run_with_nothing_changed_does_not_call_pip(tmp_path):
    first = bootstrap()  # up to date already when the suite runs after bootstrap; else installs
    assert first.returncode == 0, first.stdout + first.stderr
    marker = tmp_path / "pip-was-called"
    detector = tmp_path / "fake-pip"
    detector.write_text(f"#!/bin/sh\necho \"$@\" >> {marker}\nexit 1\n")
    detector.chmod(0o755)
    second = bootstrap(env={"CLOUD2MQTT_BOOTSTRAP_PIP": str(detector)})
    assert second.returncode == 0, second.stdout + second.stderr
    assert "bootstrap: .venv is up to date" in second.stdout
    assert not marker.exists(), marker.read_text()
    assert bootstrap("--check").returncode == 0


def test_a_changed_input_needs_an_install(tmp_path):
    # A scratch tree with the stamp's inputs and this .venv: same inputs (the same paths and
    # bytes) are up to date, a changed pyproject.toml or .pyx is not. --check changes nothing.
    (tmp_path / "scripts").mkdir()
    shutil.copy2(BOOTSTRAP, tmp_path / "scripts" / "bootstrap")
    for name in ("pyproject.toml", "setup.py"):
        shutil.copy2(ROOT / name, tmp_path / name)
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in (".venv", ".git", "build")]
        for name in files:
            if name.endswith((".pyx", ".pxd")):
                target = tmp_path / Path(folder, name).relative_to(ROOT)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(folder, name), target)
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    stamp = (ROOT / ".venv" / ".bootstrap-stamp").read_text()
    env = {"PYTHONSAFEPATH": "1"}  # import the installed project, not the scratch copy's _speedups
    assert bootstrap("--check", cwd=tmp_path, env=env).returncode == 0
    with open(tmp_path / "pyproject.toml", "a") as fh:
        fh.write("\n# changed\n")
    out = bootstrap("--check", cwd=tmp_path, env=env)
    assert out.returncode == 1 and "an install is needed" in out.stdout
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    with open(tmp_path / "_speedups" / "_cspeedups.pyx", "a") as fh:
        fh.write("\n# changed\n")
    assert bootstrap("--check", cwd=tmp_path, env=env).returncode == 1
    assert (ROOT / ".venv" / ".bootstrap-stamp").read_text() == stamp
