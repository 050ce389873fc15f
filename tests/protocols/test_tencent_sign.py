"""The appapi signature (seed 002 签名算法) on committed vectors.

Each vector's expected string-to-sign is written out by hand from the rule (sorted keys, raw
``k=v`` joined by ``&``, ``Signature`` and empty strings left out, ``_`` in a key written as
``.``, JS stringification) and its HMAC-SHA1/Base64 recomputed here with the standard library;
the committed signature must match both that and ``sign()``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from protocols.tencent.api import appapi_body
from protocols.tencent.sign import canonical_string, js_string, sign, verify


def _by_hand(secret: str, text: str) -> str:
    return base64.b64encode(
        hmac.new(secret.encode(), text.encode(), hashlib.sha1).digest()
    ).decode()


VECTORS = [
    # An empty string (Avatar) is left out; Timestamp/Nonce pinned.
    (
        "NcbHqkTCGbKnQH",
        {
            "Action": "AppGetTokenByWeiXin",
            "AppKey": "ahPxdKTGrejd",
            "Nonce": 71087795,
            "RequestId": "8b8d499bbba1ac28b6da21b4",
            "Timestamp": 1546315200,
            "WxOpenID": "0123456789",
            "NickName": "tests",
            "Avatar": "",
        },
        "Action=AppGetTokenByWeiXin&AppKey=ahPxdKTGrejd&NickName=tests&Nonce=71087795"
        "&RequestId=8b8d499bbba1ac28b6da21b4&Timestamp=1546315200&WxOpenID=0123456789",
        "9XBq8KpGx07yhyH7vg5vIXxZrUk=",
    ),
    # A bool (true), floats (1.0 -> 1, 0.5), an array (comma-joined), an empty string (left out),
    # a key with "_" (written Room.Id), and a Signature already present (excluded).
    (
        "c2m-secret",
        {
            "Action": "AppDemo",
            "AppKey": "c2m-key",
            "Nonce": 2,
            "RequestId": "rest-client",
            "Timestamp": 1552621825,
            "Enabled": True,
            "Ratio": 1.0,
            "Scale": 0.5,
            "DeviceIds": ["P1/a", "P1/b"],
            "Room_Id": "r1",
            "Empty": "",
            "Signature": "ignored",
        },
        "Action=AppDemo&AppKey=c2m-key&DeviceIds=P1/a,P1/b&Enabled=true&Nonce=2&Ratio=1"
        "&RequestId=rest-client&Room.Id=r1&Scale=0.5&Timestamp=1552621825",
        "RBPN6v7XQm5JRh/FfntA0jyUgYI=",
    ),
]


@pytest.mark.parametrize(("secret", "params", "text", "signature"), VECTORS)
def test_vectors(secret: str, params: dict[str, object], text: str, signature: str) -> None:
    assert canonical_string(params) == text
    assert _by_hand(secret, text) == signature
    assert sign(secret, params) == signature
    assert verify(secret, {**params, "Signature": signature})
    assert not verify(secret, {**params, "Signature": "AAAA" + signature[4:]})
    assert not verify("other", {**params, "Signature": signature})


def test_seed_example_string() -> None:
    """The seed's 拼接请求字符串 example (its keys are masked, so only the string is checkable)."""
    params = {
        "RequestId": "8b8d499bbba1ac28b6da21b4",
        "Action": "AppCreateCellphoneUser",
        "AppKey": "ahPxdK****TGr4jd",
        "Timestamp": 1546315200,
        "Nonce": 71087795,
        "CountryCode": "86",
        "PhoneNumber": "13900000000",
        "Password": "My!P@ssword",
        "VerificationCode": "123456",
        "Signature": "Szxai9Qs7O3lBoOXahbFbseZ+uE=",
    }
    assert canonical_string(params) == (
        "Action=AppCreateCellphoneUser&AppKey=ahPxdK****TGr4jd&CountryCode=86&Nonce=71087795"
        "&Password=My!P@ssword&PhoneNumber=13900000000&RequestId=8b8d499bbba1ac28b6da21b4"
        "&Timestamp=1546315200&VerificationCode=123456"
    )


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "true"),
        (False, "false"),
        (1.0, "1"),
        (-0.0, "0"),
        (0.1, "0.1"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (1.5e-7, "1.5e-7"),
        (0.000001, "0.000001"),
        (123, "123"),
        ([1, "a", None, True, [2, 3]], "1,a,,true,2,3"),
        ({"a": 1}, "[object Object]"),
        ("raw value&=", "raw value&="),
    ],
)
def test_js_string(value: object, text: str) -> None:
    assert js_string(value) == text


def test_empty_values_and_none_left_out() -> None:
    assert canonical_string({"A": "", "B": [], "C": None, "D": 0}) == "D=0"


def test_appapi_body_is_signed() -> None:
    body = appapi_body(
        "AppGetTokenByWeiXin",
        {"WxOpenID": "0123456789", "NickName": "tests", "Avatar": ""},
        app_key="ahPxdKTGrejd",
        app_secret="NcbHqkTCGbKnQH",
        timestamp=1546315200,
        nonce=71087795,
        request_id="8b8d499bbba1ac28b6da21b4",
    )
    assert body["Signature"] == "9XBq8KpGx07yhyH7vg5vIXxZrUk="
    assert body["Avatar"] == ""  # still sent, only left out of the signature
