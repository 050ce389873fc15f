"""The Tencent emulator's push socket: the WebSocket server (``ActivePush``, ``YunApi``,
``Hello``), ``DeviceChange`` pushes and the random and firehose generators.
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

from protocols.model import RemoteProtocolError
from protocols.tencent import ws as tws

from ..base import Reject
from .faults import GARBAGE
from .model import (
    ERR_MISSING,
    ERR_PRODUCT,
    SimDevice,
    SimUser,
    now_ms,
    required_list,
)

log = logging.getLogger("cloud2mqtt.sim.tencent")


class SimSocket:
    __slots__ = ("conn", "last_rx", "queue", "subscribed", "uid", "writer")

    def __init__(self, conn: ServerConnection) -> None:
        self.conn = conn
        self.uid: str | None = None
        self.subscribed: dict[str, float] = {}  # device -> monotonic time of its last trace
        self.last_rx = time.monotonic()
        self.queue: asyncio.Queue[str | bytes] = asyncio.Queue(maxsize=2000)
        self.writer: asyncio.Task[None] | None = None


class PushSocket:
    """The WebSocket side of ``TencentCloud``.

    State it shares (set by ``TencentCloud.__init__``): ``_garble``, ``_garble_payloads``, ``_heartbeat_errors``,
    ``_nul_pad``, ``_seq``, ``_stall_until``, ``_watchers``, ``calls``, ``devices``,
    ``idle_timeout``, ``max_rate``, ``rate``, ``report_timestamps``, ``rng``, ``sockets``,
    ``stamp``, ``stats``, ``trace_timeout``, ``users``. From the other concerns it calls
    ``_random_values``, ``_spawn``, ``_tokenapi``, ``_user_of``.
    """

    def _push_to_user(self, user: SimUser, dev: SimDevice, subtype: str) -> None:
        frame = tws.device_change_frame(
            dev.device_id, "StatusChange", subtype, None, seq=next(self._seq), ts_ms=now_ms()
        )
        for sock in self.sockets:
            if sock.uid == user.uid:
                self._enqueue(sock, frame)

    # ------------------------------------------------------------------ pushes

    def _enqueue(self, sock: SimSocket, frame: str | bytes) -> None:
        try:
            sock.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.stats["push_dropped_full"] += 1

    def _deliver(self, device: str, frame: str) -> int:
        now = time.monotonic()
        sent = 0
        for sock in self._watchers.get(device, ()):
            traced = sock.subscribed[device]
            if now - traced > self.trace_timeout:
                self.stats["push_untraced"] += 1
                continue
            self._enqueue(sock, frame)
            sent += 1
        self.stats["pushes"] += sent
        return sent

    def _push(
        self,
        dev: SimDevice,
        type_: str,
        subtype: str,
        payload: Mapping[str, Any] | None,
        *,
        topic: str = "",
    ) -> int:
        frame = tws.device_change_frame(dev.device_id, type_, subtype, self._padded(payload),
                                        seq=next(self._seq), ts_ms=now_ms(), topic=topic)  # fmt: skip
        return self._deliver(dev.device_id, frame)

    def _padded(self, payload: Mapping[str, Any] | None) -> Mapping[str, Any] | bytes | None:
        """The device message, with ``nul_pad`` NUL bytes after it when that quirk is on (or
        cut short, while ``garble_payloads`` lasts)."""
        if payload is not None and self._garble_payloads > 0:
            self._garble_payloads -= 1
            self.stats["garbled_payloads"] += 1
            return orjson.dumps(payload)[:-2]
        if payload is None or not self._nul_pad:
            return payload
        return orjson.dumps(payload) + b"\x00" * self._nul_pad

    def device_timestamp(self, ms: int) -> int:
        """A device message's ``timestamp`` as seed 002 shows it: epoch seconds (``"s"``, the
        default), ``0`` (``"zero"``, also in the seed) or epoch ms (``"ms"``, not the seed's)."""
        unit = self.report_timestamps
        return ms // 1000 if unit == "s" else 0 if unit == "zero" else ms

    def report(
        self, device: str, props: Mapping[str, Any], *, client_token: str | None = None
    ) -> int:
        """The device reports property values (wire form); pushed as ``Property``/``Report``."""
        device, props = str(device), dict(props)  # as ``/_control/report`` sends them
        dev = self.devices[device]
        now = now_ms()
        for key, value in props.items():
            dev.values[key] = value
            dev.updated[key] = now
        body: dict[str, Any] = {
            "method": "report",
            "clientToken": client_token or f"report-{next(self._seq)}",
            "timestamp": self.device_timestamp(now),
            "params": props,
        }
        return self._push(
            dev, "Property", "Report", body, topic=f"$thing/up/property/{dev.product_id}/{dev.name}"
        )

    def event(
        self,
        device: str,
        event: str,
        params: Mapping[str, Any] | None = None,
        *,
        level: str | None = None,
    ) -> int:
        """The device posts the event ``event`` (an id); pushed as ``Event``/``Report``."""
        device, event_id, params = str(device), str(event), dict(params or {})  # as ``/_control/event`` sends them
        dev = self.devices[device]
        spec = next((e for e in dev.schema.events if e.id == event_id), None)
        body = {
            "method": "event_post",
            "version": "1.0",
            "eventId": event_id,
            "type": level or (spec.level if spec else "info"),
            "timestamp": self.device_timestamp(now_ms()),
            "params": params,
            "clientToken": f"event-{next(self._seq)}",
        }
        return self._push(
            dev, "Event", "Report", body, topic=f"$thing/up/event/{dev.product_id}/{dev.name}"
        )

    def set_online(self, device: str, online: bool) -> int:
        dev = self.devices[device]
        dev.online = online
        return self._push(dev, "StatusChange", "Online" if online else "Offline", None)

    def push_raw(self, frame: str | bytes) -> None:
        """Send one frame as it is to every subscribed socket (tests of bad input)."""
        for sock in self.sockets:
            if sock.subscribed:
                self._enqueue(sock, frame)

    async def _generator(self) -> None:
        """Random property reports, events and availability flips at ``rate`` per user."""
        interval = 1.0 / self.rate
        while True:
            await asyncio.sleep(interval)
            watched = self._watchers
            for user in self.users.values():
                devs = [d for d in user.devices if d in watched]
                if devs:
                    self._random_change(self.devices[self.rng.choice(devs)])

    def _random_change(self, dev: SimDevice) -> None:
        roll = self.rng.random()
        if not dev.online or roll > 0.97:
            self.set_online(dev.device_id, not dev.online)
            return
        if roll > 0.9:
            if dev.kind == "light":
                self.event(dev.device_id, "status_report", {"status": 0, "message": "ok"})
            else:
                self.event(
                    dev.device_id, "low_voltage", {"voltage": round(2 + self.rng.random(), 2)}
                )
            return
        self.report(dev.device_id, self._random_values(dev))

    async def _max_rate(self, sock: SimSocket) -> None:
        """Reports for the socket's devices as fast as it drains (the load bench's firehose)."""
        n = 0
        while True:
            devices = [d for d in sock.subscribed if self.devices[d].online]
            if not devices:
                await asyncio.sleep(0.05)
                continue
            dev = self.devices[devices[n % len(devices)]]
            n += 1
            params = self._random_values(dev)
            now = time.time_ns()
            if self.stamp:
                params["sent_ts"] = now / 1e6
            dev.values.update((k, v) for k, v in params.items() if k != "sent_ts")
            body = {
                "method": "report",
                "clientToken": f"r{n}",
                "timestamp": self.device_timestamp(now // 1_000_000),
                "params": params,
            }
            frame = tws.device_change_frame(dev.device_id, "Property", "Report", self._padded(body),
                                            seq=next(self._seq),
                                            ts_ms=now // 1_000_000)  # fmt: skip
            await sock.queue.put(frame)
            self.stats["pushes"] += 1

    # ------------------------------------------------------------------ WebSocket

    async def _ws_handler(self, conn: ServerConnection) -> None:
        sock = SimSocket(conn)
        self.sockets.add(sock)
        self.stats["ws_connections"] += 1
        self.connect_times.append(time.monotonic())
        sock.writer = self._spawn(self._writer(sock))
        firehose: asyncio.Task[None] | None = None
        try:
            while True:
                remaining = self.idle_timeout - (time.monotonic() - sock.last_rx)
                if remaining <= 0:
                    self.stats["idle_closed"] += 1
                    await conn.close(1000, "idle")
                    return
                try:
                    message = await asyncio.wait_for(conn.recv(), remaining)
                except TimeoutError:
                    continue
                sock.last_rx = time.monotonic()
                await self._on_frame(sock, message)
                if self.max_rate and firehose is None and sock.subscribed:
                    firehose = self._spawn(self._max_rate(sock))
        except ConnectionClosed:
            pass
        finally:
            self.sockets.discard(sock)
            for device in sock.subscribed:
                watchers = self._watchers.get(device)
                if watchers is not None:
                    watchers.discard(sock)
                    if not watchers:
                        del self._watchers[device]
            if firehose is not None:
                firehose.cancel()
            if sock.writer is not None:
                sock.writer.cancel()

    async def _writer(self, sock: SimSocket) -> None:
        """Sends queued frames, one WebSocket message each, as the cloud does.

        Everything queued by the time the writer runs leaves in one write (websockets' own
        ``send_context`` around several ``send_text``): one ``send()`` per frame made this
        emulator, not the gateway under test, the bottleneck of bench.load at 20k msg/s.
        """
        loop = asyncio.get_running_loop()
        conn, queue = sock.conn, sock.queue
        with contextlib.suppress(ConnectionClosed):
            while True:
                batch = [await queue.get()]
                while not queue.empty() and len(batch) < 256:
                    batch.append(queue.get_nowait())
                while self._stall_until > loop.time():
                    await asyncio.sleep(self._stall_until - loop.time())
                async with conn.send_context():
                    for frame in batch:
                        if self._garble > 0:
                            self._garble -= 1
                            frame = GARBAGE[self.stats["garbled"] % len(GARBAGE)]
                            self.stats["garbled"] += 1
                        if isinstance(frame, str):
                            conn.protocol.send_text(frame.encode())
                        else:
                            conn.protocol.send_binary(frame)

    async def _on_frame(self, sock: SimSocket, message: str | bytes) -> None:
        try:
            req = tws.parse_request(message)
        except RemoteProtocolError as exc:  # a bad client frame is skipped, never fatal
            self.stats["bad_client_frames"] += 1
            log.debug("bad client frame: %s", exc)
            return
        self.calls.append(f"ws:{req.action}")
        req_id = req.req_id if req.req_id is not None else ""
        if req.action == "ActivePush":
            self._enqueue(sock, tws.active_push_reply(req_id, self._active_push(sock, req.params)))
        elif req.action == "YunApi":
            self._enqueue(sock, await self._yunapi(sock, req_id, req.params))
        elif req.action == "Hello":
            self._enqueue(sock, tws.reply_frame(req_id, {"result": "hello world"}))
        else:
            self._enqueue(
                sock,
                tws.reply_frame(
                    req_id, {}, error="-1", error_message=f"unknown action {req.action}"
                ),
            )

    def _active_push(self, sock: SimSocket, params: Mapping[str, Any]) -> list[str]:
        self.stats["active_push"] += 1
        try:
            user = self._user_of(params.get("AccessToken"))
        except Reject:
            return []  # the seed's failure form: error "" and an empty deviceIds
        wanted = params.get("DeviceIds")
        if not isinstance(wanted, list):
            return []
        now = time.monotonic()
        accepted = [
            d
            for d in wanted
            if isinstance(d, str) and d in self.devices and self.devices[d].owner == user.uid
        ]
        sock.uid = user.uid
        for device in accepted:
            sock.subscribed[device] = now
            self._watchers.setdefault(device, set()).add(sock)
        return accepted

    async def _yunapi(self, sock: SimSocket, req_id: str | int, params: Mapping[str, Any]) -> str:
        action = params.get("Action")
        inner = params.get("ActionParams")
        inner = dict(inner) if isinstance(inner, Mapping) else {}
        if "AccessToken" not in inner and "AccessToken" in params:  # iOS puts it next to Action
            inner["AccessToken"] = params["AccessToken"]
        request_id = str(inner.get("RequestId") or req_id)
        if self._heartbeat_errors:
            self._heartbeat_errors -= 1
            return tws.reply_frame(
                req_id, {}, error="-1", error_message="后台连接出错，请联系管理员"
            )
        try:
            if not isinstance(action, str) or not action:
                raise Reject(ERR_MISSING, "Action")
            if action == tws.HEARTBEAT_ACTION:
                self.stats["heartbeats"] += 1
                user = self._user_of(inner.get("AccessToken"))
                ids = required_list(inner, "DeviceIds")
                foreign = [
                    d for d in ids if not (d in self.devices and self.devices[d].owner == user.uid)
                ]
                if foreign:
                    raise Reject(ERR_PRODUCT, "App对操作该产品无权限")
                now = time.monotonic()
                for device in ids:
                    if device in sock.subscribed:
                        sock.subscribed[device] = now
                response: dict[str, Any] = {}
            else:
                response = await self._tokenapi(action, inner)
        except Reject as rej:
            response = {"Error": {"Code": rej.code, "Message": rej.message}}
        response["RequestId"] = request_id
        return tws.reply_frame(req_id, {"Response": response})
