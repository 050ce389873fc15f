"""A small asyncio MQTT client around ``codec``: the one MQTT client of the project.

Theory of operation
-------------------
``publish()`` never awaits: it encodes one packet and appends it to an outgoing list; the first
publish of a loop iteration schedules one ``flush`` that writes the whole list with a single
``transport.write``. That is what lets one process publish >100k msg/s (the hot-path rule "never
await each QoS0 publish; batch writes").

QoS 1 publishes take a packet id and wait in ``_inflight`` until their PUBACK; past the window
(the broker's Receive Maximum, or ``max_inflight``) they queue in ``_pending``. While the link is
down QoS 0 messages are dropped and counted (the gateway republishes every retained topic after a
reconnect, so state is not lost) and QoS 1 messages queue up to ``max_queue``; on reconnect the
unacknowledged ones are sent again with DUP set.

``congested`` is true while the transport is paused (its buffer passed the high-water mark) or
the QoS 1 queue is long; ``await drain()`` is how callers apply backpressure to the vendors.

``connect()`` tries MQTT 5 and falls back to 3.1.1 when the broker refuses the protocol version.
With ``reconnect=True`` a supervisor task reconnects with backoff and full jitter, resubscribes
everything that was subscribed, and then calls ``on_connect``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl as _ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..backoff import Backoff
from ..flow import Flow, hold_reading
from . import codec
from .codec import (
    CONNACK,
    PINGRESP,
    PUBACK,
    PUBLISH,
    SUBACK,
    Connect,
    MqttProtocolError,
    decode_connack,
    decode_publish,
    decode_suback,
    encode_connect,
    encode_props,
    encode_puback,
    encode_publish,
    encode_subscribe,
)

__all__ = ["ConnectRefused", "MqttClient", "Will"]

log = logging.getLogger("cloud2mqtt.mqtt")

OnMessage = Callable[[str, bytes, dict[str, Any]], None]
OnConnect = Callable[[], Awaitable[None] | None]

_UNSUPPORTED_VERSION = (0x01, 0x84)  # v3.1.1 return code 1, v5 reason 0x84
_REASONS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x88: "server unavailable",
    0x8A: "banned",
}


# Queued packets are written at the end of the loop iteration, or as soon as this many are
# queued: one vendor read can carry thousands of frames (libuv reads a ready socket up to 32
# times per iteration), and the transport's high-water mark, hence ``congested``, only sees
# what was written. Without it a 2x overload held ~30 MB in the write buffer, not 4 MiB.
_WRITE_AT = 1024

class ConnectRefused(ConnectionError):
    def __init__(self, rc: int) -> None:
        super().__init__(f"CONNACK refused: {_REASONS.get(rc, 'reason')} ({rc:#x})")
        self.rc = rc

    @property
    def auth(self) -> bool:
        return self.rc in (4, 5, 0x86, 0x87)


@dataclass(slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True
    props: dict[str, Any] | None = None


class _Proto(asyncio.Protocol):
    __slots__ = ("client", "hold", "parser", "transport")

    def __init__(self, client: MqttClient) -> None:
        self.client = client
        self.parser = codec.Parser()
        self.transport: asyncio.Transport | None = None
        self.hold: asyncio.Task[None] | None = None  # reading paused for the client's flow

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=4 << 20)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        try:
            packets = self.parser.feed(data)
        except MqttProtocolError as exc:
            log.error("broker sent malformed MQTT (%s); closing", exc)
            assert self.transport is not None
            self.transport.close()
            return
        self.client._on_packets(self, packets)
        flow = self.client.flow
        if (
            flow is not None
            and flow.congested
            and (self.hold is None or self.hold.done())
            and self.transport is not None
        ):
            self.hold = hold_reading(self.transport, flow)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._on_lost(self, exc)

    def pause_writing(self) -> None:
        self.client._paused = True
        self.client._update_congestion()

    def resume_writing(self) -> None:
        self.client._paused = False
        self.client._update_congestion()


class MqttClient:
    def __init__(
        self,
        host: str,
        port: int = 1883,
        *,
        client_id: str,
        username: str | None = None,
        password: str | bytes | None = None,
        ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        keepalive: int = 60,
        protocol: int = 5,
        will: Will | None = None,
        on_message: OnMessage | None = None,
        on_connect: OnConnect | None = None,
        on_disconnect: Callable[[Exception | None], None] | None = None,
        reconnect: bool = True,
        connect_timeout: float = 10.0,
        max_inflight: int = 1000,
        max_queue: int = 100_000,
        backoff: Backoff | None = None,
        connect_props: dict[str, Any] | None = None,
        flow: Flow | None = None,
    ) -> None:
        if protocol not in (4, 5):
            raise ValueError("protocol must be 4 (MQTT 3.1.1) or 5 (MQTT 5)")
        self.host = host
        self.port = port
        self.client_id = client_id
        self.username = username
        self.password = password.encode() if isinstance(password, str) else password
        self.ssl = ssl
        self.server_hostname = server_hostname
        self.keepalive = keepalive
        self.requested_protocol = protocol
        self.protocol = protocol
        self.will = will
        self.on_message = on_message
        # Messages received are themselves published elsewhere (the Aliyun app channel): stop
        # reading while that side is congested (gateway/flow.py).
        self.flow = flow
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.reconnect = reconnect
        self.connect_timeout = connect_timeout
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self.backoff = backoff or Backoff(0.5, 30.0)
        self.connect_props = connect_props

        self.connected = False
        self.published = 0
        self.dropped = 0
        self.received = 0
        self._proto: _Proto | None = None
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_id = 0
        self._inflight: dict[int, bytes] = {}
        self._window = max_inflight
        self._pending: collections.deque[tuple[bytes, bytes, bool, bytes | None]] = (
            collections.deque()
        )
        self._waiters: dict[int, asyncio.Future[Any]] = {}
        self._connack: asyncio.Future[codec.Connack] | None = None
        self._subscriptions: dict[str, int] = {}
        self._paused = False
        self.congested = False
        self._uncongested = asyncio.Event()
        self._uncongested.set()
        self._supervisor: asyncio.Task[None] | None = None
        self._lost: asyncio.Event = asyncio.Event()
        self._ping_handle: asyncio.TimerHandle | None = None
        self._last_rx = 0.0
        self._closing = False

    # ------------------------------------------------------------------ connection

    async def connect(self) -> None:
        """Connect once (raising on failure); with ``reconnect`` keep the link up afterwards."""
        self._loop = asyncio.get_running_loop()
        self._closing = False
        await self._connect_once()
        if self.reconnect and self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name="mqtt-supervisor")

    async def _connect_once(self) -> None:
        loop = asyncio.get_running_loop()
        versions = [5, 4] if self.requested_protocol == 5 else [4]
        last_exc: BaseException | None = None
        for version in versions:
            self.protocol = version
            try:
                await self._attempt(loop, version)
                return
            except ConnectRefused as exc:
                if exc.rc in _UNSUPPORTED_VERSION and version == 5:
                    last_exc = exc
                    continue
                raise
            except ConnectionResetError as exc:
                # Some 3.1.1-only brokers just close on a v5 CONNECT.
                if version == 5:
                    last_exc = exc
                    continue
                raise
        assert last_exc is not None
        raise last_exc

    async def _attempt(self, loop: asyncio.AbstractEventLoop, version: int) -> None:
        # Forget the previous connection first: its late connection_lost must not fail this
        # attempt's CONNACK future (seen when a broker refuses MQTT 5 and closes).
        self._proto = None
        self._transport = None
        self._connack = loop.create_future()
        transport, proto = await asyncio.wait_for(
            loop.create_connection(
                lambda: _Proto(self),
                self.host,
                self.port,
                ssl=self.ssl,
                server_hostname=self.server_hostname if self.ssl else None,
            ),
            self.connect_timeout,
        )
        self._proto = proto
        self._transport = transport
        will = self.will
        packet = Connect(
            client_id=self.client_id,
            protocol=version,
            keepalive=self.keepalive,
            clean_start=True,
            username=self.username,
            password=self.password,
            will_topic=will.topic if will else None,
            will_payload=will.payload if will else b"",
            will_qos=will.qos if will else 0,
            will_retain=will.retain if will else False,
            will_props=will.props if will else None,
            props=dict(self.connect_props or {}),
        )
        transport.write(encode_connect(packet))
        try:
            connack = await asyncio.wait_for(self._connack, self.connect_timeout)
        except BaseException:
            transport.close()
            raise
        if connack.reason != 0:
            transport.close()
            raise ConnectRefused(connack.reason)
        self._window = min(self.max_inflight, connack.props.get("receive_maximum", 65535))
        self.connected = True
        self._lost.clear()
        self._last_rx = loop.time()
        self._schedule_ping()
        # Unacknowledged QoS 1 messages go again, marked DUP, before anything new.
        for pid, pkt in list(self._inflight.items()):
            self._out.append(bytes((pkt[0] | 0x08,)) + pkt[1:])
            del pid
        self._fill_window()
        self._schedule_flush()
        self.backoff.reset()
        if self._subscriptions:
            await self.subscribe(list(self._subscriptions.items()))
        log.info(
            "MQTT connected to %s:%s as %s (MQTT %s)",
            self.host,
            self.port,
            self.client_id,
            "5" if version == 5 else "3.1.1",
        )
        await self._call_on_connect()

    async def _call_on_connect(self) -> None:
        if self.on_connect is None:
            return
        try:
            result = self.on_connect()
            if result is not None:
                await result
        except Exception:
            log.exception("on_connect callback failed")

    async def _supervise(self) -> None:
        while not self._closing:
            await self._lost.wait()
            if self._closing:
                return
            while not self._closing:
                delay = self.backoff.next()
                log.warning("MQTT link to %s:%s lost; reconnecting in %.1fs", self.host, self.port, delay)
                await asyncio.sleep(delay)
                if self._closing:
                    return
                try:
                    await self._connect_once()
                    break
                except (TimeoutError, OSError, ConnectRefused) as exc:
                    log.warning("MQTT reconnect failed: %s", exc)

    async def disconnect(self) -> None:
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        transport = self._transport
        if transport is not None and self.connected:
            self._flush()
            transport.write(codec.encode_disconnect(self.protocol))
            transport.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._lost.wait(), 2.0)
        elif transport is not None:
            transport.close()
        self._cancel_ping()

    async def wait_connected(self) -> None:
        while not self.connected:
            await asyncio.sleep(0.05)

    def _on_lost(self, proto: _Proto, exc: Exception | None) -> None:
        if proto is not self._proto:
            return
        was_connected = self.connected
        self.connected = False
        self._transport = None
        self._paused = False
        self._cancel_ping()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(ConnectionResetError("connection closed before CONNACK"))
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(ConnectionResetError("MQTT connection lost"))
        self._waiters.clear()
        self._out.clear()
        self._lost.set()
        self._update_congestion()
        if was_connected and self.on_disconnect is not None:
            try:
                self.on_disconnect(exc)
            except Exception:
                log.exception("on_disconnect callback failed")

    # ------------------------------------------------------------------ keepalive

    def _schedule_ping(self) -> None:
        if self.keepalive and self._loop is not None:
            self._ping_handle = self._loop.call_later(self.keepalive / 2, self._ping)

    def _cancel_ping(self) -> None:
        if self._ping_handle is not None:
            self._ping_handle.cancel()
            self._ping_handle = None

    def _ping(self) -> None:
        transport = self._transport
        if transport is None or self._loop is None:
            return
        if self._loop.time() - self._last_rx > self.keepalive * 1.5:
            log.warning("MQTT broker silent for %.0fs; dropping the link", self.keepalive * 1.5)
            transport.abort()
            return
        self._out.append(codec.PINGREQ_BYTES)
        self._schedule_flush()
        self._schedule_ping()

    # ------------------------------------------------------------------ publishing

    def publish(
        self,
        topic: str | bytes,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        props: bytes | dict[str, Any] | None = None,
    ) -> None:
        """Queue one message; never blocks. ``props``: v5 properties (ignored on 3.1.1)."""
        if props is not None and self.protocol == 5:
            if isinstance(props, dict):
                props = encode_props(props)
        else:
            props = b"\x00" if self.protocol == 5 else None
        tb = topic.encode("utf-8") if isinstance(topic, str) else topic
        if qos == 0:
            if self._transport is None:
                self.dropped += 1
                return
            out = self._out
            out.append(encode_publish(tb, payload, 0, retain, 0, props))
            self.published += 1
            if len(out) >= _WRITE_AT:
                self._write_out()
            elif self._flush_handle is None:
                self._flush_handle = self._loop.call_soon(self._flush)  # type: ignore[union-attr]
            return
        if len(self._pending) >= self.max_queue:
            self.dropped += 1
            return
        self._pending.append((tb, payload, retain, props))
        if self._transport is not None:
            self._fill_window()
            if len(self._out) >= _WRITE_AT:
                self._write_out()
            else:
                self._schedule_flush()
        self._update_congestion()

    def _fill_window(self) -> None:
        inflight = self._inflight
        pending = self._pending
        out = self._out
        while pending and len(inflight) < self._window and self._transport is not None:
            tb, payload, retain, props = pending.popleft()
            pid = self._packet_id()
            pkt = encode_publish(tb, payload, 1, retain, pid, props if self.protocol == 5 else None)
            inflight[pid] = pkt
            out.append(pkt)
            self.published += 1

    def _packet_id(self) -> int:
        while True:
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._inflight and self._next_id not in self._waiters:
                return self._next_id

    def _schedule_flush(self) -> None:
        if self._flush_handle is None and self._loop is not None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        self._write_out()

    def _write_out(self) -> None:
        """Hand the queued packets to the transport (which may call ``pause_writing`` at once,
        making ``congested`` true while the caller is still reading a vendor socket)."""
        out = self._out
        if not out:
            return
        transport = self._transport
        if transport is not None:
            transport.write(b"".join(out) if len(out) > 1 else out[0])
        out.clear()

    def _update_congestion(self) -> None:
        congested = self._paused or len(self._pending) > self._window * 4
        if congested != self.congested:
            self.congested = congested
            if congested:
                self._uncongested.clear()
            else:
                self._uncongested.set()

    async def drain(self) -> None:
        if self.congested:
            await self._uncongested.wait()

    @property
    def unacked(self) -> int:
        return len(self._inflight) + len(self._pending)

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until every QoS 1 message has been acknowledged (tests, shutdown)."""
        self._flush()
        deadline = asyncio.get_running_loop().time() + timeout
        while self.unacked and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------------ subscribing

    async def subscribe(self, topics: list[tuple[str, int]], timeout: float = 10.0) -> list[int]:
        for topic, qos in topics:
            self._subscriptions[topic] = qos
        if self._transport is None:
            return []  # sent on connect
        assert self._loop is not None
        pid = self._packet_id()
        fut: asyncio.Future[list[int]] = self._loop.create_future()
        self._waiters[pid] = fut
        self._out.append(encode_subscribe(pid, topics, self.protocol))
        self._flush()
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._waiters.pop(pid, None)

    # ------------------------------------------------------------------ receiving

    def _on_packets(self, proto: _Proto, packets: list[codec.Packet]) -> None:
        if proto is not self._proto:
            return
        assert self._loop is not None
        self._last_rx = self._loop.time()
        acked = False
        for ptype, flags, body in packets:
            try:
                if ptype == PUBACK:
                    if self._inflight.pop(int.from_bytes(body[:2], "big"), None) is not None:
                        acked = True
                elif ptype == PUBLISH:
                    self._on_publish(flags, body)
                elif ptype == PINGRESP:
                    pass
                elif ptype == CONNACK:
                    connack = decode_connack(body, self.protocol)
                    if self._connack is not None and not self._connack.done():
                        self._connack.set_result(connack)
                elif ptype == SUBACK:
                    pid, granted = decode_suback(body, self.protocol)
                    fut = self._waiters.get(pid)
                    if fut is not None and not fut.done():
                        fut.set_result(granted)
                elif ptype == codec.DISCONNECT:
                    log.warning("broker sent DISCONNECT %s", body[:1].hex())
                elif ptype == codec.PUBREL:
                    self._out.append(encode_puback(int.from_bytes(body[:2], "big"), codec.PUBCOMP))
                    self._schedule_flush()
            except MqttProtocolError as exc:
                log.error("malformed MQTT packet type %s from broker: %s", ptype, exc)
        if acked:
            self._fill_window()
            self._schedule_flush()
            self._update_congestion()

    def _on_publish(self, flags: int, body: bytes) -> None:
        msg = decode_publish(flags, body, self.protocol)
        self.received += 1
        if msg.qos == 1 and msg.packet_id is not None:
            self._out.append(encode_puback(msg.packet_id))
            self._schedule_flush()
        elif msg.qos == 2 and msg.packet_id is not None:
            self._out.append(encode_puback(msg.packet_id, codec.PUBREC))
            self._schedule_flush()
        if self.on_message is not None:
            try:
                self.on_message(msg.topic, msg.payload, msg.props)
            except Exception:
                log.exception("MQTT message handler failed for topic %s", msg.topic)
