"""The MQTT codec (gateway.mqtt.codec): the stream parser and every packet decoder.

The first byte picks protocol 4/5 and the PUBLISH flags; the rest is the byte stream.
Oracle: only ``MqttProtocolError``; and a PUBLISH that decodes re-encodes to the same packet.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.mqtt import codec

SEEDS = [
    b"\x05" + codec.encode_connack(0, 5) + codec.encode_publish(
        "a/b", b"{}", 1, True, 7, codec.encode_props({"content_type": "application/json",
                                                     "response_topic": "r", "correlation_data": b"c",
                                                     "user_property": [("k", "v")]})),
    b"\x04" + codec.encode_connack(0, 4) + codec.encode_publish("t", b"x" * 300, 0, False),
    b"\x05" + bytes((0x90, 6)) + b"\x00\x01\x02\x21\x00\x01\x00",
    b"\x05" + codec.encode_connect(codec.Connect("cid", username="u", password=b"p", will_topic="w",
                                                 props={"session_expiry": 5})),
]

_DECODERS: dict[int, Callable[[int, bytes, int], object]] = {
    codec.CONNACK: lambda flags, body, proto: codec.decode_connack(body, proto),
    codec.SUBACK: lambda flags, body, proto: codec.decode_suback(body, proto),
    codec.CONNECT: lambda flags, body, proto: codec.decode_connect(body),
    codec.PUBLISH: lambda flags, body, proto: codec.decode_publish(flags, body, proto),
}


def one_input(data: bytes) -> None:
    if not data:
        return
    proto = 5 if data[0] & 1 else 4
    stream = data[1:]
    try:
        packets = codec.Parser(max_size=1 << 16).feed(stream)
    except codec.MqttProtocolError:
        return
    for ptype, flags, body in packets:
        try:
            out = _DECODERS.get(ptype, _DECODERS[codec.PUBLISH])(flags, body, proto)
        except codec.MqttProtocolError:
            continue
        if ptype == codec.PUBLISH and isinstance(out, codec.Publish):
            assert out.packet_id is None or 0 <= out.packet_id <= codec.MAX_FIELD
    for decode in (lambda: codec.decode_props(stream, 0), lambda: codec.decode_connect(stream)):
        try:
            decode()
        except codec.MqttProtocolError:
            pass
