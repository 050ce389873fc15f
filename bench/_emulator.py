"""The Tencent emulator (``emulators.tencent``) in its own process, driven for a bench.

``python -m bench._emulator --users N --devices D`` starts the emulated cloud, prints one JSON
line (``api_url``, ``ws_url``, ``app_key``, ``app_secret``) and then reads commands on stdin:

- ``go RATE SECONDS``: property reports for every subscribed device, round-robin, paced to
  RATE msg/s in total for SECONDS; each report carries ``sent_us`` (epoch µs, taken when the
  frame is built and queued for its socket). Prints ``{"offered", "sent", "dropped", ...}`` when
  done: ``sent`` and ``dropped`` count what really happened (see ``pace``).
- ``stats``: the emulator's counters, including ``late_heartbeats`` (trace heartbeats that
  arrived after ``--heartbeat-deadline`` seconds since the socket's previous one, or never).
- ``reset``: start a measurement window (heartbeat gaps count only between two beats in it).
- ``tokens``: an AccessToken for every user, as ``AppGetTokenByWeiXin`` issues them, so a bench
  can start the gateway the way a restart does (tokens persisted, no login).

Reports go through ``TencentCloud.report`` (the emulator's own framing and per-socket queues,
which drop when a socket's queue is full: the gateway's backpressure shows up there, not as
memory in the gateway).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from typing import Any

from emulators.tencent import SimToken, TencentCloud

from ._proc import raise_nofile, run


class BenchCloud(TencentCloud):
    """Counts trace heartbeats per socket to find late ones (the scale bench)."""

    def __init__(self, *args: Any, heartbeat_deadline: float, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.heartbeat_deadline = heartbeat_deadline
        self.last_beat: dict[int, float] = {}
        self.late = 0
        self.beats = 0
        self.max_gap = 0.0

    async def _yunapi(self, sock: Any, req_id: str | int, params: Any) -> str:
        if params.get("Action") == "AppDeviceTraceHeartBeat":
            now = time.monotonic()
            prev = self.last_beat.get(id(sock))
            if prev is not None:
                gap = now - prev
                self.max_gap = max(self.max_gap, gap)
                if gap > self.heartbeat_deadline:
                    self.late += 1
            self.last_beat[id(sock)] = now
            self.beats += 1
        return await super()._yunapi(sock, req_id, params)

    def overdue(self) -> int:
        """Open subscribed sockets whose last heartbeat is older than the deadline (or missing)."""
        now = time.monotonic()
        return sum(
            1
            for sock in self.sockets
            if sock.subscribed and now - self.last_beat.get(id(sock), 0.0) > self.heartbeat_deadline
        )


def _props(cloud: TencentCloud, device: str, i: int) -> dict[str, Any]:
    dev = cloud.devices[device]
    if dev.kind == "light":
        return {"brightness": i % 101, "sent_us": time.time_ns() // 1000}
    return {"humidity": 30 + i % 40, "sent_us": time.time_ns() // 1000}


#: reports built per pacing tick (~2 ms) at most; a larger backlog is not carried over
MAX_PER_TICK = 5000


async def pace(cloud: TencentCloud, rate: float, seconds: float) -> dict[str, Any]:
    """Offer ``rate`` reports/s for ``seconds`` and count what really happened to them.

    ``offered``: what the rate asked for. ``sent``: reports that entered a socket's queue (they
    leave unless the socket closes). ``dropped`` = ``offered - sent``, split into
    ``dropped_backlog`` (the pacing loop fell behind: at most ``MAX_PER_TICK`` per tick are built,
    the rest of a tick's backlog is skipped, not carried over), ``dropped_queue_full`` (a socket's
    queue was full: the gateway's backpressure) and ``dropped_untraced`` (no socket took it).
    ``cpu_s``: this process's CPU over the window (building and queueing; the writes to the
    sockets continue after it, so ``bench.load`` measures the whole process too).
    """
    devices = sorted(cloud._watchers)
    if not devices:
        return {"sent": 0, "dropped": 0, "error": "no subscribed device"}
    loop = asyncio.get_running_loop()
    stats = cloud.stats
    pushes0, full0, untraced0 = stats["pushes"], stats["push_dropped_full"], stats["push_untraced"]
    cpu0 = time.process_time()
    start = loop.time()
    offered = built = 0
    i = 0
    n = len(devices)
    report = cloud.report
    while True:
        elapsed = loop.time() - start
        if elapsed >= seconds:
            break
        due = int(elapsed * rate) - offered
        batch = min(due, MAX_PER_TICK)
        for _ in range(batch):
            device = devices[i % n]
            i += 1
            report(device, _props(cloud, device, i))
        offered += due
        built += batch
        await asyncio.sleep(0.002)
    full = stats["push_dropped_full"] - full0
    sent = stats["pushes"] - pushes0 - full  # "pushes" counts queue attempts, full ones too
    return {
        "offered": offered,
        "sent": sent,
        "dropped": offered - sent,
        "dropped_backlog": offered - built,
        "dropped_queue_full": full,
        "dropped_untraced": stats["push_untraced"] - untraced0,
        "seconds": round(loop.time() - start, 3),
        "cpu_s": round(time.process_time() - cpu0, 2),
    }


async def main_async(args: argparse.Namespace) -> None:
    raise_nofile(args.users * 2 + 1000)
    cloud = BenchCloud(
        devices=args.devices,
        rate=0.0,
        trace_timeout=args.trace_timeout,
        idle_timeout=args.trace_timeout * 2,
        token_lifetime=86400.0,
        heartbeat_deadline=args.heartbeat_deadline,
    )
    await cloud.start()
    for i in range(args.users):
        cloud.user_for(f"bench-{i}")
    print(json.dumps({"api_url": cloud.api_url, "ws_url": cloud.ws_url, "app_key": cloud.app_key,
                      "app_secret": cloud.app_secret}), flush=True)  # fmt: skip
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while True:
            line = (await reader.readline()).decode().split()
            if not line:
                break
            if line[0] == "go":
                out = await pace(cloud, float(line[1]), float(line[2]))
            elif line[0] == "tokens":
                # As AppGetTokenByWeiXin would issue them: {open_id: [token, expires_ms]}.
                out = {"tokens": {}}
                for user in cloud.users.values():
                    expires = time.time() + cloud.token_lifetime
                    tok = SimToken(secrets.token_hex(16), user.uid, expires)
                    cloud.tokens[tok.token] = tok
                    out["tokens"][user.open_id] = [tok.token, int(expires * 1000)]
            elif line[0] == "reset":
                # Start a measurement window: gaps count only between two beats inside it.
                cloud.last_beat.clear()
                cloud.late = cloud.beats = 0
                cloud.max_gap = 0.0
                out = {}
            else:
                out = {}
            out.update(
                sockets=len(cloud.sockets),
                subscribed_devices=len(cloud._watchers),
                heartbeats=cloud.beats,
                late_heartbeats=cloud.late,
                overdue_sockets=cloud.overdue(),
                max_heartbeat_gap_s=round(cloud.max_gap, 2),
            )
            print(json.dumps(out), flush=True)
    finally:
        await cloud.stop()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--users", type=int, default=10)
    p.add_argument("--devices", type=int, default=10)
    p.add_argument("--trace-timeout", type=float, default=600.0)
    p.add_argument("--heartbeat-deadline", type=float, default=60.0)
    run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
