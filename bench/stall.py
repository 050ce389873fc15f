"""Stall detection: how long a connector takes to notice a cloud socket that went quiet.

``python -m bench.stall [--stall-timeout 30] [--repeat 2]``

For Tencent (the cloud holds every frame but its WebSocket still answers pings, the case that
went unnoticed for 40 s) and CoolKit (the socket goes silent, hbInterval 145 s as the live
cloud's), each round: run the connector against its emulator in-process with the default
``stall_timeout`` (or ``--stall-timeout``), wait until online, stall the emulator, and measure
**detected** = (the link reported lost) − (stall began). The bound is ``stall_timeout``; before
this rule the figures were ≥ 40 s (Tencent, never within a 40 s stall) and 160 s (CoolKit).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import aiohttp

from emulators.coolkit import CoolkitCloud
from emulators.tencent import TencentCloud
from gateway.connectors.coolkit import CoolkitConnector
from gateway.connectors.tencent import TencentConnector
from gateway.link import LinkState
from gateway.tokens import TokenStore
from tests.helpers import RecordingContext, eventually

from ._proc import machine


async def _round(vendor: str, stall_timeout: float) -> float:
    if vendor == "tencent":
        cloud: Any = TencentCloud(devices=2, latency=0.0)
        await cloud.start()
        raw = cloud.account_config("t", stall_timeout=stall_timeout, heartbeat=50.0)
        cls: Any = TencentConnector
    else:
        cloud = CoolkitCloud(hb_interval=145.0, user_online_interval=0.05, rate_min_interval=0.02)
        await cloud.start()
        raw = cloud.account_config(stall_timeout=stall_timeout)
        cls = CoolkitConnector
    raw = {k: v for k, v in raw.items() if k not in ("vendor", "name")}
    ctx = RecordingContext(vendor, "bench", TokenStore(None).slot(vendor, "bench"))
    async with aiohttp.ClientSession() as http:
        connector = cls(cls.parse_options(raw, "accounts[0]"), ctx, http)
        task = asyncio.create_task(connector.run())
        try:
            await eventually(lambda: ctx.link_state == LinkState.ONLINE, "online", timeout=60)
            seen = len(ctx.links)
            began = time.monotonic()
            if vendor == "tencent":
                cloud.stall(stall_timeout * 3)
            else:
                cloud.stall()
            await eventually(
                lambda: any(s == LinkState.BACKOFF for s, _, _ in ctx.links[seen:]),
                "the stall was detected",
                timeout=stall_timeout * 3,
                interval=0.005,
            )
            return time.monotonic() - began
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await cloud.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stall-timeout", type=float, default=30.0)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    out: dict[str, Any] = {"machine": machine(), "stall_timeout_s": args.stall_timeout}
    for vendor in ("tencent", "coolkit"):
        times = [await _round(vendor, args.stall_timeout) for _ in range(args.repeat)]
        out[vendor] = {
            "detected_s": [round(t, 2) for t in times],
            "max_s": round(max(times), 2),
            "median_s": round(statistics.median(times), 2),
            # the bound, plus the 5 ms this bench polls at and scheduling slack
            "within_bound": max(times) <= args.stall_timeout + 0.1,
        }
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
