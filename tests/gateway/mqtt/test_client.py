"""Our MQTT client against real peers: mosquitto over 3.1.1, and a broker that refuses MQTT 5."""

from __future__ import annotations

import asyncio

import pytest

from gateway.mqtt import codec
from gateway.mqtt.client import ConnectRefused, MqttClient
from tests.gateway.mqtt.scripted import assert_falls_back_to_311, scripted
from tests.helpers import eventually


async def test_mqtt311_publish_and_subscribe(mosquitto):
    got: list[tuple[str, bytes]] = []
    sub = MqttClient(mosquitto.host, mosquitto.port, client_id="s311", protocol=4,
                     on_message=lambda t, p, props: got.append((t, p)))
    pub = MqttClient(mosquitto.host, mosquitto.port, client_id="p311", protocol=4)
    await sub.connect()
    await sub.subscribe([("x/#", 1)])
    await pub.connect()
    assert pub.protocol == 4
    for i in range(100):
        pub.publish("x/y", str(i).encode(), qos=i % 2, props={"content_type": "ignored on 3.1.1"})
    await pub.flush()
    for _ in range(200):
        if len(got) == 100:
            break
        await asyncio.sleep(0.02)
    assert [p for _, p in got] == [str(i).encode() for i in range(100)]
    await pub.disconnect()
    await sub.disconnect()


async def test_falls_back_to_311_when_v5_is_refused():
    """A 3.1.1-only broker answers a v5 CONNECT with return code 1 (unacceptable version)."""

    async def only_311(c, reader, writer):
        writer.write(codec.encode_connack(0 if c.protocol == 4 else 1, 4))
        if c.protocol == 4:
            await reader.read(4096)

    await assert_falls_back_to_311(only_311, "fb")


async def test_bad_credentials_are_refused_not_retried():
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(4096)
        writer.write(codec.encode_connack(0x86, 5))
        await writer.drain()
        writer.close()

    server, port = await scripted(handle)
    client = MqttClient("127.0.0.1", port, client_id="bad", password="nope", reconnect=False)
    try:
        await client.connect()
    except ConnectRefused as exc:
        assert exc.auth
    else:
        raise AssertionError("connect should be refused")
    server.close()


async def test_congestion_is_seen_within_one_loop_iteration(mosquitto):
    """A vendor read handled in one callback can publish thousands of messages; the client must
    hand them to the transport as it goes, so ``congested`` (the transport's high-water mark)
    turns true before the callback ends and the connector stops reading."""
    pub = MqttClient(mosquitto.host, mosquitto.port, client_id="burst")
    await pub.connect()
    payload = b"x" * 4096
    n = 0
    while not pub.congested and n < 10_000:  # no await: all inside one loop iteration
        pub.publish("burst/t", payload)
        n += 1
    # Without writing as it goes, all 40 MiB would sit in the client until the loop iteration
    # ended and ``congested`` would stay false. (How much the kernel and the broker, reading
    # concurrently, absorb before the 4 MiB high-water mark is passed varies by machine.)
    assert pub.congested, "40 MiB queued without the client ever reporting congestion"
    await asyncio.wait_for(pub.drain(), 30)
    assert not pub.congested
    await pub.disconnect()


async def test_flow_pauses_reading_while_congested(mosquitto):
    """The Aliyun app channel's client stops reading while the gateway's MQTT side is behind."""

    class Flow:
        congested = False
        drains = 0
        released = asyncio.Event()

        async def drain(self) -> None:
            Flow.drains += 1
            await Flow.released.wait()
            Flow.congested = False

    got: list[bytes] = []
    sub = MqttClient(mosquitto.host, mosquitto.port, client_id="held",
                     on_message=lambda t, p, props: got.append(p), flow=Flow())  # fmt: skip
    pub = MqttClient(mosquitto.host, mosquitto.port, client_id="feeder")
    await sub.connect()
    await sub.subscribe([("held/#", 0)])
    await pub.connect()
    Flow.congested = True
    for i in range(3000):
        pub.publish("held/t", b"%d" % i + b"x" * 1000)
    await pub.flush()
    await eventually(lambda: Flow.drains == 1, "the client asked to drain")
    transport = sub._transport
    assert transport is not None and not transport.is_reading()  # reading stopped
    assert len(got) < 3000
    Flow.released.set()
    await eventually(lambda: len(got) == 3000, "every message once drained")
    assert [int(p[:-1000]) for p in got] == list(range(3000))
    await pub.disconnect()
    await sub.disconnect()


@pytest.mark.parametrize("protocol", [4, 5])
async def test_unsubscribe_stops_delivery_and_is_not_renewed_on_reconnect(mosquitto, protocol):
    """What a clean stop relies on: once ``unsubscribe`` returns (UNSUBACK), nothing more
    arrives on the filter, and a reconnect does not subscribe it again."""
    got: list[bytes] = []
    sub = MqttClient(mosquitto.host, mosquitto.port, client_id=f"u{protocol}", protocol=protocol,
                     on_message=lambda t, p, props: got.append(p))  # fmt: skip
    pub = MqttClient(mosquitto.host, mosquitto.port, client_id=f"up{protocol}", protocol=protocol)
    await sub.connect()
    await sub.subscribe([("cmd/#", 1), ("marker", 1)])
    await pub.connect()
    pub.publish("cmd/a", b"before", qos=1)
    await eventually(lambda: got == [b"before"], "the subscribed filter delivers")
    await sub.unsubscribe(["cmd/#"])
    assert "cmd/#" not in sub._subscriptions and "marker" in sub._subscriptions
    pub.publish("cmd/a", b"after", qos=1)
    pub.publish("marker", b"end", qos=1)  # same publisher: delivered after "after" would be
    await eventually(lambda: got[-1:] == [b"end"], "the marker arrives")
    assert got == [b"before", b"end"]
    await pub.disconnect()
    await sub.disconnect()
