"""The supervisor: wiring only. Build the parts, start them, run the accounts, stop them.

Wiring (each part knows only what it is handed; nothing calls back up)::

    MqttClient ◀── Publisher ◀── bus ◀── Registry ◀── AccountLink ◀── Connector (one per account)
        │                                                                  ▲
        └── CommandHandler ──(validate)── connector lookup ────────────────┘
                    └── BridgeRequests ── AccountControl (this class)

Start-up: connect MQTT (LWT ``bridge/state`` offline, retained) → the publisher announces
``bridge/state`` online → subscribe to command topics → start every account. A connector whose
``run()`` dies is logged and restarted with backoff; it never takes the others down.

Accounts are started and stopped one at a time (``start_account`` / ``stop_account``), which is
what a resync does and what cluster mode does when an account's ownership moves: with a
``[cluster]`` section the gateway starts no account itself; its ``Cluster`` (gateway/cluster/,
imported only then) starts the accounts of the slots this instance leases and stops them when
it loses a slot, and the vendor tokens live in NATS instead of ``tokens.json``.

On ``stop()`` the publisher says goodbye (``bridge/state`` offline) itself, because a clean
DISCONNECT fires no LWT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

import _speedups

from .backoff import Backoff
from .bridge import BridgeRequests
from .commands import CommandHandler
from .config import AccountConfig, Config, ensure_state_dir
from .connectors.base import Connector
from .connectors.session import Session
from .consumers.homeassistant import HomeAssistantDiscovery, HomeAssistantSettings
from .events import EventBus, MqttConnected
from .health import Health
from .instances import KINDS, InstanceSnapshots
from .link import AccountLink, LinkState
from .mqtt.client import MqttClient, Will
from .mqtt.topic import check_publish_topic
from .observability import attach
from .presence import Presence
from .publisher import JSON_PROPS, OFFLINE, ONLINE, Publisher
from .rates import LocalPacer
from .registry import Registry
from .tokens import TokenStore
from .topics import Topics
from .vendors import connector_class

if TYPE_CHECKING:
    from .cluster import Cluster

__all__ = ["Gateway"]

log = logging.getLogger("cloud2mqtt")

AccountKey = tuple[str, str]


class _Account:
    """One running account: its config, link, connector and supervising task."""

    __slots__ = ("config", "connector", "link", "task")

    def __init__(self, config: AccountConfig, link: AccountLink, connector: Connector) -> None:
        self.config = config
        self.link = link
        self.connector = connector
        self.task: asyncio.Task[None] | None = None


class Gateway:
    def __init__(
        self, config: Config, *, tokens: TokenStore | None = None, strict_claim: bool = False
    ) -> None:
        """``tokens``: where vendor tokens persist (default: ``state_dir/tokens.json``; cluster
        mode keeps them elsewhere). ``strict_claim``: also refuse a base topic whose
        ``bridge/state`` says online without an instance announcement (the demo). Each
        account's connector class is the one that parsed its options (``AccountConfig.connector``)."""
        self.config = config
        self._strict_claim = strict_claim
        self.topics = Topics(config.gateway.base_topic)
        self.bus = EventBus()
        self.registry = Registry(self.topics, self.bus)
        self.health = Health()
        self.accounts = [a for a in config.accounts if a.enabled]
        #: cluster mode: which accounts run here is the slot leases' call (gateway/cluster/)
        self.cluster: Cluster | None = None
        #: the rate model: every vendor call of every account takes its slot here
        self.pacer = LocalPacer(config.rates)
        self.pacer.on_waiting = self._on_pacing
        if config.cluster is not None:
            self.pacer.raise_after = config.cluster.lease_ttl  # sharing by demand: rates.py
            from .cluster import Cluster  # nats-py is loaded in cluster mode only

            self.cluster = Cluster(
                config.cluster,
                self.accounts,
                start_account=self.start_account,
                stop_account=self.stop_account,
                on_change=self._on_cluster_change,
                on_cut_off=lambda _: self.publisher.announce(),
                # one egress IP: the vendors' per-IP budgets are shared by demand (rates.py)
                pacer=self.pacer if config.cluster.shared_egress else None,
                command_timeout=config.gateway.command_timeout,
            )
            tokens = tokens or self.cluster.tokens
        self.tokens = tokens or TokenStore(Path(config.gateway.state_dir) / "tokens.json")
        self._running: dict[AccountKey, _Account] = {}
        self._background: list[asyncio.Task[Any]] = []
        self._http: aiohttp.ClientSession | None = None
        m = config.mqtt
        link_settings: dict[str, Any] = {
            "host": m.host,
            "port": m.port,
            # cluster mode: the instances share the broker and base topic, not a client id
            "client_id": m.client_id if self.cluster is None
            else f"{m.client_id}-{config.gateway.instance_id}",
            "username": m.username,
            "password": m.password,
            "ssl": m.ssl_context(),
            "server_hostname": m.host,
            "keepalive": m.keepalive,
            "protocol": m.protocol,
        }
        self.presence = Presence(self.topics.base, config.gateway.instance_id, **link_settings)
        self.mqtt = MqttClient(
            **link_settings,
            will=Will(self.topics.bridge("state"), OFFLINE, 1, True),
            on_message=self._on_message,
            on_connect=self._on_mqtt_connect,
            buffer_size=m.buffer_size,
        )
        self.publisher = Publisher(
            self.mqtt,
            self.topics,
            self.registry,
            self.bus,
            self.health,
            qos=m.qos,
            per_property_topics=config.gateway.per_property_topics,
            stats=lambda: {"mqtt": self.mqtt.stats()},
            others_serve=lambda: self.cluster is not None and self.cluster.others_serve(),
            cut_off=lambda: self.cluster is not None and self.cluster.cut_off(),
            cluster=self._instance_snapshots(),
        )
        self.bridge = BridgeRequests(self.publisher, self.registry, self)
        self.commands = CommandHandler(
            topics=self.topics,
            registry=self.registry,
            publisher=self.publisher,
            health=self.health,
            connector=self.connector,
            bridge=self.bridge,
            timeout=config.gateway.command_timeout,
            check_topic=check_publish_topic,
        )
        if self.cluster is not None:
            self.cluster.router.serve(self.commands)  # commands it does not run go to the owner
        ha = config.homeassistant
        self._routes: dict[str, Callable[[str, bytes], None]] = {}
        #: routes whose filter has a ``+`` (cluster mode: the instances' snapshots)
        self._wildcard_routes: list[tuple[list[str], Callable[[str, bytes], None]]] = []
        self.homeassistant = HomeAssistantDiscovery(
            self.bus,
            HomeAssistantSettings(
                enabled=ha.enabled,
                discovery="entity" if ha.discovery == "entity" else "device",
                prefix=ha.prefix,
                status_topic=ha.status_topic,
            ),
            bridge_state_topic=self.topics.bridge("state"),
            publish=self.mqtt.publish,
            subscribe=self._subscribe_route,
            state_file=Path(config.gateway.state_dir) / "homeassistant.json",
            devices=lambda: iter(self.registry),
        )
        self.observability = attach(self)  # /metrics, /healthz, /readyz, bridge/info, logging

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start everything and return; the broker need not be up: the MQTT client keeps
        connecting in the background (one log line per kind of failure) while the vendor side
        runs, and what happens meanwhile waits in its outage buffer.

        Raises ``InstanceConflict`` (before touching the main MQTT session) when another live
        instance serves the same broker and base topic, and ``ConfigError`` when the state
        directory is unusable.
        """
        ensure_state_dir(self.config.gateway.state_dir)
        await self.presence.claim(strict=self._strict_claim, shared=self.cluster is not None)
        self.mqtt.start()
        await self.mqtt.subscribe([(t, 1) for t in self._command_filters()])
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=30),
            connector=aiohttp.TCPConnector(limit=200, ttl_dns_cache=300),
        )
        self.publisher.start()
        self.homeassistant.start()
        await self.observability.start()
        if self.cluster is not None:
            # A peer that dies sets bridge/state offline by its will while this one serves on:
            # put it back (the flap lasts one round trip).
            self._subscribe_route(self.topics.bridge("state"), self._on_bridge_state)
            # every instance's own bridge/accounts, bridge/devices and bridge/health: merged
            for kind in KINDS:
                self._subscribe_route(
                    self.topics.bridge(f"instances/+/{kind}"), self.publisher.on_instance_snapshot
                )
            await self.cluster.start()  # starts the accounts of the slots it gains
        else:
            for account in self.accounts:
                self.start_account(account)
        self._background.append(asyncio.create_task(self._health_loop(), name="health"))
        self._background.append(asyncio.create_task(self._budget_loop(), name="budgets"))
        log.info(
            "cloud2mqtt started: %d account(s), MQTT %s, speedups=%s",
            len(self.accounts),
            self.config.mqtt.url,
            _speedups.IMPLEMENTATION,
        )

    async def stop(self, *, leave_no_trace: bool = False) -> None:
        """Stop every account, say goodbye on MQTT and disconnect. ``leave_no_trace`` clears
        every retained topic the gateway wrote instead of leaving them (the demo)."""
        await self.observability.stop()
        # Take no new command (in cluster mode the broker now gives them to the other
        # instances), and answer the ones in flight before their accounts stop.
        if self.mqtt.connected:
            with contextlib.suppress(TimeoutError):
                await self.mqtt.unsubscribe(self._command_filters(), timeout=2.0)
        await self.commands.drain(self.config.gateway.command_timeout + 1.0)
        if self.cluster is not None:
            # stop this instance's accounts and free its slots: the others take over at once
            await self.cluster.stop()
        self.homeassistant.stop()
        if leave_no_trace:
            self.homeassistant.withdraw()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        tasks = [a.task for a in self._running.values() if a.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.commands.cancel_all()
        await asyncio.gather(*(self._close(key) for key in list(self._running)))
        self.publisher.stop()
        if self.mqtt.connected:
            self.publisher.goodbye(leave_no_trace=leave_no_trace)
            await self.mqtt.flush(3)
        await self.mqtt.disconnect()
        await self.presence.release(leave_no_trace=leave_no_trace)
        if self._http is not None:
            await self._http.close()
        self.tokens.flush()

    async def run_until_stopped(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            with contextlib.suppress(Exception):
                await self.stop()

    # ------------------------------------------------------------------ accounts

    def start_account(self, account: AccountConfig) -> None:
        """Start one account: its link, its connector and the task that supervises it."""
        key = (account.vendor, account.name)
        if key in self._running:
            raise ValueError(f"account {key[0]}/{key[1]} is already running")
        assert self._http is not None, "start() first"
        link = AccountLink(
            account.vendor,
            account.name,
            registry=self.registry,
            bus=self.bus,
            health=self.health,
            tokens=self.tokens.slot(account.vendor, account.name),
            flow=self.mqtt,
            offline_grace=self.config.gateway.offline_grace,
        )
        cls = account.connector or connector_class(account.vendor)
        connector = cls(account.options, link, self._http)
        if isinstance(connector, Session):
            connector.use_pacer(self.pacer)
        link.budget = lambda: self.pacer.budget(account.vendor, account.name)
        running = self._running[key] = _Account(account, link, connector)
        running.task = asyncio.create_task(self._supervise(running), name=f"{key[0]}/{key[1]}")
        link.link(LinkState.CONNECTING)

    async def stop_account(self, key: AccountKey, *, close_timeout: float = 5.0) -> None:
        """Stop one account: cancel its session, let the connector leave cleanly (for at most
        ``close_timeout`` seconds: cluster self-fencing gives less), forget it."""
        running = self._running.get(key)
        if running is None:
            return
        if running.task is not None:
            running.task.cancel()
            await asyncio.gather(running.task, return_exceptions=True)
        await self._close(key, close_timeout)
        del self._running[key]

    async def restart_account(self, key: AccountKey) -> None:
        """Run a fresh session for the account (``bridge/request/resync``)."""
        running = self._running[key]
        await self.stop_account(key)
        self.start_account(running.config)

    def account_keys(self) -> list[AccountKey]:
        return list(self._running)

    def cluster_info(self) -> dict[str, Any] | None:
        """``bridge/info``'s ``cluster`` (who runs which account), or None without a cluster."""
        return self.cluster.describe() if self.cluster is not None else None

    def cluster_stats(self) -> dict[str, Any]:
        """Cluster mode's numbers for ``/metrics`` (``Cluster.stats``); only asked with one."""
        assert self.cluster is not None, "cluster mode only"
        return self.cluster.stats()

    def _instance_snapshots(self) -> InstanceSnapshots | None:
        """Cluster mode: the instances' snapshots that ``bridge/accounts|devices`` merge."""
        cluster = self.cluster
        if cluster is None:
            return None
        return InstanceSnapshots(
            cluster.instance_id, cluster.owner_lookup, cluster.serving, live=cluster.live
        )

    def _on_cluster_change(self) -> None:
        self.observability.publish_info()
        self.publisher.snapshots_changed()  # the merge keeps each owner's accounts, live health

    def connector(self, key: AccountKey) -> Connector | None:
        running = self._running.get(key)
        return running.connector if running is not None else None

    def link(self, key: AccountKey) -> AccountLink | None:
        running = self._running.get(key)
        return running.link if running is not None else None

    async def _close(self, key: AccountKey, timeout: float = 5.0) -> None:
        running = self._running[key]
        try:
            async with asyncio.timeout(timeout):
                await running.connector.close()
        except Exception as exc:
            running.link.log.warning("close failed: %s", exc)
        running.link.link(LinkState.STOPPED)

    async def _supervise(self, running: _Account) -> None:
        link = running.link
        backoff = Backoff(1.0, 300.0)
        while True:
            try:
                await running.connector.run()
                link.log.warning("connector returned; restarting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                link.log.exception("connector crashed: %s", exc)
                link.link(LinkState.BACKOFF, f"internal error: {type(exc).__name__}")
            await asyncio.sleep(backoff.next())

    # ------------------------------------------------------------------ MQTT side

    def _on_message(self, topic: str, payload: bytes, props: dict[str, Any]) -> None:
        route = self._routes.get(topic)
        if route is None and self._wildcard_routes:
            levels = topic.split("/")
            route = next((cb for f, cb in self._wildcard_routes if _matches(f, levels)), None)
        if route is not None:
            route(topic, payload)
            return
        self.commands.on_message(topic, payload, props)

    def _on_bridge_state(self, topic: str, payload: bytes) -> None:
        """Cluster mode: ``bridge/state`` went offline (a peer's will) while this instance runs."""
        serving = self.cluster is not None and self.cluster.serving()
        if payload == OFFLINE and serving and self.mqtt.connected:
            log.info("cluster: a peer left bridge/state offline; this instance still serves")
            self.mqtt.publish(topic, ONLINE, 1, True, JSON_PROPS)

    def _command_filters(self) -> list[str]:
        """The command topics; in cluster mode one MQTT 5 shared subscription of every instance
        (the broker hands each command to one of them; gateway/cluster/routing.py)."""
        filters = self.topics.subscriptions()
        if self.cluster is None:
            return filters
        from .cluster.routing import share_group

        group = share_group(self.topics.base)
        return [f"$share/{group}/{f}" for f in filters]

    def _subscribe_route(self, topic: str, callback: Callable[[str, bytes], None]) -> None:
        """A consumer's own subscription (Home Assistant's status topic) on the main link;
        ``topic`` may be a filter with ``+`` levels."""
        if "+" in topic:
            self._wildcard_routes.append((topic.split("/"), callback))
        else:
            self._routes[topic] = callback
        task = asyncio.get_running_loop().create_task(self.mqtt.subscribe([(topic, 1)]))
        self._background.append(task)

    async def _on_mqtt_connect(self) -> None:
        """Every (re)connect: announce ourselves and republish every retained topic."""
        self.bus.emit(MqttConnected())

    def _on_pacing(self, vendor: str, account: str, waiting: bool) -> None:
        link = self.link((vendor, account))
        if link is not None:
            link.pacing(waiting)

    async def _budget_loop(self) -> None:
        """Refresh the ``budget`` of every ``bridge/accounts`` entry whose account made calls
        since the last round (the publisher debounces the snapshot)."""
        seen: dict[AccountKey, int] = {}
        while True:
            await asyncio.sleep(self.config.gateway.health_interval)
            for key, running in list(self._running.items()):
                made = self.pacer.calls_made(*key)
                if seen.get(key) != made:
                    seen[key] = made
                    running.link.republish()

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.gateway.health_interval)
            self.publisher.publish_health()


def _matches(filter_levels: list[str], levels: list[str]) -> bool:
    """Whether a topic (split into levels) matches a filter whose wildcards are ``+`` only."""
    return len(filter_levels) == len(levels) and all(
        f in ("+", t) for f, t in zip(filter_levels, levels, strict=True)
    )
