"""Declares the optional Cython extension; all metadata lives in pyproject.toml.

The extensions are optional on purpose: without a compiler (or with
``CLOUD2MQTT_NO_EXTENSIONS=1``) each owner module uses its own pure-Python rule, which has the
same API (``_speedups/__init__.py`` lists the owners and their compiled twins).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build the extension, but never fail the install because of it."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            print(f"cloud2mqtt: compiled speedups skipped ({exc}); using pure Python", file=sys.stderr)

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(f"cloud2mqtt: building {ext.name} failed ({exc}); using pure Python", file=sys.stderr)


def extensions() -> list:  # type: ignore[type-arg]
    if os.environ.get("CLOUD2MQTT_NO_EXTENSIONS"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("cloud2mqtt: Cython missing; using pure Python", file=sys.stderr)
        return []
    from setuptools import Extension

    # One extension per compiled twin: every _speedups/*.pyx (tests check this equals
    # _speedups.TWINS, the list the switch loads).
    twins = sorted(Path(__file__).parent.joinpath("_speedups").glob("*.pyx"))
    return cythonize(
        [
            Extension(f"_speedups.{p.stem}", [f"_speedups/{p.name}"], extra_compile_args=["-O2"])
            for p in twins
        ],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
        quiet=True,
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
