"""Broker outage: how soon the client is back after the broker returns, and what was lost.

``python -m bench.broker_outage [--outage 10] [--repeat 3] [--rate 500] [--qos 0]``

Starts a private mosquitto (with persistence, so a subscriber's persistent session survives the
restart and nothing the broker receives while the subscriber reconnects is lost to the count),
connects ``gateway.mqtt.client.MqttClient`` with its default backoff, and publishes ``--rate``
events per second (numbered, QoS ``--qos``) plus a retained state every 10th event, throughout. Then, per
round: stops mosquitto, waits ``--outage`` seconds, starts it again on the same port, and measures
**reconnect** = (client's CONNACK accepted) − (mosquitto seen listening again, polled every
25 ms, so the figure may be up to ~25 ms short).
At the end a paho subscriber (persistent session, QoS 1 subscription, ``queue_qos0_messages``)
has counted the events: **lost** = published − distinct received; ``order_ok`` says they came in
order (first deliveries). At QoS 0 the events the client wrote in the last moment before the
broker died, before it could see the link go down, are lost with the broker's socket buffer; at
QoS 1 they are resent. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from typing import Any

import paho.mqtt.client as paho

from gateway.mosquitto import Mosquitto
from gateway.mqtt.client import MqttClient

from ._proc import machine


class Counter:
    def __init__(self, broker: Mosquitto) -> None:
        self.events: list[int] = []
        self.state: bytes | None = None
        self._lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="outage-counter",
                                  clean_session=False, protocol=paho.MQTTv311)  # fmt: skip
        self.client.reconnect_delay_set(0.05, 0.2)
        self.client.on_connect = lambda c, u, flags, rc, p: (
            None if flags.session_present else c.subscribe("bench/#", qos=1)
        )
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            if msg.topic == "bench/dev/event":
                self.events.append(int(msg.payload))
            else:
                self.state = msg.payload

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    where = tempfile.mkdtemp(prefix="c2m-outage-")
    os.chmod(where, 0o777)  # mosquitto started as root drops to its own user
    broker = Mosquitto(extra_config=(
        f"persistence true\npersistence_location {where}/\nqueue_qos0_messages true\n"
    ))  # fmt: skip
    await broker.start()
    counter = Counter(broker)
    connected_at: list[float] = []
    client = MqttClient(broker.host, broker.port, client_id="outage-bench",
                        on_connect=lambda: connected_at.append(time.monotonic()))  # fmt: skip
    await client.connect()
    published = 0
    stop = asyncio.Event()

    async def publisher() -> None:
        nonlocal published
        step = 0.02
        per_step = max(1, round(args.rate * step))
        while not stop.is_set():
            for _ in range(per_step):
                client.publish("bench/dev/event", b"%d" % published, qos=args.qos)
                if published % 10 == 0:
                    client.publish("bench/dev", b"state %d" % published, retain=True)
                published += 1
            await asyncio.sleep(step)

    task = asyncio.create_task(publisher())
    await asyncio.sleep(1.0)
    reconnect: list[float] = []
    for _ in range(args.repeat):
        await broker.stop()
        await asyncio.sleep(args.outage)
        n = len(connected_at)
        assert broker.proc is None
        await broker.start()  # returns within ~25 ms of mosquitto listening (it polls)
        back = time.monotonic()
        while len(connected_at) == n:
            await asyncio.sleep(0.005)
        reconnect.append(round(connected_at[-1] - back, 3))
        await asyncio.sleep(2.0)
    stop.set()
    await task
    await client.flush()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with counter._lock:
            if len(counter.events) >= published:
                break
        await asyncio.sleep(0.05)
    with counter._lock:
        events = list(counter.events)
        state = counter.state
    await client.disconnect()
    counter.close()
    await broker.stop()
    broker.cleanup()
    shutil.rmtree(where, ignore_errors=True)
    received = set(events)
    first_seen = list(dict.fromkeys(events))  # a QoS 1 resend may deliver one twice
    return {
        "bench": "broker_outage",
        "outage_s": args.outage,
        "rounds": args.repeat,
        "rate_per_s": args.rate,
        "qos": args.qos,
        "reconnect_after_return_s": reconnect,
        "reconnect_median_s": statistics.median(reconnect),
        "reconnect_max_s": max(reconnect),
        "events_published": published,
        "events_lost": published - len(received & set(range(published))),
        "duplicates": len(events) - len(first_seen),
        "order_ok": first_seen == sorted(first_seen),
        "latest_state_ok": state == b"state %d" % ((published - 1) // 10 * 10),
        "buffer_dropped": getattr(client, "buffer_dropped", None),
        "backoff": {"base": client.backoff.base, "cap": client.backoff.cap},
        "machine": machine(),
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--outage", type=float, default=10.0, help="seconds the broker stays down")
    p.add_argument("--repeat", type=int, default=3, help="outages in one run")
    p.add_argument("--rate", type=int, default=500, help="events per second, throughout")
    p.add_argument("--qos", type=int, choices=(0, 1), default=0, help="QoS of the events")
    print(json.dumps(asyncio.run(main(p.parse_args())), indent=1))
