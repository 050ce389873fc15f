"""The event bus: what happened to devices and accounts, for whoever wants to know.

Theory of operation
-------------------
The registry and the account links *emit*; consumers *subscribe*. The MQTT publisher is the
first consumer (every retained topic and bridge snapshot it writes follows from these events);
Home Assistant discovery and metrics hang off the same bus without touching a connector or the
gateway (the way zigbee2mqtt's extensions hang off its ``eventBus``)::

    connector ─▶ link (normalize once) ─▶ registry ─emit─▶ bus ─▶ publisher ─▶ MQTT
                                                               ├▶ Home Assistant discovery
                                                               └▶ metrics

Dispatch is synchronous and in subscription order: ``emit`` returns after every handler ran.
A handler must not block and must not raise; one that raises is logged and the others still
run (one faulty consumer never costs the publisher a state). Handlers that need I/O schedule
it themselves.

Events are small slotted dataclasses; the ones on the hot path (``StateChanged``) are emitted
only when something changed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from protocols.model import DeviceEvent

    from .records import DeviceRecord

__all__ = [
    "AccountLinkChanged",
    "AvailabilityChanged",
    "BridgeEvent",
    "DeviceAdded",
    "DeviceChanged",
    "DeviceEventRaised",
    "DeviceRemoved",
    "EventBus",
    "MqttConnected",
    "SchemaChanged",
    "StateChanged",
]

log = logging.getLogger("cloud2mqtt.events")


@dataclass(slots=True, eq=False)
class DeviceChanged:
    """The base of the events that carry only the device's record, as it now reads."""

    record: DeviceRecord


class DeviceAdded(DeviceChanged):
    """A device appeared in an account's list (with its schema, before any state)."""

    __slots__ = ()


class DeviceRemoved(DeviceChanged):
    """A device vanished from its account; its retained topics are to be cleared."""

    __slots__ = ()


class SchemaChanged(DeviceChanged):
    """A known device's info (schema, name or model) changed."""

    __slots__ = ()


@dataclass(slots=True, eq=False)
class StateChanged:
    """Property values changed. ``changed`` holds only the new values; ``ts_ms`` is the
    vendor's own timestamp of the change (epoch ms, at the vendor's precision);
    ``precision_ms`` is that precision (1000: the vendor stamps whole seconds)."""

    record: DeviceRecord
    changed: dict[str, Any]
    ts_ms: int
    precision_ms: int = 1


class AvailabilityChanged(DeviceChanged):
    """A device went online or offline (or the reason changed)."""

    __slots__ = ()


@dataclass(slots=True, eq=False)
class DeviceEventRaised:
    """A device event (button press, alarm, action reply) to pass on once, not retained."""

    record: DeviceRecord
    event: DeviceEvent


@dataclass(slots=True, eq=False)
class AccountLinkChanged:
    """An account's link state, error, attention flag or token expiry changed.

    ``description`` is the account's ``bridge/accounts`` entry as it now reads.
    """

    vendor: str
    account: str
    description: dict[str, Any]
    #: the account just entered ``attention`` (a human must act)
    needs_attention: bool = False


@dataclass(slots=True, eq=False)
class BridgeEvent:
    """Something operators are told on ``bridge/event`` beyond device add/remove."""

    kind: str
    fields: dict[str, Any]


@dataclass(slots=True, eq=False)
class MqttConnected:
    """The MQTT link is (again) up: retained topics must be published again."""


E = TypeVar("E")
Handler = Callable[[Any], None]


class EventBus:
    """Typed synchronous fan-out. ``subscribe`` returns the function that unsubscribes."""

    __slots__ = ("_handlers",)

    def __init__(self) -> None:
        self._handlers: dict[type, list[Handler]] = {}

    def subscribe(self, kind: type[E], handler: Callable[[E], None]) -> Callable[[], None]:
        """Call ``handler(event)`` for every event of type ``kind`` from now on.

        Call the returned function to stop (a consumer's ``stop()`` does).
        """
        handlers = self._handlers.setdefault(kind, [])
        handlers.append(handler)

        def unsubscribe() -> None:
            if handler in handlers:
                handlers.remove(handler)

        return unsubscribe

    def handlers(self, kind: type[E]) -> list[Callable[[E], None]]:
        """The live list of ``kind``'s handlers, for an emitter on the hot path to call
        directly (it must call each in order and let none raise; ``emit`` is the safe way)."""
        return self._handlers.setdefault(kind, [])

    def wants(self, kind: type) -> bool:
        """Whether anyone listens for ``kind`` (skip building an event nobody reads)."""
        return bool(self._handlers.get(kind))

    def emit(self, event: object) -> None:
        """Hand ``event`` to every subscriber of its type, in subscription order."""
        handlers = self._handlers.get(type(event))
        if not handlers:
            return
        for handler in handlers:
            try:
                handler(event)
            except Exception:
                log.exception("event handler %r failed on %s", handler, type(event).__name__)
