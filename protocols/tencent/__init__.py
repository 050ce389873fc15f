"""Tencent IoT Explorer application side (seed 002), sans I/O.

- ``sign``: the ``appapi`` HMAC-SHA1 signature;
- ``api``: ``appapi``/``tokenapi`` request bodies and response parsers, error mapping;
- ``ws``: the long connection's frames (``ActivePush``, trace heartbeat, ``DeviceChange`` pushes);
- ``push``: the hot rules of a push (``Payload`` decode, ``Time``, the report fast path), each
  with its compiled twin in ``_speedups._tencent``;
- ``template``: data templates (物模型) → ``Schema``, and command values back to Tencent's form.

The connector (``gateway.connectors.tencent``) and the emulator (``gateway.simulators.tencent``)
are both thin asyncio shells around these modules.
"""

from __future__ import annotations

from .sign import canonical_string, js_string, sign, verify
from .template import denormalize, denormalize_value, parse_template, schema_from_template

__all__ = [
    "canonical_string",
    "denormalize",
    "denormalize_value",
    "js_string",
    "parse_template",
    "schema_from_template",
    "sign",
    "verify",
]
