"""Which topic names a PUBLISH may carry: our check, and mosquitto agreeing with it."""

from __future__ import annotations

import asyncio

import pytest

from gateway.mqtt import codec
from gateway.mqtt.topic import MAX_TOPIC_BYTES, check_publish_topic, check_publish_topic_bytes

VALID = [
    "a",
    "cloud2mqtt/tencent/ABC%2Fdev/response/get",
    "a//b",  # empty levels are valid topic names
    "/a/",
    "$SYS/x",  # valid name; brokers refuse it with a PUBACK reason, not a disconnect
    "çà/日本/😀",
    "a b\u00a0c",  # U+00A0 is past the C1 controls
    "x" * MAX_TOPIC_BYTES,
]

INVALID = {
    "": "empty",
    "x/#": "wildcard '#'",
    "#": "wildcard '#'",
    "x/+/y": "wildcard '+'",
    "a+b": "wildcard '+'",
    "a\x00b": "NUL",
    "a\x01b": "control character U+0001",
    "a\nb": "control character U+000A",
    "a\x7fb": "control character U+007F",
    "a\x85b": "control character U+0085",
    "a\ufdd0b": "non-character U+FDD0",
    "a\uffffb": "non-character U+FFFF",
    "a\U0010fffeb": "non-character U+10FFFE",
    "a\ud800b": "surrogate U+D800",
    "x" * (MAX_TOPIC_BYTES + 1): "longer than 65535",
    "é" * (MAX_TOPIC_BYTES // 2 + 1): "longer than 65535",  # 2 bytes each in UTF-8
}


@pytest.mark.parametrize("topic", VALID, ids=lambda t: ascii(t[:20]))
def test_valid_topics_pass(topic: str) -> None:
    assert check_publish_topic(topic) is None
    assert check_publish_topic_bytes(topic.encode()) is None


@pytest.mark.parametrize(("topic", "reason"), INVALID.items(), ids=lambda t: ascii(t[:20]))
def test_invalid_topics_say_why(topic: str, reason: str) -> None:
    got = check_publish_topic(topic)
    assert got is not None and reason in got, got
    if len(topic) > 3:
        assert topic not in got  # the reason never echoes the topic


def test_bytes_must_be_utf8() -> None:
    assert "not valid UTF-8" in (check_publish_topic_bytes(b"a\xffb") or "")
    assert "not valid UTF-8" in (check_publish_topic_bytes(b"a\xed\xa0\x80") or "")  # surrogate
    assert "not valid UTF-8" in (check_publish_topic_bytes(b"a\xc0\xafb") or "")  # overlong
    assert "wildcard" in (check_publish_topic_bytes(b"x/#") or "")


async def _publish_raw(port: int, protocol: int, topic: bytes) -> bool:
    """Publish ``topic`` at QoS 1 with a raw socket; True when mosquitto kept the link (acked
    the message and a second one)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    props = b"\x00" if protocol == 5 else None
    writer.write(codec.encode_connect(codec.Connect(client_id=f"raw{protocol}", protocol=protocol)))
    writer.write(codec.encode_publish(topic, b"x", 1, False, 1, props))
    writer.write(codec.encode_publish(b"ok", b"x", 1, False, 2, props))
    parser = codec.Parser()
    acks: set[int] = set()
    try:
        while len(acks) < 2:
            data = await asyncio.wait_for(reader.read(4096), 5)
            if not data:
                return False
            for ptype, _, body in parser.feed(data):
                if ptype == codec.PUBACK:
                    acks.add(int.from_bytes(body[:2], "big"))
                elif ptype == codec.DISCONNECT:
                    return False
    except ConnectionResetError:
        return False
    finally:
        writer.close()
    return True


@pytest.mark.parametrize("protocol", [4, 5])
async def test_mosquitto_agrees(mosquitto, protocol: int) -> None:
    """Every topic we reject makes mosquitto drop the link; the ones we accept do not. (Invalid
    ``str`` topics are sent as their UTF-8, or the surrogate's CESU bytes.)"""
    for topic in VALID[:-1]:  # the 64 KiB one is fine too, but slow to send 2x2 times
        assert await _publish_raw(mosquitto.port, protocol, topic.encode()), topic
    for topic in INVALID:
        if len(topic) > 1000:
            continue
        raw = topic.encode("utf-8", "surrogatepass")
        assert not await _publish_raw(mosquitto.port, protocol, raw), ascii(topic)
