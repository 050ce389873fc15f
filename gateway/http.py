"""``HttpEndpoints``: ``/metrics``, ``/healthz`` and ``/readyz`` on a small aiohttp server.

* ``/metrics`` — Prometheus text format of the metrics registry (``gateway.consumers.metrics``).
* ``/healthz`` — 200 while the process and its event loop run (the handler answering *is* the
  proof). It never depends on the broker: a liveness probe that restarted the gateway during a
  broker outage would throw away its outage buffer and force every vendor to log in again.
* ``/readyz`` — whatever ``readiness()`` says: 200 with its JSON when ready, 503 otherwise (it
  names what is not ready).

Construct, ``await start()`` (binds; ``port`` then holds the bound port, useful with port 0),
``await stop()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["HttpEndpoints", "parse_listen"]


def parse_listen(listen: str) -> tuple[str, int]:
    """``"host:port"`` (``"[::1]:9100"``, ``":9100"`` for every interface) → ``(host, port)``."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port, got {listen!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class HttpEndpoints:
    def __init__(
        self,
        listen: str,
        metrics: CollectorRegistry | None,
        readiness: Callable[[], tuple[bool, dict[str, Any]]],
    ) -> None:
        self.host, self.port = parse_listen(listen)
        self.metrics = metrics
        self.readiness = readiness
        self.started = time.monotonic()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        await site.start()
        self._runner = runner
        server = site._server  # the bound socket tells the real port when 0 was asked for
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.metrics is None:
            return web.Response(status=404, text="metrics are off\n")
        body = generate_latest(self.metrics)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        body = {"status": "alive", "uptime_s": round(time.monotonic() - self.started, 1)}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, detail = self.readiness()
        body = orjson.dumps({"ready": ready, **detail})
        return web.Response(
            status=200 if ready else 503, body=body, content_type="application/json"
        )
