"""``redact(config)``: the configuration as ``bridge/info`` shows it, with every secret removed.

A value is replaced by ``"<redacted>"`` when its key names a secret — password, secret, token,
key (``app_key``, ``apikey``, ``key``), credential, cookie, signature, CoolKit's ``at``/``rt`` —
and ``user:password@`` is removed from every URL (a NATS URL's lone ``token@`` too). Paths (``*_file``) stay: a path is not a
secret. Unknown structures are walked too (dataclasses, mappings, lists), so a new vendor's
options are covered without a list to keep up to date.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["REDACTED", "redact", "redact_value"]

REDACTED = "<redacted>"

_SECRET = re.compile(
    r"pass|secret|token|key|credential|cookie|signature|session|auth|private|^at$|^rt$",
    re.IGNORECASE,
)
_KEEP = re.compile(r"_file$|^key_path$|_expire", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<userinfo>[^/@\s]*@)", re.I)


def _is_secret(key: str) -> bool:
    return bool(_SECRET.search(key)) and not _KEEP.search(key)


#: schemes whose userinfo without a password is a token (``nats://s3cr3t@host``), not a user
_TOKEN_SCHEMES = ("nats://", "tls://")


def redact_value(value: str) -> str:
    """A string with any ``user:password@`` of the URLs in it removed (the user kept), and the
    ``token@`` of a NATS URL."""

    def strip(m: re.Match[str]) -> str:
        scheme, userinfo = m.group("scheme"), m.group("userinfo")
        if ":" not in userinfo:
            return f"{scheme}{REDACTED if scheme.lower() in _TOKEN_SCHEMES else userinfo[:-1]}@"
        return f"{scheme}{userinfo.split(':', 1)[0]}:{REDACTED}@"

    return _URL_USERINFO.sub(strip, value) if "@" in value else value


def _walk(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _walk({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            key = str(key)
            if _is_secret(key) and item not in (None, "", b"") and not isinstance(item, bool):
                out[key] = REDACTED
            else:
                out[key] = _walk(item)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        return [_walk(item) for item in value]
    if isinstance(value, str):
        return redact_value(value)
    if isinstance(value, bytes):
        return REDACTED  # raw bytes in a config are key material
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact_value(str(value))


def redact(config: Any) -> dict[str, Any]:
    """The configuration (``gateway.config.Config``, or any mapping) with every secret removed,
    as plain JSON-able values. Accounts show ``vendor``, ``name``, ``enabled`` and options."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        raw: dict[str, Any] = {}
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            if f.name == "accounts":
                value = [
                    {"vendor": a.vendor, "name": a.name, "enabled": a.enabled, "options": a.options}
                    for a in value
                ]
            raw[f.name] = value
        config = raw
    out = _walk(config)
    if not isinstance(out, dict):
        raise TypeError("redact() takes a configuration (a dataclass or a mapping)")
    return out
