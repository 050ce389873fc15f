"""The XiakeCloud response envelope: an ASSUMPTION, kept here and nowhere else.

The seed (``000_4ded1f7fed674789.txt``) documents requests only. It says nothing about what a
reply looks like: no envelope, no error codes, no session lifetime. Everything the gateway
believes about replies is therefore written down once, in ``ASSUMED_ENVELOPE`` below, and the
rest of the package (parsers, connector, emulator) reads it from here. When a real reply is
seen, correct this one object (and the tests that pin it) — nothing else should need to change.

The assumption::

    {"code": 0, "msg": "", "data": <object | list | string | null>}

- ``code`` 0 means success; any other value is an error and ``msg`` explains it.
- ``ASSUMED_ENVELOPE.session_invalid`` (401) means the ``session`` is unknown or expired: log in
  again. It is the only code that triggers a re-login, so it must stay distinct.
- A few other codes map onto the reply contract's categories (bad credentials → ``auth``,
  bad arguments / unknown serial → ``invalid``, rate limit → ``throttled``); anything else is
  ``vendor`` with the code kept verbatim.

Tolerated variants (real clouds drift, and a guess should not be brittle):

- the code under ``code``, ``errcode`` or ``status``; as an int or a numeric string;
- the message under ``msg``, ``message`` or ``errmsg``; missing is fine;
- the payload under ``data`` or ``result``; missing means ``None``;
- an object with none of the code keys is a bare success payload (the object itself, or its
  ``data``/``result``), and a top-level JSON list is a bare success payload too;
- extra keys are ignored.

Not tolerated (``RemoteProtocolError``, i.e. a malformed body the gateway counts and skips):
bytes that are not JSON, JSON scalars at the top level, a code that is neither an int nor a
numeric string.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from ..model import ErrorCode, RemoteProtocolError, VendorError

__all__ = [
    "ASSUMED_ENVELOPE",
    "Envelope",
    "EnvelopeAssumption",
    "SessionInvalid",
    "decode_envelope",
    "encode_error",
    "encode_ok",
    "parse_response",
    "raise_for_envelope",
]


@dataclass(frozen=True, slots=True)
class EnvelopeAssumption:
    """Where a reply keeps its code, message and payload, and what the codes mean."""

    code_keys: tuple[str, ...] = ("code", "errcode", "status")
    message_keys: tuple[str, ...] = ("msg", "message", "errmsg")
    data_keys: tuple[str, ...] = ("data", "result")
    ok: int = 0
    session_invalid: int = 401
    # Codes that are not "session invalid", mapped onto the reply contract's categories.
    categories: Mapping[int, ErrorCode] = field(
        default_factory=lambda: {
            400: "invalid",  # bad or missing arguments
            403: "rejected",  # not allowed (a sub-account touching a device it was not given)
            404: "invalid",  # unknown sn / id
            405: "invalid",  # GET where the seed says POST, or the reverse
            429: "throttled",
            1001: "auth",  # wrong key, account or password at login
        }
    )


ASSUMED_ENVELOPE: Final = EnvelopeAssumption()


class SessionInvalid(VendorError):
    """The cloud rejected the ``session``: the caller should log in again and retry once."""

    def __init__(self, vendor_code: object, message: str) -> None:
        super().__init__("auth", vendor_code, message or "session invalid or expired")


@dataclass(frozen=True, slots=True)
class Envelope:
    code: int
    message: str
    data: Any

    @property
    def ok(self) -> bool:
        return self.code == ASSUMED_ENVELOPE.ok


def _first(obj: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[bool, Any]:
    for key in keys:
        if key in obj:
            return True, obj[key]
    return False, None


def _code(value: Any) -> int:
    if isinstance(value, bool):
        raise RemoteProtocolError(f"envelope code is a boolean: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise RemoteProtocolError(f"envelope code is not a number: {str(value)[:40]!r}")


def decode_envelope(body: bytes | str) -> Envelope:
    """Parse a reply body into an ``Envelope`` (raises ``RemoteProtocolError`` if malformed)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RemoteProtocolError(f"reply is not JSON ({exc.msg})") from None
    a = ASSUMED_ENVELOPE
    if isinstance(doc, list):
        return Envelope(a.ok, "", doc)
    if not isinstance(doc, dict):
        raise RemoteProtocolError(f"reply is a JSON {type(doc).__name__}, not an object")
    has_code, raw_code = _first(doc, a.code_keys)
    has_data, data = _first(doc, a.data_keys)
    _, message = _first(doc, a.message_keys)
    message = "" if message is None else str(message)
    if not has_code:
        # No code at all: the object is the payload (or wraps it under data/result).
        return Envelope(a.ok, message, data if has_data else doc)
    return Envelope(_code(raw_code), message, data)


def raise_for_envelope(env: Envelope) -> Any:
    """Return the payload of a successful envelope, or raise the matching ``VendorError``."""
    a = ASSUMED_ENVELOPE
    if env.code == a.ok:
        return env.data
    if env.code == a.session_invalid:
        raise SessionInvalid(env.code, env.message)
    category: ErrorCode = a.categories.get(env.code, "vendor")
    raise VendorError(category, env.code, env.message or f"error {env.code}")


def parse_response(status: int, body: bytes | str) -> Any:
    """An HTTP reply (status and body) to its payload, or an exception.

    - an envelope that decodes wins over the HTTP status (a 401 with ``code: 401`` is a session
      error, not an HTTP error);
    - an undecodable body on an HTTP error status is that HTTP error (``VendorError``: 429 →
      ``throttled``, 401/403 → ``auth``/``rejected``, otherwise ``vendor``, e.g. a 502 page);
    - an undecodable body on a 2xx status is ``RemoteProtocolError`` (malformed: count, skip).
    """
    try:
        env = decode_envelope(body)
    except RemoteProtocolError:
        if status >= 400:
            raise _http_error(status) from None
        raise
    if env.ok and status >= 400:
        raise _http_error(status)
    return raise_for_envelope(env)


def _http_error(status: int) -> VendorError:
    if status == 401:
        return SessionInvalid(f"http {status}", f"HTTP {status}")
    by_status: dict[int, ErrorCode] = {429: "throttled", 403: "rejected"}
    category = by_status.get(status, "vendor")
    return VendorError(category, f"http {status}", f"HTTP {status}")


def encode_ok(data: Any) -> bytes:
    """A success reply, as the emulator (and tests) send it."""
    return orjson.dumps({"code": ASSUMED_ENVELOPE.ok, "msg": "", "data": data})


def encode_error(code: int, message: str) -> bytes:
    """An error reply, as the emulator (and tests) send it."""
    return orjson.dumps({"code": code, "msg": message, "data": None})
