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


# -- Issue 11 finding 3: every decoder of untrusted bytes raises only MqttProtocolError.

_ALL_PROPS = {
    "payload_format": 1, "message_expiry": 70_000, "content_type": "application/json",
    "response_topic": "r/t", "correlation_data": b"\x00\x01", "subscription_id": 300,
    "server_keep_alive": 30, "reason_string": "ok", "receive_maximum": 20,
    "user_property": [("k", "v"), ("k2", "v2")], "maximum_packet_size": 1 << 20,
}


def _decoders():
    """(name, decode(body)) for every decoder the client and the emulators feed peer bytes to."""
    return [
        ("connack5", lambda b: codec.decode_connack(b, 5)),
        ("connack4", lambda b: codec.decode_connack(b, 4)),
        ("suback5", lambda b: codec.decode_suback(b, 5)),
        ("suback4", lambda b: codec.decode_suback(b, 4)),
        ("publish5_q0", lambda b: codec.decode_publish(0, b, 5)),
        ("publish5_q1", lambda b: codec.decode_publish(2, b, 5)),
        ("publish4_q1", lambda b: codec.decode_publish(2, b, 4)),
        ("connect", codec.decode_connect),
        ("props", lambda b: codec.decode_props(b, 0)),
    ]


def _bodies():
    props = codec.encode_props(_ALL_PROPS)
    connect = codec.encode_connect(codec.Connect(
        "cid", username="u", password=b"p", will_topic="w", will_payload=b"x", will_props={"will_delay": 5},
        props={"session_expiry": 10, "receive_maximum": 5},
    ))
    return {
        "connack": b"\x00\x00" + props,
        "suback": b"\x00\x07" + props + b"\x01\x80",
        "publish": codec.encode_publish("a/b", b"payload", 1, False, 9, props)[2:],
        "connect": connect[2:] if connect[1] < 128 else connect[3:],
        "props": props,
    }


def _only_declared(decode, data):
    try:
        decode(data)
    except codec.MqttProtocolError:
        pass


@pytest.mark.parametrize(("name", "decode"), _decoders(), ids=[n for n, _ in _decoders()])
def test_truncated_packets_raise_only_the_codec_error(name, decode):
    for body in _bodies().values():
        for cut in range(len(body) + 1):
            _only_declared(decode, body[:cut])


@pytest.mark.parametrize(("name", "decode"), _decoders(), ids=[n for n, _ in _decoders()])
def test_corrupted_packets_raise_only_the_codec_error(name, decode):
    for body in _bodies().values():
        for i in range(len(body)):
            for byte in (0x00, 0x01, 0x7F, 0x80, 0xFF, body[i] ^ 0x55):
                _only_declared(decode, body[:i] + bytes((byte,)) + body[i + 1 :])


@pytest.mark.parametrize(
    "body",
    [
        b"\x00\x00\x02\x21\x00",  # CONNACK: receive_maximum (2 bytes) with 1 byte left
        b"\x00\x00\x01\x24",  # CONNACK: maximum_qos with no byte
        b"\x00\x00\x03\x27\x00\x00",  # CONNACK: maximum_packet_size (4 bytes) with 2
        b"\x00\x00\x05\x26\x00\x01k\x00",  # CONNACK: user property cut in its value
    ],
)
def test_truncated_connack_property_is_a_protocol_error(body):
    with pytest.raises(codec.MqttProtocolError):
        codec.decode_connack(body, 5)


def test_truncated_suback_and_publish_properties_are_protocol_errors():
    with pytest.raises(codec.MqttProtocolError):
        codec.decode_suback(b"\x00\x01\x01\x21", 5)
    with pytest.raises(codec.MqttProtocolError):
        codec.decode_publish(0, b"\x00\x01t\x02\x02\x00", 5)
    # a fixed-size property may not borrow bytes past its block (the payload's here)
    with pytest.raises(codec.MqttProtocolError):
        codec.decode_publish(0, b"\x00\x01t\x01\x23PAYLOAD", 5)


@given(st.binary(max_size=64), st.integers(0, 15))
def test_random_bytes_raise_only_the_codec_error(data, flags):
    for _, decode in _decoders():
        _only_declared(decode, data)
    _only_declared(lambda b: codec.decode_publish(flags, b, 5), data)
    parser = codec.Parser(max_size=1 << 16)
    _only_declared(parser.feed, data)
