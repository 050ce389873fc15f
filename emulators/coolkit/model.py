"""The CoolKit emulator's model: users, devices, groups, sessions, and the demo population.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from websockets.asyncio.server import ServerConnection

REGIONS = ("cn", "as", "us", "eu", "test")
Version = Literal[1, 2]


@dataclass
class SimUser:
    email: str
    password: str
    region: str
    country_code: str = "+1"
    phone: str | None = None
    apikey: str = field(default_factory=lambda: str(uuid.uuid4()))
    family_id: str = field(default_factory=lambda: secrets.token_hex(12))

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"apikey": self.apikey, "email": self.email, "countryCode": self.country_code}
        if self.phone:
            out["phoneNumber"] = self.phone
        return out


@dataclass
class SimDevice:
    deviceid: str
    uiid: int
    name: str
    owner: str  # apikey
    params: dict[str, Any]
    online: bool = True
    shared_to: set[str] = field(default_factory=set)
    model: str = ""
    tags: dict[str, Any] = field(default_factory=dict)
    index: int = 0
    devicekey: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class SimGroup:
    id: str
    name: str
    owner: str
    members: list[str]
    params: dict[str, Any]
    index: int = 0


@dataclass
class SimSession:
    user: SimUser
    appid: str
    version: Version
    at: str
    rt: str
    at_expires: float
    rt_expires: float
    valid: bool = True


@dataclass
class Conn:
    ws: ServerConnection
    session: SimSession | None = None
    last_seq: int = -1
    stalled: bool = False



class Population:
    """Users, devices and groups (mixed into ``CoolkitCloud``; no I/O of its own).

    State it shares (set by ``CoolkitCloud.__init__``): ``devices``, ``groups``, ``users``.
    From the other concerns it calls ````.
    """


    def add_user(self, email: str, password: str, region: str = "eu", country_code: str = "+1",
                 phone: str | None = None) -> SimUser:  # fmt: skip
        user = SimUser(email, password, region, country_code, phone)
        self.users[email] = user
        return user

    def add_device(self, deviceid: str, uiid: int, name: str, owner: SimUser, params: dict[str, Any],
                   *, online: bool = True, shared_to: tuple[SimUser, ...] = (), model: str = "",
                   tags: dict[str, Any] | None = None) -> SimDevice:  # fmt: skip
        dev = SimDevice(deviceid, uiid, name, owner.apikey, dict(params), online,
                        {u.apikey for u in shared_to}, model, dict(tags or {}), len(self.devices))  # fmt: skip
        self.devices[deviceid] = dev
        return dev

    def add_group(self, gid: str, name: str, owner: SimUser, members: list[str]) -> SimGroup:
        group = SimGroup(gid, name, owner.apikey, list(members), {"switch": "off"}, 1000 + len(self.groups))
        self.groups[gid] = group
        return group

    def remove_device(self, deviceid: str) -> None:
        self.devices.pop(deviceid, None)

    def _demo(self, extra: int) -> None:
        demo = self.add_user("demo@example.com", "demo-pass", "eu", "+44")
        owner = self.add_user("owner@example.com", "owner-pass", "eu", "+44")
        self.add_user("asia@example.com", "asia-pass", "as", "+65")
        sw = {"startup": "off", "rssi": -50, "fwVersion": "3.5.0", "sledOnline": "on"}
        self.add_device("1000000001", 1, "Desk lamp", demo, {"switch": "off", **sw}, model="BASIC R2")
        self.add_device(
            "1000000002", 2, "Kitchen 2CH", demo,
            {"switches": [{"switch": "off", "outlet": i} for i in range(4)], "rssi": -61, "fwVersion": "3.5.0"},
            model="DUAL R2", tags={"ck_channel_name": {"0": "Hob light", "1": "Extractor"}},
        )  # fmt: skip
        self.add_device(
            "1000000003", 104, "Living bulb", demo,
            {"switch": "on", "ltype": "white", "white": {"br": 80, "ct": 120},
             "color": {"r": 255, "g": 255, "b": 255, "br": 100}, "fwVersion": "1.2.0"},
            model="B05-B-A60",
        )  # fmt: skip
        self.add_device(
            "1000000004", 15, "Greenhouse TH16", demo,
            {"switch": "off", "mainSwitch": "off", "deviceType": "normal", "currentTemperature": "21.5",
             "currentHumidity": "48", "sensorType": "AM2301", "rssi": -70},
            model="TH16",
        )  # fmt: skip
        self.add_device(
            "1000000005", 32, "Washer POWR2", demo,
            {"switch": "on", "startup": "stay", "power": "512.30", "voltage": "230.10", "current": "2.23"},
            model="POWR2",
        )  # fmt: skip
        self.add_device("1000000006", 6, "Garden pump", demo, {"switch": "off", **sw}, online=False)
        self.add_device("1000000007", 9999, "Mystery gadget", demo, {"foo": "bar", "level": 3})
        self.add_device("10000000a1", 6, "Neighbour's switch", owner, {"switch": "off", **sw}, shared_to=(demo,))
        self.add_group("g-lights", "All lamps", demo, ["1000000001", "1000000006"])
        for i in range(extra):
            self.add_device(f"20{i:08x}", 1, f"Switch {i}", demo, {"switch": "off", **sw})

