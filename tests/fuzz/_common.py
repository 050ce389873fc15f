"""What every harness shares: the declared errors, and bytes → a JSON value to feed parsers."""

from __future__ import annotations

from typing import Any

import orjson

from protocols.model import RemoteProtocolError, VendorError

DECLARED: tuple[type[Exception], ...] = (RemoteProtocolError, VendorError)
"""What a protocol decoder may raise on peer bytes: garbage (``RemoteProtocolError``) or a
well-formed vendor error reply (``VendorError``). Anything else is a bug the fuzzer reports."""

NOW_MS = 1_700_000_000_000


def json_of(data: bytes) -> Any:
    """The JSON value in ``data``, or the text itself, or the bytes: parsers get all three."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data
