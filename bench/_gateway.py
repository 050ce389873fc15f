"""The gateway in its own process, for the benches: ``python -m bench._gateway CONFIG.json``.

Runs ``gateway.app.Gateway`` on uvloop (as ``cloud2mqtt run`` does), prints ``READY`` once every
account's link is online, and stops cleanly when stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys

from gateway.app import Gateway
from gateway.config import parse_config

from ._proc import raise_nofile, run


async def main_async(path: str) -> None:
    with open(path) as f:
        raw = json.load(f)
    ready_timeout = float(raw.pop("_ready_timeout", 300))
    raise_nofile(len(raw.get("accounts", [])) * 2 + 1000)
    if os.environ.get("BENCH_HTTP"):  # metrics on: serve /metrics there (BENCH_HTTP=127.0.0.1:0)
        raw.setdefault("http", {"listen": os.environ["BENCH_HTTP"]})
    gw = Gateway(parse_config(raw))
    del raw  # the bench's JSON config is not part of the gateway's memory
    await gw.start()
    loop = asyncio.get_running_loop()
    try:
        deadline = loop.time() + ready_timeout
        while loop.time() < deadline:
            states = [a["state"] for a in gw.publisher.accounts()]
            if states and all(s == "online" for s in states):
                break
            await asyncio.sleep(0.1)
        online = sum(1 for a in gw.publisher.accounts() if a["state"] == "online")
        print(f"READY {online}/{len(gw.publisher.accounts())}", flush=True)
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while await reader.readline():
            accounts = gw.publisher.accounts()
            online = sum(1 for a in accounts if a["state"] == "online")
            print(json.dumps({"online": online, "accounts": len(accounts),
                              "health": gw.publisher.health_snapshot()}, default=str), flush=True)  # fmt: skip
    finally:
        await gw.stop()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    profile = os.environ.get("BENCH_PROFILE")  # a path: write cProfile stats there (slows it down)
    if not profile:
        run(main_async(sys.argv[1]))
        return
    import cProfile

    with cProfile.Profile() as prof:
        run(main_async(sys.argv[1]))
    prof.dump_stats(profile)


if __name__ == "__main__":
    main()
