"""The ``appapi`` request signature (seed 002, 签名算法 / 生成签名字串).

The seed's rule, step by step:

1. 对所有请求参数按参数名做字典序升序排列 — every parameter except ``Signature`` itself, sorted by
   name. The official JS code sorts with ``Array.prototype.sort`` (UTF-16 code units); we sort
   the same way so a non-BMP key could never make us disagree.
2. "参数名称" = "参数值", joined with ``&``; "参数值为原始值而非 URL 编码后的值" (raw values, no
   URL encoding); "若输入参数中的键包含下划线, 则需要将其转换为 ." (a ``_`` in a key is written
   as ``.``; the official SDK does not do this, but no seed parameter name contains ``_``, so both
   agree on every real call). "对于参数为字符串且为空的，应将其从签名串中省略" — empty strings are
   left out; like the official demo signer we leave out every value that *stringifies* to ``""``
   (an empty array too) and ``None`` (JS ``undefined``).
3. HMAC-SHA1 keyed with the AppSecret over that string, then Base64.

Values are stringified as JavaScript's ``String(value)`` does, because the official SDK builds
the string with ``key + '=' + value``: ``true``/``false``, numbers in ECMAScript
``Number::toString`` form (``1.0`` → ``1``, ``1e21`` → ``1e+21``, ``1.5e-7`` → ``1.5e-7``),
arrays comma-joined, objects as ``[object Object]``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Final

__all__ = ["SIGNATURE_KEY", "canonical_string", "js_string", "sign", "verify"]

SIGNATURE_KEY: Final = "Signature"


def _js_number(value: float) -> str:
    """ECMAScript ``Number::toString(10)`` of a double."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "0"  # also -0
    sign = "-" if value < 0 else ""
    # repr() gives the shortest round-tripping digits, as ECMAScript requires; only the layout
    # (where the point goes, when to switch to exponent form) differs, so re-lay it out.
    mantissa, _, exp_text = repr(abs(value)).partition("e")
    exponent = int(exp_text) if exp_text else 0
    int_part, _, frac_part = mantissa.partition(".")
    digits = int_part + frac_part
    point = len(int_part)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0") or "0"
    k = len(digits)
    n = point + exponent  # value = 0.<digits> × 10^n
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + digits
    e = n - 1
    e_text = ("+" if e >= 0 else "-") + str(abs(e))
    if k == 1:
        return sign + digits + "e" + e_text
    return sign + digits[0] + "." + digits[1:] + "e" + e_text


def js_string(value: object) -> str:
    """``String(value)`` as JavaScript computes it for JSON-like values."""
    if isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _js_number(value)
    if isinstance(value, (list, tuple)):
        # Array.prototype.join: null/undefined elements become empty strings.
        return ",".join("" if item is None else js_string(item) for item in value)
    if isinstance(value, Mapping):
        return "[object Object]"
    return str(value)


def _utf16_key(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def canonical_string(params: Mapping[str, object]) -> str:
    """The string that is signed: sorted ``k=v`` pairs joined by ``&``."""
    parts: list[str] = []
    for key in sorted(params, key=_utf16_key):
        if key == SIGNATURE_KEY:
            continue
        value = params[key]
        if value is None:
            continue  # JS undefined: the official demo signer leaves it out
        text = js_string(value)
        if text == "":
            continue
        parts.append(f"{key.replace('_', '.')}={text}")
    return "&".join(parts)


@lru_cache(maxsize=1024)
def _keyed(app_secret: str) -> hmac.HMAC:
    # One pre-keyed HMAC per secret; each signature works on a .copy() of it.
    return hmac.new(app_secret.encode("utf-8"), digestmod=hashlib.sha1)


def sign(app_secret: str, params: Mapping[str, object]) -> str:
    """Base64(HMAC-SHA1(AppSecret, canonical_string(params)))."""
    mac = _keyed(app_secret).copy()
    mac.update(canonical_string(params).encode("utf-8"))
    return base64.b64encode(mac.digest()).decode("ascii")


def verify(app_secret: str, params: Mapping[str, object]) -> bool:
    """Server side: does ``params["Signature"]`` match? Constant-time comparison."""
    given = params.get(SIGNATURE_KEY)
    if not isinstance(given, str) or not given:
        return False
    return hmac.compare_digest(given.encode("ascii", "replace"), sign(app_secret, params).encode())
