"""A sans-I/O WebSocket client core (RFC 6455, client side, no extensions).

Why our own and not ``websockets``' sans-I/O ``ClientProtocol``: measured on this machine
(``python -m bench.ws_client``), websockets' core spends ~8.6 µs per 440-byte text message (a
generator per frame, a ``Frame`` object, an events list) and holds ~3 KiB per connection before
its asyncio layer adds tasks, futures and a message assembler (~13 KiB in all); the gateway's
whole decode → normalize → publish path costs less than that. The client side of RFC 6455 that
a push channel needs is small: one handshake, unmasked server frames, masked client frames,
ping/pong, close, fragmentation. This core parses a read in one pass over the buffer and hands
back the complete messages; the emulators still use ``websockets`` as the server, so every
test is a cross-check between two implementations.

No I/O here, as ``h11``/``wsproto``: the transport (``gateway.wsclient``) feeds bytes in with
``receive`` and writes what ``data_to_send`` returns.
"""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Final

from .model import RemoteProtocolError

__all__ = [
    "CLOSED",
    "CLOSING",
    "CONNECTING",
    "OPEN",
    "HandshakeRejected",
    "WebSocketClientCore",
    "WebSocketError",
    "accept_key",
    "mask",
]

CONNECTING: Final = 0
OPEN: Final = 1
CLOSING: Final = 2
CLOSED: Final = 3

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HEADERS: Final = 16 * 1024
_OP_CONT, _OP_TEXT, _OP_BINARY = 0x0, 0x1, 0x2
_OP_CLOSE, _OP_PING, _OP_PONG = 0x8, 0x9, 0xA


class WebSocketError(RemoteProtocolError):
    """The server broke RFC 6455; ``code`` is the close code we answer with."""

    def __init__(self, message: str, code: int = 1002) -> None:
        super().__init__(message)
        self.code = code


class HandshakeRejected(RemoteProtocolError):
    """The server answered the upgrade with something other than a valid ``101``."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def mask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte masking ``key``: one big-int XOR, no per-byte loop."""
    n = len(payload)
    if not n:
        return b""
    stream = (key * ((n + 3) // 4))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def _frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked client frame (RFC 6455 §5.3: every client frame is masked)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    key = os.urandom(4)
    return head + key + mask(payload, key)


class WebSocketClientCore:
    """One client connection's protocol state.

    ``receive(data)`` returns the complete messages in ``data`` (``str`` for text, ``bytes``
    for binary) and answers pings and closes by queueing frames for ``data_to_send()``. It
    never raises: a protocol violation (``WebSocketError``, with our close frame queued) or a
    failed upgrade (``HandshakeRejected``) ends in ``state == CLOSED`` with ``error`` set, and
    the messages complete before the violation are still returned. ``close_code`` and
    ``close_reason`` say how the server closed.
    """

    __slots__ = (
        "_buf",
        "_frag_op",
        "_frag_size",
        "_frags",
        "_need",
        "_out",
        "close_code",
        "close_reason",
        "error",
        "host",
        "key",
        "max_size",
        "path",
        "pongs",
        "state",
    )

    def __init__(self, host: str, path: str, *, max_size: int = 4 << 20) -> None:
        self.host = host
        self.path = path or "/"
        self.max_size = max_size
        self.key = base64.b64encode(os.urandom(16)).decode()
        self.state = CONNECTING
        self.close_code: int | None = None
        self.close_reason = ""
        self.pongs = 0
        self.error: RemoteProtocolError | None = None
        self._buf = bytearray()
        self._need = 0
        self._frag_op = 0
        self._frags: list[bytes] | None = None
        self._frag_size = 0
        self._out: list[bytes] = []

    # ------------------------------------------------------------------ handshake

    def handshake_request(self, extra_headers: tuple[tuple[str, str], ...] = ()) -> bytes:
        lines = [
            f"GET {self.path} HTTP/1.1",
            f"Host: {self.host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {self.key}",
            "Sec-WebSocket-Version: 13",
            "User-Agent: cloud2mqtt",
            *(f"{k}: {v}" for k, v in extra_headers),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def _handshake(self) -> bool:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > _MAX_HEADERS:
                raise HandshakeRejected("upgrade response headers too long")
            return False
        head = bytes(buf[:end]).decode("latin-1")
        del buf[: end + 4]
        status_line, *header_lines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        # A status is three ASCII digits: str.isdigit() alone also takes "¹01" (latin-1 0xB9),
        # which int() then rejects with a ValueError (found by tests/fuzz/fuzz_websocket.py).
        code = parts[1] if len(parts) >= 2 else ""
        if not parts[0].startswith("HTTP/1.") or not (len(code) == 3 and code.isascii() and code.isdigit()):
            raise HandshakeRejected(f"not an HTTP response: {status_line[:80]!r}")
        status = int(code)
        if status != 101:
            raise HandshakeRejected(f"server rejected WebSocket connection: HTTP {status}", status)
        headers: dict[str, str] = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if not sep:
                raise HandshakeRejected(f"malformed header line {line[:80]!r}", status)
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        if headers.get("upgrade", "").lower() != "websocket":
            raise HandshakeRejected("upgrade response without Upgrade: websocket", status)
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        if "upgrade" not in tokens:
            raise HandshakeRejected("upgrade response without Connection: Upgrade", status)
        if headers.get("sec-websocket-accept") != accept_key(self.key):
            raise HandshakeRejected("wrong Sec-WebSocket-Accept", status)
        if headers.get("sec-websocket-extensions"):
            raise HandshakeRejected("server chose an extension we did not offer", status)
        if headers.get("sec-websocket-protocol"):
            raise HandshakeRejected("server chose a subprotocol we did not offer", status)
        self.state = OPEN
        return True

    # ------------------------------------------------------------------ receiving

    def receive(self, data: bytes) -> list[str | bytes]:
        """Feed bytes from the socket; the complete messages they finish, in order."""
        if self.state == CLOSED:
            return []
        buf = self._buf
        if buf or self.state == CONNECTING:
            buf += data
            if self.state == CONNECTING:
                try:
                    if not self._handshake():
                        return []
                except HandshakeRejected as exc:
                    self.state, self.error = CLOSED, exc
                    buf.clear()
                    return []
            if len(buf) < self._need:
                return []  # a large frame still arriving: do not rescan it on every read
            src = bytes(buf)
            buf.clear()
        else:
            src = bytes(data)  # the common case: the read starts at a frame boundary
        messages: list[str | bytes] = []
        pos = 0
        need = 0
        size = len(src)
        try:
            while size - pos >= 2:
                b0 = src[pos]
                b1 = src[pos + 1]
                n = b1 & 0x7F
                hdr = 2
                if n == 126:
                    if size - pos < 4:
                        break
                    n = (src[pos + 2] << 8) | src[pos + 3]
                    hdr = 4
                elif n == 127:
                    if size - pos < 10:
                        break
                    n = int.from_bytes(src[pos + 2 : pos + 10], "big")
                    hdr = 10
                if b0 & 0x70:
                    raise WebSocketError("reserved bits set (no extension was negotiated)")
                if b1 & 0x80:
                    raise WebSocketError("masked frame from the server")
                if n > self.max_size:
                    raise WebSocketError(f"frame of {n} bytes exceeds {self.max_size}", 1009)
                end = pos + hdr + n
                if end > size:
                    need = end - pos  # the partial frame will start the buffer
                    break
                payload = src[pos + hdr : end]
                pos = end
                opcode = b0 & 0x0F
                if opcode in (_OP_TEXT, _OP_BINARY):
                    if self._frags is not None:
                        raise WebSocketError("new message inside a fragmented one")
                    if b0 & 0x80:
                        messages.append(self._message(opcode, payload))
                    else:
                        self._frag_op, self._frags, self._frag_size = opcode, [payload], n
                elif opcode == _OP_CONT:
                    if self._frags is None:
                        raise WebSocketError("continuation frame without a message")
                    self._frag_size += n
                    if self._frag_size > self.max_size:
                        raise WebSocketError(f"message exceeds {self.max_size} bytes", 1009)
                    self._frags.append(payload)
                    if b0 & 0x80:
                        whole = b"".join(self._frags)
                        self._frags = None
                        messages.append(self._message(self._frag_op, whole))
                elif opcode >= 0x8:
                    if not b0 & 0x80 or n > 125:
                        raise WebSocketError("fragmented or oversized control frame")
                    if opcode == _OP_PING:
                        if self.state == OPEN:
                            self._out.append(_frame(_OP_PONG, payload))
                    elif opcode == _OP_PONG:
                        self.pongs += 1
                    elif opcode == _OP_CLOSE:
                        self._on_close(payload)
                        return messages
                    else:
                        raise WebSocketError(f"unknown control opcode {opcode:#x}")
                else:
                    raise WebSocketError(f"unknown opcode {opcode:#x}")
        except WebSocketError as exc:
            self._fail(exc.code, str(exc))
            self.error = exc
            return messages  # what came before the violation is still good
        if pos < size:
            buf += src[pos:] if pos else src
        self._need = need
        return messages

    def _message(self, opcode: int, payload: bytes) -> str | bytes:
        if opcode == _OP_BINARY:
            return payload
        try:
            return payload.decode()
        except UnicodeDecodeError:
            raise WebSocketError("text message is not UTF-8", 1007) from None

    def _on_close(self, payload: bytes) -> None:
        if len(payload) == 1:
            raise WebSocketError("close frame with a 1-byte payload")
        code = int.from_bytes(payload[:2], "big") if payload else 1005
        try:
            reason = payload[2:].decode()
        except UnicodeDecodeError:
            raise WebSocketError("close reason is not UTF-8", 1007) from None
        self.close_code, self.close_reason = code, reason
        if self.state == OPEN:  # echo it (§5.5.1), then the server closes TCP
            self._out.append(_frame(_OP_CLOSE, payload[:2]))
        self.state = CLOSED
        self._buf.clear()

    def _fail(self, code: int, reason: str) -> None:
        if self.state == OPEN:
            self._out.append(_frame(_OP_CLOSE, code.to_bytes(2, "big") + reason[:100].encode()))
        self.state = CLOSED
        self.close_code = self.close_code or 1006
        self._buf.clear()

    # ------------------------------------------------------------------ sending

    def text(self, message: str) -> bytes:
        """The frame for a text message (only when ``OPEN``)."""
        if self.state != OPEN:
            raise ConnectionError("WebSocket is not open")
        return _frame(_OP_TEXT, message.encode())

    def binary(self, message: bytes) -> bytes:
        if self.state != OPEN:
            raise ConnectionError("WebSocket is not open")
        return _frame(_OP_BINARY, message)

    def ping(self, payload: bytes = b"") -> bytes:
        if self.state != OPEN:
            raise ConnectionError("WebSocket is not open")
        return _frame(_OP_PING, payload)

    def close(self, code: int = 1000, reason: str = "") -> bytes:
        """Our closing handshake's frame; b"" when already closing or closed."""
        if self.state != OPEN:
            return b""
        self.state = CLOSING
        return _frame(_OP_CLOSE, code.to_bytes(2, "big") + reason.encode()[:123])

    def data_to_send(self) -> bytes:
        """Frames the core produced by itself (pongs, close echoes), to write now."""
        if not self._out:
            return b""
        out = b"".join(self._out)
        self._out.clear()
        return out
