"""Both builds of every kernel: same API, same results, and CI cannot miss the compiled one.

Each kernel's pure rule lives in its owner (``protocols.tsl``, ``protocols.tencent.push``,
``gateway.mqtt.codec``); its compiled twin is ``_speedups.twin(name)``, configured by the owner.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

import _speedups
from gateway.mqtt import codec
from protocols import tsl
from protocols.tencent import push

# The compiled twins, configured by their owners (imported above); None in a pure build.
_tencent = _speedups.twin("_tencent")
_tsl = _speedups.twin("_tsl")
_mqtt = _speedups.twin("_mqtt")
_cspeedups = _tencent  # "is the build compiled": all twins load or none does

IMPLS = [pytest.param(push.decode_payload_py, id="python")]
if _tencent is not None:
    IMPLS.append(pytest.param(_tencent.decode_payload, id="cython"))


def test_extension_loaded_when_required():
    if os.environ.get("CLOUD2MQTT_REQUIRE_COMPILED") == "1":
        assert _speedups.IMPLEMENTATION == "cython"
        assert None not in (_tencent, _tsl, _mqtt)


def test_all_or_nothing():
    twins = [_speedups.twin(name) for name in _speedups.TWINS]
    if _speedups.IMPLEMENTATION == "cython":
        assert None not in twins
    else:
        assert twins == [None] * len(twins)


def test_twins_are_every_pyx():
    """setup.py builds every _speedups/*.pyx; the switch loads _speedups.TWINS: the same set."""
    src = Path(_speedups.__file__).parent
    assert sorted(p.stem for p in src.glob("*.pyx")) == sorted(_speedups.TWINS)
    assert sorted(p.stem for p in src.glob("*.pyi")) == sorted(_speedups.TWINS)


def test_speedups_imports_nothing_upward():
    """_speedups is below protocols and gateway: importing it (and every twin) loads neither."""
    code = (
        "import sys, _speedups\n"
        "[_speedups.twin(n) for n in _speedups.TWINS]\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('protocols', 'gateway'))\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


@pytest.mark.skipif(_cspeedups is None, reason="compiled module not built")
def test_twin_unusable_before_its_owner_configures_it():
    code = (
        "import _speedups\n"
        "for name, call in [('_tsl', lambda m: m.normalize(None, {})),\n"
        "                   ('_tencent', lambda m: m.decode_payload('e30=')),\n"
        "                   ('_mqtt', lambda m: m.encode_publish('t', b''))]:\n"
        "    try:\n"
        "        call(_speedups.twin(name))\n"
        "    except RuntimeError as exc:\n"
        "        assert 'configured' in str(exc), exc\n"
        "    else:\n"
        "        raise AssertionError(name + ' ran unconfigured')\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD2MQTT_")}
    out = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stderr


@pytest.mark.skipif(_cspeedups is None, reason="compiled module not built")
def test_twins_get_the_owners_constants():
    """No constant is copied into a twin: each holds the very objects its owner passed."""
    from protocols.model import EPOCH_MS_FROM

    c = _tsl.configuration()
    assert c["true_words"] == tsl.TRUE_WORDS and c["false_words"] == tsl.FALSE_WORDS
    assert c["coerce"] is tsl.coerce and c["not_coercible"] is tsl.NOT_COERCIBLE
    assert c["ms_from"] == EPOCH_MS_FROM
    c = _tencent.configuration()
    assert c["payload_error"] is push.PayloadError and c["day_ms"] == push.DAY_MS
    assert c["ms_from"] == EPOCH_MS_FROM
    assert c["not_report_types"] == push.NOT_REPORT_TYPES
    assert c["report_subtypes"] == push.REPORT_SUBTYPES
    assert c["time_ms_py"] is push.tencent_time_ms_py and c["device_ts_py"] is push.device_ts_py
    assert c["report_py"] is push.tencent_report_py
    c = _mqtt.configuration()
    assert c["encode_publish_py"] is codec.encode_publish_py
    assert c["max_remaining"] == codec.MAX_PACKET and c["max_field"] == codec.MAX_FIELD


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
    (pkg / "__init__.py").write_text(Path(src, "__init__.py").read_text())
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
    assert decode(encoded) == push.decode_payload_py(encoded)
    assert decode(encoded.encode()) == decode(encoded)


@pytest.mark.parametrize("decode", IMPLS)
@pytest.mark.parametrize("bad", ["", "YQ", "not base64!", "Y", "e30=e30=", "é", 12, None, b"\xff"])
def test_decode_rejects(decode, bad):
    with pytest.raises(push.PayloadError):
        decode(bad)


def _same(data):
    try:
        expected = ("ok", push.decode_payload_py(data))
    except push.PayloadError:
        expected = ("error", None)
    try:
        got = ("ok", _tencent.decode_payload(data))
    except push.PayloadError:
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
    assert _tencent.decode_payload(enc) == value


# ------------------------------------------------------------------------------------------
# Every other kernel: the compiled one gives what the reference gives (or raises the same class).

from datetime import datetime, timedelta, timezone  # noqa: E402

import orjson  # noqa: E402

from protocols.model import Property, Schema, StateChange  # noqa: E402
from protocols.tencent import ws  # noqa: E402
from protocols.tsl import normalize_reference  # noqa: E402

needs_compiled = pytest.mark.skipif(_cspeedups is None, reason="compiled module not built")


def _outcome(fn, *args):
    """('ok', repr(result)) or ('raise', exception class): repr keeps True/1 and NaN apart."""
    try:
        return ("ok", repr(fn(*args)))
    except Exception as exc:
        return ("raise", type(exc))


def test_owners_pick_their_twins():
    pairs = [
        (push, "decode_payload", _tencent), (push, "tencent_report", _tencent),
        (push, "tencent_time_ms", _tencent), (push, "device_ts", _tencent),
        (tsl, "normalize", _tsl), (codec, "encode_publish", _mqtt),
    ]
    for owner, name, twin in pairs:
        picked = getattr(owner, name)
        if _speedups.IMPLEMENTATION == "cython":
            assert picked is getattr(twin, name), name
        else:
            pure = getattr(owner, "normalize_reference" if name == "normalize" else name + "_py")
            assert picked is pure, name


# -- tencent_time_ms

offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
iso_times = st.builds(
    lambda dt, tz, spec: dt.replace(tzinfo=tz).isoformat(timespec=spec),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    offsets,
    st.sampled_from(["seconds", "milliseconds", "auto"]),
)
time_values = (
    iso_times
    | st.text(max_size=30)
    | st.from_regex(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d\Z")
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.none()
    | st.booleans()
)


@needs_compiled
@given(time_values)
def test_tencent_time_same(value):
    assert _outcome(_tencent.tencent_time_ms, value) == _outcome(push.tencent_time_ms_py, value)


@given(time_values)
def test_tencent_time_is_the_codec_rule(value):
    assert _outcome(push.tencent_time_ms_py, value) == _outcome(ws._parse_time, value)


def test_tencent_time_examples():
    for impl in [push.tencent_time_ms_py] + ([_tencent.tencent_time_ms] if _cspeedups else []):
        assert impl("1970-01-01T08:00:00+08:00") == 0
        assert impl("2024-02-29T23:59:59-00:30") == 1709251199000 + 1800_000
        assert impl("2023-02-29T00:00:00+08:00") is None
        assert impl(1_700_000_000) == 1_700_000_000_000
        assert impl(True) is None


# -- tencent_report

DEVICE = "PRODUCT001/dev_1"
bodies = st.one_of(
    st.fixed_dictionaries({"method": st.just("report"), "params": json_values},
                          optional={"timestamp": st.integers(-5, 2**42) | st.floats(), "clientToken": st.text(max_size=5)}),
    st.fixed_dictionaries({"method": st.just("report"),
                           "params": st.fixed_dictionaries({"method": st.just("report"), "params": json_values},
                                                           optional={"timestamp": st.integers(0, 2**41)})}),
    st.fixed_dictionaries({"method": st.just("get_status_reply"),
                           "data": st.fixed_dictionaries({"reported": json_values}) | json_values}),
    st.fixed_dictionaries({"type": st.sampled_from(["update", "delta"]),
                           "state": st.fixed_dictionaries({"reported": json_values}) | json_values}),
    st.fixed_dictionaries({"method": st.sampled_from(["control", "event_post", "action", "x", ""]),
                           "params": json_values}),
    json_values,
)


report_bodies = bodies.filter(lambda b: isinstance(b, dict) and (b.get("method") in ("report", "get_status_reply") or b.get("type") == "update"))


@st.composite
def frames(draw):
    """Frames around the fast path: half of them well-formed reports, half damaged somewhere."""
    good = draw(st.booleans())
    body = draw(report_bodies if good else bodies)
    payload = draw(st.sampled_from(["good", "nul", "urlsafe"] + ([] if good else ["garbage", "empty", "int"])))
    raw = orjson.dumps(body)
    if payload == "good":
        p = base64.b64encode(raw).decode()
    elif payload == "nul":
        p = base64.b64encode(raw + b"\x00\x00").decode().rstrip("=")
    elif payload == "urlsafe":
        p = base64.urlsafe_b64encode(raw).decode()
    elif payload == "garbage":
        p = draw(st.text(max_size=12))
    elif payload == "empty":
        p = ""
    else:
        p = 12
    params = {
        "Time": draw(iso_times | st.text(max_size=5) | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)),
        "Type": draw(st.sampled_from(["Property", "Template", "Event", "Action", "Shadow"] if good else [*ws.PUSH_TYPES, "Other", 3])),
        "SubType": draw(st.sampled_from(["Report", "Push"] if good else [*ws.PUSH_SUBTYPES, "Bind", None])),
        "Topic": "$thing/up/property/PRODUCT001/dev_1",
        "Payload": p,
        "Seq": draw(st.integers(-3, 2**40) | st.booleans() | st.none() | st.text(max_size=2)),
        "DeviceId": DEVICE if good else draw(st.sampled_from([DEVICE, "nodash", 7, None])),
    }
    if not good and draw(st.booleans()):
        del params[draw(st.sampled_from(sorted(params)))]
    frame = {"action": "DeviceChange" if good else draw(st.sampled_from(["DeviceChange", "Other"])),
             "params": params, "push": True if good else draw(st.sampled_from([True, False, 1]))}
    out = orjson.dumps(frame)
    return out.decode() if draw(st.booleans()) else out


NOW = 1_700_000_000_000


@needs_compiled
@given(frames() | st.binary(max_size=40) | st.text(max_size=40))
def test_tencent_report_same(frame):
    assert _outcome(_tencent.tencent_report, frame, NOW) == _outcome(push.tencent_report_py, frame, NOW)


@given(frames())
def test_tencent_report_is_the_codec_rule(frame):
    """Where the kernel answers, protocols.tencent.ws's general path gives that very StateChange."""
    fast = push.tencent_report_py(frame, NOW)
    if fast is None:
        return
    parsed = ws.parse_frame(frame)
    decoded = ws.decode_device_change(ws.parse_device_change(parsed.params), now_ms=NOW)
    device, props, ts, seq = fast
    assert decoded.events == [StateChange(device, props, ts, seq, precision_ms=1000)]


def test_tencent_report_example():
    body = {"method": "report", "timestamp": NOW // 1000 + 5, "params": {"power_switch": 1}}
    frame = ws.device_change_frame(DEVICE, "Property", "Report", body, seq=9, ts_ms=NOW)
    for impl in [push.tencent_report_py] + ([_tencent.tencent_report] if _cspeedups else []):
        assert impl(frame, 0) == (DEVICE, {"power_switch": 1}, NOW + 5000, 9)
        assert impl(frame.encode(), 0) == (DEVICE, {"power_switch": 1}, NOW + 5000, 9)
        assert impl(ws.device_change_frame(DEVICE, "StatusChange", "Online", None, seq=1, ts_ms=NOW), 0) is None


# -- tencent_report's frame scanner: frames written token by token (any key order, extra and
# duplicate keys, whitespace, escapes, non-ASCII, numbers of every spelling, damage), so both the
# scanner's answers and its "decline → orjson" exits are compared with the reference. Half the
# frames are "tame" (only what the scanner reads itself: key order, JSON whitespace, extra scalar
# members, integers), half "wild" (anything, mostly declined).

import json  # noqa: E402

TAME_WS = st.sampled_from(["", "", "", " ", "\n", "\t", "\r\n  "])
WILD_WS = TAME_WS | st.sampled_from(["\x0c", "\x0b", "\xa0", "\x00"])
TAME_NUMBERS = st.sampled_from(["0", "-0", "7", "4242", "123456789012345678", "-123456789012345678"]) | st.integers(
    -(10**18) + 1, 10**18 - 1).map(str)
NUMBERS = TAME_NUMBERS | st.sampled_from([
    "007", "-", "-01", "1.0", "1.", "1e3", "2E-2", "-3.5", "1E400", "1234567890123456789",
    "-1234567890123456789", "12345678901234567890", "99999999999999999999999", "+1", "0x10", "NaN",
    "Infinity",
]) | st.integers(-(2**70), 2**70).map(str) | st.floats(allow_nan=False, allow_infinity=False).map(repr)
ASCII = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=8)


@st.composite
def json_str(draw, text, wild=True):
    """``text`` as a JSON string: plain, or (wild) all-ASCII escaped or with one \\u escape."""
    style = draw(st.sampled_from(["plain", "plain", "ascii", "escape_one"])) if wild else "plain"
    if style == "plain" or not text:
        return orjson.dumps(text).decode()
    if style == "ascii":
        return json.dumps(text, ensure_ascii=True)
    i = draw(st.integers(0, len(text) - 1))
    c = text[i]
    esc = f"\\u{ord(c):04x}" if ord(c) < 0x10000 else json.dumps(c)[1:-1]
    return orjson.dumps(text[:i]).decode()[:-1] + esc + orjson.dumps(text[i + 1:]).decode()[1:]


def any_token(wild=True):
    """A JSON value (wild: or something that is almost one), as text."""
    tame = st.one_of(
        st.sampled_from(["true", "false", "null"]), TAME_NUMBERS,
        ASCII.filter(lambda t: "\\" not in t and '"' not in t).flatmap(lambda t: json_str(t, False)),
    )
    if not wild:
        return tame
    return tame | st.one_of(
        st.sampled_from(["[]", "{}", "[0]", '{"a":{"b":[1,2]}}', "tru", "nul", "'x'", '"unterminated',
                         '"a\\"b"', '"\\n"']),
        NUMBERS,
        st.text(max_size=8).flatmap(json_str),
        json_values.map(lambda v: orjson.dumps(v).decode()),
    )


def str_token(wild, *choices):
    token = st.sampled_from(choices).flatmap(lambda t: json_str(t, wild))
    return token | any_token(wild) if wild else token


def _payload(body):
    return base64.b64encode(orjson.dumps(body)).decode()


dict_reports = st.fixed_dictionaries(
    {"method": st.just("report"), "params": st.dictionaries(st.text(max_size=8), json_values, max_size=4)},
    optional={"timestamp": st.integers(-5, 2**42) | st.floats(), "clientToken": st.text(max_size=5)},
)


def payload_tokens(wild):
    tame = st.one_of(
        dict_reports.map(_payload),
        report_bodies.map(_payload), report_bodies.map(lambda b: _payload(b).rstrip("=")),
        bodies.map(_payload), report_bodies.map(lambda b: " " + _payload(b) + " "),
    ).map(lambda t: orjson.dumps(t).decode())
    if not wild:
        return tame
    return tame | st.one_of(
        report_bodies.map(_payload).flatmap(json_str),
        report_bodies.map(lambda b: _payload(b) + "\n").flatmap(json_str),  # an escaped newline
        report_bodies.map(lambda b: '"' + _payload(b) + '\n"'),  # a raw one: not JSON
        st.sampled_from(["", "!!", "e30", "e30=", "YQ"]).flatmap(json_str),
        any_token(),
    )


@st.composite
def members(draw, needed, extra_keys, wild):
    """``"key": value`` texts: the needed keys (a report's value four times in five; wild: some
    dropped), extras, shuffled."""
    ws = WILD_WS if wild else TAME_WS
    items = [(k, draw(other if draw(st.integers(0, 4)) == 4 else good)) for k, good, other in needed
             if not wild or draw(st.integers(0, 9)) < 9]
    for _ in range(draw(st.integers(0, 2))):
        items.append((draw(extra_keys), draw(any_token(wild))))
    items = draw(st.permutations(items))
    return [draw(ws) + draw(json_str(key, wild)) + draw(ws) + ":" + draw(ws) + value + draw(ws)
            for key, value in items]


@st.composite
def raw_frames(draw):
    wild = draw(st.booleans())
    ws = WILD_WS if wild else TAME_WS
    if wild:  # extra keys may repeat a needed one
        params_keys = st.sampled_from(["Type", "SubType", "DeviceId", "Payload", "Seq", "Time"]) | st.text(max_size=6)
        top_keys = st.sampled_from(["push", "action", "params"]) | st.text(max_size=6)
    else:
        needed = {"Type", "SubType", "DeviceId", "Payload", "Seq", "Time", "Topic", "push", "action", "params"}
        params_keys = top_keys = ASCII.filter(lambda t: t not in needed and "\\" not in t and '"' not in t)
    good_time = iso_times.flatmap(lambda t: json_str(t, wild))
    params = draw(members([
        ("Time", good_time, str_token(wild, "2023-11-15T06:13:20+08:00", "", "x")
         | (NUMBERS if wild else TAME_NUMBERS)),
        ("Type", str_token(wild, "Property", "Template"), str_token(wild, "StatusChange", "UserDefined", "")),
        ("SubType", str_token(wild, "Report", "Push"), str_token(wild, "Online", "report")),
        ("Topic", str_token(wild, "$thing/up/property/PRODUCT001/dev_1"), str_token(True, "主题")
         if wild else any_token(False)),
        ("Payload", payload_tokens(wild), any_token(wild)),
        ("Seq", TAME_NUMBERS, NUMBERS | any_token() if wild else any_token(False)),
        ("DeviceId", str_token(wild, DEVICE, "a/b", "/"),
         str_token(wild, "nodash") | str_token(True, "设备/1") if wild else str_token(False, "nodash")),
    ], params_keys, wild))
    params_text = "{" + (",".join(params) if params else draw(ws)) + "}"
    top = draw(members([
        ("push", st.sampled_from(["true", "1", '"x"']),
         st.sampled_from(["false", "null", "0", "-0", '""'] + (["[]", "{}", "[0]"] if wild else []))),
        ("action", str_token(wild, "DeviceChange"), str_token(wild, "Other", "")),
        ("params", st.just(params_text), any_token() if wild else st.just("{}")),
    ], top_keys, wild))
    frame = draw(ws) + "{" + (",".join(top) if top else draw(ws)) + "}" + draw(ws)
    damage = draw(st.sampled_from(["none"] * 3 + ["truncate", "insert", "trailing"])) if wild else "none"
    if damage == "truncate":
        frame = frame[: draw(st.integers(0, max(len(frame) - 1, 0)))]
    elif damage == "insert":
        i = draw(st.integers(0, len(frame)))
        frame = frame[:i] + draw(st.sampled_from(list('{}[],:"\\ x0é\x00'))) + frame[i:]
    elif damage == "trailing":
        frame += draw(st.sampled_from(["x", "}", ",", "\x00", "{}", " 1"]))
    kind = draw(st.sampled_from(["bytes", "str", "latin1", "bytearray"] if wild else ["bytes", "str"]))
    if kind == "str":
        return frame
    if kind == "latin1":  # not UTF-8 wherever the frame has non-ASCII text
        return frame.encode("latin-1", "replace")
    data = frame.encode("utf-8", "surrogatepass")
    return bytearray(data) if kind == "bytearray" else data


@needs_compiled
@settings(max_examples=600)
@given(raw_frames())
def test_tencent_report_scanner_same(frame):
    got = _tencent.tencent_report(frame, NOW)
    event("scanned" if _tencent._scanner_accepts(frame) else "declined")
    event("report" if got is not None else "none")
    assert _outcome(_tencent.tencent_report, frame, NOW) == _outcome(push.tencent_report_py, frame, NOW)


_HEAD = '{"push":true,"action":"DeviceChange","params":{"Type":"Property","SubType":"Report",'


@needs_compiled
@pytest.mark.parametrize(
    ("frame", "report", "scanned"),
    [
        # the fixed shape, keys in any order, JSON whitespace anywhere: read by the scanner
        (_HEAD + '"DeviceId":"P/d","Payload":"%s","Seq":3,"Time":"2023-11-15T06:13:20+08:00"}}', True, True),
        (' \n{ "params" : { "Seq" : 3 , "Payload" : "%s" , "DeviceId" : "P/d" , "SubType" : "Push" ,'
         ' "Type" : "Event" , "x" : null } ,\t"action" : "DeviceChange" , "push" : 1 }\r\n', True, True),
        (_HEAD + '"DeviceId":"P/d","Payload":"%s","Seq":-0,"Time":0,"Topic":"t","n":-12}}', True, True),
        (_HEAD + '"DeviceId":"P/d","Payload":"%s","Seq":123456789012345678}}', True, True),
        # a duplicate needed key (orjson keeps the last), escapes, nesting, floats, long ints: orjson
        (_HEAD + '"DeviceId":"P/d","DeviceId":"nodash","Payload":"%s"}}', False, False),
        (_HEAD + '"DeviceId":"nodash","DeviceId":"P/d","Payload":"%s"}}', True, False),
        (_HEAD + '"DeviceId":"P\\/d","Payload":"%s"}}', True, False),
        (_HEAD + '"DeviceId":"P/d","Payload":"%s","Extra":{"a":[1,{"b":null}]},"Seq":4}}', True, False),
        (_HEAD + '"DeviceId":"P/d","Payload":"%s","Seq":4.0}}', True, False),
        (_HEAD + '"DeviceId":"P/d","Payload":"%s","Seq":1234567890123456789}}', True, False),
        (_HEAD + '"DeviceId":"P/d","Payload":"%s","Seq":12345678901234567890}}', True, False),
        (_HEAD + '"DeviceId":"P/d","Payload":"%s","Topic":"主题"}}', True, False),
        # not a report (read by the scanner), or not JSON (declined, and orjson says so)
        (_HEAD.replace("true", "0") + '"DeviceId":"P/d","Payload":"%s"}}', False, True),
        (_HEAD + '"DeviceId":"P/d","Payload":"%s","Seq":007}}', False, False),
        (_HEAD + '"DeviceId":"P/d","Payload":"%s"}} x', False, False),
        (_HEAD + '"DeviceId":"P/d","Payload":"%s",}}', False, False),
        (_HEAD + '"DeviceId":"P/d","Payload":"%s"}\x0c}', False, False),
        ("\ufeff" + _HEAD + '"DeviceId":"P/d","Payload":"%s"}}', False, False),
    ],
)
def test_tencent_report_scanner_examples(frame, report, scanned):
    frame = frame % _payload({"method": "report", "params": {"p": 1}})
    for data in (frame, frame.encode()):
        got = _tencent.tencent_report(data, NOW)
        assert got == push.tencent_report_py(data, NOW)
        assert (got is not None) == report
        assert _tencent._scanner_accepts(data) == scanned


# -- normalize

scalars = (
    st.none() | st.booleans() | st.integers(-(2**66), 2**66) | st.floats()
    | st.text(max_size=8) | st.sampled_from(["1", "0", " on ", "OFF", "true", "1.5", "1e3", "nan", "inf", "0x10", "1_000", "١٢"])
    | st.sampled_from(["+7", "-12", "-0", "007", "-", "+", "", " 5", "5 ", "123456789012345678", "-999999999999999999",
                       "1234567890123456789", "99999999999999999999", "1.0", "2", "-1"])
    | st.integers(-(10**18), 10**18).map(str)
)
values = st.recursive(
    scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(["a", "b", "c"]), c, max_size=3),
    max_leaves=6,
)
enum_maps = st.dictionaries(st.integers(-2, 3) | st.sampled_from(["0", "1", "2", "x"]), st.just("l"), max_size=4)


def _props(depth):
    base = st.builds(
        Property,
        id=st.sampled_from(["a", "b", "c"]),
        type=st.sampled_from(["bool", "int", "float", "enum", "string", "timestamp", "struct", "array", "weird"]),
        enum=st.none() | enum_maps,
        fields=st.just(()) if depth == 0 else st.lists(_props(depth - 1), max_size=3).map(tuple),
        item=st.none() if depth == 0 else st.none() | _props(depth - 1),
    )
    return base


schemas = st.lists(_props(2), max_size=4).map(lambda ps: Schema(tuple(ps)))


@needs_compiled
@given(schemas, st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), values, max_size=4))
def test_normalize_same(schema, props):
    assert _outcome(_tsl.normalize, schema, props) == _outcome(normalize_reference, schema, props)


@needs_compiled
@given(schemas, st.dictionaries(st.sampled_from(["a", "b", "c", "d", 1, ("a",)]), values, max_size=4),
       st.sampled_from(["dict", "proxy", "items"]))
def test_normalize_same_any_mapping(schema, props, kind):
    """Non-str keys and Mappings that are not a dict take the general loop: same results."""
    import types

    if kind == "proxy":
        props = types.MappingProxyType(props)
    elif kind == "items":
        class Items(dict):  # a dict subclass: not the copy-and-patch path
            pass

        props = Items(props)
    assert _outcome(_tsl.normalize, schema, props) == _outcome(normalize_reference, schema, props)


@needs_compiled
def test_normalize_plan_cache_follows_new_schemas():
    # Same ids, different types: a cached plan of one schema must never serve another.
    for i in range(3000):
        kind = ("int", "bool", "string")[i % 3]
        schema = Schema((Property("p", type=kind),))
        props = {"p": "1"}
        assert _tsl.normalize(schema, props) == normalize_reference(schema, props)


def test_normalize_never_raises_on_unhashable_enum_value():
    schema = Schema((Property("e", type="enum", enum={0: "a"}),))
    for impl in [normalize_reference] + ([_tsl.normalize] if _cspeedups else []):
        assert impl(schema, {"e": [0]}) == ({"e": [0]}, ["e"])


# -- encode_publish


@needs_compiled
@given(
    st.text(max_size=20) | st.binary(max_size=20) | st.integers(),
    st.binary(max_size=300) | st.text(max_size=3) | st.just(bytearray(b"xy")),
    st.integers(-1, 4) | st.booleans(),
    st.booleans() | st.integers(0, 2),
    st.integers(-1, 65536) | st.just(None),
    st.none() | st.binary(max_size=20) | st.just(b"\x00"),
    st.booleans(),
)
def test_encode_publish_same(topic, payload, qos, retain, packet_id, props, dup):
    args = (topic, payload, qos, retain, packet_id, props, dup)
    assert _outcome(_mqtt.encode_publish, *args) == _outcome(codec.encode_publish_py, *args)


@needs_compiled
@pytest.mark.parametrize("size", [0, 100, 127 - 9, 16_383, 16_384, 2_097_151, 2_097_152])
def test_encode_publish_lengths(size):
    payload = b"p" * size
    assert _mqtt.encode_publish("t/x", payload, 1, True, 7, b"\x00") == codec.encode_publish_py(
        "t/x", payload, 1, True, 7, b"\x00"
    )


# ------------------------------------------------------------------------------------------
# Every kernel over every number spelling (issue 11 finding 2: a fractional timestamp gave
# seconds compiled and milliseconds pure, and random examples never drew one). Exhaustive, not
# sampled: each spelling against each schema type, and through each kernel that reads numbers.

SPELLINGS = [
    # ints: small, bool-ish, seconds, ms, the s/ms bound, huge, negative
    0, 1, -1, 2, 5, 1_700_000_000, 1_700_000_000_000, 99_999_999_999, 100_000_000_000,
    2**31, 2**63 - 1, 2**63, 2**64 + 1, 2**70, -(2**63), -(2**70),
    # floats: integral, fractional, huge, negative, non-finite
    0.0, -0.0, 1.0, 0.5, 2.5, -2.5, 1.5, 1_700_000_000.5, 1_700_000_000_000.25, 99_999_999_999.9,
    1e20, 1e300, -1e20, float("nan"), float("inf"), float("-inf"),
    # strings of numbers
    "0", "1", "-1", "2", "2.5", "-2.5", "1700000000", "1700000000.5", "1700000000000",
    "1700000000000.5", " 7 ", "+7", "007", "-0", "1e3", "1E3", "1e400", "-1e400", "1_000", "0x10",
    "١٢", "99999999999999999999", "123456789012345678", "1234567890123456789", "nan", "NaN",
    "inf", "-inf", "Infinity", "-Infinity", "", " ", "abc", ".5", "5.",
    # bool-ish and others
    True, False, None, "true", "false", "on", " OFF ", "yes", "no", "open", "closed", "1.0",
    [1], [], {"a": 1}, {}, (1,), b"1",
]
_SCALAR_TYPES = ["bool", "int", "float", "timestamp", "string"]
_SCHEMA_PROPS = [
    *(Property("p", type=t) for t in _SCALAR_TYPES),
    Property("p", type="enum", enum={0: "a", 1: "b", 2: "c"}),
    Property("p", type="enum", enum={"0": "a", "1": "b", "1700000000": "c"}),
    Property("p", type="enum", enum=None),
    Property("p", type="struct", fields=tuple(Property(t, type=t) for t in _SCALAR_TYPES)),
    *(Property("p", type="array", item=Property("i", type=t)) for t in _SCALAR_TYPES),
    Property("p", type="array"),
    Property("p", type="weird"),
]


def _spelled(prop):
    """Every spelling as the property's value (a struct gets it in each field, and in all)."""
    if prop.type == "struct":
        out = [{f.id: v} for v in SPELLINGS for f in prop.fields]
        return out + [{f.id: v for f in prop.fields} for v in SPELLINGS]
    if prop.type == "array":
        return [[v] for v in SPELLINGS] + [[1, v] for v in SPELLINGS] + SPELLINGS
    return SPELLINGS


@needs_compiled
@pytest.mark.parametrize("prop", _SCHEMA_PROPS, ids=lambda p: f"{p.type}-{len(p.enum or ())}-{p.item and p.item.type}")
def test_normalize_same_for_every_spelling(prop):
    schema = Schema((prop,))
    for value in _spelled(prop):
        for props in ({"p": value}, {"p": value, "q": value}):
            assert _outcome(_tsl.normalize, schema, props) == _outcome(normalize_reference, schema, props), value
        import types

        proxy = types.MappingProxyType({"p": value})
        assert _outcome(_tsl.normalize, schema, proxy) == _outcome(normalize_reference, schema, proxy), value


@pytest.mark.parametrize("value", [1_700_000_000.5, "1700000000.5", 2.5, 1_700_000_000, "1700000000", 1_700_000_000_000])
def test_fractional_timestamps_are_milliseconds(value):
    """Issue 11 finding 2: seconds (fractional or not) become ms in both builds."""
    schema = Schema((Property("t", type="timestamp"),))
    expected = {1_700_000_000.5: 1_700_000_000_000, "1700000000.5": 1_700_000_000_000, 2.5: 2000,
                1_700_000_000: 1_700_000_000_000, "1700000000": 1_700_000_000_000,
                1_700_000_000_000: 1_700_000_000_000}[value]
    for impl in [normalize_reference] + ([_tsl.normalize] if _cspeedups else []):
        assert impl(schema, {"t": value}) == ({"t": expected}, [])


@needs_compiled
def test_time_and_device_ts_same_for_every_spelling():
    for value in SPELLINGS:
        assert _outcome(_tencent.tencent_time_ms, value) == _outcome(push.tencent_time_ms_py, value), value
        for fallback in (NOW, 0, 2**70):
            body = {"timestamp": value}
            assert _outcome(_tencent.device_ts, body, fallback) == _outcome(push.device_ts_py, body, fallback), value


def _number_text(value):
    """``value`` as it would sit in a JSON frame (floats by repr, nan/inf as orjson cannot)."""
    if isinstance(value, float) and value != value:
        return "NaN"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, (bytes, tuple)):
        return '"x"'
    return orjson.dumps(value).decode() if not isinstance(value, int) or isinstance(value, bool) else str(value)


@needs_compiled
def test_report_and_payload_same_for_every_spelling():
    """Each spelling as the device timestamp, the Seq, the Time and a property value of a frame,
    and inside a base64 Payload: the compiled and pure kernels agree on all of them."""
    for value in SPELLINGS:
        text = _number_text(value)
        body = ('{"method":"report","timestamp":' + text + ',"params":{"p":' + text + "}}").encode()
        payload = base64.b64encode(body).decode()
        assert _outcome(_tencent.decode_payload, payload) == _outcome(push.decode_payload_py, payload), value
        frames_ = [
            _HEAD + f'"DeviceId":"P/d","Payload":"{payload}","Seq":3,"Time":"2023-11-15T06:13:20+08:00"}}}}',
            _HEAD + f'"DeviceId":"P/d","Payload":"{_payload({"method": "report", "params": {}})}","Seq":{text},"Time":{text}}}}}',
        ]
        for frame in frames_:
            for data in (frame, frame.encode()):
                assert _outcome(_tencent.tencent_report, data, NOW) == _outcome(push.tencent_report_py, data, NOW), data


@needs_compiled
def test_encode_publish_same_for_every_spelling():
    for value in SPELLINGS:
        for args in (("t", b"x", value), ("t", b"x", 1, False, value), ("t", b"x", 0, value),
                     ("t", b"x", 1, True, 1, None, value)):
            assert _outcome(_mqtt.encode_publish, *args) == _outcome(codec.encode_publish_py, *args), args
