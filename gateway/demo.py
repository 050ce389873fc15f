"""``cloud2mqtt demo``: every emulator, the gateway and a broker in one process.

Uses the broker at ``--broker`` when one listens there; otherwise starts a private mosquitto
(on that port when it is free, else on a free one) and says where. Prints one summary line per
second and exits 0 after ``--duration`` (or on Ctrl-C).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from typing import Any

from .app import Gateway
from .config import parse_config, parse_mqtt_url
from .mosquitto import Mosquitto, port_open
from .vendors import VENDORS, emulator_module


async def run_demo(
    vendors: str, broker: str, duration: float | None, devices: int, stop: asyncio.Event
) -> int:
    wanted = list(VENDORS) if vendors == "all" else [v.strip() for v in vendors.split(",") if v.strip()]
    unknown = [v for v in wanted if v not in VENDORS]
    if unknown:
        print(f"unknown vendor(s): {', '.join(unknown)} (known: {', '.join(VENDORS)})")
        return 2
    host, port, tls, _, _ = parse_mqtt_url(broker, "--broker")
    own: Mosquitto | None = None
    if not port_open(host, port):
        own = Mosquitto(port=port if host in ("127.0.0.1", "localhost") else None)
        await own.start()
        host, port = own.host, own.port
        print(f"started a private mosquitto on {host}:{port}")
    else:
        print(f"using the broker at {host}:{port}")

    clouds: list[tuple[str, Any]] = []
    for vendor in wanted:
        try:
            module = emulator_module(vendor)
        except ImportError as exc:
            print(f"{vendor}: emulator unavailable ({exc}); skipped")
            continue
        cloud = module.demo_cloud(devices=devices)
        await cloud.start()
        clouds.append((vendor, cloud))

    accounts = [cloud.account_config(name="demo") for _, cloud in clouds]
    state_dir = tempfile.mkdtemp(prefix="cloud2mqtt-demo-")
    config = parse_config(
        {
            "mqtt": {"url": f"{'mqtts' if tls else 'mqtt'}://{host}:{port}", "client_id": "cloud2mqtt-demo"},
            "gateway": {"state_dir": state_dir, "health_interval": 5},
            "accounts": accounts,
            "http": {"listen": "127.0.0.1:0" if port_open("127.0.0.1", 9100) else "127.0.0.1:9100"},
        }
    )
    gateway = Gateway(config)
    await gateway.start()
    print(f"watch:  mosquitto_sub -h {host} -p {port} -v -t 'cloud2mqtt/#'")
    if gateway.observability.http is not None:
        print(f"metrics: curl {gateway.observability.http.url}/metrics  (also /healthz, /readyz)")
    example = _toggle_example(gateway, host, port)
    started = time.monotonic()
    last = dict(gateway.health.totals)
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass
            totals = gateway.health.totals
            accounts = gateway.publisher.accounts()
            online = sum(1 for a in accounts if a["state"] == "online")
            by_vendor: dict[str, int] = {}
            for rec in gateway.registry:
                by_vendor[rec.vendor] = by_vendor.get(rec.vendor, 0) + 1
            print(
                f"[{time.monotonic() - started:5.0f}s] devices {len(gateway.registry)} "
                f"({', '.join(f'{v} {n}' for v, n in sorted(by_vendor.items())) or '-'}) | "
                f"accounts online {online}/{len(accounts)} | "
                f"msg/s {totals['published'] - last['published']} | "
                f"commands {totals['commands']}",
                flush=True,
            )
            last = dict(totals)
            if example is None:
                example = _toggle_example(gateway, host, port)
            if duration is not None and time.monotonic() - started >= duration:
                break
    finally:
        await gateway.stop()
        for _, cloud in clouds:
            await cloud.stop()
        if own is not None:
            await own.stop()
            own.cleanup()
    return 0


def _toggle_example(gateway: Gateway, host: str, port: int) -> str | None:
    for rec in gateway.registry:
        for prop in rec.info.schema.properties:
            if prop.type == "bool" and prop.access == "rw":
                line = (
                    f"toggle: mosquitto_pub -h {host} -p {port} -t '{rec.topic}/set' "
                    f"-m '{{\"{prop.id}\": true}}'"
                )
                print(line)
                return line
    return None
