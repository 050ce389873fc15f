"""A short budget of every fuzz harness (tests/fuzz/), each in its own process.

About a minute in all: each harness runs ``SECONDS`` seconds from its seeds (coverage-guided with
atheris, the random stand-in without it). A crash fails the test with the harness's report; the
crashing input is kept under the test's tmp dir. The long run is ``python -m tests.fuzz``.
"""

from __future__ import annotations

import pytest

from tests.fuzz.__main__ import HARNESSES, run_harness

SECONDS = 6


def test_every_decoder_has_a_harness():
    from pathlib import Path

    names = sorted(p.stem.removeprefix("fuzz_") for p in Path(__file__).parent.joinpath("fuzz").glob("fuzz_*.py"))
    assert names == sorted(HARNESSES)


@pytest.mark.timeout(SECONDS * 3 + 120)
@pytest.mark.parametrize("name", HARNESSES)
def test_fuzz_harness_finds_nothing(name, tmp_path):
    result = run_harness(name, SECONDS, tmp_path)
    assert not result["crashed"] and result["returncode"] == 0, result["tail"]
    assert result["runs"] > 100, result  # it really ran inputs (not just imported)
