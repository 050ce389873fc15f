"""Is this string a topic name a broker accepts in a PUBLISH? (MQTT 3.1.1 §4.7, MQTT 5 §4.7)

A topic the gateway publishes to may come from outside — an MQTT 5 Response Topic in a
command — and a broker answers a PUBLISH to an invalid topic name by dropping the connection
(mosquitto: DISCONNECT 0x82 "protocol error" or 0x81 "malformed packet" on MQTT 5, a plain
close on 3.1.1). So every such topic is checked first, and the client checks every topic it is
asked to publish to (``MqttClient.publish`` refuses, counts and logs an invalid one).

Rejected, as mosquitto 2.0 rejects them (each checked against it, see
tests/gateway/mqtt/test_topic.py):

- the empty string;
- the wildcards ``+`` and ``#`` (they are for subscriptions only);
- NUL and every other control character (U+0000–U+001F, U+007F–U+009F);
- Unicode non-characters (U+FDD0–U+FDEF, and U+xFFFE / U+xFFFF in every plane);
- text that is not valid UTF-8 (a lone surrogate in a ``str``; malformed ``bytes``);
- more than 65,535 bytes once encoded.

Not rejected: empty levels (``a//b``, ``/a``) are valid topic names; a leading ``$`` is valid
too (brokers refuse such publishes with a PUBACK reason, not a disconnect).
"""

from __future__ import annotations

import re

__all__ = ["MAX_TOPIC_BYTES", "check_publish_topic", "check_publish_topic_bytes"]

MAX_TOPIC_BYTES = 65535

_NONCHARACTERS = "\ufdd0-\ufdef" + "".join(
    chr(plane << 16 | 0xFFFE) + chr(plane << 16 | 0xFFFF) for plane in range(17)
)
_FORBIDDEN = re.compile(f"[+#\x00-\x1f\x7f-\x9f{_NONCHARACTERS}]")


def check_publish_topic(topic: str) -> str | None:
    """``None`` when ``topic`` is a valid PUBLISH topic name, else why not (one short phrase,
    with the offending character as ``U+XXXX``; the topic itself is never echoed)."""
    if not topic:
        return "empty topic"
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError as exc:
        return f"not valid UTF-8 (lone surrogate U+{ord(topic[exc.start]):04X})"
    if size > MAX_TOPIC_BYTES:
        return f"longer than {MAX_TOPIC_BYTES} bytes in UTF-8 ({size})"
    bad = _FORBIDDEN.search(topic)
    if bad is None:
        return None
    ch = bad.group()
    if ch in "+#":
        return f"contains the wildcard {ch!r}"
    code = ord(ch)
    if code == 0:
        return "contains NUL (U+0000)"
    if code <= 0x9F:
        return f"contains the control character U+{code:04X}"
    return f"contains the Unicode non-character U+{code:04X}"


def check_publish_topic_bytes(topic: bytes) -> str | None:
    """The same check for a topic already encoded (it must be valid UTF-8)."""
    try:
        text = topic.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not valid UTF-8 (byte {exc.start})"
    return check_publish_topic(text)
