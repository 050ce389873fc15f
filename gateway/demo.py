"""``cloud2mqtt demo``: every emulator, the gateway and a broker in one process.

Uses the broker at ``--broker`` when one listens there; otherwise starts a private mosquitto
(on that port when it is free, else on a free one) and says where. Refuses a base topic that a
live gateway serves (``--base-topic`` picks another, ``--force`` overrides a stale
``bridge/state``). Prints the watch/toggle hints, then a status line, and exits 0 after
``--duration`` (or on Ctrl-C), clearing every retained topic it wrote.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from typing import Any

from .app import Gateway
from .config import parse_config, parse_mqtt_url
from .mosquitto import Mosquitto, port_open
from .presence import InstanceConflict
from .vendors import VENDORS, emulator_module

_EVERY = 10.0  # seconds between status lines when the output is not a terminal


async def run_demo(args: argparse.Namespace, stop: asyncio.Event) -> int:
    """Run the demo with the parsed ``cloud2mqtt demo`` options; return the exit code."""
    vendors: str = args.vendors
    wanted = (
        list(VENDORS) if vendors == "all" else [v.strip() for v in vendors.split(",") if v.strip()]
    )
    unknown = [v for v in wanted if v not in VENDORS]
    if unknown:
        print(f"unknown vendor(s): {', '.join(unknown)} (known: {', '.join(VENDORS)})")
        return 2
    host, port, tls, _, _ = parse_mqtt_url(args.broker, "--broker")
    base = args.base_topic
    own: Mosquitto | None = None
    if not port_open(host, port):
        own = Mosquitto(port=port if host in ("127.0.0.1", "localhost") else None)
        await own.start()
        host, port = own.host, own.port
        print(f"started a private mosquitto on {host}:{port}")
    else:
        print(f"using the broker at {host}:{port}")

    clouds: list[tuple[str, Any]] = []
    gateway: Gateway | None = None
    state_dir = tempfile.mkdtemp(prefix="cloud2mqtt-demo-")
    try:
        for vendor in wanted:
            try:
                module = emulator_module(vendor)
            except ImportError as exc:
                print(f"{vendor}: emulator unavailable ({exc}); skipped")
                continue
            cloud = module.demo_cloud(devices=args.devices)
            await cloud.start()
            clouds.append((vendor, cloud))
        config = parse_config(
            {
                "mqtt": {"url": f"{'mqtts' if tls else 'mqtt'}://{host}:{port}",
                         "client_id": "cloud2mqtt-demo"},
                "gateway": {"state_dir": state_dir, "health_interval": 5, "base_topic": base,
                            "instance_id": f"demo-{os.getpid()}"},
                "accounts": [cloud.account_config(name="demo") for _, cloud in clouds],
                "homeassistant": {"enabled": bool(args.homeassistant)},
                "http": {"listen": "127.0.0.1:0" if port_open("127.0.0.1", 9100)
                         else "127.0.0.1:9100"},
            }
        )  # fmt: skip
        gateway = Gateway(config, strict_claim=not args.force)
        try:
            await gateway.start()
        except InstanceConflict as exc:
            gateway = None
            print(
                f"refusing to run the demo on base topic {base!r}: {exc}. "
                "Use --base-topic cloud2mqtt-demo (or --force when that gateway is gone and "
                "only its retained state says online)."
            )
            return 2
        await _show(gateway, host, port, args.duration, stop)
    finally:
        if gateway is not None:
            # the demo leaves nothing behind in the broker: every retained topic it wrote goes
            await gateway.stop(leave_no_trace=True)
        for _, cloud in clouds:
            await cloud.stop()
        if own is not None:
            await own.stop()
            own.cleanup()
        shutil.rmtree(state_dir, ignore_errors=True)
    return 0


async def _show(
    gateway: Gateway, host: str, port: int, duration: float | None, stop: asyncio.Event
) -> None:
    """The watch/toggle hints first, then one status line: rewritten in place on a terminal,
    printed every ``_EVERY`` seconds otherwise (a log or a pipe does not scroll a screen a
    minute)."""
    base = gateway.topics.base
    print(f"watch:  mosquitto_sub -h {host} -p {port} -v -t '{base}/#'")
    if gateway.config.homeassistant.enabled:
        prefix = gateway.config.homeassistant.prefix
        print(f"discovery: mosquitto_sub -h {host} -p {port} -v -t '{prefix}/#'")
    if gateway.observability.http is not None:
        print(f"metrics: curl {gateway.observability.http.url}/metrics  (also /healthz, /readyz)")
    example = _toggle_example(gateway, host, port)
    tty = sys.stdout.isatty()
    started = time.monotonic()
    last_line = started - _EVERY
    last = dict(gateway.health.totals)
    last_t = started
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass
        now = time.monotonic()
        if example is None:
            example = _toggle_example(gateway, host, port)
        if tty or now - last_line >= _EVERY:
            totals = gateway.health.totals
            rate = (totals["published"] - last["published"]) / max(now - last_t, 1e-6)
            line = _status(gateway, now - started, rate)
            print(f"\r{line}\x1b[K" if tty else line, end="" if tty else "\n", flush=True)
            last, last_t, last_line = dict(totals), now, now
        if duration is not None and now - started >= duration:
            break
    now = time.monotonic()
    rate = (gateway.health.totals["published"] - last["published"]) / max(now - last_t, 1e-6)
    print(
        f"\r{_status(gateway, now - started, rate)}\x1b[K"
        if tty
        else _status(gateway, now - started, rate),
        flush=True,
    )


def _status(gateway: Gateway, elapsed: float, rate: float) -> str:
    accounts = gateway.publisher.accounts()
    online = sum(1 for a in accounts if a["state"] == "online")
    by_vendor: dict[str, int] = {}
    for rec in gateway.registry:
        by_vendor[rec.vendor] = by_vendor.get(rec.vendor, 0) + 1
    return (
        f"[{elapsed:5.0f}s] devices {len(gateway.registry)} "
        f"({', '.join(f'{v} {n}' for v, n in sorted(by_vendor.items())) or '-'}) | "
        f"accounts online {online}/{len(accounts)} | "
        f"msg/s {rate:.0f} | commands {gateway.health.totals['commands']}"
    )


def _toggle_example(gateway: Gateway, host: str, port: int) -> str | None:
    for rec in gateway.registry:
        for prop in rec.info.schema.properties:
            if prop.type == "bool" and prop.access == "rw":
                line = (
                    f"toggle: mosquitto_pub -h {host} -p {port} -t '{rec.topic}/set' "
                    f"-m '{{\"{prop.id}\": true}}'"
                )
                print(line, flush=True)
                return line
    return None
