"""The sans-I/O WebSocket client core (protocols/websocket.py) and its transport (gateway/wsclient.py).

The core is checked frame by frame against RFC 6455, and with hypothesis for arbitrary read
boundaries; the transport against a real ``websockets`` server (an independent implementation)
and against a raw TCP server that misbehaves.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
import websockets
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.server import serve

from gateway import wsclient
from protocols.websocket import (
    CLOSED,
    OPEN,
    HandshakeRejected,
    WebSocketClientCore,
    WebSocketError,
    accept_key,
    mask,
)
from tests.helpers import eventually, server_context, throwaway_tls


def _open_core(max_size: int = 1 << 20) -> WebSocketClientCore:
    core = WebSocketClientCore("example.com", "/ws", max_size=max_size)
    core.handshake_request()
    core.receive(_upgrade(core.key))
    assert core.state == OPEN, core.error
    return core


def _upgrade(key: str, extra: str = "") -> bytes:
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(key)}\r\n{extra}\r\n"
    ).encode()


def _server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 65536:
        return bytes((b0, 126)) + n.to_bytes(2, "big") + payload
    return bytes((b0, 127)) + n.to_bytes(8, "big") + payload


def _unmask_client_frame(frame: bytes) -> tuple[int, bytes]:
    assert frame[1] & 0x80, "client frames must be masked"
    n = frame[1] & 0x7F
    pos = 2
    if n == 126:
        n, pos = int.from_bytes(frame[2:4], "big"), 4
    elif n == 127:
        n, pos = int.from_bytes(frame[2:10], "big"), 10
    key = frame[pos : pos + 4]
    return frame[0] & 0x0F, mask(frame[pos + 4 : pos + 4 + n], key)


def test_rfc_accept_key_example() -> None:
    # RFC 6455 §1.3
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_handshake_request_is_a_valid_upgrade() -> None:
    core = WebSocketClientCore("example.com:8080", "/ws?x=1")
    text = core.handshake_request((("Origin", "https://a"),)).decode()
    assert text.startswith("GET /ws?x=1 HTTP/1.1\r\nHost: example.com:8080\r\n")
    assert f"Sec-WebSocket-Key: {core.key}\r\n" in text
    assert "Sec-WebSocket-Version: 13\r\n" in text and "Origin: https://a\r\n" in text
    assert text.endswith("\r\n\r\n")
    assert "Sec-WebSocket-Extensions" not in text  # no permessage-deflate: memory and CPU


@pytest.mark.parametrize(
    ("response", "status"),
    [
        (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", 403),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n", 101),
        (b"garbage\r\n\r\n", None),
        # a status of non-ASCII digits (latin-1 0xB9 is "¹", which isdigit() accepts and int()
        # rejects): once a ValueError out of receive(), found by tests/fuzz/fuzz_websocket.py
        (b"HTTP/1.1 \xb901 Switching Protocols\r\n\r\n", None),
        (b"HTTP/1.1 1010 Switching Protocols\r\n\r\n", None),
        (b"HTTP/1.1\r\n\r\n", None),
    ],
)  # fmt: skip
def test_handshake_rejections(response: bytes, status: int | None) -> None:
    core = WebSocketClientCore("h", "/")
    core.handshake_request()
    assert core.receive(response) == []
    assert core.state == CLOSED
    assert isinstance(core.error, HandshakeRejected)
    assert core.error.status == status


def test_handshake_refuses_an_extension_we_did_not_offer() -> None:
    core = WebSocketClientCore("h", "/")
    core.receive(_upgrade(core.key, "Sec-WebSocket-Extensions: permessage-deflate\r\n"))
    assert isinstance(core.error, HandshakeRejected)


def test_frames_right_after_the_upgrade_are_delivered() -> None:
    core = WebSocketClientCore("h", "/")
    msgs = core.receive(_upgrade(core.key) + _server_frame(1, b"hello"))
    assert msgs == ["hello"] and core.state == OPEN


def test_text_binary_and_length_encodings() -> None:
    core = _open_core()
    big = os.urandom(70_000)
    data = _server_frame(1, "é".encode() * 100) + _server_frame(2, big) + _server_frame(1, b"")
    assert core.receive(data) == ["é" * 100, big, ""]


def test_fragmented_message_with_interleaved_ping() -> None:
    core = _open_core()
    data = (
        _server_frame(1, b"hel", fin=False)
        + _server_frame(9, b"p1")
        + _server_frame(0, b"lo ", fin=False)
        + _server_frame(0, b"world")
    )
    assert core.receive(data) == ["hello world"]
    opcode, payload = _unmask_client_frame(core.data_to_send())
    assert (opcode, payload) == (0xA, b"p1")


def test_pong_is_counted() -> None:
    core = _open_core()
    core.receive(_server_frame(0xA, b""))
    assert core.pongs == 1


def test_server_close_is_echoed() -> None:
    core = _open_core()
    assert core.receive(_server_frame(8, (4000).to_bytes(2, "big") + b"bye") + b"ignored") == []
    assert (core.state, core.close_code, core.close_reason) == (CLOSED, 4000, "bye")
    assert _unmask_client_frame(core.data_to_send()) == (8, (4000).to_bytes(2, "big"))


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (bytes((0x81, 0x80 | 2)) + b"abcd" + b"xx", 1002),  # masked by the server
        (bytes((0xC1, 1)) + b"x", 1002),  # RSV1 without an extension
        (_server_frame(3, b"x"), 1002),  # unknown opcode
        (_server_frame(0, b"x"), 1002),  # continuation without a message
        (_server_frame(1, b"\xff\xfe"), 1007),  # text that is not UTF-8
        (_server_frame(9, b"x" * 126), 1002),  # oversized control frame
        (_server_frame(2, b"x" * 2000), 1009),  # over max_size
    ],
)
def test_protocol_violations_fail_the_connection(frame: bytes, code: int) -> None:
    core = _open_core(max_size=1000)
    good = _server_frame(1, b"before")
    assert core.receive(good + frame) == ["before"]  # what preceded the violation survives
    assert core.state == CLOSED
    assert isinstance(core.error, WebSocketError) and core.error.code == code
    opcode, payload = _unmask_client_frame(core.data_to_send())
    assert opcode == 8 and int.from_bytes(payload[:2], "big") == code


def test_client_frames_are_masked_and_decodable() -> None:
    core = _open_core()
    for size in (0, 5, 125, 126, 65535, 65536):
        message = "x" * size
        assert _unmask_client_frame(core.text(message)) == (1, message.encode())
    assert _unmask_client_frame(core.binary(b"\x00\x01")) == (2, b"\x00\x01")
    assert _unmask_client_frame(core.close(1000, "done")) == (8, b"\x03\xe8done")
    assert core.close() == b""  # already closing
    with pytest.raises(ConnectionError):
        core.text("late")


@settings(max_examples=200, deadline=None)
@given(
    messages=st.lists(st.one_of(st.text(max_size=300), st.binary(max_size=300)), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
)
def test_any_read_boundaries_give_the_same_messages(
    messages: list[str | bytes], cuts: list[int]
) -> None:
    stream = b"".join(
        _server_frame(1, m.encode()) if isinstance(m, str) else _server_frame(2, m)
        for m in messages
    )
    core = _open_core()
    got: list[str | bytes] = []
    last = 0
    for cut in sorted(c for c in cuts if c <= len(stream)):
        got += core.receive(stream[last:cut])
        last = cut
    got += core.receive(stream[last:])
    assert got == messages
    assert core.error is None


# ------------------------------------------------------------------ transport, real servers


async def test_transport_against_websockets_server() -> None:
    seen: list[str] = []

    async def handler(conn: websockets.ServerConnection) -> None:
        async for message in conn:
            seen.append(str(message))
            await conn.send(f"echo {message}")
            if message == "close me":
                await conn.close(4001, "as asked")

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        got: list[str | bytes] = []
        conn = await wsclient.connect(
            f"ws://127.0.0.1:{port}/x", open_timeout=5, on_message=got.append
        )
        conn.send("héllo")
        conn.send("x" * 100_000)
        conn.send("close me")
        closed = await asyncio.wait_for(conn.wait_closed(), 5)
        assert got == ["echo héllo", "echo " + "x" * 100_000, "echo close me"]
        assert seen == ["héllo", "x" * 100_000, "close me"]
        assert closed.code == 4001 and "as asked" in str(closed)
        with pytest.raises(wsclient.ConnectionClosed):
            conn.send("after")


async def test_recv_mode_and_our_close() -> None:
    async def handler(conn: websockets.ServerConnection) -> None:
        await conn.send("first")
        await conn.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        conn = await wsclient.connect(f"ws://127.0.0.1:{port}/", open_timeout=5)
        assert await asyncio.wait_for(conn.recv(), 5) == "first"
        await conn.close()
        assert conn.closed is not None
        with pytest.raises(wsclient.ConnectionClosed):
            await conn.recv()


async def test_upgrade_refused_with_status() -> None:
    async def refuse(conn: websockets.ServerConnection, request: object) -> object:
        return conn.respond(403, "no\n")

    async with serve(lambda c: c.wait_closed(), "127.0.0.1", 0, process_request=refuse) as server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(HandshakeRejected) as info:
            await wsclient.connect(f"ws://127.0.0.1:{port}/", open_timeout=5)
        assert info.value.status == 403


async def _silent_server(answer_upgrade: bool) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(":", 1)[1].strip()
            for line in head.decode().split("\r\n")
            if line.lower().startswith("sec-websocket-key:")
        )
        if answer_upgrade:
            writer.write(_upgrade(key))
        await asyncio.Event().wait()  # then nothing, ever: no pongs, no data

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_handshake_timeout_leaves_no_socket() -> None:
    server, port = await _silent_server(answer_upgrade=False)
    async with server:
        with pytest.raises(TimeoutError):
            await wsclient.connect(f"ws://127.0.0.1:{port}/", open_timeout=0.3)


async def test_keepalive_aborts_a_silent_connection() -> None:
    server, port = await _silent_server(answer_upgrade=True)
    async with server:
        conn = await wsclient.connect(f"ws://127.0.0.1:{port}/", open_timeout=5, ping_interval=0.1)
        closed = await asyncio.wait_for(conn.wait_closed(), 5)
        assert "no pong" in str(closed)


class _Flow:
    """The MQTT side's congestion flag, as AccountLink exposes it."""

    def __init__(self) -> None:
        self.congested = True
        self.released = asyncio.Event()
        self.drains = 0

    async def drain(self) -> None:
        self.drains += 1
        await self.released.wait()
        self.congested = False


async def test_backpressure_pauses_reading_until_drained() -> None:
    async def handler(conn: websockets.ServerConnection) -> None:
        for i in range(2000):
            await conn.send(f"m{i}" + "x" * 500)
        await conn.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        got: list[str | bytes] = []
        flow = _Flow()
        conn = await wsclient.connect(
            f"ws://127.0.0.1:{port}/", open_timeout=5, on_message=got.append, flow=flow
        )
        await eventually(lambda: flow.drains == 1, "the connection asked to drain")
        assert conn._transport is not None and not conn._transport.is_reading()
        assert len(got) < 2000  # reading stopped, nothing buffered by us
        flow.released.set()
        await eventually(lambda: len(got) == 2000, "every message once drained")
        assert [m[: len(f"m{i}")] for i, m in enumerate(got)] == [f"m{i}" for i in range(2000)]
        await conn.close()


async def test_a_failing_handler_does_not_cost_other_messages() -> None:
    async def handler(conn: websockets.ServerConnection) -> None:
        for m in ("a", "boom", "b"):
            await conn.send(m)
        await conn.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        got: list[str | bytes] = []

        def on_message(m: str | bytes) -> None:
            if m == "boom":
                raise RuntimeError("bug")
            got.append(m)

        conn = await wsclient.connect(
            f"ws://127.0.0.1:{port}/", open_timeout=5, on_message=on_message
        )
        for _ in range(100):
            if got == ["a", "b"]:
                break
            await asyncio.sleep(0.02)
        assert got == ["a", "b"] and conn.is_open
        await conn.close()


async def test_wss_verifies_the_server_certificate(tmp_path: Any) -> None:
    """Real clouds are wss://: the shared default context verifies, a trusted CA connects."""
    import ssl

    tls = throwaway_tls(tmp_path)
    server_ctx = server_context(tls)

    async def handler(conn: websockets.ServerConnection) -> None:
        await conn.send("secure")
        await conn.wait_closed()

    async with serve(handler, "127.0.0.1", 0, ssl=server_ctx, compression=None) as server:
        url = f"wss://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        with pytest.raises(ssl.SSLCertVerificationError):  # a private CA: refused by default
            await wsclient.connect(url, open_timeout=5)
        trusted = ssl.create_default_context(cafile=str(tls.ca))
        conn = await wsclient.connect(url, open_timeout=5, ssl_context=trusted)
        assert await asyncio.wait_for(conn.recv(), 5) == "secure"
        await conn.close()
