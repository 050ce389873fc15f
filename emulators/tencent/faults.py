"""The Tencent emulator's faults, in-process or by ``POST /_control/<fault>``."""

from __future__ import annotations

import asyncio
import time
from typing import Final

import orjson
from aiohttp import web

from ..base import fault_table
from .model import REPORT_TIMESTAMPS, TEMPLATE_FORMS

GARBAGE: Final = (
    "{not json",
    orjson.dumps(
        {
            "action": "DeviceChange",
            "push": True,
            "params": {
                "Time": "2019-04-11T20:42:36+08:00",
                "Type": "Event",
                "SubType": "Report",
                "Topic": "",
                # the seed's Event example payload, as damaged by the document extraction
                "Payload": "ewogICAgICAgICJtZXRob2QiOiAiZXZlbnRfcG9zdCIsciaGICAgICAgInZlcnPb24iOia"
                "iMS4wIiwKICAgICAgICAiZXZlbnRJZCI6ICJsb3dfdm9sdGFnZSIsciaGICAgICAgInBhcmF",
                "Seq": 1,
                "DeviceId": "",
            },
        }
    ).decode(),
    b"\x00\xff\xfe garbage",
    '{"push": true, "action": "DeviceChange"}',
)


class Faults:
    """Misbehaviour on demand (mixed into ``TencentCloud``).

    State it shares (set by ``TencentCloud.__init__``): ``_garble``, ``_heartbeat_errors``,
    ``_nul_pad``, ``_refuse_logins``, ``_slow``, ``_stall_until``, ``devices``,
    ``report_timestamps``, ``sockets``, ``stats``, ``templates``, ``tokens``, ``users``.
    From the other concerns it calls ``set_online``.

    The methods ``/_control`` calls coerce their JSON arguments (a count may come as ``"3"``).
    """

    FAULTS = fault_table(
        "stall", "garble", "garble_payloads", "expire_tokens", "refuse_logins", "slow",
        "heartbeat_errors", "silence", "nul_pad", "report", "event", "online", "offline",
        drop="drop_sockets", report_timestamps="set_report_timestamps", templates="set_templates",
    )  # fmt: skip

    def drop_sockets(self) -> int:
        """Abort every WebSocket without a close handshake."""
        n = len(self.sockets)
        for sock in list(self.sockets):
            sock.conn.transport.abort()
        self.stats["dropped"] += n
        return n

    def stall(self, seconds: float = 5) -> None:
        self._stall_until = asyncio.get_running_loop().time() + float(seconds)

    def garble(self, count: int = 1) -> None:
        self._garble += int(count)

    def garble_payloads(self, count: int = 1) -> None:
        """The next ``count`` device messages go out cut short: the frame and its DeviceId are
        fine, the base64 Payload decodes to JSON that ends mid-object."""
        self._garble_payloads += int(count)

    def expire_tokens(self) -> int:
        now = time.time()
        for token in self.tokens.values():
            token.expires = min(token.expires, now)
        return len(self.tokens)

    def refuse_logins(self, count: int = -1) -> None:
        """Refuse the next ``count`` logins (``-1``: all of them until called with ``0``)."""
        self._refuse_logins = int(count)

    def slow(self, seconds: float = 5) -> None:
        self._slow = max(0.0, float(seconds))

    def heartbeat_errors(self, count: int = 1) -> None:
        self._heartbeat_errors = int(count)

    def silence(self, seconds: float = 5) -> int:
        """Every open socket goes silent for ``seconds``: nothing is sent (as ``stall``) and
        nothing is read, so neither WebSocket pings nor app heartbeats are answered. Returns
        the number of sockets silenced."""
        loop = asyncio.get_running_loop()
        seconds = float(seconds)
        self.stall(seconds)
        silenced = 0
        for sock in list(self.sockets):
            transport = sock.conn.transport
            if transport.is_closing():
                continue
            transport.pause_reading()
            loop.call_later(seconds, _resume_reading, transport)
            silenced += 1
        self.stats["silenced"] += silenced
        return silenced

    def set_report_timestamps(self, unit: str = "s") -> None:
        """The ``timestamp`` of device messages: ``"s"`` (seed 002, the default), ``"zero"``
        (also seen in the seed) or ``"ms"``."""
        unit = str(unit)
        if unit not in REPORT_TIMESTAMPS:
            raise ValueError(f"unit must be one of {', '.join(REPORT_TIMESTAMPS)}")
        self.report_timestamps = unit

    def nul_pad(self, count: int = 4) -> None:
        """Append ``count`` NUL bytes to every device message before base64 (0: off), as real
        devices' fixed-size buffers do."""
        count = int(count)
        if count < 0:
            raise ValueError("count must be >= 0")
        self._nul_pad = count

    def set_templates(self, form: str = "mixed") -> None:
        """``AppGetProducts`` sends ``DataTemplate`` as an ``"object"``, a JSON ``"string"``, or
        ``"mixed"`` (the default: the light as an object, the sensor as a string)."""
        form = str(form)
        if form not in TEMPLATE_FORMS:
            raise ValueError(f"form must be one of {', '.join(TEMPLATE_FORMS)}")
        self.templates = form

    def online(self, device: str) -> int:
        """``device`` comes online (a ``StatusChange``/``Online`` push)."""
        return self.set_online(str(device), True)

    def offline(self, device: str) -> int:
        """``device`` goes offline (a ``StatusChange``/``Offline`` push)."""
        return self.set_online(str(device), False)

    async def _state(self, request: web.Request) -> web.Response:
        state = {
            "stats": dict(self.stats),
            "sockets": len(self.sockets),
            "subscribed": sorted({d for s in self.sockets for d in s.subscribed}),
            "users": len(self.users),
            "devices": {
                d: {"online": v.online, "values": v.values} for d, v in self.devices.items()
            },
        }
        return web.Response(body=orjson.dumps(state), content_type="application/json")


def _resume_reading(transport: asyncio.Transport) -> None:
    if not transport.is_closing():
        transport.resume_reading()
