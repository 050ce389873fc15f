"""MQTT publish throughput, 200-byte payloads, into a private mosquitto: ours vs the alternatives.

``python -m bench.mqtt_publish [--messages N] [--repeat R] [--clients ours,gmqtt,raw,aiomqtt]``

Prints one JSON object. For each client and QoS (0 and 1) it publishes N messages as fast as
the client allows, with the same shape of work for every client: a batch of ``--batch``
publishes per event-loop iteration, then a yield; backpressure where the client offers it.

- ``ours``: ``gateway.mqtt.client.MqttClient`` as the gateway uses it (MQTT 5, the pre-encoded
  ``content_type: application/json`` property, non-blocking ``publish()``, QoS 1 window 1000).
- ``gmqtt``: ``gmqtt.Client`` (MQTT 5, same property), non-blocking ``publish()``.
- ``aiomqtt``: ``await client.publish()`` per message, as its API asks (paho underneath).
- ``raw``: PUBLISH packets encoded before the clock starts, written ``--batch`` per write; for
  QoS 1 a window of 100 unacknowledged packets. This is the ceiling for the socket + broker.

A subscriber in its own process (``bench.counter``) counts what the broker delivers; a run is
valid only when every message arrived. ``msgs_per_s`` is delivered / (last delivery - first
publish); ``pub_cpu_us_per_msg`` is this process's CPU per message (the client's own cost) and
``broker_cpu_us_per_msg`` mosquitto's: on 2 cores the broker and the subscriber take most of
the CPU, so once a client's own cost is ~1 µs the broker is the ceiling.
Each figure is the median of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.mosquitto import Mosquitto
from gateway.mqtt import codec
from gateway.mqtt.client import MqttClient

from ._proc import CounterProc, cpu_seconds, machine, run

PAYLOAD = (b'{"temperature":21.5,"humidity":40,"power_switch":1,"brightness":80,"color":"warm",'
           b'"mode":"auto","last_seen":1700000000000,"pad":"' + b"x" * 200)[:198] + b'"}'
assert len(PAYLOAD) == 200
CONTENT_TYPE = "application/json"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


Publisher = Callable[[str, int, str, int, int, int], Awaitable[None]]


async def pub_ours(host: str, port: int, topic: str, n: int, qos: int, batch: int) -> None:
    c = MqttClient(host, port, client_id=f"bench-ours-{time.time_ns()}", reconnect=False)
    await c.connect()
    props = codec.encode_props({"content_type": CONTENT_TYPE})
    tb = topic.encode()
    publish = c.publish
    payload = PAYLOAD
    sleep = asyncio.sleep
    for i in range(n):
        publish(tb, payload, qos, False, props)
        if i % batch == batch - 1:
            if c.congested:
                await c.drain()
            await sleep(0)
    if qos:
        await c.flush(120)
    await _wait_written(lambda: c._transport)
    await c.disconnect()


async def pub_gmqtt(host: str, port: int, topic: str, n: int, qos: int, batch: int) -> None:
    import gmqtt

    c = gmqtt.Client(f"bench-gmqtt-{time.time_ns()}")
    await c.connect(host, port, version=gmqtt.constants.MQTTv50)
    publish = c.publish
    payload = PAYLOAD
    transport = c._connection._transport
    for i in range(n):
        publish(topic, payload, qos, content_type=CONTENT_TYPE)
        if i % batch == batch - 1:
            # gmqtt has no drain(): keep its transport buffer bounded the same way ours is.
            while transport.get_write_buffer_size() > 4 << 20:
                await asyncio.sleep(0.001)
            await asyncio.sleep(0)
    if qos:
        await asyncio.wait_for(c._persistent_storage.wait_empty(), 120)
    await _wait_written(lambda: transport)
    await c.disconnect()


async def pub_aiomqtt(host: str, port: int, topic: str, n: int, qos: int, batch: int) -> None:
    import aiomqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = CONTENT_TYPE
    async with aiomqtt.Client(
        host, port, identifier=f"bench-aiomqtt-{time.time_ns()}",
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as c:
        publish = c.publish
        payload = PAYLOAD
        for _ in range(n):
            await publish(topic, payload, qos, properties=props)


class _Raw(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = codec.Parser()
        self.connack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acked = 0
        self.on_ack: Callable[[int], None] | None = None
        self.resumed = asyncio.Event()
        self.resumed.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        acks = 0
        for ptype, _flags, _body in self.parser.feed(data):
            if ptype == codec.PUBACK:
                acks += 1
            elif ptype == codec.CONNACK and not self.connack.done():
                self.connack.set_result(None)
        if acks:
            self.acked += acks
            if self.on_ack is not None:
                self.on_ack(acks)

    def pause_writing(self) -> None:
        self.resumed.clear()

    def resume_writing(self) -> None:
        self.resumed.set()


async def pub_raw(host: str, port: int, topic: str, n: int, qos: int, batch: int) -> None:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(_Raw, host, port)
    transport.set_write_buffer_limits(high=4 << 20)
    transport.write(codec.encode_connect(codec.Connect(client_id=f"bench-raw-{time.time_ns()}")))
    await asyncio.wait_for(proto.connack, 10)
    props = codec.encode_props({"content_type": CONTENT_TYPE})
    tb = topic.encode()
    packets = [codec.encode_publish(tb, PAYLOAD, qos, False, i % 65535 + 1 if qos else 0, props)
               for i in range(n)]
    # The clock for this client starts here, after encoding (see _measure: started()).
    _started.set_result(time.monotonic())
    if qos == 0:
        for i in range(0, n, batch):
            transport.write(b"".join(packets[i : i + batch]))
            if not proto.resumed.is_set():
                await proto.resumed.wait()
            await asyncio.sleep(0)
    else:
        window = 100
        sent = min(window, n)
        done = loop.create_future()
        transport.write(b"".join(packets[:sent]))

        def on_ack(k: int) -> None:
            nonlocal sent
            if sent < n:
                upto = min(n, sent + k)
                transport.write(b"".join(packets[sent:upto]))
                sent = upto
            if proto.acked >= n and not done.done():
                done.set_result(None)

        proto.on_ack = on_ack
        await asyncio.wait_for(done, 120)
    await _wait_written(lambda: transport)
    transport.write(codec.encode_disconnect(5))
    transport.close()


_started: asyncio.Future[float]


async def _wait_written(get_transport: Callable[[], Any]) -> None:
    for _ in range(12000):
        t = get_transport()
        if t is None or t.get_write_buffer_size() == 0:
            return
        await asyncio.sleep(0.005)


PUBLISHERS: dict[str, Publisher] = {
    "ours": pub_ours,
    "gmqtt": pub_gmqtt,
    "aiomqtt": pub_aiomqtt,
    "raw": pub_raw,
}


async def measure(broker: Mosquitto, name: str, qos: int, n: int, batch: int) -> dict[str, Any]:
    global _started
    topic = f"bench/{name}/{qos}/{time.time_ns()}"
    counter = CounterProc(broker.port, [topic], expect=n, idle=3)
    await counter.start()
    try:
        loop = asyncio.get_running_loop()
        _started = loop.create_future()
        assert broker.proc is not None
        broker_cpu0 = cpu_seconds(broker.proc.pid)
        cpu0 = _cpu()
        t0 = time.monotonic()
        task = asyncio.create_task(PUBLISHERS[name](broker.host, broker.port, topic, n, qos, batch))
        if name != "raw":
            _started.set_result(t0)
        start = await _started
        cpu_start = _cpu() if name == "raw" else cpu0
        await task
        t1 = time.monotonic()
        cpu = _cpu() - cpu_start
        got = await counter.result()
        broker_cpu = cpu_seconds(broker.proc.pid) - broker_cpu0
    finally:
        counter.kill()
    delivered = got["count"]
    elapsed = max(got["last"], t1) - start if delivered else float("nan")
    return {
        "delivered": delivered,
        "complete": delivered == n,
        "msgs_per_s": round(delivered / elapsed) if delivered else 0,
        "pub_cpu_us_per_msg": round(cpu / n * 1e6, 2),
        "broker_cpu_us_per_msg": round(broker_cpu / n * 1e6, 2),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    broker = Mosquitto()
    await broker.start()
    results: dict[str, Any] = {}
    try:
        for name in args.clients.split(","):
            for qos in (0, 1):
                n = args.messages if name != "aiomqtt" else args.slow_messages
                runs = [await measure(broker, name, qos, n, args.batch) for _ in range(args.repeat)]
                rates = [r["msgs_per_s"] for r in runs]
                results[f"{name}_qos{qos}"] = {
                    "msgs_per_s": round(statistics.median(rates)),
                    "runs": rates,
                    "pub_cpu_us_per_msg": statistics.median(r["pub_cpu_us_per_msg"] for r in runs),
                    "broker_cpu_us_per_msg": statistics.median(
                        r["broker_cpu_us_per_msg"] for r in runs
                    ),
                    "messages": n,
                    "all_delivered": all(r["complete"] for r in runs),
                }
                print(f"{name} qos{qos}: {results[f'{name}_qos{qos}']}", file=sys.stderr)
    finally:
        await broker.stop()
        broker.cleanup()
    ours0 = results.get("ours_qos0", {}).get("msgs_per_s", 0)
    ours1 = results.get("ours_qos1", {}).get("msgs_per_s", 0)
    return {
        "bench": "mqtt_publish",
        "payload_bytes": len(PAYLOAD),
        "batch": args.batch,
        "results": results,
        "targets": {
            "ours_qos0_ge_100k": ours0 >= 100_000,
            "ours_qos1_ge_60k": ours1 >= 60_000,
        },
        "machine": machine(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description="MQTT publish throughput: ours vs gmqtt, aiomqtt, raw")
    p.add_argument("--messages", type=int, default=200_000)
    p.add_argument("--slow-messages", type=int, default=20_000, help="messages for aiomqtt")
    p.add_argument("--batch", type=int, default=100, help="publishes per loop iteration")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--clients", default="ours,gmqtt,raw,aiomqtt")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        print(json.dumps(run(main_async(args), args.loop)))


if __name__ == "__main__":
    main()
