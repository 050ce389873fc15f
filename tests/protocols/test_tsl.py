from __future__ import annotations

import pytest

from protocols.model import CommandError, Property, Schema
from protocols.tsl import NOT_COERCIBLE, coerce, normalize, validate, validate_props

B = Property("on", type="bool")
INT = Property("level", type="int", min=0, max=10)
F = Property("temp", type="float", access="r")
E = Property("mode", type="enum", enum={0: "auto", 1: "manual"})
ES = Property("color", type="enum", enum={"red": "Red", "blue": "Blue"})
T = Property("at", type="timestamp")
S = Property("label", type="string", length=4)
ST = Property("pos", type="struct", fields=(Property("x", type="int"), Property("y", type="float")))
A = Property("list", type="array", item=Property("i", type="int"), length=3)


@pytest.mark.parametrize(
    ("prop", "value", "expected"),
    [
        (B, 1, True), (B, "0", False), (B, "on", True), (B, "OFF", False), (B, True, True),
        (B, 2, NOT_COERCIBLE), (B, "maybe", NOT_COERCIBLE),
        (INT, "42", 42), (INT, 3.0, 3), (INT, "3.0", 3), (INT, 3.5, 3.5), (INT, "x", NOT_COERCIBLE),
        (F, "21.5", 21.5), (F, 2, 2), (F, "nan", NOT_COERCIBLE),
        (E, "1", 1), (E, 0, 0), (E, 7, NOT_COERCIBLE), (ES, "red", "red"), (ES, "green", NOT_COERCIBLE),
        (T, 1_700_000_000, 1_700_000_000_000), (T, "1700000000123", 1_700_000_000_123),
        (S, 12, "12"), (S, None, NOT_COERCIBLE),
        (ST, {"x": "1", "y": "2.5", "z": 0}, {"x": 1, "y": 2.5, "z": 0}), (ST, {"x": "a"}, NOT_COERCIBLE),
        (A, ["1", 2], [1, 2]), (A, "1,2", NOT_COERCIBLE),
    ],
)
def test_coerce(prop, value, expected):
    assert coerce(prop, value) == expected


def test_normalize_keeps_and_flags_misfits():
    schema = Schema((B, INT, F))
    values, flagged = normalize(schema, {"on": "1", "level": "loud", "other": "x"})
    assert values == {"on": True, "level": "loud", "other": "x"}
    assert flagged == ["level"]


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ({"level": 11}, "above the maximum"), ({"level": -1}, "below the minimum"),
        ({"temp": 1}, "read-only"), ({"nope": 1}, "unknown property"), ({"level": 1.5}, "not an integer"),
        ({"label": "too long"}, "longer than"), ({"mode": 5}, "not a valid enum"), ({}, "no property"),
        ({"list": [1, 2, 3, 4]}, "more than 3"),
    ],
)
def test_validate_rejects(props, message):
    with pytest.raises(CommandError, match=message) as err:
        validate_props(Schema((B, INT, F, S, E, A)), props)
    assert err.value.code == "invalid"


def test_validate_normalizes_and_passthrough():
    assert validate_props(Schema((B, INT)), {"on": "on", "level": "3"}) == {"on": True, "level": 3}
    assert validate_props(Schema(passthrough=True), {"anything": [1]}) == {"anything": [1]}
    assert validate(ST, {"x": "2"}) == {"x": 2}
