"""API-gateway request signing, as the seed's 3. 加签机制 describes it.

The seed, quoted::

    String stringToSign=
    HTTPMethod + "\\n" + Accept + "\\n" + Content-MD5 + "\\n" + Content-Type + "\\n" +
    Date + "\\n" + Headers + Url

    Headers如果为空不需要添加\\n ... 对参与签名计算的Header的Key按照字典排序后使用 ...
    HeaderKey1 + ":" + HeaderValue1 + "\\n" ...
    URL指Path+Query+Body中Form参数 ... 对Query+Form参数按照字典对Key进行排序 ...
    如果某个参数的Value为空只保留Key参与签名，等号则不需要再加入签名。

Two dialects exist for ``X-Ca-Signature-Headers``: the seed joins the names with ``:``, the
official ``alibabacloud-apigateway-util`` package with ``,``. We *send* ``,`` (what the real
gateway is known to accept from the official SDK) and *read* both, so the emulator accepts either.

The official package (``MOVE_HEADERS``) never signs ``x-ca-signature``,
``x-ca-signature-headers``, ``accept``, ``content-md5``, ``content-type``, ``date``, ``host``,
``token`` and ``user-agent``; ``sign_request`` follows that list so both agree byte for byte, and
lower-cases every header name as that package does (HTTP header names are case-insensitive).

Pure standard library: the runtime never imports the official package (it is a test oracle only).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import Mapping
from typing import Final
from urllib.parse import parse_qsl

__all__ = [
    "FORM_CONTENT_TYPE",
    "UNSIGNED_HEADERS",
    "content_md5",
    "header_names",
    "sign",
    "sign_request",
    "signature_for",
    "string_to_sign",
]

FORM_CONTENT_TYPE: Final = "application/x-www-form-urlencoded"

#: Headers that never take part in the ``Headers`` block (the seed's list plus the official
#: package's ``host``, ``token``, ``user-agent``).
UNSIGNED_HEADERS: Final = frozenset(
    {
        "x-ca-signature",
        "x-ca-signature-headers",
        "accept",
        "content-md5",
        "content-type",
        "date",
        "host",
        "token",
        "user-agent",
    }
)


def content_md5(body: bytes) -> str:
    """``Base64(MD5(body))``; the seed computes it only for non-form bodies."""
    return base64.b64encode(hashlib.md5(body).digest()).decode("ascii")


def header_names(value: str) -> list[str]:
    """Split ``X-Ca-Signature-Headers``: ``,`` (official package) and ``:`` (seed) both work."""
    return [name.strip() for name in value.replace(":", ",").split(",") if name.strip()]


def _lookup(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    low = name.lower()
    for key, val in headers.items():
        if key.lower() == low:
            return val
    return None


def _url(path: str, query: Mapping[str, str] | None, form: Mapping[str, str] | None) -> str:
    params: dict[str, str] = {}
    if query:
        params.update(query)
    if form:
        params.update(form)
    if not params:
        return path
    parts = []
    for key in sorted(params):
        value = params[key]
        parts.append(key if value is None or value == "" else f"{key}={value}")
    return path + "?" + "&".join(parts)


def string_to_sign(
    method: str,
    path: str,
    headers: Mapping[str, str],
    query: Mapping[str, str] | None = None,
    form: Mapping[str, str] | None = None,
) -> str:
    """The string the gateway signs, from the headers named in ``X-Ca-Signature-Headers``.

    Header lookup is case-insensitive; a named header that is missing signs as ``name:``
    (the seed: an empty value keeps the key and the colon).
    """
    accept = _lookup(headers, "accept") or ""
    md5 = _lookup(headers, "content-md5") or ""
    ctype = _lookup(headers, "content-type") or ""
    date = _lookup(headers, "date") or ""
    names = header_names(_lookup(headers, "x-ca-signature-headers") or "")
    block = "".join(f"{name}:{_lookup(headers, name) or ''}\n" for name in sorted(names))
    return f"{method.upper()}\n{accept}\n{md5}\n{ctype}\n{date}\n{block}{_url(path, query, form)}"


def sign(app_secret: str, text: str) -> str:
    """``Base64(HMAC-SHA256(AppSecret, stringToSign))``."""
    digest = hmac.new(app_secret.encode("utf-8"), text.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def _form_params(headers: Mapping[str, str], body: bytes) -> dict[str, str] | None:
    ctype = (_lookup(headers, "content-type") or "").split(";")[0].strip().lower()
    if ctype != FORM_CONTENT_TYPE or not body:
        return None
    return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))


def signature_for(
    app_secret: str,
    method: str,
    path: str,
    headers: Mapping[str, str],
    query: Mapping[str, str] | None = None,
    body: bytes = b"",
) -> tuple[str, str]:
    """What a gateway computes for a received request: ``(signature, string_to_sign)``.

    A form body's parameters join the query in ``Url``, as the seed says.
    """
    text = string_to_sign(method, path, headers, query, _form_params(headers, body))
    return sign(app_secret, text), text


def sign_request(
    app_key: str,
    app_secret: str,
    method: str,
    path: str,
    headers: Mapping[str, str] | None = None,
    query: Mapping[str, str] | None = None,
    body: bytes = b"",
) -> dict[str, str]:
    """Return the complete, signed headers to send (lower-case names).

    ``headers`` are the caller's own (none is fine). They win over the defaults, so callers (and
    tests) may pin ``x-ca-nonce``, ``date`` or ``x-ca-timestamp``. Defaults: ``accept:
    application/json``, ``x-ca-key``, ``x-ca-nonce`` (UUID4), ``x-ca-signaturemethod:
    HmacSHA256``, ``x-ca-timestamp`` (ms) when neither ``date`` nor ``x-ca-timestamp`` was given,
    and for a body ``content-type: application/octet-stream`` (the official package's choice) with
    ``content-md5`` unless the body is a form.
    """
    out: dict[str, str] = {"accept": "application/json"}
    out.update({key.lower(): value for key, value in (headers or {}).items()})
    out["x-ca-key"] = app_key
    out.setdefault("x-ca-nonce", str(uuid.uuid4()))
    out.setdefault("x-ca-signaturemethod", "HmacSHA256")
    if "date" not in out and "x-ca-timestamp" not in out:
        out["x-ca-timestamp"] = str(int(time.time() * 1000))
    if body:
        out.setdefault("content-type", "application/octet-stream")
    form = _form_params(out, body)
    if body and form is None:
        out["content-md5"] = content_md5(body)
    out.pop("x-ca-signature", None)
    names = sorted(key for key in out if key not in UNSIGNED_HEADERS)
    out["x-ca-signature-headers"] = ",".join(names)
    out["x-ca-signature"] = sign(app_secret, string_to_sign(method, path, out, query, form))
    return out
