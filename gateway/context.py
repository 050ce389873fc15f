"""``AccountLink``: what one connector sees of the gateway (the ``AccountContext`` contract).

Everything a connector reports flows through here, in one direction: normalize through the
device schema → merge into the registry (dropping older values) → publish what changed. No
vendor knowledge lives here; every vendor gets the same state rules.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from protocols.model import Availability, DeviceEvent, DeviceInfo, Schema, StateChange
from protocols.tsl import normalize

from .tokens import TokenSlot

if TYPE_CHECKING:
    from .app import Gateway

__all__ = ["AccountLink"]

log = logging.getLogger("cloud2mqtt.account")


def now_ms() -> int:
    return int(time.time() * 1000)


class _Adapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['vendor']}/{self.extra['account']}] {msg}", kwargs  # type: ignore[index]


class AccountLink:
    """One account's view of the gateway. Created by ``Gateway`` for each configured account."""

    def __init__(self, gateway: Gateway, vendor: str, account: str) -> None:
        self.gw = gateway
        self.vendor = vendor
        self.account = account
        self.log = _Adapter(logging.getLogger(f"cloud2mqtt.{vendor}"), {"vendor": vendor, "account": account})
        self.tokens: TokenSlot = gateway.tokens.slot(vendor, account)
        self.link_state = "connecting"
        self.link_since = now_ms()
        self.link_error: str | None = None
        self.attention = False
        self.token_expires_ms: int | None = None
        self._grace: asyncio.TimerHandle | None = None
        self._log_budget: dict[str, tuple[float, int]] = {}
        self.registry = gateway.registry
        self.health = gateway.health

    # ---------------------------------------------------------------- devices

    def devices(self, infos: Iterable[DeviceInfo]) -> None:
        infos = list(infos)
        listed = {i.device for i in infos}
        for info in infos:
            self.device(info)
        for rec in list(self.registry.account_devices(self.vendor, self.account).values()):
            if rec.device not in listed:
                self.gw.remove_device(rec)

    def device(self, info: DeviceInfo) -> None:
        rec, added = self.registry.upsert(self.vendor, self.account, info)
        if rec.account != self.account:
            return
        if added:
            self.gw.bridge_event(
                "device_added", vendor=self.vendor, account=self.account, device=info.device,
                topic=rec.topic, name=info.name,
            )
        self.gw.devices_changed()
        if info.online is not None:
            self.availability(Availability(info.device, info.online, now_ms()))

    def schema(self, device: str) -> Schema | None:
        rec = self.registry.get(self.vendor, device)
        return rec.info.schema if rec is not None else None

    def known_devices(self) -> Sequence[str]:
        return list(self.registry.account_devices(self.vendor, self.account))

    # ---------------------------------------------------------------- the hot path

    def state(self, change: StateChange) -> None:
        rec = self.registry.get(self.vendor, change.device)
        if rec is None or rec.account != self.account:
            self.bad_input("state for a device the account does not list", change.device, "unknown_device")
            return
        props, flagged = normalize(rec.info.schema, change.props)
        if flagged:
            self.health.count("flagged_values", self.vendor, len(flagged))
            self._warn(
                "flagged_values",
                "device %s: value(s) of %s do not fit the schema; kept as sent",
                change.device,
                ", ".join(flagged),
            )
        changed, stale = self.registry.apply_state(rec, props, change.ts_ms, change.prop_ts)
        self.health.totals["state"] += 1
        if stale:
            self.health.count("stale_dropped", self.vendor, stale)
        if changed:
            self.gw.publish_state(rec, changed)

    def availability(self, av: Availability) -> None:
        rec = self.registry.get(self.vendor, av.device)
        if rec is None or rec.account != self.account:
            self.bad_input("availability for a device the account does not list", av.device, "unknown_device")
            return
        if self.registry.apply_availability(rec, av.online, av.ts_ms, av.reason):
            self.gw.publish_availability(rec)

    def event(self, ev: DeviceEvent) -> None:
        rec = self.registry.get(self.vendor, ev.device)
        if rec is None or rec.account != self.account:
            self.bad_input("event for a device the account does not list", ev.device, "unknown_device")
            return
        self.health.totals["events"] += 1
        self.gw.publish_event(rec, ev)

    @property
    def congested(self) -> bool:
        return self.gw.mqtt.congested

    async def drain(self) -> None:
        mqtt = self.gw.mqtt
        if mqtt.congested:  # the common case costs one attribute test, not a second coroutine
            await mqtt.drain()

    # ---------------------------------------------------------------- account state

    def link(
        self,
        state: str,
        error: str | None = None,
        *,
        token_expires_ms: int | None = None,
        attention: bool = False,
    ) -> None:
        changed = state != self.link_state or error != self.link_error or attention != self.attention
        if state != self.link_state:
            self.link_since = now_ms()
        self.link_state = state
        self.link_error = error
        if token_expires_ms is not None:
            self.token_expires_ms = token_expires_ms
            changed = True
        if attention and not self.attention:
            self.gw.bridge_event(
                "account_attention", vendor=self.vendor, account=self.account, reason=error
            )
            self.log.error("needs attention: %s", error)
        self.attention = attention
        if state == "online":
            self.attention = False
            if self._grace is not None:
                self._grace.cancel()
                self._grace = None
        elif self._grace is None and state != "stopped":
            loop = asyncio.get_running_loop()
            self._grace = loop.call_later(self.gw.config.gateway.offline_grace, self._grace_expired)
        if changed:
            self.gw.accounts_changed()

    def _grace_expired(self) -> None:
        self._grace = None
        if self.link_state == "online":
            return
        ts = now_ms()
        self.log.warning(
            "link down for more than %.0fs: marking its devices offline",
            self.gw.config.gateway.offline_grace,
        )
        for rec in self.registry.account_devices(self.vendor, self.account).values():
            if rec.online is not False and self.registry.apply_availability(
                rec, False, ts, "cloud_disconnected"
            ):
                self.gw.publish_availability(rec)

    def describe(self) -> dict[str, Any]:
        return {
            "vendor": self.vendor,
            "name": self.account,
            "state": self.link_state,
            "since": self.link_since,
            "error": self.link_error,
            "attention": self.attention,
            "token_expires": self.token_expires_ms,
            "devices": len(self.registry.account_devices(self.vendor, self.account)),
        }

    # ---------------------------------------------------------------- bad input

    def bad_input(self, reason: str, device: str | None = None, counter: str = "bad_frames") -> None:
        self.health.count(counter, self.vendor)
        self._warn(counter, "%s: %s (device %s)", counter, reason, device or "-")

    def count(self, counter: str, n: int = 1) -> None:
        self.health.count(counter, self.vendor, n)

    def _warn(self, counter: str, msg: str, *args: Any) -> None:
        """Log, but at most 20 lines per counter per minute: a garbage storm must not flood logs."""
        now = time.monotonic()
        start, n = self._log_budget.get(counter, (now, 0))
        if now - start > 60:
            if n > 20:
                self.log.warning("%s: %d more suppressed in the last minute", counter, n - 20)
            start, n = now, 0
        n += 1
        self._log_budget[counter] = (start, n)
        if n <= 20:
            self.log.warning(msg, *args)
