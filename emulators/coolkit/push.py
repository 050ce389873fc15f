"""The CoolKit emulator's push socket: the WebSocket (``userOnline`` handshake, heartbeats,
commands) and the device updates it pushes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from protocols.coolkit.rest import RATE_LIMITED

from .model import (
    Conn,
    SimDevice,
)

log = logging.getLogger("cloud2mqtt.sim.coolkit")


class PushSocket:
    """The WebSocket side of ``CoolkitCloud``.

    State it shares (set by ``CoolkitCloud.__init__``): ``_by_at``, ``_fail_504``,
    ``_last_online``, ``_never_answer``, ``apps``, ``commands``, ``conns``, ``devices``,
    ``handshakes``, ``pings``, ``hb_grace``, ``hb_interval``, ``rng``, ``sessions``,
    ``user_online_interval``, ``violations``. From the other concerns it calls ````.
    """


    async def push(self, deviceid: str, params: dict[str, Any]) -> None:
        deviceid, params = str(deviceid), dict(params)  # as ``/_control/push`` sends them
        dev = self.devices[deviceid]
        self._apply(dev, params)
        await self._broadcast(dev, {"action": "update", "deviceid": deviceid, "apikey": dev.owner,
                                    "userAgent": "device", "params": params, "from": "device"})  # fmt: skip

    async def set_online(self, deviceid: str, online: bool) -> None:
        deviceid, online = str(deviceid), bool(online)  # as ``/_control/set_online`` sends them
        dev = self.devices[deviceid]
        dev.online = online
        await self._broadcast(dev, {"action": "sysmsg", "deviceid": deviceid, "apikey": dev.owner,
                                    "ts": int(time.time()), "params": {"online": online}})  # fmt: skip


    async def _pusher(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            for dev in list(self.devices.values()):
                if not dev.online:
                    continue
                if "currentTemperature" in dev.params:
                    t = round(float(dev.params["currentTemperature"]) + self.rng.uniform(-0.3, 0.3), 1)
                    await self.push(dev.deviceid, {"currentTemperature": str(t)})
                elif "power" in dev.params and dev.params.get("switch") == "on":
                    await self.push(dev.deviceid, {"power": f"{self.rng.uniform(400, 600):.2f}"})


    async def _ws_handler(self, ws: ServerConnection) -> None:
        if ws.request is None or ws.request.path.split("?")[0] != "/api/ws":
            await ws.close(1008, "path must be /api/ws")
            return
        conn = Conn(ws)
        self.conns.append(conn)
        try:
            if await self._ws_handshake(conn):
                await self._ws_loop(conn)
        except ConnectionClosed:
            pass
        finally:
            self.conns.remove(conn)

    async def _ws_send(self, conn: Conn, doc: Mapping[str, Any]) -> None:
        if not conn.stalled:
            with contextlib.suppress(ConnectionClosed):
                await conn.ws.send(orjson.dumps(doc).decode())

    async def _ws_handshake(self, conn: Conn) -> bool:
        try:
            raw = await asyncio.wait_for(conn.ws.recv(), self.hb_interval + self.hb_grace)
        except TimeoutError:
            await conn.ws.close(1000, "no handshake")
            return False
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            doc = None
        seq = doc.get("sequence") if isinstance(doc, dict) else None

        async def refuse(code: int, reason: str, apikey: Any = None) -> bool:
            self.handshakes.append((time.monotonic(), str(apikey), code))
            await self._ws_send(conn, {"error": code, "reason": reason, "apikey": apikey, "sequence": seq,
                                       "actionName": "userOnline"})  # fmt: skip
            await conn.ws.close(1000, reason)
            return False

        if not isinstance(doc, dict) or doc.get("action") != "userOnline":
            return await refuse(400, "first frame must be userOnline")
        required = ("at", "apikey", "appid", "nonce", "userAgent", "sequence")
        if any(not isinstance(doc.get(k), str) or not doc.get(k) for k in required):
            return await refuse(400, "incomplete parameters", doc.get("apikey"))
        sess = self._by_at.get(doc["at"])
        if (
            doc["appid"] not in self.apps
            or sess is None
            or not sess.valid
            or self.sessions.get((sess.user.apikey, sess.appid)) is not sess
            or sess.at_expires <= time.monotonic()
            or sess.user.apikey != doc["apikey"]
            or sess.appid != doc["appid"]
        ):
            return await refuse(406, "Authentication Failed", doc["apikey"])
        now = time.monotonic()
        last = self._last_online.get(sess.user.apikey)
        self._last_online[sess.user.apikey] = now
        if last is not None and now - last < self.user_online_interval:
            self.violations.append(f"userOnline for {sess.user.email} {now - last:.3f}s after the previous one")
            return await refuse(RATE_LIMITED, "userOnline repeated too often; this IP would be blocked", doc["apikey"])
        conn.session = sess
        self.handshakes.append((now, sess.user.apikey, 0))
        flag = "hb" if sess.version == 2 else "hbl"
        await self._ws_send(conn, {"error": 0, "apikey": sess.user.apikey,
                                   "config": {flag: 1, "hbInterval": self.hb_interval}, "sequence": doc["sequence"]})  # fmt: skip
        return True

    async def _ws_loop(self, conn: Conn) -> None:
        while True:
            try:
                raw = await asyncio.wait_for(conn.ws.recv(), self.hb_interval + self.hb_grace)
            except TimeoutError:
                log.info("dropping a socket that missed its heartbeat")
                await conn.ws.close(1000, "heartbeat timeout")
                return
            if conn.stalled:
                continue
            if raw == "ping":
                self.pings += 1
                with contextlib.suppress(ConnectionClosed):
                    await conn.ws.send("pong")
                continue
            try:
                doc = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(doc, dict) and doc.get("action") in ("update", "query"):
                await self._ws_command(conn, doc)

    async def _ws_command(self, conn: Conn, doc: dict[str, Any]) -> None:
        sess = conn.session
        assert sess is not None
        self.commands.append(doc)
        seq = doc.get("sequence")
        deviceid = doc.get("deviceid")
        reply: dict[str, Any] = {"deviceid": deviceid, "apikey": doc.get("apikey"), "sequence": seq}
        try:
            seq_n = int(seq) if isinstance(seq, str) else None
        except ValueError:
            seq_n = None
        if seq_n is None or seq_n <= conn.last_seq:
            await self._ws_send(conn, {**reply, "error": 400, "reason": "sequence must increase"})
            return
        conn.last_seq = seq_n
        dev = self.devices.get(deviceid) if isinstance(deviceid, str) else None
        me = sess.user.apikey
        allowed = dev is not None and (
            (dev.owner == me and doc.get("apikey") == me)
            or (me in dev.shared_to and doc.get("apikey") == dev.owner and doc.get("selfApikey") == me)
        )
        if dev is None or not allowed:
            await self._ws_send(conn, {**reply, "error": 406, "reason": "access denied"})
            return
        if self._never_answer > 0:
            self._never_answer -= 1
            return
        if self._fail_504 > 0 or not dev.online:
            self._fail_504 = max(0, self._fail_504 - 1)
            await self._ws_send(conn, {**reply, "error": 504, "reason": "Request Timeout"})
            return
        params = doc.get("params")
        if doc["action"] == "query":
            names = params if isinstance(params, list) else []
            out = {k: v for k, v in dev.params.items() if not names or k in names}
            await self._ws_send(conn, {**reply, "error": 0, "params": out})
            return
        if not isinstance(params, dict):
            await self._ws_send(conn, {**reply, "error": 400, "reason": "params must be an object"})
            return
        await self._ws_send(conn, {**reply, "error": 0})
        await self.push(dev.deviceid, params)

    def _apply(self, dev: SimDevice, params: Mapping[str, Any]) -> None:
        for key, value in params.items():
            if key == "switches" and isinstance(value, list) and isinstance(dev.params.get("switches"), list):
                by_outlet = {s.get("outlet"): s for s in dev.params["switches"] if isinstance(s, dict)}
                for entry in value:
                    if isinstance(entry, dict) and entry.get("outlet") in by_outlet:
                        by_outlet[entry["outlet"]].update(entry)
            elif isinstance(value, dict) and isinstance(dev.params.get(key), dict):
                dev.params[key].update(value)
            else:
                dev.params[key] = value

    async def _broadcast(self, dev: SimDevice, doc: Mapping[str, Any]) -> None:
        for conn in list(self.conns):
            sess = conn.session
            if sess is None or not sess.valid:
                continue
            if sess.user.apikey == dev.owner or sess.user.apikey in dev.shared_to:
                await self._ws_send(conn, doc)


