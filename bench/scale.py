"""Connection scale: N idle Tencent push connections held by one gateway process.

``python -m bench.scale --connections N --seconds S [--heartbeat H]``

The emulator (own process) has N users with one device each; the gateway (own process, uvloop,
one shared aiohttp session, RLIMIT_NOFILE raised) runs N Tencent accounts: N logins, N
WebSockets with ``ActivePush`` and a trace heartbeat every H seconds (production: 50). After all
are online the connections are held for S seconds with no pushes; the emulator counts heartbeats
and *late* ones, counting only gaps between two heartbeats inside the hold window (the gap that
spans start-up includes the account's resync, see RESULTS.md): a gap over ``--late-factor`` × H (default 1.5; the emulator stops pushing a
device after 90 s without one, i.e. 1.8 × the production 50 s) on a socket, or a socket overdue at
the end (no heartbeat for that long). The gap as the emulator sees it is H plus the previous heartbeat's round trip, because
the connector waits H after each reply.

Memory per connection = (RSS with N accounts − RSS with 1 account) / (N − 1), both measured
after start-up settled, in the same gateway code. Prints one JSON line.

By default the gateway starts as after a restart: every account's AccessToken is already in its
token store (issued by the emulator as a login would), so start-up is ActivePush + resync only.
``--login`` makes every account log in first (a first start): see RESULTS.md for why that is
slow at thousands of accounts (the token store rewrites its whole file per saved token).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from typing import Any

from gateway.mosquitto import Mosquitto

from ._proc import cpu_seconds, machine, raise_nofile, rss_mib, run
from .load import _env, _line, _spawn, _stop


def _config(
    broker: Mosquitto, info: dict[str, Any], users: range, tmp: str, hb: float,
    tokens: dict[str, list[Any]] | None,
) -> str:  # fmt: skip
    state_dir = os.path.join(tmp, str(len(users)))
    if tokens:
        # The restart path: every account's token already persisted (no login, no token write).
        os.makedirs(state_dir, exist_ok=True)
        store = {
            f"tencent/scale{i}": {"identity": f"{info['app_key']}/bench-{i}",
                                  "token": tokens[f"bench-{i}"][0], "expires_ms": tokens[f"bench-{i}"][1]}
            for i in users
        }  # fmt: skip
        with open(os.path.join(state_dir, "tokens.json"), "w") as f:
            json.dump(store, f)
        os.chmod(os.path.join(state_dir, "tokens.json"), 0o600)
    cfg = {
        "mqtt": {"url": broker.url, "client_id": f"cloud2mqtt-scale-{len(users)}"},
        "gateway": {"state_dir": state_dir, "health_interval": 60},
        "accounts": [
            {"vendor": "tencent", "name": f"scale{i}", "app_key": info["app_key"],
             "app_secret": info["app_secret"], "wx_open_id": f"bench-{i}",
             "api_url": info["api_url"], "ws_url": info["ws_url"], "heartbeat": hb,
             "request_timeout": 60}
            for i in users
        ],
        "_ready_timeout": 1800,
    }  # fmt: skip
    path = os.path.join(tmp, f"scale-{len(users)}.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


async def _emulator_stats(emu: asyncio.subprocess.Process, cmd: bytes = b"stats\n") -> dict[str, Any]:
    assert emu.stdin is not None
    emu.stdin.write(cmd)
    await emu.stdin.drain()
    out: dict[str, Any] = json.loads(await _line(emu, 60))
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile(args.connections * 2 + 1000)
    broker = Mosquitto()
    await broker.start()
    tmp = tempfile.mkdtemp(prefix="c2m-scale-")
    emu = gw = None
    try:
        emu = await _spawn("-m", "bench._emulator", "--users", str(args.connections), "--devices",
                           str(args.devices), "--heartbeat-deadline", str(args.heartbeat * args.late_factor),
                           env=_env(False))  # fmt: skip
        info = json.loads(await _line(emu, 120))
        tokens = None if args.login else (await _emulator_stats(emu, b"tokens\n"))["tokens"]
        # Baseline: the same gateway with one account.
        gw = await _spawn("-m", "bench._gateway", _config(broker, info, range(1), tmp, args.heartbeat, tokens),
                          env=_env(False))  # fmt: skip
        await _line(gw, 120)
        await asyncio.sleep(args.settle)
        rss_one = rss_mib(gw.pid)
        await _stop(gw)
        gw = None
        # N accounts, N push connections.
        t0 = time.monotonic()
        gw = await _spawn("-m", "bench._gateway",
                          _config(broker, info, range(args.connections), tmp, args.heartbeat, tokens),
                          env=_env(False))  # fmt: skip
        ready = await _line(gw, 1900)
        connect_s = time.monotonic() - t0
        await asyncio.sleep(args.settle)
        startup = await _emulator_stats(emu)
        before = await _emulator_stats(emu, b"reset\n")
        cpu0 = cpu_seconds(gw.pid)
        rss_max = 0.0
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            rss_max = max(rss_max, rss_mib(gw.pid))
            await asyncio.sleep(1.0)
        cpu = cpu_seconds(gw.pid) - cpu0
        rss_n = rss_mib(gw.pid)
        after = await _emulator_stats(emu)
    finally:
        await _stop(gw)
        await _stop(emu)
        await broker.stop()
        broker.cleanup()
    n = args.connections
    online = int(ready.split()[1].split("/")[0]) if ready.startswith("READY") else 0
    return {
        "bench": "scale",
        "connections": n,
        "online": online,
        "connect_seconds": round(connect_s, 1),
        "held_seconds": args.seconds,
        "start": "login" if args.login else "persisted tokens",
        "heartbeat_s": args.heartbeat,
        "late_after_s": round(args.heartbeat * args.late_factor, 1),
        "emulator_sockets": after["sockets"],
        "heartbeats_in_window": after["heartbeats"] - before["heartbeats"],
        "late_heartbeats": after["late_heartbeats"] - before["late_heartbeats"],
        "overdue_sockets_at_end": after["overdue_sockets"],
        "max_heartbeat_gap_s": after["max_heartbeat_gap_s"],
        "max_heartbeat_gap_startup_s": startup["max_heartbeat_gap_s"],
        "rss_mib": round(rss_n, 1),
        "rss_max_mib": round(rss_max, 1),
        "rss_one_account_mib": round(rss_one, 1),
        "rss_per_connection_kib": round((rss_n - rss_one) * 1024 / max(n - 1, 1), 1),
        "idle_cpu_percent": round(cpu / args.seconds * 100, 1),
        "machine": machine(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--heartbeat", type=float, default=10.0, help="trace heartbeat interval (s)")
    p.add_argument("--devices", type=int, default=1, help="devices per account")
    p.add_argument("--late-factor", type=float, default=1.5,
                   help="a heartbeat gap over this many intervals is late (emulator trace: 1.8)")
    p.add_argument("--login", action="store_true",
                   help="log every account in (first start) instead of persisted tokens (restart)")
    p.add_argument("--settle", type=float, default=3.0, help="seconds after start-up before measuring")
    args = p.parse_args()
    out = run(main_async(args))
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
