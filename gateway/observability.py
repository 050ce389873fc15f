"""Watching it run: ``/metrics``, ``/healthz``, ``/readyz``, and zigbee2mqtt's bridge topics.

``attach(gateway)`` builds the parts; the gateway calls ``await obs.start()`` once MQTT is up and
the publisher started (before the accounts start), and ``await obs.stop()`` first thing on
shutdown. The parts, each hanging off the event bus or the publisher, never off a connector:

* ``Metrics`` (gateway/consumers/metrics.py) and ``HttpEndpoints`` (gateway/http.py), only when
  ``[http] listen`` is set;
* ``Readiness``: MQTT up and every running account synced once (ONLINE) or flagged;
* retained ``bridge/info``: version, commit, speedups, event loop, log level and the
  configuration with every secret removed (gateway/redact.py); published at start, after every
  MQTT (re)connect and after a change of options;
* ``bridge/request/options`` ``{"log_level": …}`` (also zigbee2mqtt's
  ``{"options": {"advanced": {"log_level": …}}}``): changes the level now, not persisted;
* ``bridge/logging``: every warning and error of the ``cloud2mqtt`` loggers as JSON, at most
  ``LOG_RATE`` per second; the rest are counted and reported in one line per second.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

import _speedups
from protocols.model import CommandError, CommandResult

from .events import AccountLinkChanged, EventBus, MqttConnected
from .logflags import DEBUG, current_level, refresh, set_level
from .redact import redact

if TYPE_CHECKING:
    from .bridge import BridgeRequests
    from .config import Config
    from .consumers.metrics import Metrics
    from .health import Health
    from .http import HttpEndpoints
    from .mqtt.client import MqttClient
    from .publisher import Publisher
    from .registry import Registry
    from .topics import Topics

__all__ = ["LOG_RATE", "BridgeLogHandler", "Observability", "Readiness", "attach", "build_info"]

log = logging.getLogger("cloud2mqtt.observability")

#: at most this many ``bridge/logging`` messages per second
LOG_RATE = 10
AccountKey = tuple[str, str]


class Gateway(Protocol):
    """The parts of the running gateway observability reads (``gateway.app.Gateway`` is one;
    declared here so that this module does not import the supervisor it is wired into)."""

    config: Config
    bus: EventBus
    mqtt: MqttClient
    registry: Registry
    publisher: Publisher
    health: Health
    bridge: BridgeRequests
    topics: Topics

    def account_keys(self) -> list[tuple[str, str]]: ...

    def cluster_info(self) -> dict[str, Any] | None: ...

    def cluster_stats(self) -> dict[str, Any]: ...


def attach(gateway: Gateway) -> Observability:
    """Build the observability parts for ``gateway`` (nothing starts until ``start()``)."""
    return Observability(gateway)


def _git_commit() -> str | None:
    """The commit of a source checkout (``CLOUD2MQTT_COMMIT`` wins); None for a wheel."""
    env = os.environ.get("CLOUD2MQTT_COMMIT")
    if env:
        return env
    git = Path(__file__).resolve().parent.parent / ".git"
    try:
        if git.is_file():  # a worktree: "gitdir: …"
            git = Path(git.read_text().split(":", 1)[1].strip())
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:12]
        ref = head[5:]
        ref_file = git / ref
        if ref_file.is_file():
            return ref_file.read_text().strip()[:12]
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split(" ", 1)[0][:12]
    except (OSError, IndexError):
        pass
    return None


def build_info() -> dict[str, str]:
    """Version, commit and kernels: the labels of ``cloud2mqtt_build_info``."""
    try:
        version = importlib.metadata.version("cloud2mqtt")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "version": version,
        "commit": _git_commit() or "unknown",
        "speedups": str(_speedups.IMPLEMENTATION),
        "python": platform.python_version(),
    }


class Readiness:
    """``/readyz``: ready while MQTT is up and every running account has synced once (reached
    ONLINE) or been flagged for attention (bad credentials must not keep it unready forever)."""

    def __init__(
        self, bus: EventBus, mqtt: Any, accounts: Callable[[], list[AccountKey]]
    ) -> None:
        self.bus = bus
        self.mqtt = mqtt
        self.accounts = accounts
        self.settled: set[AccountKey] = set()
        self._unsubscribe: Callable[[], None] | None = None

    def start(self) -> None:
        self._unsubscribe = self.bus.subscribe(AccountLinkChanged, self._on_link)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _on_link(self, ev: AccountLinkChanged) -> None:
        d = ev.description
        if d.get("state") == "online" or d.get("attention"):
            self.settled.add((ev.vendor, ev.account))

    def __call__(self) -> tuple[bool, dict[str, Any]]:
        keys = self.accounts()
        pending = sorted(f"{v}/{a}" for v, a in keys if (v, a) not in self.settled)
        connected = bool(self.mqtt.connected)
        detail: dict[str, Any] = {
            "mqtt": "connected" if connected else "disconnected",
            "accounts": len(keys),
            "accounts_synced": len(keys) - len(pending),
        }
        if pending:
            detail["accounts_pending"] = pending[:50]
            if len(pending) > 50:
                detail["accounts_pending_more"] = len(pending) - 50
        return connected and not pending, detail


class BridgeLogHandler(logging.Handler):
    """Warnings and errors to ``bridge/logging`` as JSON, at most ``rate`` per second.

    Messages over the rate are counted; one summary per second says how many were suppressed.
    A record logged from another thread is handed to the loop; a record logged while
    publishing one is dropped (no recursion).
    """

    def __init__(
        self,
        publish: Callable[[bytes], None],
        *,
        rate: int = LOG_RATE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(logging.WARNING)
        self._publish = publish
        self._rate = rate
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._window = -1.0
        self._sent = 0
        self._suppressed = 0
        self._summary: asyncio.TimerHandle | None = None
        self._busy = False

    def emit(self, record: logging.LogRecord) -> None:
        if threading.get_ident() != self._thread:
            try:
                self._loop.call_soon_threadsafe(self._handle_on_loop, record)
            except RuntimeError:  # the loop is closed
                pass
            return
        self._handle_on_loop(record)

    def _handle_on_loop(self, record: logging.LogRecord) -> None:
        if self._busy:
            return
        now = self._clock()
        if now - self._window >= 1.0:
            self._window = now
            self._sent = 0
        if self._sent >= self._rate:
            self._suppressed += 1
            if self._summary is None:
                delay = max(0.0, self._window + 1.0 - now)
                self._summary = self._loop.call_later(delay, self._report_suppressed)
            return
        self._sent += 1
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            message = f"{message} ({type(exc).__name__}: {exc})"
        self._send(
            {
                "level": record.levelname.lower(),
                "message": message,
                "logger": record.name,
                "ts": int(record.created * 1000),
            }
        )

    def _report_suppressed(self) -> None:
        self._summary = None
        n, self._suppressed = self._suppressed, 0
        if n:
            self._send(
                {
                    "level": "warning",
                    "message": f"{n} log message(s) suppressed (more than {self._rate} per second)",
                    "logger": "cloud2mqtt.observability",
                    "ts": time.time_ns() // 1_000_000,
                    "suppressed": n,
                }
            )

    def _send(self, body: dict[str, Any]) -> None:
        self._busy = True
        try:
            self._publish(orjson.dumps(body))
        except Exception:  # logging must never take the caller down
            pass
        finally:
            self._busy = False

    def close(self) -> None:
        if self._summary is not None:
            self._summary.cancel()
            self._summary = None
        super().close()


class Observability:
    """The observability parts of one gateway; see the module docstring."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        http = gateway.config.http
        self.info = build_info()
        self.metrics: Metrics | None = None
        self.http: HttpEndpoints | None = None
        self.readiness = Readiness(gateway.bus, gateway.mqtt, gateway.account_keys)
        if http.listen:
            # imported only when serving: prometheus-client and aiohttp.web cost ~5 MiB
            from .consumers.metrics import Metrics
            from .http import HttpEndpoints

            self.metrics = Metrics(
                bus=gateway.bus,
                health=gateway.health,
                devices=lambda: gateway.registry,
                accounts=gateway.publisher.accounts,
                mqtt=gateway.mqtt,
                account_labels=http.account_labels,
                info={k: v for k, v in self.info.items() if k != "python"},
                cluster=gateway.cluster_stats if gateway.config.cluster is not None else None,
            )
            self.http = HttpEndpoints(http.listen, self.metrics.registry, self.readiness)
        self.log_handler: BridgeLogHandler | None = None
        self._undo: list[Callable[[], None]] = []

    async def start(self) -> None:
        gw = self.gw
        refresh()
        if self.metrics is not None:
            self.metrics.start()
            self._undo.append(self.metrics.stop)
        self.readiness.start()
        self._undo.append(self.readiness.stop)
        self._undo.append(gw.bus.subscribe(MqttConnected, self._on_mqtt_connected))
        self._undo.append(gw.bridge.register("options", self._options))
        topic = gw.topics.bridge("logging")

        def publish_log(payload: bytes) -> None:
            if gw.mqtt.connected:  # log lines must not crowd events out of the outage buffer
                gw.publisher.publish_raw(topic, payload)

        handler = self.log_handler = BridgeLogHandler(publish_log)
        logger = logging.getLogger("cloud2mqtt")
        logger.addHandler(handler)

        def remove_handler() -> None:
            logger.removeHandler(handler)
            handler.close()

        self._undo.append(remove_handler)
        if self.http is not None:
            await self.http.start()
            log.info("HTTP endpoints on %s: /metrics /healthz /readyz", self.http.url)
        self.publish_info()
        if DEBUG.on:
            log.debug("subscribed to %s", ", ".join(gw.topics.subscriptions()))

    async def stop(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo = []
        if self.http is not None:
            await self.http.stop()

    # ------------------------------------------------------------------ bridge/info

    def describe(self) -> dict[str, Any]:
        """``bridge/info``, in zigbee2mqtt's spirit: what runs, how, and with which config."""
        info = {
            **self.info,
            "loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
            "log_level": current_level(),
            "http": self.http.url if self.http is not None else None,
            "config": redact(self.gw.config),
        }
        cluster = self.gw.cluster_info()
        if cluster is not None:  # cluster mode: which instance runs which account
            info["cluster"] = cluster
        return info

    def publish_info(self) -> None:
        self.gw.publisher.publish_info(self.describe())

    def _on_mqtt_connected(self, ev: MqttConnected) -> None:
        if DEBUG.on:
            log.debug("MQTT link up (%s); republishing retained topics", self.gw.config.mqtt.url)
        self.publish_info()

    # ------------------------------------------------------------------ bridge/request/options

    async def _options(self, request: dict[str, Any]) -> CommandResult:
        """``{"log_level": "debug"}`` (or zigbee2mqtt's ``{"options": {"advanced": {…}}}``):
        applied now, not persisted; answered with the options as they now are."""
        options = request.get("options", request)
        if isinstance(options, dict) and isinstance(options.get("advanced"), dict):
            options = options["advanced"]
        if not isinstance(options, dict) or set(options) - {"log_level"} or not options:
            raise CommandError("invalid", 'known options: "log_level" (debug, info, warning, error)')
        level = options["log_level"]
        try:
            set_level(level if isinstance(level, str) else "")
        except ValueError as exc:
            raise CommandError("invalid", str(exc)) from None
        log.info("log level set to %s (not persisted: the configuration still says %s)",
                 current_level(), self.gw.config.gateway.log_level)  # fmt: skip
        self.publish_info()
        return CommandResult.ok({"options": {"log_level": current_level()}, "restart_required": False})
