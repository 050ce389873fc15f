"""The publisher: registry changes → topics → MQTT, and the ``bridge/*`` snapshots.

Theory of operation
-------------------
The publisher is the first consumer of the event bus (``gateway.events``). Everything the
topic tree shows is written here and nowhere else:

====================  =====================================================================
event                 what is published
====================  =====================================================================
DeviceAdded           ``bridge/event`` ``device_added``; ``bridge/devices`` (debounced)
SchemaChanged         ``bridge/devices`` (debounced)
DeviceRemoved         empty retained state, availability and per-property topics;
                      ``bridge/event`` ``device_removed``; ``bridge/devices`` (debounced)
StateChanged          retained merged state (+ per-property topics when configured)
AvailabilityChanged   retained ``…/availability``
DeviceEventRaised     ``…/event`` (not retained)
AccountLinkChanged    ``bridge/accounts`` (debounced); ``bridge/event`` ``account_attention``
BridgeEvent           ``bridge/event``
MqttConnected         ``bridge/state`` online (``announce``), then every retained topic again
====================  =====================================================================

``bridge/devices`` and ``bridge/accounts`` describe *every* device/account, so publishing them
is O(N); with thousands of accounts starting at once each change would republish them all
(O(N²) at start-up: 10,000 Tencent accounts took minutes of one core). The debounce delay
therefore grows with the cost of the last publish: at most ~10% of the loop goes to them.

In cluster mode (``cluster``: gateway/instances.py) this instance's ``bridge/accounts``,
``bridge/devices``, ``bridge/health`` and ``bridge/info`` go to ``bridge/instances/<id>/…``,
and those four ``bridge/…`` topics carry the merge of every instance's snapshots, written only
when it changed; ``goodbye`` clears
the instance's own snapshots. The health merge uses the snapshot this instance last published,
not a fresh one, so that every instance merges the same snapshots into the same payload.

The publisher never reaches a connector or the gateway: it knows the MQTT client, the topic
names, the registry (to republish) and the health counters.

After constructing it, call ``start()`` (subscribes to the bus); ``stop()`` unsubscribes and
cancels pending snapshot timers; ``goodbye()`` publishes the final ``bridge/accounts`` and
``bridge/state`` offline before a clean disconnect (which fires no will).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Protocol

import orjson

import _speedups

from .events import (
    AccountLinkChanged,
    AvailabilityChanged,
    BridgeEvent,
    DeviceAdded,
    DeviceEventRaised,
    DeviceRemoved,
    EventBus,
    MqttConnected,
    SchemaChanged,
    StateChanged,
)
from .health import Health
from .instances import KINDS, InstanceSnapshots
from .memory import trim_heap
from .mqtt.codec import encode_props
from .registry import DeviceRecord, Registry
from .topics import Topics

__all__ = ["JSON_PROPS", "MqttPort", "Publisher", "now_ms"]

JSON_PROPS = encode_props({"content_type": "application/json"})
ONLINE = b'{"state":"online"}'
OFFLINE = b'{"state":"offline"}'
_dumps = orjson.dumps


def now_ms() -> int:
    """Wall-clock epoch milliseconds: the one clock every published timestamp uses."""
    return time.time_ns() // 1_000_000


class MqttPort(Protocol):
    """What the publisher needs of an MQTT client (``gateway.mqtt.client.MqttClient``)."""

    connected: bool
    published: int
    dropped: int

    @property
    def unacked(self) -> int: ...

    def publish(
        self, topic: str | bytes, payload: bytes, qos: int = 0, retain: bool = False,
        props: bytes | dict[str, Any] | None = None,
    ) -> None: ...  # fmt: skip


@dataclass(eq=False)
class Publisher:
    """Owns every topic the gateway publishes. ``start()`` subscribes it to the bus; from then
    on registry changes reach MQTT without anyone calling it; ``goodbye`` / ``stop`` end it
    (see the module docstring)."""

    mqtt: MqttPort
    topics: Topics
    registry: Registry
    bus: EventBus
    health: Health
    _: KW_ONLY
    qos: int = 0
    per_property_topics: bool = False
    #: extra fields for the ``bridge/health`` snapshot (the gateway's own figures)
    stats: Callable[[], dict[str, Any]] | None = None
    #: cluster mode: other instances still serve this base topic (``goodbye`` then leaves
    #: ``bridge/state`` online)
    others_serve: Callable[[], bool] = lambda: False
    #: cluster mode: this instance is cut off from NATS (runs nothing): ``bridge/state`` offline
    cut_off: Callable[[], bool] = lambda: False
    #: cluster mode: this instance's own snapshots go to ``bridge/instances/<id>/…`` and
    #: ``bridge/accounts`` / ``bridge/devices`` carry every instance's, merged
    cluster: InstanceSnapshots | None = None
    #: cluster mode: the last payload written on each topic that is only written on change
    _sent: dict[str, bytes] = field(default_factory=dict, init=False)
    #: cluster mode: this instance's last published ``bridge/health`` and ``bridge/info``
    #: (what the merges start from)
    _own: dict[str, dict[str, Any]] = field(default_factory=dict, init=False)
    _accounts: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict, init=False)
    _unsubscribe: list[Callable[[], None]] = field(default_factory=list, init=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False)
    _devices_dirty: asyncio.TimerHandle | None = field(default=None, init=False)
    _accounts_dirty: asyncio.TimerHandle | None = field(default=None, init=False)
    _devices_cost: float = field(default=0.0, init=False)  # seconds the last bridge/devices took
    _accounts_cost: float = field(default=0.0, init=False)
    _connecting: int = field(default=0, init=False)  # connecting at the last bridge/accounts

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Subscribe to the bus; from now on every change is published."""
        self._loop = asyncio.get_running_loop()
        on = self.bus.subscribe
        self._unsubscribe = [
            on(StateChanged, self._on_state),
            on(AvailabilityChanged, self._on_availability),
            on(DeviceEventRaised, self._on_device_event),
            on(DeviceAdded, self._on_added),
            on(SchemaChanged, lambda ev: self.devices_changed()),
            on(DeviceRemoved, self._on_removed),
            on(AccountLinkChanged, self._on_account),
            on(BridgeEvent, lambda ev: self.bridge_event(ev.kind, **ev.fields)),
            on(MqttConnected, lambda ev: self.republish()),
        ]
        self.announce()
        self.devices_changed()
        self.accounts_changed()

    def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        for handle in (self._devices_dirty, self._accounts_dirty):
            if handle is not None:
                handle.cancel()
        self._devices_dirty = self._accounts_dirty = None

    def goodbye(self, *, leave_no_trace: bool = False) -> None:
        """The last words before a clean disconnect: accounts as they are, bridge offline
        (unless other cluster instances still serve: ``others_serve``).

        With ``leave_no_trace`` (the demo) every retained topic this publisher wrote is
        cleared instead, so the broker holds nothing of it afterwards.
        """
        if not leave_no_trace:
            others = self.others_serve()
            if self.cluster is None:
                self._publish_accounts()
            else:
                self._cluster_goodbye(last=not others)
            if not others:
                self.mqtt.publish(self.topics.bridge("state"), OFFLINE, 1, True, JSON_PROPS)
            return
        for topic in self.retained_topics():
            self.mqtt.publish(topic, b"", 1, True)

    def _cluster_goodbye(self, *, last: bool) -> None:
        """Cluster mode: clear this instance's ``bridge/instances/<id>/*`` (its peers drop
        them). The instances still serving write the merge once they run its accounts; the
        last one leaves ``bridge/accounts`` as its accounts are, as a single instance does."""
        if last:
            own = [{**a, "instance": self._instance_id} for a in self.accounts()]
            own.sort(key=lambda e: (e["vendor"], e["name"]))
            self.publish_raw(self.topics.bridge("accounts"), _dumps(own), retain=True)
        for topic in self._instance_topics():
            self.mqtt.publish(topic, b"", 1, True)

    @property
    def _instance_id(self) -> str:
        assert self.cluster is not None
        return self.cluster.instance_id

    def _instance_topics(self) -> list[str]:
        """Cluster mode: this instance's own snapshots (``bridge/instances/<id>/<kind>``)."""
        if self.cluster is None:
            return []
        return [self._instance_topic(kind) for kind in KINDS]

    def _instance_topic(self, kind: str) -> str:
        return self.topics.bridge(f"instances/{self._instance_id}/{kind}")

    def retained_topics(self) -> list[str | bytes]:
        """Every retained topic this publisher writes (devices and the bridge snapshots)."""
        topics: list[str | bytes] = [
            self.topics.bridge(name) for name in ("state", "info", "devices", "accounts", "health")
        ]
        topics.extend(self._instance_topics())
        for rec in self.registry:
            topics += [rec.topic, self.topics.availability(rec.topic)]
            topics.extend(rec.prop_topics.values())
        return topics

    # ------------------------------------------------------------------ the hot path

    def publish_raw(self, topic: str | bytes, payload: bytes, retain: bool = False) -> None:
        self.health.totals["published"] += 1
        self.mqtt.publish(topic, payload, self.qos, retain, JSON_PROPS)

    def _on_state(self, ev: StateChanged) -> None:
        self.publish_state(ev.record, ev.changed)

    def publish_state(self, rec: DeviceRecord, changed: dict[str, Any] | None = None) -> None:
        state = rec.state
        payload = _dumps({**state, "last_seen": rec.last_seen})
        self.health.totals["published"] += 1
        mqtt = self.mqtt
        mqtt.publish(rec.topic_bytes, payload, self.qos, True, JSON_PROPS)
        if self.per_property_topics:
            for key in changed if changed is not None else state:
                topic = rec.prop_topics.get(key)
                if topic is None:
                    topic = rec.prop_topics[key] = self.topics.prop(rec.topic, key).encode()
                mqtt.publish(topic, _dumps(state[key]), self.qos, True, JSON_PROPS)

    def _on_availability(self, ev: AvailabilityChanged) -> None:
        self.publish_availability(ev.record)

    def publish_availability(self, rec: DeviceRecord) -> None:
        self.publish_raw(
            self.topics.availability(rec.topic), _dumps(rec.availability_payload()), retain=True
        )

    def _on_device_event(self, ev: DeviceEventRaised) -> None:
        e = ev.event
        payload = _dumps({"event": e.event_id, "level": e.level, "params": e.params, "ts": e.ts_ms})
        self.publish_once(self.topics.event(ev.record.topic), payload)

    def publish_once(self, topic: str | bytes, payload: bytes) -> None:
        """A message that happens once (device event, ``bridge/event``) and is not retained:
        at QoS 1, so one written just before a broker dies is resent, not lost (state is
        retained and republished on reconnect; an event has no second chance)."""
        self.health.totals["published"] += 1
        self.mqtt.publish(topic, payload, max(self.qos, 1), False, JSON_PROPS)

    # ------------------------------------------------------------------ devices

    def _on_added(self, ev: DeviceAdded) -> None:
        rec = ev.record
        self.bridge_event(
            "device_added", vendor=rec.vendor, account=rec.account, device=rec.device,
            topic=rec.topic, name=rec.info.name,
        )  # fmt: skip
        self.devices_changed()

    def _on_removed(self, ev: DeviceRemoved) -> None:
        """Clear the vanished device's retained topics and say so on ``bridge/event``."""
        rec = ev.record
        topics: list[str | bytes] = [rec.topic, self.topics.availability(rec.topic)]
        topics.extend(rec.prop_topics.values())
        for topic in topics:
            self.mqtt.publish(topic, b"", 1, True)
        self.bridge_event(
            "device_removed", vendor=rec.vendor, account=rec.account, device=rec.device,
            topic=rec.topic,
        )  # fmt: skip
        self.devices_changed()

    def bridge_event(self, kind: str, **fields: Any) -> None:
        self.publish_once(
            self.topics.bridge("event"), _dumps({"type": kind, "ts": now_ms(), **fields})
        )

    # ------------------------------------------------------------------ accounts

    def _on_account(self, ev: AccountLinkChanged) -> None:
        key = (ev.vendor, ev.account)
        if ev.description.get("state") == "removed":
            self._accounts.pop(key, None)
        else:
            self._accounts[key] = ev.description
        if ev.needs_attention:
            self.bridge_event(
                "account_attention", vendor=ev.vendor, account=ev.account,
                reason=ev.description.get("error"),
            )  # fmt: skip
        self.accounts_changed()

    def accounts(self) -> list[dict[str, Any]]:
        """Every account's ``bridge/accounts`` entry, as last reported by its link."""
        return list(self._accounts.values())

    # ------------------------------------------------------------------ snapshots

    def devices_changed(self) -> None:
        if self._loop is not None and self._devices_dirty is None:
            delay = max(0.2, self._devices_cost * 10)
            self._devices_dirty = self._loop.call_later(delay, self._publish_devices)

    def accounts_changed(self) -> None:
        if self._loop is not None and self._accounts_dirty is None:
            delay = max(0.05, self._accounts_cost * 10)
            self._accounts_dirty = self._loop.call_later(delay, self._publish_accounts)

    def _publish_devices(self) -> None:
        t0 = time.perf_counter()
        if self._devices_dirty is not None:
            self._devices_dirty.cancel()
        self._devices_dirty = None
        devices = sorted((rec.describe() for rec in self.registry), key=lambda d: d["topic"])
        if self.cluster is None:
            self.publish_raw(self.topics.bridge("devices"), _dumps(devices), retain=True)
        else:
            self._publish_cluster("devices", devices)
        self._devices_cost = time.perf_counter() - t0

    def _publish_accounts(self) -> None:
        t0 = time.perf_counter()
        if self._accounts_dirty is not None:
            self._accounts_dirty.cancel()
        self._accounts_dirty = None
        accounts = self.accounts()
        if self.cluster is None:
            self.publish_raw(self.topics.bridge("accounts"), _dumps(accounts), retain=True)
        else:
            self._publish_cluster("accounts", accounts)
        self._accounts_cost = time.perf_counter() - t0
        connecting = sum(1 for a in accounts if a["state"] == "connecting")
        if self._connecting > 16 and connecting == 0 and self._loop is not None:
            # A burst of (re)connects just settled: give its garbage back (gateway/memory.py).
            self._loop.call_later(1.0, trim_heap)
        self._connecting = max(self._connecting, connecting) if connecting else 0

    def _publish_cluster(self, kind: str, own: list[dict[str, Any]]) -> None:
        """Cluster mode: this instance's snapshot on ``bridge/instances/<id>/<kind>`` and the
        merge on ``bridge/<kind>``, each only when it changed (a peer republishes its merge
        on every snapshot it receives: writing an unchanged one would ping-pong)."""
        assert self.cluster is not None
        self._publish_changed(self._instance_topic(kind), _dumps(own))
        if self.cluster.serving():
            merged = self.cluster.merge(kind, own)
            self._publish_changed(self.topics.bridge(kind), _dumps(merged))

    def _publish_changed(self, topic: str, payload: bytes) -> None:
        if self._sent.get(topic) != payload:
            self._sent[topic] = payload
            self.publish_raw(topic, payload, retain=True)

    def on_instance_snapshot(self, topic: str, payload: bytes) -> None:
        """Cluster mode: a message on ``bridge/instances/<id>/<kind>`` (a peer's snapshot, or
        empty when it left): republish the merge if it changed anything."""
        instance, _, kind = topic.removeprefix(self.topics.bridge("instances/")).partition("/")
        if self.cluster is None or not self.cluster.receive(instance, kind, payload):
            return
        if kind in ("health", "info"):
            self._publish_merge(kind)
        else:
            self.accounts_changed()
            self.devices_changed()

    def snapshots_changed(self) -> None:
        """Cluster mode: the ownership or the live instances changed: merge again."""
        self.accounts_changed()
        self.devices_changed()
        self._publish_merge("health")
        self._publish_merge("info")

    def accounts_view(self) -> list[dict[str, Any]]:
        """``bridge/request/accounts``: the merge in cluster mode, else this instance's."""
        if self.cluster is None:
            return self.accounts()
        return self.cluster.merge("accounts", self.accounts())

    def devices_view(self) -> list[dict[str, Any]]:
        """``bridge/request/devices``: the merge in cluster mode, else this instance's."""
        devices = [rec.describe() for rec in self.registry]
        if self.cluster is None:
            return devices
        return self.cluster.merge("devices", sorted(devices, key=lambda d: d["topic"]))

    def health_snapshot(self) -> dict[str, Any]:
        """This instance's health (``bridge/health`` of a single instance). In cluster mode
        ``devices`` and ``accounts`` count only what runs here now: an account that moved away
        stays in the registry and the accounts list, stopped, but is counted by its owner."""
        accounts = self.accounts()
        devices = len(self.registry)
        if self.cluster is not None:
            here = self._runs_here()
            accounts = [a for a in accounts if here(a["vendor"], a["name"])]
            devices = sum(1 for rec in self.registry if here(rec.vendor, rec.account))
        mqtt = self.mqtt
        extra: dict[str, Any] = {
            "devices": devices,
            "accounts": {
                "total": len(accounts),
                "online": sum(1 for a in accounts if a["state"] == "online"),
            },
            "mqtt": {"published": mqtt.published, "dropped": mqtt.dropped, "unacked": mqtt.unacked},
            "speedups": _speedups.IMPLEMENTATION,
            "pid": os.getpid(),
        }
        if self.stats is not None:
            extra.update(self.stats())
        if self.cluster is not None:
            extra["instance"] = self.cluster.instance_id
        return self.health.snapshot(extra)

    def health_view(self) -> dict[str, Any]:
        """``bridge/request/health``: in cluster mode the merge (with this instance's health as
        of now) and ``answered_by``; else this instance's health."""
        own = self.health_snapshot()
        if self.cluster is None:
            return own
        return {**self.cluster.merge_health(own), "answered_by": self._instance_id}

    def publish_health(self) -> None:
        """Every ``health_interval``: this instance's health (``_publish_own``)."""
        self._publish_own("health", self.health_snapshot())

    def publish_info(self, info: dict[str, Any]) -> None:
        """``bridge/info``, as observability builds it (``_publish_own``)."""
        self._publish_own("info", info)

    def _publish_own(self, kind: str, own: dict[str, Any]) -> None:
        """``bridge/<kind>`` (``health``, ``info``): this instance's; in cluster mode that goes
        to ``bridge/instances/<id>/<kind>`` and ``bridge/<kind>`` is the live instances' merge
        (gateway/instances.py)."""
        if self.cluster is None:
            self.publish_raw(self.topics.bridge(kind), _dumps(own), retain=True)
            return
        self.publish_raw(self._instance_topic(kind), _dumps(own), retain=True)
        self._own[kind] = own
        self._publish_merge(kind)

    def _publish_merge(self, kind: str) -> None:
        """Cluster mode: the merge on ``bridge/<kind>`` when it changed (not before this
        instance published its own, nor once it stopped serving)."""
        own = self._own.get(kind)
        if self.cluster is None or own is None or not self.cluster.serving():
            return
        self._publish_changed(self.topics.bridge(kind), _dumps(self.cluster.merge_own(kind, own)))

    def announce(self) -> None:
        """``bridge/state``: online, or offline while this cluster instance is cut off from NATS
        (it runs no account; instances that still serve put it back online, and when every
        instance is cut off it stays offline: consumers then see no device as available)."""
        state = OFFLINE if self.cut_off() else ONLINE
        self.mqtt.publish(self.topics.bridge("state"), state, 1, True, JSON_PROPS)

    def _runs_here(self) -> Callable[[str, str], bool]:
        """Whether this instance runs ``(vendor, account)`` now: always without a cluster; in
        cluster mode as the leases were last read (an account that moved away stays in the
        registry, stopped, and its owner publishes its devices)."""
        if self.cluster is None:
            return lambda vendor, account: True
        owner, me = self.cluster.owners(), self._instance_id
        return lambda vendor, account: owner(vendor, account) == me

    def republish(self) -> None:
        """After every (re)connect: announce the bridge and publish every retained topic again
        (the broker may have lost them). In cluster mode only the devices of the accounts
        that run here: a moved account's last state here is older than its owner's."""
        self.announce()
        here = self._runs_here()
        for rec in self.registry:
            if not here(rec.vendor, rec.account):
                continue
            if rec.state:
                self.publish_state(rec)
            if rec.online is not None:
                self.publish_availability(rec)
        self._sent.clear()  # cluster mode: write the snapshots even if unchanged
        self._publish_devices()
        self._publish_accounts()
        self.publish_health()

    # ------------------------------------------------------------------ replies

    def reply(self, topic: str, payload: bytes, props: dict[str, Any] | None = None) -> None:
        """A command's reply on its ``…/response/<kind>`` topic and, when the command named
        one (already validated by the caller), its MQTT 5 Response Topic."""
        self.publish_raw(topic, payload)
        if props:
            response_topic = props.get("response_topic")
            if response_topic:
                out: dict[str, Any] = {"content_type": "application/json"}
                if "correlation_data" in props:
                    out["correlation_data"] = props["correlation_data"]
                self.mqtt.publish(response_topic, payload, 1, False, out)
