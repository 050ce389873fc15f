from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.mqtt import codec


@given(st.integers(0, codec.MAX_PACKET))
def test_varint_roundtrip(n):
    enc = codec.encode_varint(n)
    assert codec._read_varint(enc, 0) == (n, len(enc))


@given(
    topic=st.text(min_size=1, max_size=40).filter(lambda t: "\x00" not in t),
    payload=st.binary(max_size=400),
    qos=st.integers(0, 1),
    retain=st.booleans(),
    v5=st.booleans(),
    chunk=st.integers(1, 50),
)
def test_publish_roundtrip_through_parser_in_chunks(topic, payload, qos, retain, v5, chunk):
    props = codec.encode_props({"content_type": "application/json", "correlation_data": b"\x00\x01"}) if v5 else None
    pkt = codec.encode_publish(topic, payload, qos, retain, 7 if qos else 0, props)
    parser = codec.Parser()
    packets = []
    for i in range(0, len(pkt), chunk):
        packets += parser.feed(pkt[i : i + chunk])
    assert len(packets) == 1 and parser.buffered == 0
    ptype, flags, body = packets[0]
    msg = codec.decode_publish(flags, body, 5 if v5 else 4)
    assert (ptype, msg.topic, msg.payload, msg.qos, msg.retain) == (codec.PUBLISH, topic, payload, qos, retain)
    assert msg.packet_id == (7 if qos else None)
    if v5:
        assert msg.props == {"content_type": "application/json", "correlation_data": b"\x00\x01"}


@pytest.mark.parametrize("protocol", [4, 5])
def test_connect_roundtrip(protocol):
    c = codec.Connect(
        client_id="pk&dn|securemode=3,signmethod=hmacsha1,timestamp=1|", protocol=protocol, keepalive=30,
        username="dn&pk", password=b"ABCDEF", will_topic="b/state", will_payload=b"off", will_qos=1, will_retain=True,
    )
    pkt = codec.encode_connect(c)
    [(ptype, _, body)] = codec.Parser().feed(pkt)
    back = codec.decode_connect(body)
    assert ptype == codec.CONNECT
    assert (back.client_id, back.username, back.password, back.keepalive, back.protocol) == (
        c.client_id, "dn&pk", b"ABCDEF", 30, protocol)
    assert (back.will_topic, back.will_payload, back.will_qos, back.will_retain) == ("b/state", b"off", 1, True)


def test_connack_and_suback():
    [(_, _, body)] = codec.Parser().feed(codec.encode_connack(5, 4))
    assert codec.decode_connack(body, 4).reason == 5
    [(_, _, body)] = codec.Parser().feed(codec.encode_subscribe(3, [("a/#", 1)], 5))
    assert body[:2] == b"\x00\x03"


@pytest.mark.parametrize("garbage", [b"\x30\xff\xff\xff\xff\x7f", b"\x30\x80\x80\x80\x80\x01"])
def test_parser_rejects_malformed_length(garbage):
    with pytest.raises(codec.MqttProtocolError):
        codec.Parser().feed(garbage)


def test_truncated_fields_raise():
    with pytest.raises(codec.MqttProtocolError):
        codec.decode_publish(0, b"\x00\x10ab", 4)
    with pytest.raises(codec.MqttProtocolError):
        codec.decode_connect(b"\x00\x04MQTT\x05")
