"""Why the vendor WebSocket client is our own core: ``python -m bench.ws_client``.

Times, in one process and one run, the receive path of a 440-byte text message (a Tencent
property push) through websockets' sans-I/O ``ClientProtocol`` and through
``protocols.websocket.WebSocketClientCore``, and measures the Python memory each holds per open
connection (tracemalloc, after the upgrade). Prints one JSON line.
"""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from websockets.client import ClientProtocol
from websockets.uri import parse_uri

from protocols.websocket import WebSocketClientCore, accept_key

from ._proc import machine

MESSAGE = b"x" * 440
FRAME = bytes((0x81, 126)) + len(MESSAGE).to_bytes(2, "big") + MESSAGE


def _upgrade(key: str) -> bytes:
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n"
    ).encode()


def _websockets() -> ClientProtocol:
    proto = ClientProtocol(parse_uri("ws://example.com/ws"), max_size=4 << 20)
    proto.send_request(proto.connect())
    proto.data_to_send()
    proto.receive_data(_upgrade(proto.key))
    proto.events_received()
    return proto


def _ours() -> WebSocketClientCore:
    core = WebSocketClientCore("example.com", "/ws", max_size=4 << 20)
    core.handshake_request()
    core.receive(_upgrade(core.key))
    return core


def _time(step: Callable[[], Any], n: int) -> float:
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def _memory(make: Callable[[], Any], n: int = 1000) -> float:
    tracemalloc.start()
    keep = [make() for _ in range(n)]
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del keep
    return size / n / 1024


def main() -> None:
    ws = _websockets()
    ours = _ours()

    def ws_step() -> None:
        ws.receive_data(FRAME)
        for event in ws.events_received():
            event.data.decode()

    def our_step() -> None:
        ours.receive(FRAME)

    n = 50_000
    ws_us, our_us = _time(ws_step, n), _time(our_step, n)
    out = {
        "bench": "ws_client",
        "message_bytes": len(MESSAGE),
        "websockets_sansio_us_per_msg": round(ws_us, 2),
        "ours_us_per_msg": round(our_us, 2),
        "ratio": round(ws_us / our_us, 2),
        "websockets_sansio_kib_per_conn": round(_memory(_websockets), 2),
        "ours_kib_per_conn": round(_memory(_ours), 2),
        "machine": machine(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
