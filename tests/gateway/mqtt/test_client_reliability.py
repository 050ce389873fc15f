"""Issue 11, findings 1, 4 and 5 on the client side: one bad packet never costs the link, no
broker at start-up is an outage like any other, and an outage loses nothing within the buffer.

Real mosquitto everywhere a broker behaves normally; a scripted asyncio peer only for the
protocol corners mosquitto cannot be made to produce (a refused version, a malformed CONNACK).
"""

from __future__ import annotations

import functools
import logging
import os
import random
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator
from typing import Any

import paho.mqtt.client as paho
import pytest

from gateway.backoff import Backoff
from gateway.mosquitto import Mosquitto
from gateway.mqtt import codec
from gateway.mqtt.client import ConnectRefused, MqttClient, explain_failure
from tests import helpers
from tests.gateway.mqtt.scripted import answering, assert_falls_back_to_311, read_connect, scripted

FAST = (0.01, 0.05)  # backoff for tests: the mechanism is the same, the waits are short


#: the shared wait, with a longer safety net: these tests restart brokers and ride out outages
eventually = functools.partial(helpers.eventually, timeout=15.0)


class Sub:
    """Our own client as a plain subscriber (clean session) recording (topic, payload)."""

    def __init__(self, broker: Mosquitto, topic: str = "t/#") -> None:
        self.got: list[tuple[str, bytes]] = []
        self.client = MqttClient(broker.host, broker.port, client_id=f"sub-{id(self)}",
                                 on_message=lambda t, p, props: self.got.append((t, p)))  # fmt: skip
        self.topic = topic

    async def __aenter__(self) -> Sub:
        await self.client.connect()
        await self.client.subscribe([(self.topic, 1)])
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.client.disconnect()

    def payloads(self, topic: str | None = None) -> list[bytes]:
        return [p for t, p in self.got if topic is None or t == topic]


# ------------------------------------------------------------------ finding 1: bad packets


@pytest.mark.parametrize("protocol", [4, 5])
async def test_publish_to_a_wildcard_topic_keeps_the_link(mosquitto, protocol):
    """The remote DoS: a QoS 1 reply to ``x/#`` used to take the link down for good."""
    lost: list[Any] = []
    client = MqttClient(mosquitto.host, mosquitto.port, client_id="wild", protocol=protocol,
                        on_disconnect=lost.append, backoff=Backoff(*FAST))  # fmt: skip
    async with Sub(mosquitto) as sub:
        await client.connect()
        client.publish("x/#", b"reply", qos=1)
        client.publish("t/+/y", b"reply", qos=0)
        client.publish("t/a\x00b", b"reply", qos=1)
        client.publish("t/ok", b"after", qos=1)
        await client.flush()
        await eventually(lambda: sub.payloads() == [b"after"], "the next message delivered")
        assert client.refused == 3
        assert lost == [] and client.reconnects == 0 and client.connected
    await client.disconnect()


async def _poison_recovers(broker: Mosquitto, protocol: int, poison: dict[str, Any]) -> MqttClient:
    versions: list[int] = []
    client = MqttClient(broker.host, broker.port, client_id=f"poison{protocol}", protocol=protocol,
                        backoff=Backoff(*FAST), on_connect=lambda: versions.append(client.protocol))  # fmt: skip
    await client.subscribe([("cmd/#", 1)])  # resubscribed on every reconnect, as the gateway's
    async with Sub(broker) as sub:
        await client.connect()
        client.publish("t/a", b"before", qos=1)
        client.publish("t/poison", **poison)
        client.publish("t/a", b"behind", qos=1)
        await eventually(lambda: client.rejected == 1, "the poisoned packet dropped")
        await eventually(lambda: client.connected and client.unacked == 0, "the session back")
        client.publish("t/a", b"later", qos=1)
        await eventually(lambda: b"later" in sub.payloads(), "a new message delivered")
        got = sub.payloads()
        assert b"before" in got and b"behind" in got  # the innocent ones got through
        assert sub.payloads("t/poison") == []
        # A bounded number of links died on it (1 original + max_resends resends), not forever.
        assert client.reconnects <= 1 + client.max_resends + 1, client.reconnects
        # A reset after an accepted MQTT 5 CONNACK never made the client fall back to 3.1.1.
        assert set(versions) == {protocol}, versions
    return client


async def test_a_packet_the_broker_rejects_is_dropped_and_the_session_recovers_v5(mosquitto):
    """Topic alias 0 is a protocol error (mosquitto: DISCONNECT 0x81), our topic check cannot
    see it: the client must find the packet, drop it after 3 resends, and carry on in MQTT 5."""
    client = await _poison_recovers(
        mosquitto, 5, {"payload": b"p", "qos": 1, "props": {"topic_alias": 0}}
    )
    await client.disconnect()


async def test_a_packet_the_broker_rejects_is_dropped_and_the_session_recovers_311():
    """MQTT 3.1.1 has no reason codes: mosquitto just closes on a packet over its
    max_packet_size; the isolation by one-at-a-time resends finds it anyway."""
    broker = Mosquitto(extra_config="max_packet_size 2000")
    await broker.start()
    try:
        client = await _poison_recovers(broker, 4, {"payload": b"x" * 3000, "qos": 1})
        await client.disconnect()
    finally:
        await broker.stop()
        broker.cleanup()


async def test_a_packet_above_the_brokers_maximum_packet_size_is_refused_in_v5():
    broker = Mosquitto(extra_config="max_packet_size 2000")
    await broker.start()
    client = MqttClient(broker.host, broker.port, client_id="big5")
    try:
        async with Sub(broker) as sub:
            await client.connect()
            client.publish("t/big", b"x" * 3000, qos=1)
            client.publish("t/big", b"x" * 3000, qos=0)
            client.publish("t/ok", b"ok", qos=1)
            await eventually(lambda: sub.payloads() == [b"ok"], "the next message delivered")
            assert client.refused == 2 and client.reconnects == 0
        await client.disconnect()
    finally:
        await broker.stop()
        broker.cleanup()


async def test_isolation_gives_up_when_the_broker_neither_acks_nor_closes():
    """Isolating resends one packet at a time; a broker that keeps the link up but never
    acknowledges the probe must not hold every later QoS 1 message back for good."""
    received: list[list[tuple[int, bytes]]] = []  # per connection: (packet id, payload)

    async def handle(reader, writer):
        c = await read_connect(reader)
        assert c is not None
        mine: list[tuple[int, bytes]] = []
        received.append(mine)
        writer.write(codec.encode_connack(0, 5))
        parser = codec.Parser()
        while data := await reader.read(4096):
            for ptype, flags, body in parser.feed(data):
                if ptype == codec.PUBLISH:
                    msg = codec.decode_publish(flags, body, 5)
                    mine.append((msg.packet_id or 0, msg.payload))
                    if len(received) == 1 and len(mine) == 2:
                        writer.write(codec.encode_disconnect(5, 0x82))  # "you broke it"
                        await writer.drain()
                        writer.close()
                        return
        writer.close()

    server, port = await scripted(handle)
    client = MqttClient("127.0.0.1", port, client_id="silent-probe", connect_timeout=1.0,
                        backoff=Backoff(*FAST))  # fmt: skip
    await client.connect()
    client.publish("t/a", b"one", qos=1)
    client.publish("t/b", b"two", qos=1)
    await eventually(lambda: len(received) == 2 and len(received[1]) == 1, "the probe resent")
    client.publish("t/c", b"three", qos=1)  # held while the probe is outstanding ...
    assert [p for _, p in received[1]] == [b"one"] and client.unacked == 3
    await eventually(lambda: [p for _, p in received[1]] == [b"one", b"two", b"three"],
                     "the other suspect and the new message sent after the probe timed out")  # fmt: skip
    assert client.rejected == 0 and client.unacked == 3  # nothing dropped: it never closed
    await client.disconnect()
    server.close()


def test_unacknowledged_packets_are_reencoded_when_the_protocol_version_changes():
    """Packets in flight from a 3.1.1 link resent on an MQTT 5 one (or back) must be in that
    version's form, or the broker reads them as malformed: one more way to poison a session."""
    from gateway.mqtt.client import _reencode

    v5 = codec.encode_publish(b"t/x", b"pay", 1, True, 7, codec.encode_props({"content_type": "a/b"}))
    v4 = _reencode(v5, 5, 4)
    msg = codec.decode_publish(v4[0] & 0x0F, v4[2:], 4)
    assert (msg.topic, msg.payload, msg.qos, msg.retain, msg.packet_id) == ("t/x", b"pay", 1, True, 7)
    back = codec.decode_publish(v5[0] & 0x0F, _reencode(v4, 4, 5)[2:], 5)
    assert (back.topic, back.payload, back.packet_id) == ("t/x", b"pay", 7)


# ------------------------------------------------------------------ finding 1: MQTT version


async def test_v5_form_refusal_0x84_falls_back_to_311():
    async def refuse_v5_with_0x84(c, reader, writer):
        writer.write(codec.encode_connack(0 if c.protocol == 4 else 0x84, c.protocol))
        if c.protocol == 4:
            await reader.read(4096)

    await assert_falls_back_to_311(refuse_v5_with_0x84, "fb84")


async def test_close_before_any_connack_falls_back_to_311():
    async def close_on_v5(c, reader, writer):
        if c.protocol == 4:
            writer.write(codec.encode_connack(0, 4))
            await reader.read(4096)

    await assert_falls_back_to_311(close_on_v5, "fbclose")


async def test_a_reset_after_an_accepted_v5_connack_is_not_read_as_v5_unsupported():
    """Accept MQTT 5, then close on the SUBSCRIBE; later close before CONNACK. Neither may make
    the client try 3.1.1: this broker has spoken MQTT 5."""

    async def accept_once(c, reader, writer):
        if len(seen) == 1:
            writer.write(codec.encode_connack(0, c.protocol))
            await reader.read(4096)  # the SUBSCRIBE: drop the link instead of a SUBACK

    server, port, seen = await answering(accept_once)
    client = MqttClient("127.0.0.1", port, client_id="nofb", reconnect=False)
    await client.subscribe([("cmd/#", 1)])
    with pytest.raises(ConnectionResetError):
        await client.connect()
    with pytest.raises(ConnectionResetError):
        await client.connect()  # closed before CONNACK, but v5 was accepted here once
    assert seen == [5, 5]
    await client.disconnect()
    server.close()


async def test_a_malformed_connack_is_a_protocol_error_not_a_fallback():
    async def malformed_connack(c, reader, writer):
        writer.write(bytes((codec.CONNACK << 4, 4, 0, 0, 9, 0x21)))  # props say 9 bytes, 1 given
        await reader.read(4096)

    server, port, seen = await answering(malformed_connack)
    client = MqttClient("127.0.0.1", port, client_id="badconnack", reconnect=False)
    with pytest.raises(codec.MqttProtocolError) as info:
        await client.connect()
    assert seen == [5]
    assert explain_failure(info.value, "h", 1)[0] == "protocol"
    await client.disconnect()
    server.close()


# ------------------------------------------------------------------ finding 4: start without broker


class RecordingBackoff(Backoff):
    def __init__(self) -> None:
        super().__init__(*FAST)
        self.delays: list[float] = []

    def next(self) -> float:
        delay = super().next()
        self.delays.append(delay)
        return delay


async def test_start_without_a_broker_connects_when_it_appears(caplog):
    """``start()`` returns at once, logs one line for repeated refusals (not a traceback, not
    one per attempt), subscribes on connect, and sends what was published meanwhile."""
    caplog.set_level(logging.DEBUG, logger="cloud2mqtt.mqtt")
    broker = Mosquitto()
    backoff = RecordingBackoff()
    got: list[tuple[str, bytes]] = []
    client = MqttClient(broker.host, broker.port, client_id="early", backoff=backoff,
                        on_message=lambda t, p, props: got.append((t, p)))  # fmt: skip
    client.start()
    await client.subscribe([("cmd/#", 1)])
    client.publish("t/state", b"s1", qos=0, retain=True)
    client.publish("t/event", b"e1", qos=0)
    await eventually(lambda: len(backoff.delays) >= 3, "three failed attempts")
    assert not client.connected and client.buffered == 2
    await broker.start()
    try:
        await eventually(lambda: client.connected, "connected once the broker is up")
        async with Sub(broker) as sub:  # the retained state arrives on subscribe
            await eventually(lambda: (b"s1" in sub.payloads("t/state")), "the buffered state")
            sub.client.publish("cmd/x", b"hello", qos=1)
            await eventually(lambda: got == [("cmd/x", b"hello")], "the early subscription")
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        refused = [r for r in warnings if "connection refused" in r.getMessage()]
        assert len(refused) == 1, [r.getMessage() for r in warnings]
        assert all(r.exc_info is None for r in caplog.records)
        assert backoff.attempt == 0  # reset by the successful connect
    finally:
        await client.disconnect()
        await broker.stop()
        broker.cleanup()


async def _silent(reader, writer):
    while await reader.read(4096):  # never answers the CONNECT
        pass


async def _bad_credentials(reader, writer):
    c = await read_connect(reader)
    writer.write(codec.encode_connack(0x86 if c and c.protocol == 5 else 4, c.protocol if c else 4))
    await writer.drain()
    writer.close()


async def _bad_suback(reader, writer):
    c = await read_connect(reader)
    assert c is not None
    writer.write(codec.encode_connack(0, c.protocol))
    await reader.read(4096)  # the SUBSCRIBE (packet id 1 or 2)
    # A SUBACK whose property length runs past its end (a truncated property).
    writer.write(bytes((codec.SUBACK << 4, 4, 0, 1, 7, 0x1F)))
    await writer.drain()
    await reader.read(4096)
    writer.close()


@pytest.mark.parametrize(
    ("handler", "kind", "needle"),
    [
        (_silent, "timeout", "no answer"),
        (_bad_credentials, "auth", "mqtt.username and mqtt.password"),
        (_bad_suback, "protocol", "broke the MQTT protocol"),
    ],
)
async def test_each_kind_of_failure_is_logged_once(caplog, handler, kind, needle):
    caplog.set_level(logging.DEBUG, logger="cloud2mqtt.mqtt")
    server, port = await scripted(handler)
    client = MqttClient("127.0.0.1", port, client_id="kinds", connect_timeout=0.2,
                        backoff=Backoff(*FAST))  # fmt: skip
    await client.subscribe([("cmd/#", 1)])
    client.start()
    try:
        await eventually(lambda: client._failures >= 3, "three failed attempts")
        assert client._failure_kind == kind
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
                    and r.name == "cloud2mqtt.mqtt" and "retrying" in r.getMessage()]  # fmt: skip
        assert len(warnings) == 1 and needle in warnings[0], warnings
        assert all(r.exc_info is None for r in caplog.records)
    finally:
        await client.disconnect()
        server.close()


def test_refused_credentials_explain_the_config_keys():
    kind, line = explain_failure(ConnectRefused(5), "broker", 1883)
    assert kind == "auth" and "mqtt.username" in line and "mqtt.password" in line


# ------------------------------------------------------------------ finding 5: fast return


def test_default_backoff_is_capped_at_two_seconds():
    """The reconnect delay never grows past 2 s (full jitter), however long the outage: the
    client is back within ~2 s of the broker's return (the figure is in bench/RESULTS.md)."""
    client = MqttClient("127.0.0.1", 1, client_id="cap")
    assert client.backoff.cap <= 2.0
    client.backoff._rng = random.Random(11)
    delays = [client.backoff.next() for _ in range(1000)]  # a 30-minute outage's worth
    assert max(delays) <= 2.0 and max(delays[20:]) > 1.5  # capped, and jitter reaches the cap


async def test_the_supervisor_takes_its_delays_from_the_backoff(mosquitto):
    backoff = RecordingBackoff()
    client = MqttClient(mosquitto.host, mosquitto.port, client_id="sup", backoff=backoff)
    await client.connect()
    await mosquitto.stop()
    await eventually(lambda: len(backoff.delays) >= 3, "reconnect attempts while down")
    assert all(0 <= d <= FAST[1] for d in backoff.delays)
    await mosquitto.start()
    await eventually(lambda: client.connected, "reconnected")
    assert backoff.attempt == 0
    await client.disconnect()


# ------------------------------------------------------------------ finding 5: outage buffer


class PersistentSub:
    """A paho subscriber with a persistent session, so that what the broker receives while this
    subscriber reconnects after a broker restart is queued for it, not lost to the test."""

    def __init__(self, broker: Mosquitto) -> None:
        self.got: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="persistent-sub",
                                  clean_session=False, protocol=paho.MQTTv311)  # fmt: skip
        self.client.reconnect_delay_set(0.05, 0.2)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if not flags.session_present:
            client.subscribe("t/#", qos=1)
        self.connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.got.append((msg.topic, msg.payload))

    def payloads(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p in self.got if t == topic]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
async def persistent_broker() -> AsyncIterator[Mosquitto]:
    # Started as root, mosquitto drops to its own user: the directory must be writable to it.
    where = tempfile.mkdtemp(prefix="c2m-persist-")
    os.chmod(where, 0o777)
    broker = Mosquitto(extra_config=(
        f"persistence true\npersistence_location {where}/\nqueue_qos0_messages true\n"
    ))  # fmt: skip
    await broker.start()
    yield broker
    await broker.stop()
    broker.cleanup()
    shutil.rmtree(where, ignore_errors=True)


async def test_an_outage_loses_no_event_and_keeps_the_latest_state(persistent_broker):
    broker = persistent_broker
    sub = PersistentSub(broker)
    client = MqttClient(broker.host, broker.port, client_id="outage", backoff=Backoff(*FAST))
    try:
        await eventually(sub.connected.is_set, "subscriber connected")
        await client.connect()
        client.publish("t/dev/event", b"0")
        await eventually(lambda: sub.payloads("t/dev/event") == [b"0"], "the first event")

        await broker.stop()
        await eventually(lambda: not client.connected, "the client saw the link go down")
        for i in range(1, 101):
            client.publish("t/dev/event", b"%d" % i)
            if i % 10 == 0:
                client.publish("t/dev", b"state %d" % i, retain=True)
                client.publish("t/dev/availability", b"online %d" % i, retain=True, qos=1)
            if i == 50:
                client.publish("t/bridge/event", b"device_added", qos=1)
        assert client.buffered == 100 + 1 + 2  # events in full, retained topics collapsed
        assert client.buffer_dropped == 0

        await broker.start()
        await eventually(lambda: client.connected and client.buffered == 0, "buffer sent")
        await eventually(lambda: len(sub.payloads("t/dev/event")) == 101, "every event")
        assert sub.payloads("t/dev/event") == [b"%d" % i for i in range(101)]  # in order
        assert sub.payloads("t/bridge/event") == [b"device_added"]
        # the retained state and availability follow the events they came after (last write)
        await eventually(lambda: sub.payloads("t/dev")[-1:] == [b"state 100"], "the latest state")
        await eventually(
            lambda: sub.payloads("t/dev/availability")[-1:] == [b"online 100"], "the availability"
        )
        # Collapsed: superseded states were not sent at all.
        assert b"state 10" not in sub.payloads("t/dev")
        # Order of last write: the last event before the state it led to.
        order = [p for t, p in sub.got if t in ("t/dev", "t/dev/event")]
        assert order.index(b"100") < order.index(b"state 100")
        async with Sub(broker, "t/dev") as fresh:  # the retained state is the latest
            await eventually(lambda: fresh.payloads() == [b"state 100"], "retained state")
    finally:
        await client.disconnect()
        sub.close()


async def test_a_full_buffer_drops_the_oldest_events_and_counts_them(persistent_broker):
    """Before the first connect too: publishes wait in the buffer (``start()``)."""
    broker = persistent_broker
    sub = PersistentSub(broker)
    await eventually(sub.connected.is_set, "subscriber connected")
    await broker.stop()
    client = MqttClient(broker.host, broker.port, client_id="small", buffer_size=5,
                        backoff=Backoff(*FAST))  # fmt: skip
    client.start()
    try:
        for i in range(1, 9):
            client.publish("t/ev", b"%d" % i)
            client.publish("t/state", b"s%d" % i, retain=True)  # retained: not counted
        assert client.buffered == 5 + 1
        assert client.buffer_dropped == 3
        assert client.stats()["buffer_dropped"] == 3 and client.stats()["buffered"] == 6
        await broker.start()
        await eventually(lambda: len(sub.payloads("t/ev")) == 5, "the kept events")
        await eventually(lambda: sub.payloads("t/state")[-1:] == [b"s8"], "the latest state")
        assert sub.payloads("t/ev") == [b"4", b"5", b"6", b"7", b"8"]
        assert client.buffered == 0 and client.buffer_dropped == 3
    finally:
        await client.disconnect()
        sub.close()
