"""The WebSocket client parser (protocols.websocket): upgrade response, then frames.

Oracle: ``receive`` never raises (a violation ends in ``state == CLOSED`` with ``error`` set,
which is a declared ``RemoteProtocolError``); fed in one piece or byte-split, it returns the same
messages and ends in the same state.
"""

from __future__ import annotations

from protocols import websocket
from protocols.model import RemoteProtocolError

_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
_ACCEPT = websocket.accept_key(_KEY)
_UPGRADE = (f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {_ACCEPT}\r\n\r\n").encode()


def _frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    n = len(payload)
    head = bytes((0x80 * fin | opcode,))
    if n < 126:
        head += bytes((n,))
    elif n < 65536:
        head += bytes((126,)) + n.to_bytes(2, "big")
    else:
        head += bytes((127,)) + n.to_bytes(8, "big")
    return head + payload


SEEDS = [
    _UPGRADE + _frame(1, b'{"a":1}') + _frame(9, b"hi") + _frame(2, b"\x00" * 200),
    _UPGRADE + _frame(1, b"part", fin=False) + _frame(0, b"-two") + _frame(8, b"\x03\xe8bye"),
    _UPGRADE + _frame(1, "é".encode()) + _frame(10, b""),
    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
]


def _client() -> websocket.WebSocketClientCore:
    c = websocket.WebSocketClientCore("h", "/ws", max_size=1 << 16)
    c.key = _KEY
    c.handshake_request()
    return c


def one_input(data: bytes) -> None:
    whole = _client()
    got = whole.receive(data)
    assert whole.error is None or isinstance(whole.error, RemoteProtocolError)
    split = _client()
    pieces: list[str | bytes] = []
    step = max(1, len(data) // 7)
    for i in range(0, len(data), step):
        pieces += split.receive(data[i : i + step])
    assert pieces == got, (pieces, got)
    assert split.state == whole.state and type(split.error) is type(whole.error)
    whole.data_to_send()
