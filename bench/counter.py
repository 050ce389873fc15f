"""The measuring subscriber: counts PUBLISH packets (and optionally their latency) in its own process.

``python -m bench.counter --port P --topic T [--expect N] [--idle S] [--latency-key K]``

It speaks MQTT 3.1.1 on a raw socket with a hand-rolled packet scanner (no client library),
so that measuring costs as little CPU as possible on a 2-core box where the broker, the
publisher and this process share the cores. It prints ``READY`` once subscribed and, when done
(``--expect`` messages seen, ``--idle`` seconds without a message, or ``--max-seconds``), one
JSON line: ``count``, ``first``/``last`` (``time.monotonic()``, comparable across processes on
Linux) and, with ``--latency-key``, latency percentiles computed from the wall-clock send time
(µs since the epoch) that key holds in each JSON payload; then only payloads with that key count.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import sys
import time
from typing import Any

import orjson

from gateway.mqtt.codec import Connect, encode_connect, encode_subscribe

_monotonic = time.monotonic
_time = time.time
_loads = orjson.loads


class Counter(asyncio.Protocol):
    def __init__(self, expect: int, latency_key: str | None, warmup: float) -> None:
        self.buf = bytearray()
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.expect = expect
        self.key = latency_key
        self.warmup = warmup
        self.window_start = 0.0
        self.window_count = 0
        self.latencies: list[float] = []
        self.bad = 0
        self.first_bad = b""
        self.suback = asyncio.get_event_loop().create_future()
        self.done = asyncio.get_event_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        end = len(buf)
        n = 0
        key = self.key
        now_wall = _time() if key is not None else 0.0
        while end - pos >= 2:
            first = buf[pos]
            length = 0
            shift = 0
            i = pos + 1
            while True:
                if i >= end:
                    length = -1
                    break
                b = buf[i]
                i += 1
                length |= (b & 0x7F) << shift
                if not b & 0x80:
                    break
                shift += 7
            if length < 0 or i + length > end:
                break
            ptype = first >> 4
            if ptype == 3:
                if key is None:
                    n += 1
                else:
                    # Only stamped messages count (not the resync snapshots at start-up).
                    (tlen,) = struct.unpack_from("!H", buf, i)
                    start = i + 2 + tlen + (2 if first & 0x06 else 0)
                    try:
                        sent = _loads(bytes(buf[start : i + length]))[key]
                        self.latencies.append(now_wall * 1e6 - sent)
                        n += 1
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        self.first_bad = bytes(buf[i : i + length])[:300]
                        self.bad += 1
            elif ptype == 9 and not self.suback.done():
                self.suback.set_result(None)
            pos = i + length
        if pos:
            del buf[:pos]
        if n:
            now = _monotonic()
            if not self.count:
                self.first = now
                self.window_start = now + self.warmup
            self.count += n
            self.last = now
            if now >= self.window_start:
                self.window_count += n
            if self.expect and self.count >= self.expect and not self.done.done():
                self.done.set_result(None)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    key = args.latency_key or None
    transport, proto = await loop.create_connection(
        lambda: Counter(args.expect, key, args.warmup), args.host, args.port
    )
    transport.write(encode_connect(Connect(client_id=f"bench-counter-{time.time_ns()}", protocol=4)))
    transport.write(encode_subscribe(1, [(t, args.qos) for t in args.topic], 4))
    await asyncio.wait_for(proto.suback, 10)
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    deadline = loop.time() + args.max_seconds
    while not proto.done.done() and loop.time() < deadline:
        before = proto.count
        await asyncio.wait([proto.done], timeout=args.idle)
        if proto.count == before and proto.count > 0:
            break  # idle
    transport.close()
    out: dict[str, Any] = {
        "count": proto.count,
        "first": proto.first,
        "last": proto.last,
        "window_count": proto.window_count,
        "window_start": proto.window_start,
    }
    if key is not None:
        lat = proto.latencies
        skip = int(len(lat) * args.skip_fraction)
        lat_ms = [x / 1000 for x in lat[skip:]]
        out.update(
            p50_ms=percentile(lat_ms, 50),
            p99_ms=percentile(lat_ms, 99),
            max_ms=max(lat_ms) if lat_ms else float("nan"),
            latency_samples=len(lat_ms),
            bad=proto.bad,
            first_bad=proto.first_bad.decode("utf-8", "replace"),
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--topic", action="append", required=True)
    p.add_argument("--qos", type=int, default=0)
    p.add_argument("--expect", type=int, default=0)
    p.add_argument("--idle", type=float, default=2.0)
    p.add_argument("--max-seconds", type=float, default=600.0)
    p.add_argument("--latency-key")
    p.add_argument("--warmup", type=float, default=0.0, help="seconds excluded from window_count")
    p.add_argument("--skip-fraction", type=float, default=0.0, help="leading latency samples ignored")
    args = p.parse_args()
    from ._proc import run as run_loop

    result = run_loop(run(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
