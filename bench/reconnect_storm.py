"""A reconnect storm: N Tencent accounts lose their sockets at once; how do they come back?

    python -m bench.reconnect_storm --accounts 1000 --rate 50 --burst 10

One process: a private mosquitto, the Tencent emulator (it records when each WebSocket
connection is accepted) and the gateway, on uvloop. The accounts start at ``--startup-rate``
(not measured), then the connect rate is set to ``--rate``/``--burst`` (``[rates.tencent]``),
every socket is dropped, and the bench waits until every account is online again.

Prints one JSON line: the reconnect spread (first to last connect, the most connects in any
one second against rate + burst), the time until all were online against 1.2 × N / rate, the
HTTP calls per account during the storm, and the most accounts seen waiting for a slot.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import time
from typing import Any

from emulators.tencent import TencentCloud
from gateway.app import Gateway
from gateway.config import parse_config
from gateway.mosquitto import Mosquitto
from tests.helpers import max_in_any_second

from ._proc import machine, raise_nofile, run


def online(gw: Gateway, n: int) -> int:
    links = (gw.link(key) for key in gw.account_keys())
    count = sum(1 for link in links if link is not None and link.link_state == "online")
    return count if len(gw.account_keys()) == n else -1


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    n = args.accounts
    raise_nofile(n * 4 + 1000)
    broker = Mosquitto()
    await broker.start()
    cloud = TencentCloud(devices=args.devices, latency=args.latency)
    await cloud.start()
    cloud.calls = collections.deque(maxlen=10_000_000)
    raw = {
        "mqtt": {"url": broker.url, "client_id": "storm"},
        "gateway": {"state_dir": args.state_dir, "health_interval": 5.0},
        "rates": {"tencent": {"connect_per_second": args.startup_rate, "connect_burst": 50}},
        "accounts": [
            cloud.account_config(f"t{i}", open_id=f"user{i}", heartbeat=50.0, refresh_interval=0)
            for i in range(n)
        ],
    }
    gw = Gateway(parse_config(raw))
    await gw.start()
    try:
        while online(gw, n) < n:
            await asyncio.sleep(0.1)
        # the measured rate, as if configured in [rates.tencent]
        gw.pacer.configure(
            "tencent",
            {"connect_per_second": args.rate, "connect_burst": args.burst},
            "rates.tencent",
        )
        calls_before = len(cloud.calls)
        dropped = time.monotonic()
        cloud.drop_sockets()
        most_waiting = 0
        while True:
            await asyncio.sleep(0.05)
            most_waiting = max(most_waiting, gw.pacer.waiting().get("tencent", 0))
            back = [t for t in cloud.connect_times if t > dropped]
            if len(back) >= n and online(gw, n) == n:
                break
        all_online = time.monotonic() - dropped
        calls = len(cloud.calls) - calls_before
    finally:
        await gw.stop()
        await cloud.stop()
        await broker.stop()
        broker.cleanup()
    bound = 1.2 * n / args.rate
    return {
        "bench": "reconnect_storm",
        "vendor": "tencent",
        "accounts": n,
        "rate": args.rate,
        "burst": args.burst,
        "connects": len(back),
        "first_connect_s": round(min(back) - dropped, 3),
        "last_connect_s": round(max(back) - dropped, 3),
        "spread_s": round(max(back) - min(back), 3),
        "max_connects_in_1s": max_in_any_second(back),
        "rate_plus_burst": args.rate + args.burst,
        "all_online_s": round(all_online, 3),
        "bound_1_2_n_over_rate_s": round(bound, 3),
        "within_bound": all_online <= bound,
        "http_calls_per_account": round(calls / n, 2),
        "most_waiting_for_slot": most_waiting,
        "machine": machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0, help="connect_per_second")
    parser.add_argument("--burst", type=int, default=10, help="connect_burst")
    parser.add_argument("--startup-rate", type=float, default=200.0)
    parser.add_argument("--devices", type=int, default=1, help="devices per account")
    parser.add_argument("--latency", type=float, default=0.0, help="emulator HTTP latency (s)")
    parser.add_argument("--state-dir", default="/tmp/c2m-storm-state")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("cloud2mqtt").setLevel(logging.ERROR)
    logging.getLogger("cloud2mqtt.rates").setLevel(logging.INFO)
    print(json.dumps(run(main_async(args))), flush=True)


if __name__ == "__main__":
    main()
