"""Coverage-guided fuzz harnesses (atheris) for every decoder of untrusted bytes.

One module per decoder, each ``fuzz_<name>.py`` with ``SEEDS`` (valid inputs to start from) and
``one_input(data)``, which feeds the bytes to the decoder and fails (raises anything but the
decoder's declared errors) on a bug. ``python -m tests.fuzz --seconds N`` runs every harness for
N seconds in its own process (see README.md, "Fuzzing"); tests/test_fuzz.py runs each for a few
seconds inside the suite. Without atheris (no wheel for the platform) a seeded random mutator
stands in, so the harnesses still run.

This package imports nothing of the project at import time: the runner imports a harness under
``atheris.instrument_imports()`` so the decoders it loads are instrumented for coverage.
"""
