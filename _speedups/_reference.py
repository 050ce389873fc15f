"""Pure-Python reference of every kernel. The compiled module must match it exactly.

``decode_payload`` is the Tencent push decode (seed 002, 设备状态推送: ``Payload`` is base64 of
the device's JSON message). The official mini-program SDK decodes with a lenient base64 (URL-safe
alphabet accepted, padding optional) and strips NUL bytes before ``JSON.parse``; we do the same.
"""

from __future__ import annotations

import binascii
from typing import Any, Final

import orjson

__all__ = ["PayloadError", "decode_payload"]

_URLSAFE: Final = bytes.maketrans(b"-_", b"+/")
_PAD: Final = (b"", b"", b"==", b"=")  # index by len % 4; len % 4 == 1 is invalid
_loads: Final = orjson.loads
_a2b: Final = binascii.a2b_base64


class PayloadError(ValueError):
    """The payload is not base64 of JSON."""


def decode_payload(data: bytes | str) -> Any:
    """base64 (standard or URL-safe, padding optional) → NUL bytes removed → JSON."""
    if isinstance(data, str):
        try:
            raw = data.encode("ascii")
        except UnicodeEncodeError:
            raise PayloadError("payload is not ASCII base64") from None
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
    else:
        raise PayloadError(f"payload must be str or bytes, not {type(data).__name__}")
    raw = raw.strip().rstrip(b"=").translate(_URLSAFE)
    rem = len(raw) % 4
    if rem == 1:
        raise PayloadError("truncated base64 payload")
    try:
        decoded = _a2b(raw + _PAD[rem], strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise PayloadError(f"invalid base64 payload: {exc}") from None
    if b"\x00" in decoded:
        decoded = decoded.replace(b"\x00", b"")
    try:
        return _loads(decoded)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"payload is not JSON: {exc}") from None
