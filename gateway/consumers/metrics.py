"""``Metrics``: the gateway's numbers in Prometheus form, in a registry of its own.

Theory of operation
-------------------
Most numbers already exist and are *read at scrape time* by a custom collector, so nothing is
counted twice on the hot path:

===========================================  ================================================
metric                                       source
===========================================  ================================================
frames, bad frames, states, events, stale    ``Health.by_account`` / ``Health.counters``
drops, flagged values, logins, every other   (the account links count there; ``states`` and
``bridge/health`` counter                    ``events`` are one dict increment per message)
commands by result, vendor API calls by      ``Health.labelled`` (the command handler and
endpoint                                     ``AccountContext.api_call``)
accounts by link state                       the publisher's ``bridge/accounts`` view
devices, devices online                      the registry (one pass per scrape)
MQTT connected, queue depth, buffered,       the MQTT client's own counters
published, dropped
cluster mode: live instances, slots held,    ``Cluster.stats()`` (gateway/cluster/node.py):
NATS link, slot changes, lease rounds that   the lease manager's and the command router's
failed, routed commands by outcome           own counts
===========================================  ================================================

Two things are this consumer's own, both fed from the bus:

* **reconnects**, from ``AccountLinkChanged``: every return to ``online`` after the first;
* **end-to-end latency**, from ``StateChanged``: now minus the vendor's own timestamp of the
  change, one bucket increment per message (a plain list and ``bisect``, not a locked
  prometheus ``Histogram``). A vendor that stamps whole seconds (``precision_ms`` 1000,
  Tencent pushes) overstates by up to a second; negative values (clock skew) are clamped at 0;
  changes older than ``MAX_AGE_S`` (a state read at a resync, not a push) are not observed.

``account_labels=False`` drops the ``account`` label everywhere (installations with thousands
of accounts): the same numbers summed per vendor.

Construct it, then ``start()`` (subscribes) and serve ``registry`` (``gateway.http``);
``stop()`` unsubscribes.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from ..events import AccountLinkChanged, EventBus, StateChanged
from ..health import Health
from ..records import DeviceRecord

__all__ = ["BUCKETS_S", "MAX_AGE_S", "PER_ACCOUNT", "Metrics"]

#: latency buckets, seconds: 1 ms … 60 s
BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BOUNDS_MS = tuple(b * 1000.0 for b in BUCKETS_S)
#: a change older than this is a state read (resync), not a push: not a latency
MAX_AGE_S = 300.0
_MAX_AGE_MS = MAX_AGE_S * 1000.0

#: metric name (without ``_total``) → the ``Health`` counter it shows, labelled per account
PER_ACCOUNT = {
    "cloud2mqtt_frames": ("frames", "Frames read from the vendor's push channel or API"),
    "cloud2mqtt_bad_frames": ("bad_frames", "Vendor frames that could not be understood"),
    "cloud2mqtt_states": ("states", "State reports accepted from the vendor (before merging)"),
    "cloud2mqtt_events": ("events", "Device events passed on"),
    "cloud2mqtt_stale_dropped": ("stale_dropped", "Values dropped as older than the stored one"),
    "cloud2mqtt_flagged_values": ("flagged_values", "Values kept but flagged: they do not fit the schema"),
    "cloud2mqtt_logins": ("logins", "Logins to the vendor cloud"),
}
_ACCOUNT_ONLY = {"states", "events"}  # counted only per account (no vendor-wide counter)
_LINK_STATES = ("connecting", "online", "backoff", "attention", "stopped")


class _Latency:
    __slots__ = ("counts", "precision_ms", "sum_ms")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BOUNDS_MS) + 1)  # the last one is +Inf
        self.sum_ms = 0.0
        self.precision_ms = 1


class Metrics:
    """The ``/metrics`` registry. See the module docstring for what each metric reads."""

    def __init__(
        self,
        *,
        bus: EventBus,
        health: Health,
        devices: Callable[[], Iterable[DeviceRecord]],
        accounts: Callable[[], list[dict[str, Any]]],
        mqtt: Any,
        account_labels: bool = True,
        info: dict[str, str] | None = None,
        cluster: Callable[[], dict[str, Any]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``devices``: the registry's records; ``accounts``: the ``bridge/accounts`` entries;
        ``mqtt``: the MQTT client (``connected``, ``published``, ``dropped``, ``unacked`` and,
        when it has one, ``buffered``); ``info``: labels of ``cloud2mqtt_build_info``;
        ``cluster`` (cluster mode): ``Cluster.stats``."""
        self.bus = bus
        self.health = health
        self.devices = devices
        self.accounts = accounts
        self.mqtt = mqtt
        self.account_labels = account_labels
        self.info = info or {}
        self.cluster = cluster
        self.clock = clock
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Collector(self))
        ProcessCollector(registry=self.registry)
        self.latency: dict[str, _Latency] = {}
        self.reconnects: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._link: dict[tuple[str, str], str] = {}
        self._been_online: set[tuple[str, str]] = set()
        self._unsubscribe: list[Callable[[], None]] = []

    def start(self) -> None:
        """Subscribe to the bus: from now on latencies and reconnects are recorded."""
        self._unsubscribe = [
            self.bus.subscribe(StateChanged, self._on_state),
            self.bus.subscribe(AccountLinkChanged, self._on_link),
        ]

    def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []

    # ------------------------------------------------------------------ the hot path

    def _on_state(self, ev: StateChanged) -> None:
        lat = self.clock() * 1000.0 - ev.ts_ms
        if lat > _MAX_AGE_MS:
            return
        h = self.latency.get(ev.record.vendor)
        if h is None:
            h = self.latency[ev.record.vendor] = _Latency()
        if lat < 0.0:
            lat = 0.0
        h.counts[bisect_left(_BOUNDS_MS, lat)] += 1
        h.sum_ms += lat
        if ev.precision_ms > h.precision_ms:
            h.precision_ms = ev.precision_ms

    # ------------------------------------------------------------------ accounts

    def _on_link(self, ev: AccountLinkChanged) -> None:
        key = (ev.vendor, ev.account)
        state = ev.description.get("state")
        if state == "online" and self._link.get(key) != "online":
            if key in self._been_online:
                self.reconnects[key] += 1
            self._been_online.add(key)
        if isinstance(state, str):
            self._link[key] = state


class _Collector:
    """Reads the gateway's own counters at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def describe(self) -> list[Metric]:
        return []  # families vary with the vendors seen: collected, not described

    def collect(self) -> Iterator[Metric]:
        m = self.m
        per_account = m.account_labels
        health = m.health
        names = ["vendor", "account"] if per_account else ["vendor"]
        accounts = m.accounts()
        keys = set(health.by_account) | {(a["vendor"], a["name"]) for a in accounts}
        vendors = {k[0] for k in keys}

        def sample(key: tuple[str, str]) -> list[str]:
            return [key[0], key[1]] if per_account else [key[0]]

        for metric, (counter, doc) in PER_ACCOUNT.items():
            fam = CounterMetricFamily(metric, doc, labels=names)
            by_vendor: dict[str, int] = dict.fromkeys(vendors, 0)
            sums: dict[str, int] = dict.fromkeys(vendors, 0)
            rows: dict[tuple[str, ...], int] = {}
            for key in keys:
                counts = health.by_account.get(key)
                n = counts.get(counter, 0) if counts is not None else 0
                sums[key[0]] = sums.get(key[0], 0) + n
                if per_account:
                    rows[tuple(sample(key))] = n
            if counter not in _ACCOUNT_ONLY:
                vendor_counts = health.counters.get(counter, {})
                for vendor, total in vendor_counts.items():
                    by_vendor[vendor] = total
                    rest = total - sums.get(vendor, 0)
                    if per_account and rest > 0:  # counted without an account
                        rows[(vendor, "-")] = rest
            else:
                by_vendor = sums
            if per_account:
                for labels, n in sorted(rows.items()):
                    fam.add_metric(list(labels), n)
            else:
                for vendor, n in sorted(by_vendor.items()):
                    fam.add_metric([vendor], n)
            yield fam

        yield self._labelled(
            "commands", "cloud2mqtt_commands", "Device commands answered, by result (ok or error code)",
            "result",
        )  # fmt: skip
        yield self._labelled(
            "api_calls", "cloud2mqtt_vendor_api_calls", "Calls of the vendor's API, by endpoint",
            "endpoint",
        )  # fmt: skip

        fam = CounterMetricFamily(
            "cloud2mqtt_reconnects", "Returns of an account's link to online after the first",
            labels=names,
        )  # fmt: skip
        reconnects: defaultdict[tuple[str, ...], int] = defaultdict(int)
        for key in keys:
            reconnects[tuple(sample(key))] += 0
        for key, n in m.reconnects.items():
            reconnects[tuple(sample(key))] += n
        for labels, n in sorted(reconnects.items()):
            fam.add_metric(list(labels), n)
        yield fam

        fam = CounterMetricFamily(
            "cloud2mqtt_health_counter",
            "Every bridge/health counter (rejected, dropped and counted inputs), by vendor",
            labels=["vendor", "counter"],
        )
        for counter, by_v in sorted(health.counters.items()):
            for vendor, n in sorted(by_v.items()):
                fam.add_metric([vendor, counter], n)
        yield fam

        # ---------------------------------------------------------------- API budgets
        # From each bridge/accounts entry's "budget" (gateway/rates.py): per scope and class,
        # what was used in the window and the limit (absent where none is known).
        budget_labels = [*names, "scope", "kind"]
        used = GaugeMetricFamily(
            "cloud2mqtt_budget_used",
            "Vendor calls (kind=calls) or connects (kind=connects) used in the scope's window; "
            "for shared scopes (ip, app) the process-wide figure",
            labels=budget_labels,
        )
        limit = GaugeMetricFamily(
            "cloud2mqtt_budget_limit",
            "The scope's limit for that window, where documented or configured",
            labels=budget_labels,
        )
        budgets: dict[tuple[str, ...], tuple[float, float | None]] = {}
        for a in accounts:
            budget = a.get("budget")
            if not isinstance(budget, dict):
                continue
            for scope, entry in budget.items():
                if not isinstance(entry, dict) or (scope == "account" and not per_account):
                    continue  # without account labels only the shared scopes are told
                for kind, item in entry.items():
                    if isinstance(item, dict):
                        at = (*sample((a["vendor"], a["name"])), scope, kind)
                        cap = item.get("limit")
                        budgets[at] = (
                            float(item.get("used") or 0),
                            float(cap) if isinstance(cap, int | float) else None,
                        )
        for at, (spent, ceiling) in sorted(budgets.items()):
            used.add_metric(list(at), spent)
            if ceiling is not None:
                limit.add_metric(list(at), ceiling)
        yield used
        yield limit

        # ---------------------------------------------------------------- gauges
        gauge = GaugeMetricFamily(
            "cloud2mqtt_accounts", "Accounts by link state", labels=["vendor", "state"]
        )
        states: dict[tuple[str, str], int] = {(v, s): 0 for v in vendors for s in _LINK_STATES}
        attention: dict[str, int] = dict.fromkeys(vendors, 0)
        for a in accounts:
            states[(a["vendor"], a["state"])] = states.get((a["vendor"], a["state"]), 0) + 1
            if a.get("attention"):
                attention[a["vendor"]] += 1
        for (vendor, state), n in sorted(states.items()):
            gauge.add_metric([vendor, state], n)
        yield gauge
        gauge = GaugeMetricFamily(
            "cloud2mqtt_accounts_attention", "Accounts flagged for attention (a human must act)",
            labels=["vendor"],
        )  # fmt: skip
        for vendor, n in sorted(attention.items()):
            gauge.add_metric([vendor], n)
        yield gauge

        devices: dict[tuple[str, ...], list[int]] = {tuple(sample(k)): [0, 0] for k in keys}
        for rec in m.devices():
            row = devices.setdefault(
                (rec.vendor, rec.account) if per_account else (rec.vendor,), [0, 0]
            )
            row[0] += 1
            if rec.online:
                row[1] += 1
        known = GaugeMetricFamily("cloud2mqtt_devices", "Devices known", labels=names)
        online = GaugeMetricFamily("cloud2mqtt_devices_online", "Devices online", labels=names)
        for labels, (n, n_online) in sorted(devices.items()):
            known.add_metric(list(labels), n)
            online.add_metric(list(labels), n_online)
        yield known
        yield online

        mqtt = m.mqtt
        buffered = getattr(mqtt, "buffered", None)
        if buffered is None:  # QoS 1 messages held while the broker is away
            buffered = 0 if mqtt.connected else mqtt.unacked
        yield GaugeMetricFamily(
            "cloud2mqtt_mqtt_connected", "1 while the MQTT link is up", value=int(mqtt.connected)
        )
        yield GaugeMetricFamily(
            "cloud2mqtt_mqtt_queue_depth", "MQTT messages queued or unacknowledged",
            value=mqtt.unacked,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "cloud2mqtt_mqtt_buffered_messages", "Messages held during a broker outage",
            value=buffered,
        )  # fmt: skip
        yield CounterMetricFamily(
            "cloud2mqtt_mqtt_published", "MQTT messages written", value=mqtt.published
        )
        yield CounterMetricFamily(
            "cloud2mqtt_mqtt_dropped", "MQTT messages dropped (no link, queue full)",
            value=mqtt.dropped,
        )  # fmt: skip
        buffer_dropped = getattr(mqtt, "buffer_dropped", None)
        if buffer_dropped is not None:
            yield CounterMetricFamily(
                "cloud2mqtt_mqtt_buffer_dropped",
                "Messages dropped from a full outage buffer (oldest first)", value=buffer_dropped,
            )  # fmt: skip
        yield CounterMetricFamily(
            "cloud2mqtt_commands_received", "Command and bridge request messages received",
            value=health.totals.get("commands", 0),
        )  # fmt: skip
        if m.cluster is not None:
            yield from _cluster(m.cluster())

        # ---------------------------------------------------------------- latency
        coarse = sorted(
            f"{v} {h.precision_ms / 1000:g} s" for v, h in m.latency.items() if h.precision_ms > 1
        )
        doc = (
            "End-to-end latency per message: from the vendor's own timestamp of the change to "
            "our publish. Clamped at 0; changes older than "
            f"{MAX_AGE_S:g} s (state reads) are not observed. Resolution 1 ms"
            + (f", except (whole-second vendor timestamps, values overstated by up to that): "
               f"{', '.join(coarse)}" if coarse else "")
        )  # fmt: skip
        hist = HistogramMetricFamily("cloud2mqtt_latency_seconds", doc, labels=["vendor"])
        for vendor, h in sorted(m.latency.items()):
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, n in zip((*BUCKETS_S, float("inf")), h.counts, strict=True):
                cumulative += n
                buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
            hist.add_metric([vendor], buckets, h.sum_ms / 1000.0)
        yield hist

        info = GaugeMetricFamily(
            "cloud2mqtt_build_info", "Version and kernels of this gateway", labels=list(m.info)
        )
        info.add_metric(list(m.info.values()), 1)
        yield info
        yield GaugeMetricFamily(
            "cloud2mqtt_start_time_seconds", "When the gateway started (epoch seconds)",
            value=health.started,
        )  # fmt: skip

    def _labelled(self, counter: str, metric: str, doc: str, label: str) -> Metric:
        per_account = self.m.account_labels
        fam = CounterMetricFamily(
            metric, doc, labels=["vendor", "account", label] if per_account else ["vendor", label]
        )
        rows: defaultdict[tuple[str, ...], int] = defaultdict(int)
        for (name, vendor, account, value), n in list(self.m.health.labelled.items()):
            if name == counter:
                rows[(vendor, account, value) if per_account else (vendor, value)] += n
        for labels, n in sorted(rows.items()):
            fam.add_metric(list(labels), n)
        return fam


_Family = type[GaugeMetricFamily] | type[CounterMetricFamily]
#: cluster mode: ``Cluster.stats()`` key → (metric, help, type, and for a count by value the
#: label and its values: every value is shown, zero until counted)
CLUSTER: dict[str, tuple[str, str, _Family, tuple[str, tuple[str, ...]] | None]] = {
    "instances": ("cloud2mqtt_cluster_instances", "Live instances as of the last lease round (this one included)", GaugeMetricFamily, None),
    "slots": ("cloud2mqtt_cluster_slots", "Slots in the cluster", GaugeMetricFamily, None),
    "slots_held": ("cloud2mqtt_cluster_slots_held", "Slots this instance holds (it runs their accounts)", GaugeMetricFamily, None),
    "nats_connected": ("cloud2mqtt_cluster_nats_connected", "1 while the link to NATS is up", GaugeMetricFamily, None),
    "slot_changes": ("cloud2mqtt_cluster_slot_changes", "Slots this instance gained or gave up: claimed (free or expired), released (above its fair share, or at stop), taken_over (another instance holds it now), fenced (no confirmed renewal in time: stopped before the lease could expire)", CounterMetricFamily, ("change", ("claimed", "released", "taken_over", "fenced"))),
    "lease_round_failures": ("cloud2mqtt_cluster_lease_round_failures", "Lease rounds that failed (NATS unreachable or slow); slots not renewed in time are fenced", CounterMetricFamily, None),
    "routed": ("cloud2mqtt_cluster_routed_commands", "Device commands this instance received for a device it does not run, by outcome: answered (by the instance that runs it), timeout, unavailable (its account is moving, or its instance is unreachable), unknown (no instance has the device)", CounterMetricFamily, ("outcome", ("answered", "timeout", "unavailable", "unknown"))),
    "bad_demands": ("cloud2mqtt_cluster_bad_pacing_demands", "Lease rounds in which a live instance published a malformed pacing demand (the per-IP budgets were then shared equally)", CounterMetricFamily, None),
    "peer_requests": ("cloud2mqtt_cluster_peer_requests", "Commands and requests other instances routed here that this instance ran", CounterMetricFamily, None),
}  # fmt: skip


def _cluster(stats: dict[str, Any]) -> Iterator[Metric]:
    """Cluster mode's numbers (``Cluster.stats()``): this instance's view of the cluster."""
    for key, (name, doc, family, by) in CLUSTER.items():
        if by is None:
            yield family(name, doc, value=stats[key])
            continue
        label, values = by
        fam = family(name, doc, labels=[label])
        for value in values:
            fam.add_metric([value], stats[key].get(value, 0))
        yield fam
