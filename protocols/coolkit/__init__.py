"""CoolKit / eWeLink (API v2, seed 001, and v1, seed 003): sans-I/O signing, REST, WebSocket, profiles.

- ``sign``: the ``Authorization: Sign`` HMAC and the GET canonical string;
- ``rest``: request builders (login, refresh, family, thing list, dispatch, v1 bodies) and parsers;
- ``ws``: ``userOnline``/``update``/``query`` frames and the per-connection state machine
  (strictly increasing ``sequence``, pending commands, heartbeat decision);
- ``profiles``: ``extra.uiid`` → ``Schema`` and params ↔ normalized properties.

Shared by ``gateway.connectors.coolkit`` and ``gateway.simulators.coolkit``.
"""

from __future__ import annotations

from .profiles import decode_params, encode_params, profile_for, query_names, schema_for
from .rest import (
    RATE_LIMITED,
    Hosts,
    HttpRequest,
    RegionRedirect,
    Thing,
    ThingPager,
    parse_envelope,
)
from .sign import Signer, canonical_query, make_nonce, sign
from .ws import Heartbeat, WsSession

__all__ = [
    "RATE_LIMITED",
    "Heartbeat",
    "Hosts",
    "HttpRequest",
    "RegionRedirect",
    "Signer",
    "Thing",
    "ThingPager",
    "WsSession",
    "canonical_query",
    "decode_params",
    "encode_params",
    "make_nonce",
    "parse_envelope",
    "profile_for",
    "query_names",
    "schema_for",
    "sign",
]
