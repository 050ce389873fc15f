"""One small binding per vendor: how to drive that vendor's emulator for the contract.

A binding knows its emulator and nothing of the contract's assertions (tests/contract/
test_contract.py): it starts the emulator in-process with fast timings, hands out the
``[[accounts]]`` table that points a gateway at it, and makes the emulator do what a contract
item needs — push a change, change a value *without* a push, drop the push channel, send a
garbage frame — and reads the emulator's own device values back.

Values come in two forms: the *tree* form (what the gateway publishes: ``True``, ``23.5``) and
the *vendor* form (what the emulator stores: ``"on"``, ``1``, ``"23.5"``); ``Settable`` carries
both, ``read()`` returns the vendor form.

Adding a vendor to ``gateway.vendors.VENDORS`` without adding its binding to ``BINDINGS`` here
fails ``test_every_vendor_has_a_binding`` and every contract test of that vendor.
"""

from __future__ import annotations

import abc
import itertools
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from emulators.aliyun import LIGHT_PK, AliyunCloud
from emulators.base import SimulatedCloud
from emulators.coolkit import CoolkitCloud
from emulators.tencent import TencentCloud
from emulators.xky import XkyCloud
from protocols.coolkit.rest import GROUP_PREFIX

__all__ = ["BINDINGS", "Binding", "Change", "Settable"]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Settable:
    """A writable property of ``device`` and a valid new value for it (``value`` in the tree's
    form, ``vendor_value`` as the emulator stores it once the set has reached it)."""

    device: str
    prop: str
    value: Any
    vendor_value: Any


@dataclass(frozen=True, slots=True)
class Change:
    """A property the emulator changed and its new value in the tree's form."""

    prop: str
    value: Any


class Binding(abc.ABC):
    """How the contract drives one vendor's emulator.

    Lifecycle: ``await start()`` (in-process, fast timings), then ``account()`` for the
    gateway; ``await stop()`` at the end. ``device`` is the device the push, resync and
    garbage items use.
    """

    vendor: ClassVar[str]
    #: the ``bridge/health`` counter a garbage frame of this vendor lands in
    garbage_counter: ClassVar[str] = "bad_frames"

    def __init__(self) -> None:
        self._values = itertools.count(1)

    def fresh(self, lo: int, hi: int) -> int:
        """A value in ``[lo, hi]`` that no earlier call of this binding returned (while they last)."""
        return lo + next(self._values) % (hi - lo + 1)

    #: the running emulator (between ``start()`` and ``stop()``)
    cloud: SimulatedCloud

    @abc.abstractmethod
    def emulator(self) -> SimulatedCloud:
        """This vendor's emulator, with timings fast enough for a test."""

    async def start(self) -> None:
        """Start the emulator in-process."""
        self.cloud = self.emulator()
        await self.cloud.start()

    async def stop(self) -> None:
        await self.cloud.stop()

    @abc.abstractmethod
    def account(self, name: str) -> dict[str, Any]:
        """The ``[[accounts]]`` table (fast reconnect and poll options) for this emulator."""

    @abc.abstractmethod
    def devices(self) -> set[str]:
        """Every device id the emulator has for the account, as ``bridge/devices`` names it."""

    @property
    @abc.abstractmethod
    def device(self) -> str:
        """The device the push, resync and garbage items use."""

    @abc.abstractmethod
    def settable(self) -> Settable:
        """A device, a writable property and a valid value it does not have yet."""

    @abc.abstractmethod
    async def push(self) -> Change:
        """The emulator changes ``device`` and tells the gateway as that vendor does."""

    @abc.abstractmethod
    def change_quietly(self) -> Change:
        """Change ``device`` in the emulator and tell nobody (no push)."""

    @abc.abstractmethod
    async def drop(self) -> None:
        """Break the account's link from the emulator's side (push socket dropped)."""

    async def garble(self) -> None:
        """Make the emulator send one frame the gateway cannot read, in place of a frame for
        ``device``. By default: the next frame garbled, and a push to make it (a vendor whose
        emulator garbles otherwise overrides this)."""
        self.cloud.garble(1)
        await self.push()

    @abc.abstractmethod
    def read(self, device: str, prop: str) -> Any:
        """The emulator's own value of ``prop`` (vendor form): proof a set reached the vendor."""


class TencentBinding(Binding):
    """Tencent IoT Explorer: HTTP API + one WebSocket with ``ActivePush``.

    push: a ``Property``/``Report`` of the light's brightness. drop: every WebSocket aborted.
    garbage: the next frame on the socket (the brightness report sent right after) is replaced
    by unparsable text.
    """

    vendor = "tencent"
    cloud: TencentCloud

    def emulator(self) -> TencentCloud:
        return TencentCloud(devices=2, latency=0.0)

    def account(self, name: str) -> dict[str, Any]:
        return self.cloud.account_config(name, heartbeat=0.5, backoff_base=0.05, backoff_cap=0.3)

    def devices(self) -> set[str]:
        return set(self.cloud.device_ids())

    @property
    def device(self) -> str:
        return self.cloud.device_ids()[0]  # light-0-1: power_switch, brightness, color

    def settable(self) -> Settable:
        value = 100 - self.cloud.devices[self.device].values["brightness"] // 2
        return Settable(self.device, "brightness", value, value)

    async def push(self) -> Change:
        value = self.fresh(1, 99)
        assert self.cloud.report(self.device, {"brightness": value}) >= 1, "no socket to push to"
        return Change("brightness", value)

    def change_quietly(self) -> Change:
        dev = self.cloud.devices[self.device]
        value = self.fresh(1, 99)
        dev.values["brightness"] = value
        dev.updated["brightness"] = max(dev.updated["brightness"] + 1, now_ms())
        return Change("brightness", value)

    async def drop(self) -> None:
        assert self.cloud.drop_sockets() >= 1, "no socket to drop"

    def read(self, device: str, prop: str) -> Any:
        return self.cloud.devices[device].values[prop]


class CoolkitBinding(Binding):
    """CoolKit / eWeLink (API v2): REST + one WebSocket after ``userOnline``.

    The account sees its own devices, the one shared with it and its group (``group:<id>``).
    push: an ``update`` of the TH16's temperature. drop: every WebSocket aborted. garbage: a
    truncated ``update`` frame on the socket (the codec cannot tell which device it meant).
    """

    vendor = "coolkit"
    CLOUD: ClassVar[dict[str, Any]] = {
        "rate_min_interval": 0.02, "rate_window": 5.0, "user_online_interval": 0.05,
        "hb_interval": 1.0, "hb_grace": 0.5,
    }  # fmt: skip
    FAST: ClassVar[dict[str, Any]] = {
        "backoff_base": 0.05, "backoff_cap": 0.2, "attention_backoff": 0.6, "attention_cap": 1.0,
        "heartbeat_grace": 0.5, "command_interval": 0.0,
    }  # fmt: skip
    EMAIL = "demo@example.com"

    cloud: CoolkitCloud

    def emulator(self) -> CoolkitCloud:
        return CoolkitCloud(**self.CLOUD)

    def account(self, name: str) -> dict[str, Any]:
        return self.cloud.account_config(name, self.EMAIL, **self.FAST)

    def devices(self) -> set[str]:
        apikey = self.cloud.users[self.EMAIL].apikey
        ids = {
            d
            for d, dev in self.cloud.devices.items()
            if apikey == dev.owner or apikey in dev.shared_to
        }
        ids |= {GROUP_PREFIX + g for g, group in self.cloud.groups.items() if group.owner == apikey}
        return ids

    @property
    def device(self) -> str:
        return "1000000004"  # TH16: currentTemperature pushed as a string

    def settable(self) -> Settable:
        on = self.cloud.devices["1000000001"].params["switch"] == "on"
        return Settable("1000000001", "switch", not on, "off" if on else "on")

    def _temperature(self) -> float:
        return 10 + self.fresh(1, 150) / 10

    async def push(self) -> Change:
        value = self._temperature()
        await self.cloud.push(self.device, {"currentTemperature": str(value)})
        return Change("currentTemperature", value)

    def change_quietly(self) -> Change:
        value = self._temperature()
        self.cloud.devices[self.device].params["currentTemperature"] = str(value)
        return Change("currentTemperature", value)

    async def drop(self) -> None:
        assert self.cloud.conns, "no socket to drop"
        self.cloud.drop()

    async def garble(self) -> None:
        assert self.cloud.conns, "no socket to garble"
        await self.cloud.garble(1)

    def read(self, device: str, prop: str) -> Any:
        return self.cloud.devices[device].params[prop]


class AliyunBinding(Binding):
    """Aliyun Living IoT: API gateway + the MQTT app channel (bound to the account).

    push: a ``thing/properties`` of the light's Brightness. drop: every MQTT connection closed
    (the binding ends with it, so the connector must bind again). garbage: the next push (the
    Brightness change sent right after) is not JSON.
    """

    vendor = "aliyun"
    FAST: ClassVar[dict[str, Any]] = {
        "reconnect_min": 0.05, "reconnect_max": 0.3, "throttle_cooldown": 0.5, "keepalive": 30,
    }  # fmt: skip

    cloud: AliyunCloud

    def emulator(self) -> AliyunCloud:
        return AliyunCloud(devices=2)

    def account(self, name: str) -> dict[str, Any]:
        return self.cloud.account_config(name, **self.FAST)

    def devices(self) -> set[str]:
        return set(self.cloud.device_ids())

    @property
    def device(self) -> str:
        return self.cloud.device_ids(LIGHT_PK)[0]

    def settable(self) -> Settable:
        value = 100 - self.cloud.devices[self.device].props["Brightness"]["value"] // 2
        return Settable(self.device, "Brightness", value, value)

    async def push(self) -> Change:
        value = self.fresh(1, 99)
        self.cloud.set_property(self.device, {"Brightness": value})
        return Change("Brightness", value)

    def change_quietly(self) -> Change:
        value = self.fresh(1, 99)
        self.cloud.devices[self.device].props["Brightness"] = {"time": now_ms(), "value": value}
        return Change("Brightness", value)

    async def drop(self) -> None:
        assert self.cloud.drop_mqtt() >= 1, "no MQTT connection to drop"

    def read(self, device: str, prop: str) -> Any:
        return self.cloud.devices[device].props[prop]["value"]


class XkyBinding(Binding):
    """XiakeCloud: a REST API and nothing else, so the connector polls (every 0.2 s here).

    How it satisfies the contract without a push channel:

    - push: the device's ``desc`` changes in the emulator; the change is seen on the next poll.
    - change quietly: the same — every poll reads the whole listing, so a poll after the failure
      is the resync.
    - drop: the next ``get_device_list`` fails (HTTP 503): the session backs off, comes back
      and resyncs, as after a dropped socket.
    - garbage: the next ``get_device_list`` reply is not JSON (counted in ``bad_frames``).
    """

    vendor = "xky"
    cloud: XkyCloud

    def emulator(self) -> XkyCloud:
        return XkyCloud(devices=3, seed=7)

    def account(self, name: str) -> dict[str, Any]:
        return self.cloud.account_config(
            name, poll_interval=0.2, min_poll_interval=0.1, poll_jitter=0.0, backoff_cap=0.5
        )

    def devices(self) -> set[str]:
        return set(self.cloud.devices)

    @property
    def device(self) -> str:
        return sorted(self.cloud.devices)[0]

    def settable(self) -> Settable:
        value = f"set by the contract {self.fresh(1, 1000)}"
        return Settable(self.device, "desc", value, value)

    async def push(self) -> Change:
        return self.change_quietly()

    def change_quietly(self) -> Change:
        value = f"changed in the cloud {self.fresh(1, 1000)}"
        self.cloud.update_device(self.device, desc=value)
        return Change("desc", value)

    async def drop(self) -> None:
        self.cloud.fail(status=503, path="/get_device_list")

    async def garble(self) -> None:
        self.cloud.malformed(kind="garble", path="/get_device_list")

    def read(self, device: str, prop: str) -> Any:
        return getattr(self.cloud.devices[device], prop)


#: every binding, by vendor name (``gateway.vendors.VENDORS`` must not name one more)
BINDINGS: dict[str, type[Binding]] = {
    b.vendor: b for b in (TencentBinding, CoolkitBinding, AliyunBinding, XkyBinding)
}
