"""An emulated CoolKit / eWeLink cloud (API v2, seed 001, and v1, seed 003), for the demo and the tests.

It serves what the seeds describe, *as the server would*, with the shared codec
(``protocols.coolkit``):

- HTTP (aiohttp) on ``--port``, every region under a path prefix: ``http://host:port/{region}``
  stands for ``https://{region}-apia.coolkit.cc`` (v2), ``https://{region}-dispa.coolkit.cc``
  and ``https://{region}-api.coolkit.cc:8080`` (v1) alike. Regions: ``cn as us eu test``.
- WebSocket (websockets) on ``--ws-port``; ``/dispatch/app`` hands out ``{domain, port}`` of it.

What it checks:

- Every ``Sign`` signature (v2: HMAC of the exact body bytes; v1 GET: of the sorted ``k=v&…``
  canonical string), the ``X-CK-Appid`` of user endpoints, the v1 ``appid/nonce/ts/version``
  fields, and every ``Bearer`` token. Codes: bad APPID or signature ``406`` (seed FAQ: "failed
  to pass authorization"), missing fields ``400``, unknown/invalidated ``at`` ``401``, expired
  ``at`` ``402``, unknown ``rt`` ``405`` (v2, the field"s "can"t find the account with this rt")
  or ``402`` (v1: rt失效), wrong password ``10001``/v1 ``401``, no such user ``10003``/v1 ``404``,
  wrong region ``10004`` + ``data.region`` / v1 ``301`` + ``region``. A token works only in the
  region of its account (``401`` elsewhere).
- One live session per account and app: a login issues new ``at``/``rt`` and invalidates the old
  ones; sockets opened with them get ``{"error":406,…}`` and are closed ("session taken").
- ``userOnline``: ``at``, ``apikey``, ``appid``, ``nonce``, ``userAgent``, ``sequence`` required
  (``ts`` and ``version`` optional: the official ``ewelink-api-next`` omits them and the live
  server accepts that); the reply"s heartbeat flag is ``hb`` for v2 sessions and ``hbl`` for v1.
- Heartbeats: a socket silent for ``hb_interval + hb_grace`` seconds is dropped (the field sees
  ~160 s with ``hbInterval`` 145); ``ping`` → ``pong``.
- Commands: ``sequence`` must increase strictly per connection (else ``400``); the ``apikey``
  must be the owner"s, plus ``selfApikey`` for a shared device (else ``406``); an offline device
  answers ``504`` (seed: "the device does not respond (offline or command error)").
- Rate rules, per client IP, as the seed states them: ≥ ``rate_min_interval`` (0.5 s) between
  calls to the same interface, ≤ ``rate_max_calls`` (300) per ``rate_window`` (300 s), and no
  ``userOnline`` for the same account within ``user_online_interval`` seconds. The seed names no
  error code, so we answer ``429`` (``protocols.coolkit.rest.RATE_LIMITED``) in the JSON
  ``error`` field (HTTP 200 on REST; the handshake reply, then close, on the WebSocket). Every
  violation is counted in ``violations``.
- Thing list paging: ``num`` default 30, ``0`` = all, ``beginIndex`` default -9999999; asking for
  more than 30 at once when there are more than 30 things fails with ``500`` (the seed"s warning).

Misbehaviour, in-process or by ``POST /_control/<fault>`` with a JSON body:
``drop`` (abort every socket), ``stall`` (current sockets go silent: no pong, no replies, no
pushes), ``garble`` ``{"count":1}`` (send unparsable frames now), ``never_answer`` ``{"count":1}``
(commands get no reply), ``fail_504`` ``{"count":1}``, ``expire_tokens``, ``kick``
``{"email":…}`` (another login takes the session), ``push`` ``{"deviceid","params"}``,
``set_online`` ``{"deviceid","online"}``, ``reset``.

Layout: ``model`` (users, devices, groups, sessions, the demo population), ``http_api`` (REST v2
and v1, signatures, sessions, rate rules), ``push`` (the WebSocket), ``faults`` (``/_control``),
``cloud`` (``CoolkitCloud`` assembled from them) and ``cli``.
"""

from __future__ import annotations

from .cli import add_arguments, demo_cloud, serve
from .cloud import CoolkitCloud, CoolkitOptions

__all__ = ["CoolkitCloud", "CoolkitOptions", "add_arguments", "demo_cloud", "serve"]
