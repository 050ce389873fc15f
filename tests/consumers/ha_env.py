"""A cached Home Assistant install for the consumer tests, outside the repository.

Home Assistant 2025.4 needs Python 3.13 (the machine's pyenv has 3.13.0) and pins ~150
packages, so it lives in a venv of its own under ``${XDG_CACHE_HOME:-~/.cache}/cloud2mqtt/``,
installed once and reused while its stamp matches. The install follows Home Assistant's own
recipe: the wheel's ``homeassistant/package_constraints.txt`` constrains every package, and the
requirements of every integration the test configuration sets up (the bootstrap's default
integrations, ``http``, ``api``, ``mqtt`` and what they depend on, read from the wheel's
manifests) are installed up front, so Home Assistant runs with ``--skip-pip`` and installs
nothing at run time.

Run by ``tests/consumers/conftest.py`` at collection time (outside every per-test timeout)
and by hand::

    python tests/consumers/ha_env.py          # prints the venv's hass path
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

HA_VERSION = "2025.4.4"
PYTHON_VERSION = "3.13.0"
#: Integrations the test configuration names besides the bootstrap's defaults.
CONFIGURED = ("http", "api", "mqtt", "onboarding", "auth", "config")
#: Bump when the recipe changes, so cached venvs from an older recipe are rebuilt.
RECIPE = 1
INSTALL_TIMEOUT = 1800.0
T = TypeVar("T")


class EnvUnavailable(RuntimeError):
    """Home Assistant cannot be installed here (no Python 3.13, no package index, …)."""


@dataclass(frozen=True)
class HaEnv:
    venv: Path
    python: Path
    hass: Path
    version: str


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cloud2mqtt"


def find_python() -> Path:
    """The Python 3.13 interpreter: $CLOUD2MQTT_HA_PYTHON, pyenv's 3.13.0, or python3.13."""
    candidates: list[str] = []
    if explicit := os.environ.get("CLOUD2MQTT_HA_PYTHON"):
        candidates.append(explicit)
    pyenv = shutil.which("pyenv")
    if pyenv:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            prefix = subprocess.run(
                [pyenv, "prefix", PYTHON_VERSION], capture_output=True, text=True, timeout=30
            ).stdout.strip()
            if prefix:
                candidates.append(str(Path(prefix) / "bin" / "python3.13"))
    root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    candidates.append(str(Path(root) / "versions" / PYTHON_VERSION / "bin" / "python3.13"))
    if which := shutil.which("python3.13"):
        candidates.append(which)
    for cand in candidates:
        path = Path(cand)
        if not path.is_file():
            continue
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [str(path), "-c", "import sys, venv, ensurepip; print(sys.version_info[:2] >= (3, 13))"],
                capture_output=True, text=True, timeout=60,
            )
            if out.returncode == 0 and out.stdout.strip() == "True":
                return path
    raise EnvUnavailable(f"no usable Python 3.13 (tried {candidates})")


def _literal_set(source: str, name: str) -> set[str]:
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            return set(value)
    raise EnvUnavailable(f"homeassistant/bootstrap.py has no {name}")


def requirements_from_wheel(wheel: Path) -> tuple[str, list[str]]:
    """(package_constraints.txt, the requirements of every integration the tests set up)."""
    with zipfile.ZipFile(wheel) as zf:
        constraints = zf.read("homeassistant/package_constraints.txt").decode()
        bootstrap = zf.read("homeassistant/bootstrap.py").decode()
        names = set(zf.namelist())

        def manifest(domain: str) -> dict[str, list[str]] | None:
            path = f"homeassistant/components/{domain}/manifest.json"
            return json.loads(zf.read(path)) if path in names else None

        todo = [
            *_literal_set(bootstrap, "CORE_INTEGRATIONS"),
            *_literal_set(bootstrap, "DEFAULT_INTEGRATIONS"),
            *CONFIGURED,
        ]
        seen: set[str] = set()
        reqs: set[str] = set()
        while todo:
            domain = todo.pop()
            if domain in seen:
                continue
            seen.add(domain)
            m = manifest(domain)
            if m is None:
                continue
            reqs.update(m.get("requirements", []))
            # after_dependencies load only when configured, but Home Assistant still checks
            # their requirements while resolving; installing them keeps --skip-pip honest.
            todo.extend(m.get("dependencies", []))
            todo.extend(m.get("after_dependencies", []))
    return constraints, sorted(reqs)


def _run(cmd: list[str], log: Callable[[str], None], timeout: float) -> None:
    log("$ " + " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise EnvUnavailable(f"{cmd[:4]} failed with {proc.returncode}:\n{tail}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure(log: Callable[[str], None] = print, timeout: float = INSTALL_TIMEOUT) -> HaEnv:
    """Return the cached Home Assistant venv, installing it first when its stamp is stale."""
    venv = cache_root() / f"ha-{HA_VERSION}"
    python = find_python()
    env = HaEnv(venv, venv / "bin" / "python", venv / "bin" / "hass", HA_VERSION)
    wanted = {"recipe": RECIPE, "homeassistant": HA_VERSION, "python": str(python)}
    stamp = venv / "cloud2mqtt-stamp.json"
    with _locked(cache_root() / f"ha-{HA_VERSION}.lock"):
        with contextlib.suppress(OSError, ValueError):
            if json.loads(stamp.read_text()) == wanted and env.hass.exists():
                return env
        started = time.monotonic()
        log(f"installing Home Assistant {HA_VERSION} into {venv} (first run only)")
        deadline = started + timeout

        def left() -> float:
            return max(1.0, deadline - time.monotonic())

        _run([str(python), "-m", "venv", "--clear", str(venv)], log, left())
        pip = [str(env.python), "-m", "pip", "--disable-pip-version-check"]
        _run([*pip, "install", "-q", "--upgrade", "pip"], log, left())
        with tempfile.TemporaryDirectory(prefix="c2m-ha-") as tmp:
            _run([*pip, "download", "-q", "--no-deps", "-d", tmp, f"homeassistant=={HA_VERSION}"],
                 log, left())
            wheels = list(Path(tmp).glob("homeassistant-*.whl"))
            if not wheels:
                raise EnvUnavailable("pip download produced no homeassistant wheel")
            constraints, reqs = requirements_from_wheel(wheels[0])
            cfile = Path(tmp) / "package_constraints.txt"
            cfile.write_text(constraints)
            log(f"integration requirements: {' '.join(reqs)}")
            _run([*pip, "install", "-q", "-c", str(cfile), str(wheels[0]), *reqs], log, left())
        _run([str(env.python), "-c", "import homeassistant, paho.mqtt, hass_frontend"], log, left())
        stamp.write_text(json.dumps(wanted))
        log(f"Home Assistant {HA_VERSION} installed in {time.monotonic() - started:.0f}s")
        return env


def run_by_hand(install: Callable[[Callable[[str], None]], T], where: Callable[[T], Path]) -> None:
    """``python tests/consumers/<tool>_env.py``: install if needed (progress on stderr), then
    print where it is, or why it is unavailable (exit status 1)."""
    try:
        print(where(install(lambda line: print(line, file=sys.stderr))))
    except EnvUnavailable as exc:
        print(f"unavailable: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_by_hand(ensure, lambda env: env.hass)
