"""The supervisor: one MQTT link, one HTTP session, one connector task per account.

Start-up: connect MQTT (LWT ``bridge/state`` offline, retained) → publish ``bridge/state``
online → subscribe to command topics → start every account's connector. A connector whose
``run()`` dies is logged and restarted with backoff; it never takes the others down.

After a broker reconnect every retained topic is published again (the broker may have lost
them, and a clean session lost our subscriptions, which the client renews). On ``stop()`` the
gateway publishes ``bridge/state`` offline itself, because a clean DISCONNECT fires no LWT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import orjson

import _speedups
from protocols.model import CommandError, CommandResult, DeviceEvent

from .backoff import Backoff
from .commands import CommandHandler
from .config import Config
from .connectors import connector_class
from .connectors.base import Connector
from .context import AccountLink, now_ms
from .health import Health
from .memory import trim_heap
from .mqtt.client import MqttClient, Will
from .mqtt.codec import encode_props
from .registry import DeviceRecord, Registry
from .tokens import TokenStore
from .topics import Topics

__all__ = ["Gateway", "shard_of"]

log = logging.getLogger("cloud2mqtt")

JSON_PROPS = encode_props({"content_type": "application/json"})
_dumps = orjson.dumps


def shard_of(vendor: str, account: str, shards: int) -> int:
    """Stable account → shard assignment (crc32, not ``hash()``, which is salted per process)."""
    return zlib.crc32(f"{vendor}/{account}".encode()) % shards


class Gateway:
    def __init__(self, config: Config, *, shard: tuple[int, int] | None = None) -> None:
        self.config = config
        self.topics = Topics(config.gateway.base_topic)
        self.registry = Registry(self.topics)
        self.health = Health()
        self.tokens = TokenStore(Path(config.gateway.state_dir) / "tokens.json")
        self.commands = CommandHandler(self)
        self.links: dict[tuple[str, str], AccountLink] = {}
        self.connectors: dict[tuple[str, str], Connector] = {}
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._background: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None
        self._qos = config.mqtt.qos
        self._per_prop = config.gateway.per_property_topics
        self._devices_dirty: asyncio.TimerHandle | None = None
        self._accounts_dirty: asyncio.TimerHandle | None = None
        self._devices_cost = 0.0  # seconds the last bridge/devices publish took
        self._accounts_cost = 0.0
        self._connecting = 0  # accounts connecting at the last bridge/accounts publish
        self.accounts = [
            a
            for a in config.accounts
            if a.enabled and (shard is None or shard_of(a.vendor, a.name, shard[1]) == shard[0])
        ]
        m = config.mqtt
        self.mqtt = MqttClient(
            m.host,
            m.port,
            client_id=m.client_id,
            username=m.username,
            password=m.password,
            ssl=m.ssl_context(),
            server_hostname=m.host,
            keepalive=m.keepalive,
            protocol=m.protocol,
            will=Will(self.topics.bridge("state"), b'{"state":"offline"}', 1, True),
            on_message=self.commands.on_message,
            on_connect=self._on_mqtt_connect,
        )
        self._started = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.mqtt.connect()
        await self.mqtt.subscribe([(t, 1) for t in self.topics.subscriptions()])
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=30),
            connector=aiohttp.TCPConnector(limit=200, ttl_dns_cache=300),
        )
        for account in self.accounts:
            key = (account.vendor, account.name)
            link = AccountLink(self, account.vendor, account.name)
            self.links[key] = link
            cls = connector_class(account.vendor)
            self.connectors[key] = cls(account.options, link, self._http)
            self._tasks[key] = asyncio.create_task(
                self._run_connector(key), name=f"{key[0]}/{key[1]}"
            )
        self._background.append(asyncio.create_task(self._health_loop(), name="health"))
        self._started = True
        self.accounts_changed()
        self.devices_changed()
        log.info(
            "cloud2mqtt started: %d account(s), MQTT %s, speedups=%s",
            len(self.accounts),
            self.config.mqtt.url,
            _speedups.IMPLEMENTATION,
        )

    async def _run_connector(self, key: tuple[str, str]) -> None:
        link = self.links[key]
        backoff = Backoff(1.0, 300.0)
        while True:
            connector = self.connectors[key]
            try:
                await connector.run()
                link.log.warning("connector returned; restarting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                link.log.exception("connector crashed: %s", exc)
                link.link("backoff", f"internal error: {type(exc).__name__}")
            await asyncio.sleep(backoff.next())

    async def stop(self) -> None:
        for task in self._background:
            task.cancel()
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._background, *self._tasks.values(), return_exceptions=True)
        await self.commands.cancel_all()
        for key, connector in self.connectors.items():
            try:
                await asyncio.wait_for(connector.close(), 5)
            except Exception as exc:
                self.links[key].log.warning("close failed: %s", exc)
            self.links[key].link("stopped")
        for handle in (self._devices_dirty, self._accounts_dirty):
            if handle is not None:
                handle.cancel()
        if self.mqtt.connected:
            self._publish_accounts()
            self.mqtt.publish(
                self.topics.bridge("state"), b'{"state":"offline"}', 1, True, JSON_PROPS
            )
            await self.mqtt.flush(3)
        await self.mqtt.disconnect()
        if self._http is not None:
            await self._http.close()
        self.tokens.flush()

    async def restart_account(self, key: tuple[str, str]) -> None:
        task = self._tasks.get(key)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._tasks[key] = asyncio.create_task(self._run_connector(key), name=f"{key[0]}/{key[1]}")

    # ------------------------------------------------------------------ publishing

    def publish_raw(self, topic: str | bytes, payload: bytes, retain: bool = False) -> None:
        self.health.totals["published"] += 1
        self.mqtt.publish(topic, payload, self._qos, retain, JSON_PROPS)

    def publish_state(self, rec: DeviceRecord, changed: dict[str, Any] | None = None) -> None:
        state = rec.state
        payload = _dumps({**state, "last_seen": rec.last_seen})
        self.health.totals["published"] += 1
        self.mqtt.publish(rec.topic_bytes, payload, self._qos, True, JSON_PROPS)
        if self._per_prop:
            for key in changed if changed is not None else state:
                topic = rec.prop_topics.get(key)
                if topic is None:
                    topic = rec.prop_topics[key] = self.topics.prop(rec.topic, key).encode()
                self.mqtt.publish(topic, _dumps(state[key]), self._qos, True, JSON_PROPS)

    def publish_availability(self, rec: DeviceRecord) -> None:
        self.publish_raw(
            self.topics.availability(rec.topic), _dumps(rec.availability_payload()), retain=True
        )

    def publish_event(self, rec: DeviceRecord, ev: DeviceEvent) -> None:
        payload = _dumps(
            {"event": ev.event_id, "level": ev.level, "params": ev.params, "ts": ev.ts_ms}
        )
        self.publish_raw(self.topics.event(rec.topic), payload)

    def remove_device(self, rec: DeviceRecord) -> None:
        """A device vanished from its account: clear its retained topics, tell bridge/event."""
        self.registry.remove(rec)
        for topic in (rec.topic, self.topics.availability(rec.topic), *rec.prop_topics.values()):
            self.mqtt.publish(topic, b"", 1, True)
        self.bridge_event(
            "device_removed",
            vendor=rec.vendor,
            account=rec.account,
            device=rec.device,
            topic=rec.topic,
        )
        self.devices_changed()

    def bridge_event(self, kind: str, **fields: Any) -> None:
        self.publish_raw(
            self.topics.bridge("event"), _dumps({"type": kind, "ts": now_ms(), **fields})
        )

    # bridge/devices and bridge/accounts describe *every* device/account, so publishing them is
    # O(N); with thousands of accounts starting at once each change would republish them all
    # (O(N^2) at start-up: 10,000 Tencent accounts took minutes of one core). The debounce delay
    # therefore grows with the cost of the last publish: at most ~10% of the loop goes to them.

    def devices_changed(self) -> None:
        if self._started and self._devices_dirty is None:
            delay = max(0.2, self._devices_cost * 10)
            self._devices_dirty = self._loop.call_later(delay, self._publish_devices)

    def accounts_changed(self) -> None:
        if self._started and self._accounts_dirty is None:
            delay = max(0.05, self._accounts_cost * 10)
            self._accounts_dirty = self._loop.call_later(delay, self._publish_accounts)

    def _publish_devices(self) -> None:
        t0 = time.perf_counter()
        self._devices_dirty = None
        devices = sorted((rec.describe() for rec in self.registry), key=lambda d: d["topic"])
        self.publish_raw(self.topics.bridge("devices"), _dumps(devices), retain=True)
        self._devices_cost = time.perf_counter() - t0

    def _publish_accounts(self) -> None:
        t0 = time.perf_counter()
        self._accounts_dirty = None
        accounts = [link.describe() for link in self.links.values()]
        self.publish_raw(self.topics.bridge("accounts"), _dumps(accounts), retain=True)
        self._accounts_cost = time.perf_counter() - t0
        connecting = sum(1 for a in accounts if a["state"] == "connecting")
        if self._connecting > 16 and connecting == 0:
            # A burst of (re)connects just settled: give its garbage back (gateway/memory.py).
            self._loop.call_later(1.0, trim_heap)
        self._connecting = max(self._connecting, connecting) if connecting else 0

    def health_snapshot(self) -> dict[str, Any]:
        return self.health.snapshot(
            {
                "devices": len(self.registry),
                "accounts": {
                    "total": len(self.links),
                    "online": sum(1 for link in self.links.values() if link.link_state == "online"),
                },
                "mqtt": {
                    "published": self.mqtt.published,
                    "dropped": self.mqtt.dropped,
                    "unacked": self.mqtt.unacked,
                },
                "speedups": _speedups.IMPLEMENTATION,
                "pid": os.getpid(),
            }
        )

    def _publish_health(self) -> None:
        self.publish_raw(self.topics.bridge("health"), _dumps(self.health_snapshot()), retain=True)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.gateway.health_interval)
            self._publish_health()

    async def _on_mqtt_connect(self) -> None:
        """Every (re)connect: announce ourselves and republish every retained topic."""
        self.mqtt.publish(self.topics.bridge("state"), b'{"state":"online"}', 1, True, JSON_PROPS)
        if not self._started:
            return
        for rec in self.registry:
            if rec.state:
                self.publish_state(rec)
            if rec.online is not None:
                self.publish_availability(rec)
        self._publish_devices()
        self._publish_accounts()
        self._publish_health()

    # ------------------------------------------------------------------ bridge requests

    async def bridge_request(self, command: str, request: dict[str, Any]) -> CommandResult:
        if command == "health":
            return CommandResult.ok(self.health_snapshot())
        if command == "devices":
            return CommandResult.ok({"devices": [rec.describe() for rec in self.registry]})
        if command == "accounts":
            return CommandResult.ok({"accounts": [link.describe() for link in self.links.values()]})
        key = self._account_key(request)
        if command == "resync":
            await self.restart_account(key)
            return CommandResult.ok({"account": key[1], "vendor": key[0]})
        return await self.connectors[key].request(command, request)

    def _account_key(self, request: dict[str, Any]) -> tuple[str, str]:
        account = request.get("account")
        vendor = request.get("vendor")
        if not isinstance(account, str):
            raise CommandError("invalid", '"account" must name a configured account')
        matches = [
            k for k in self.connectors if k[1] == account and (vendor is None or k[0] == vendor)
        ]
        if not matches:
            raise CommandError("invalid", f"unknown account {account!r}")
        if len(matches) > 1:
            raise CommandError(
                "invalid", f'account {account!r} exists for several vendors: add "vendor"'
            )
        return matches[0]

    # ------------------------------------------------------------------ running as a service

    async def run_until_stopped(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            with contextlib.suppress(Exception):
                await self.stop()
