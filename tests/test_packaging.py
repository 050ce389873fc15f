"""`pip install .` without a working compiler still installs every pure rule (and the switch),
and the wheel holds exactly the packages the include list finds — never tests/ or bench/."""

from __future__ import annotations

import ast
import fnmatch
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[1]


def _include() -> list[str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        find = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]
    include: list[str] = find["include"]
    return include


def _source_packages(include: list[str]) -> set[str]:
    """Every directory with an ``__init__.py`` under a top-level package the include list names."""
    found: set[str] = set()
    for top in ROOT.iterdir():
        if not (top / "__init__.py").is_file():
            continue
        for init in top.rglob("__init__.py"):
            name = ".".join(init.parent.relative_to(ROOT).parts)
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in include):
                found.add(name)
    return found


def test_include_list_names_the_shipped_top_levels():
    include = _include()
    tops = {name.split(".")[0] for name in _source_packages(include)}
    assert tops == {"protocols", "_speedups", "gateway", "emulators"}
    for unshipped in ("tests", "bench"):
        assert (ROOT / unshipped / "__init__.py").is_file()  # why the include list is needed
        assert not any(fnmatch.fnmatchcase(unshipped, p) for p in include)


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

    shipped = {
        ".".join(PurePosixPath(n).parent.parts) for n in names if n.endswith("/__init__.py")
    }
    assert shipped == _source_packages(_include())
    assert {"emulators.tencent", "emulators.coolkit", "emulators.aliyun", "emulators.xky",
            "gateway.connectors", "gateway.mqtt"} <= shipped
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"protocols", "_speedups", "gateway", "emulators"}, tops
    assert not [n for n in names if n.startswith(("tests/", "bench/"))]


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (inside functions and ``TYPE_CHECKING`` too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def test_runtime_does_not_import_the_emulators_or_websockets():
    """The emulators are a layer above the runtime: only the demo loads one (through
    ``gateway.vendors``), and ``websockets`` is the emulators' optional extra."""
    for path in [*(ROOT / "gateway").rglob("*.py"), *(ROOT / "protocols").rglob("*.py"),
                 *(ROOT / "_speedups").rglob("*.py")]:
        imported = _imports(path)
        assert not [m for m in imported if m.split(".")[0] == "websockets"], path
        if path != ROOT / "gateway" / "demo.py":
            assert not [m for m in imported if m.split(".")[0] == "emulators"], path
