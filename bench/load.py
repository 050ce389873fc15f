"""End-to-end load: Tencent WS pushes → gateway → mosquitto → subscriber, vs the naive bridge.

``python -m bench.load --vendor tencent --connections C --rate R --seconds S [--devices D]``

Processes (each its own, as in production): the Tencent emulator (``emulators.tencent``
via ``bench._emulator``) pushing ``Property``/``Report`` frames through real WebSockets at R msg/s
in total over C accounts (one push connection each, D devices each); the gateway
(``bench._gateway``: ``Gateway`` on uvloop) republishing to a private mosquitto; a subscriber
(``bench.counter``) measuring delivered msg/s and latency from the emulator's send timestamp
(``sent_us`` in each report) to delivery. The gateway's CPU per delivered message comes from
``/proc/<pid>/stat`` (utime + stime), its memory from ``VmRSS`` sampled during the run (max) and
``VmHWM``; the load generator's (the emulator process's) CPU is reported beside it
(``emulator_cpu_s``: the 2 cores are shared, so a busy generator slows the gateway). The
emulator reports what it really queued (``emulator_sent``) and what it did not
(``emulator_dropped`` = ``emulator_offered - emulator_sent``, split by cause). Then the same load, with a fresh broker and emulator, through the naive stack
(``bench.naive_bridge``: websockets + json + base64 + aiomqtt awaited per message, default loop,
pure kernels) for ``ratio_cpu_per_msg_vs_naive``.

Prints ONE JSON line. The first keys are the gateway's; ``naive`` holds the baseline's figures.
Under overload (R above what the gateway sustains) the connector awaits ``ctx.drain()`` and stops
reading its socket, the emulator's per-socket queues fill and it drops (``emulator_dropped``):
the gateway's RSS must stay bounded (``rss_mib``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
from typing import Any

from gateway.mosquitto import Mosquitto

from ._proc import _ROOT, CounterProc, cpu_seconds, machine, rss_mib, run


async def _spawn(*argv: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        cwd=_ROOT, env=env, limit=64 << 20,
    )  # fmt: skip


async def _line(proc: asyncio.subprocess.Process, timeout: float) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    if not line:
        raise RuntimeError(f"process {proc.pid} ended early (rc {await proc.wait()})")
    return line.decode().strip()


async def _stop(proc: asyncio.subprocess.Process | None) -> None:
    if proc is None or proc.returncode is not None:
        return
    assert proc.stdin is not None
    with contextlib.suppress(Exception):
        proc.stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), 15)
    except TimeoutError:
        proc.kill()
        await proc.wait()


def _env(pure: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD2MQTT_")}
    if pure:
        env["CLOUD2MQTT_PURE"] = "1"
    return env


async def run_stack(stack: str, args: argparse.Namespace) -> dict[str, Any]:
    broker = Mosquitto()
    await broker.start()
    emu = gw = None
    counter: CounterProc | None = None
    tmp = tempfile.mkdtemp(prefix="c2m-bench-")
    try:
        emu = await _spawn("-m", "bench._emulator", "--users", str(args.connections),
                           "--devices", str(args.devices), env=_env(False))  # fmt: skip
        info = json.loads(await _line(emu, 60))
        counter = CounterProc(
            broker.port, ["cloud2mqtt/tencent/+"], latency_key="sent_us", idle=args.idle,
            warmup=args.warmup, skip_fraction=0.05, max_seconds=args.seconds + 600,
        )  # fmt: skip
        await counter.start()
        if stack == "ours":
            cfg = {
                "mqtt": {"url": broker.url, "client_id": "cloud2mqtt-bench"},
                "gateway": {"state_dir": tmp, "health_interval": 30},
                "accounts": [
                    {"vendor": "tencent", "name": f"bench{i}", "app_key": info["app_key"],
                     "app_secret": info["app_secret"], "wx_open_id": f"bench-{i}",
                     "api_url": info["api_url"], "ws_url": info["ws_url"]}
                    for i in range(args.connections)
                ],
            }  # fmt: skip
            path = os.path.join(tmp, "config.json")
            with open(path, "w") as f:
                json.dump(cfg, f)
            gw = await _spawn("-m", "bench._gateway", path, env=_env(False))
        else:
            gw = await _spawn(
                "-m", "bench.naive_bridge", "--api-url", info["api_url"], "--ws-url", info["ws_url"],
                "--app-key", info["app_key"], "--app-secret", info["app_secret"],
                "--users", str(args.connections), "--mqtt-port", str(broker.port), env=_env(True),
            )  # fmt: skip
        ready = await _line(gw, 300)
        if not ready.startswith("READY"):
            raise RuntimeError(f"{stack}: {ready}")
        await asyncio.sleep(1.0)  # let the start-up resync settle
        cpu0 = cpu_seconds(gw.pid)
        emu_cpu0 = cpu_seconds(emu.pid)
        assert emu.stdin is not None
        emu.stdin.write(f"go {args.rate} {args.seconds}\n".encode())
        await emu.stdin.drain()
        rss_max = 0.0
        done = asyncio.ensure_future(_line(emu, args.seconds + 120))
        while not done.done():
            rss_max = max(rss_max, rss_mib(gw.pid))
            await asyncio.wait([done], timeout=0.25)
        sent = json.loads(done.result())
        got = await counter.result(timeout=args.seconds + 600)
        # after the subscriber went idle: the emulator has also written out its queues
        emu_cpu = cpu_seconds(emu.pid) - emu_cpu0
        if os.environ.get("BENCH_DEBUG"):
            print(stack, sent, got, file=sys.stderr)
        cpu = cpu_seconds(gw.pid) - cpu0
        rss_max = max(rss_max, rss_mib(gw.pid))
        hwm = rss_mib(gw.pid, "VmHWM")
    finally:
        if counter is not None:
            counter.kill()
        await _stop(gw)
        await _stop(emu)
        await broker.stop()
        broker.cleanup()
    delivered = got["count"]
    span = got["last"] - got["window_start"]
    rate = got["window_count"] / span if span > 0 else 0.0
    return {
        "delivered_msgs_per_s": round(rate),
        "gateway_cpu_us_per_msg": round(cpu / delivered * 1e6, 2) if delivered else None,
        "p50_ms": round(got["p50_ms"], 2),
        "p99_ms": round(got["p99_ms"], 2),
        "rss_mib": round(rss_max, 1),
        "rss_peak_mib": round(hwm, 1),
        "delivered": delivered,
        "emulator_offered": sent.get("offered"),
        "emulator_sent": sent.get("sent"),
        "emulator_dropped": sent.get("dropped"),
        "emulator_dropped_backlog": sent.get("dropped_backlog"),
        "emulator_dropped_queue_full": sent.get("dropped_queue_full"),
        "gateway_cpu_s": round(cpu, 2),
        "emulator_cpu_s": round(emu_cpu, 2),
        "emulator_cpu_us_per_sent": round(emu_cpu / sent["sent"] * 1e6, 2) if sent.get("sent") else None,
        "late_heartbeats": sent.get("late_heartbeats"),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    ours = await run_stack("ours", args)
    print(f"ours: {ours}", file=sys.stderr)
    out: dict[str, Any] = {"bench": "load", "vendor": args.vendor, "connections": args.connections,
                           "devices_per_connection": args.devices, "offered_rate": args.rate,
                           "seconds": args.seconds, **ours}  # fmt: skip
    if not args.no_naive:
        naive = await run_stack("naive", args)
        print(f"naive: {naive}", file=sys.stderr)
        out["naive"] = naive
        if naive["gateway_cpu_us_per_msg"] and ours["gateway_cpu_us_per_msg"]:
            out["ratio_cpu_per_msg_vs_naive"] = round(
                naive["gateway_cpu_us_per_msg"] / ours["gateway_cpu_us_per_msg"], 2
            )
    out["machine"] = machine()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vendor", choices=["tencent"], default="tencent")
    p.add_argument("--connections", type=int, default=10)
    p.add_argument("--devices", type=int, default=10, help="devices per connection")
    p.add_argument("--rate", type=float, default=20_000, help="offered pushes per second, total")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--warmup", type=float, default=1.0, help="seconds left out of the msg/s figure")
    p.add_argument("--idle", type=float, default=3.0, help="subscriber stops after this long idle")
    p.add_argument("--no-naive", action="store_true", help="skip the naive-stack run")
    args = p.parse_args()
    print(json.dumps(run(main_async(args))))


if __name__ == "__main__":
    main()
