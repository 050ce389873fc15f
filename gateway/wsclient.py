"""Vendor WebSocket connections on a bare ``asyncio.Protocol``: no task per connection.

The sans-I/O core is ``protocols.websocket``; this module only moves bytes. Why a Protocol and
not an ``async for`` reader task: at 10,000 push connections every per-connection task, future
and lock is multiplied (the asyncio ``websockets`` client held ~13 KiB and four tasks per
connection with our connector on top); here an idle connection is this object, its core, the
transport and one keepalive timer handle. Messages are handed to ``on_message`` synchronously
from ``data_received``, in order; a connector that needs ``await`` semantics (a handshake
reply) uses ``recv()`` instead, which queues.

Backpressure: after each read, when ``flow.congested`` says the MQTT side is behind, reading
stops until ``flow.drain()`` returns (``gateway.flow``).

Keepalive: every ``ping_interval`` seconds a connection that received nothing since the last
tick sends a ping; if the next tick finds that ping still unanswered (no pong, no data) the
connection is declared dead and aborted. A dead socket is thus noticed within two to three
intervals. A connection paused for backpressure is not judged (it is not reading its pongs).
The ticks come from one shared timer per loop and interval (``_Ticker``), not one timer per
connection: a ``TimerHandle`` and its context were another ~0.5 KiB per idle connection.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
import weakref
from collections.abc import Callable
from urllib.parse import urlsplit

from protocols.model import RemoteProtocolError
from protocols.websocket import CLOSED, OPEN, HandshakeRejected, WebSocketClientCore

from .flow import Flow, hold_reading

__all__ = ["ConnectionClosed", "Flow", "HandshakeRejected", "WsConnection", "connect"]

log = logging.getLogger("cloud2mqtt.ws")


class ConnectionClosed(ConnectionError):
    """The connection ended; ``code``/``reason`` from the server's close frame when it sent one."""

    def __init__(self, message: str, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class _Ticker:
    """The keepalive clock of every connection with one ``ping_interval`` on one loop."""

    __slots__ = ("_handle", "conns", "interval", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self.loop = loop
        self.interval = interval
        self.conns: set[WsConnection] = set()
        self._handle: asyncio.TimerHandle | None = None

    def add(self, conn: WsConnection) -> None:
        self.conns.add(conn)
        if self._handle is None:
            self._handle = self.loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        self._handle = None
        for conn in list(self.conns):
            conn._tick()
        if self.conns:
            self._handle = self.loop.call_later(self.interval, self._tick)


_TICKERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, _Ticker]] = (
    weakref.WeakKeyDictionary()
)
_TLS: ssl.SSLContext | None = None


def _ticker(loop: asyncio.AbstractEventLoop, interval: float) -> _Ticker:
    per_loop = _TICKERS.setdefault(loop, {})
    ticker = per_loop.get(interval)
    if ticker is None:
        ticker = per_loop[interval] = _Ticker(loop, interval)
    return ticker


def _default_tls() -> ssl.SSLContext:
    """One verifying client context for every ``wss://`` connection (each holds the CA store)."""
    global _TLS
    if _TLS is None:
        _TLS = ssl.create_default_context()
    return _TLS


class WsConnection(asyncio.Protocol):
    __slots__ = (
        "_closed",
        "_core",
        "_idle_ticks",
        "_loop",
        "_on_close",
        "_on_message",
        "_opened",
        "_pongs",
        "_queue",
        "_resumer",
        "_seen",
        "_ticker",
        "_transport",
        "_waiters",
        "flow",
        "last_message",
        "ping_interval",
    )

    def __init__(
        self,
        core: WebSocketClientCore,
        *,
        on_message: Callable[[str | bytes], None] | None = None,
        on_close: Callable[[], None] | None = None,
        flow: Flow | None = None,
        ping_interval: float | None = None,
    ) -> None:
        self._core = core
        self._on_message = on_message
        self._on_close = on_close
        self.flow = flow
        self.ping_interval = ping_interval
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._opened: asyncio.Future[None] = self._loop.create_future()
        self._closed: ConnectionClosed | None = None
        self._queue: collections.deque[str | bytes] | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._resumer: asyncio.Task[None] | None = None
        self._ticker: _Ticker | None = None
        self._seen = False  # anything received since the last keepalive tick
        #: loop time a read last brought whole messages (stamped once per read, not per message)
        self.last_message = self._loop.time()
        self._pongs = 0
        self._idle_ticks = 0

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a stream transport (TCP/TLS)

    def data_received(self, data: bytes) -> None:
        core = self._core
        messages = core.receive(data)
        out = core.data_to_send()
        if out and self._transport is not None:
            self._transport.write(out)
        self._seen = True
        if not self._opened.done() and core.state == OPEN:  # the upgrade just completed
            self._opened.set_result(None)
            self._arm_keepalive()
        if messages:
            self.last_message = self._loop.time()
        handler = self._on_message
        if handler is not None:
            for message in messages:
                try:
                    handler(message)
                except Exception:  # a bug in one message's handling must not cost the others
                    log.exception("unhandled error handling a WebSocket message")
        elif messages:
            if self._queue is None:
                self._queue = collections.deque()
            self._queue.extend(messages)
            self._wake()
        if core.state == CLOSED:
            self._end(core.error)
            return
        flow = self.flow
        if flow is not None and flow.congested and not self._paused and self._transport is not None:
            self._resumer = hold_reading(self._transport, flow)

    def eof_received(self) -> bool | None:
        return None  # let the transport close; connection_lost reports it

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._end(exc)

    # ------------------------------------------------------------------ state

    @property
    def is_open(self) -> bool:
        return self._closed is None and self._core.state == OPEN

    @property
    def closed(self) -> ConnectionClosed | None:
        """Why the connection ended, or ``None`` while it lives."""
        return self._closed

    def _end(self, exc: BaseException | None) -> None:
        if self._closed is not None:
            return
        core = self._core
        if isinstance(exc, RemoteProtocolError):
            why = f"protocol error: {exc}"
        elif core.close_code is not None and core.close_code != 1006:
            why = f"closed by the server (code {core.close_code}"
            why += f": {core.close_reason})" if core.close_reason else ")"
        elif exc is not None:
            why = f"connection lost: {type(exc).__name__}: {exc}"
        else:
            why = "connection closed (code 1006)"
        self._closed = ConnectionClosed(why, core.close_code, core.close_reason)
        if self._ticker is not None:
            self._ticker.conns.discard(self)
            self._ticker = None
        if not self._opened.done():
            self._opened.set_exception(exc if isinstance(exc, HandshakeRejected) else self._closed)
            self._opened.exception()  # retrieved: an abandoned connect() must not log it
        if self._transport is not None:
            self._transport.close()
        self._wake()
        if self._on_close is not None:
            self._on_close()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self) -> None:
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter

    @property
    def _paused(self) -> bool:
        return self._resumer is not None and not self._resumer.done()

    # ------------------------------------------------------------------ keepalive

    def _arm_keepalive(self) -> None:
        if self.ping_interval:
            self._ticker = _ticker(self._loop, self.ping_interval)
            self._ticker.add(self)

    def _tick(self) -> None:
        if self._closed is not None or self._transport is None:
            return
        if self._seen or self._paused or self._core.pongs != self._pongs:
            self._seen, self._pongs, self._idle_ticks = False, self._core.pongs, 0
        else:
            self._idle_ticks += 1
            if self._idle_ticks >= 2:  # our ping of the last tick went unanswered
                self._transport.abort()
                self._end(TimeoutError(f"no pong within {self.ping_interval:g}s"))
                return
            self._transport.write(self._core.ping())

    # ------------------------------------------------------------------ API

    def send(self, message: str | bytes) -> None:
        """Write one message now (no await: frames are small and the kernel buffers them)."""
        if self._closed is not None:
            raise self._closed
        transport = self._transport
        if transport is None:
            raise ConnectionClosed("connection closed (code 1006)")
        core = self._core
        transport.write(core.text(message) if isinstance(message, str) else core.binary(message))

    async def recv(self) -> str | bytes:
        """The next message (only without ``on_message``); ``ConnectionClosed`` at the end."""
        while True:
            queue = self._queue
            if queue:
                return queue.popleft()
            if self._closed is not None:
                raise self._closed
            await self._wait()

    async def wait_closed(self) -> ConnectionClosed:
        while self._closed is None:
            await self._wait()
        return self._closed

    async def close(self, timeout: float = 2.0) -> None:
        """Our closing handshake, then the TCP close; abort when the server does not answer."""
        transport = self._transport
        if transport is None or self._closed is not None:
            return
        frame = self._core.close()
        if frame:
            transport.write(frame)
        try:
            async with asyncio.timeout(timeout):
                await self.wait_closed()
        except TimeoutError:
            self.abort()

    def abort(self) -> None:
        transport = self._transport
        if transport is not None:
            transport.abort()
        self._end(None)


async def connect(
    url: str,
    *,
    open_timeout: float,
    max_size: int = 4 << 20,
    on_message: Callable[[str | bytes], None] | None = None,
    on_close: Callable[[], None] | None = None,
    flow: Flow | None = None,
    ping_interval: float | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> WsConnection:
    """Open ``ws://`` or ``wss://`` ``url`` and finish the upgrade within ``open_timeout``.

    Raises ``OSError`` (refused, DNS), ``TimeoutError``, ``HandshakeRejected`` (non-101, bad
    accept key) or ``ConnectionClosed``.
    """
    parts = urlsplit(url)
    hostname = parts.hostname
    if parts.scheme not in ("ws", "wss") or not hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    default_port = port == (443 if secure else 80)
    host = f"[{hostname}]" if ":" in hostname else hostname
    host_header = host if default_port else f"{host}:{port}"
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    core = WebSocketClientCore(host_header, path, max_size=max_size)
    loop = asyncio.get_running_loop()
    ctx = (ssl_context or _default_tls()) if secure else None

    def factory() -> WsConnection:
        return WsConnection(
            core, on_message=on_message, on_close=on_close, flow=flow, ping_interval=ping_interval
        )

    async def open_() -> WsConnection:
        _, proto = await loop.create_connection(
            factory, hostname, port, ssl=ctx, server_hostname=hostname if secure else None,
        )  # fmt: skip
        assert proto._transport is not None
        proto._transport.write(core.handshake_request())
        try:
            await proto._opened
        except BaseException:
            proto.abort()  # also on the timeout's cancellation: no half-open socket left behind
            raise
        return proto

    try:
        async with asyncio.timeout(open_timeout):
            return await open_()
    except TimeoutError:
        raise TimeoutError(f"WebSocket not open within {open_timeout:g}s") from None
