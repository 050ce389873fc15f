"""pytest-benchmark micro-benchmarks of every `_speedups` kernel, compiled vs pure.

``pytest bench/ --benchmark-enable`` times them (group = kernel, so each group shows the
compiled/pure ratio); the project's default ``--benchmark-disable`` runs each once, as a test.
``python -m bench.kernels`` prints the same comparison as JSON ratios.
"""

from __future__ import annotations

import pytest

from bench._kernel_cases import kernel_pairs, signer_cases

PAIRS = kernel_pairs()


@pytest.mark.parametrize("impl", ["pure", "compiled"])
@pytest.mark.parametrize("kernel", sorted(PAIRS))
def test_kernel(benchmark, kernel, impl):
    pure, compiled = PAIRS[kernel]
    fn = pure if impl == "pure" else compiled
    if fn is None:
        pytest.skip("compiled module not built")
    benchmark.group = kernel
    result = benchmark(fn)
    assert result == pure()


@pytest.mark.parametrize("case", sorted(signer_cases()))
def test_signer_pure(benchmark, case):
    benchmark.group = "signers (pure only: HMAC is OpenSSL already)"
    benchmark(signer_cases()[case])
