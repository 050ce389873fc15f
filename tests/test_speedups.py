"""Both `_speedups` implementations: same API, same results, and CI cannot miss the compiled one."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import _speedups
from _speedups import _reference

try:
    from _speedups import _cspeedups
except ImportError:  # pragma: no cover - exercised where no compiler is present
    _cspeedups = None

IMPLS = [pytest.param(_reference.decode_payload, id="python")]
if _cspeedups is not None:
    IMPLS.append(pytest.param(_cspeedups.decode_payload, id="cython"))


def test_extension_loaded_when_required():
    if os.environ.get("CLOUD2MQTT_REQUIRE_COMPILED") == "1":
        assert _speedups.IMPLEMENTATION == "cython"
        assert _cspeedups is not None


def _import_impl(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD2MQTT_")}
    return subprocess.run(
        [sys.executable, "-c", "import _speedups; print(_speedups.IMPLEMENTATION)"],
        env={**clean, **env}, capture_output=True, text=True, check=False,
    )


def test_pure_env_forces_reference():
    out = _import_impl({"CLOUD2MQTT_PURE": "1"})
    assert out.stdout.strip() == "python"


def test_required_but_missing_is_an_import_error(tmp_path):
    # A copy of the package without the compiled module: requiring it must fail loudly.
    pkg = tmp_path / "_speedups"
    pkg.mkdir()
    src = os.path.dirname(_speedups.__file__)
    for name in ("__init__.py", "_reference.py"):
        (pkg / name).write_text(Path(src, name).read_text())
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD2MQTT_")}
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r}); "
        "sys.meta_path[:] = [f for f in sys.meta_path if 'Editable' not in getattr(f, '__name__', '')]; "
        "import _speedups; assert _speedups.__file__.startswith(sys.path[0])"
    )
    out = subprocess.run([sys.executable, "-c", code], env={**clean, "CLOUD2MQTT_REQUIRE_COMPILED": "1"},
                         capture_output=True, text=True, check=False)
    assert out.returncode != 0 and "CLOUD2MQTT_REQUIRE_COMPILED" in out.stderr
    out = subprocess.run([sys.executable, "-c", code + "; print(_speedups.IMPLEMENTATION)"],
                         env=clean, capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "python"


@pytest.mark.parametrize("decode", IMPLS)
@pytest.mark.parametrize(
    "encoded",
    [
        base64.b64encode(b'{"a":1}').decode(),
        base64.b64encode(b'{"a":1}').decode().rstrip("="),
        base64.urlsafe_b64encode(b'{"k":"\xff\xfe?>"}'.replace(b"\xff\xfe", "ÿþ".encode())).decode(),
        base64.b64encode(b'{"a":"b"}\x00\x00').decode(),
        "  " + base64.b64encode(b"[1,2]").decode() + "\n",
    ],
)
def test_decode_examples(decode, encoded):
    assert decode(encoded) == _reference.decode_payload(encoded)
    assert decode(encoded.encode()) == decode(encoded)


@pytest.mark.parametrize("decode", IMPLS)
@pytest.mark.parametrize("bad", ["", "YQ", "not base64!", "Y", "e30=e30=", "é", 12, None, b"\xff"])
def test_decode_rejects(decode, bad):
    with pytest.raises(_speedups.PayloadError):
        decode(bad)


def _same(data):
    try:
        expected = ("ok", _reference.decode_payload(data))
    except _speedups.PayloadError:
        expected = ("error", None)
    try:
        got = ("ok", _cspeedups.decode_payload(data))
    except _speedups.PayloadError:
        got = ("error", None)
    assert got == expected, data


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@pytest.mark.skipif(_cspeedups is None, reason="compiled module not built")
@given(st.binary(max_size=64) | st.text(max_size=64))
def test_same_on_arbitrary_input(data):
    _same(data)


@pytest.mark.skipif(_cspeedups is None, reason="compiled module not built")
@given(json_values, st.booleans(), st.booleans(), st.integers(0, 3))
def test_same_on_encoded_json(value, urlsafe, unpadded, nuls):
    import orjson

    raw = orjson.dumps(value) + b"\x00" * nuls
    enc = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(raw).decode()
    if unpadded:
        enc = enc.rstrip("=")
    _same(enc)
    assert _cspeedups.decode_payload(enc) == value
