"""The one place that formats and parses topic names.

Device ids are the vendor's stable ids (Tencent ``ProductId/DeviceName``, Aliyun ``iotId`` …),
made topic-safe by percent-encoding ``%``, ``/``, ``+``, ``#``, NUL and a leading ``$``: the
mapping is reversible and never depends on a renameable name. A property id that collides with
a sub-topic name gets a ``_`` suffix on its per-property topic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["RESERVED", "BadCommandTopic", "CommandTopic", "Topics", "decode_id", "encode_id"]

RESERVED: Final = frozenset({"set", "get", "action", "event", "availability", "response"})
COMMAND_KINDS: Final = frozenset({"set", "get", "action"})
_ESCAPE: Final = {"%": "%25", "/": "%2F", "+": "%2B", "#": "%23", "\x00": "%00"}


def encode_id(raw: str) -> str:
    if not raw:
        raise ValueError("empty device id")
    out = raw
    if any(c in raw for c in _ESCAPE):
        out = "".join(_ESCAPE.get(c, c) for c in raw)
    if out.startswith("$"):
        out = "%24" + out[1:]
    return out


def decode_id(encoded: str) -> str:
    if "%" not in encoded:
        return encoded
    out = []
    i = 0
    n = len(encoded)
    while i < n:
        c = encoded[i]
        if c == "%" and i + 2 < n:
            try:
                out.append(chr(int(encoded[i + 1 : i + 3], 16)))
                i += 3
                continue
            except ValueError:
                pass
        out.append(c)
        i += 1
    return "".join(out)


@dataclass(frozen=True, slots=True)
class CommandTopic:
    vendor: str
    device: str  # the raw (decoded) vendor id
    kind: str  # set | get | action
    prop: str | None = None


@dataclass(frozen=True, slots=True)
class BadCommandTopic:
    """A command-like topic of a shape we do not serve (an id that is not percent-encoded):
    answered once with ``reason`` on ``response_topic``, never ignored."""

    vendor: str
    topic: str
    reason: str
    response_topic: str


class Topics:
    __slots__ = ("_bridge", "base")

    def __init__(self, base: str = "cloud2mqtt") -> None:
        base = base.strip("/")
        if not base or any(c in base for c in "+#\x00"):
            raise ValueError(f"invalid base topic {base!r}")
        self.base = base
        self._bridge = f"{base}/bridge"

    # device topics -------------------------------------------------------------------------
    def device(self, vendor: str, device: str) -> str:
        return f"{self.base}/{vendor}/{encode_id(device)}"

    @staticmethod
    def prop(device_topic: str, prop: str) -> str:
        safe = encode_id(prop)
        if safe in RESERVED:
            safe += "_"
        return f"{device_topic}/{safe}"

    @staticmethod
    def availability(device_topic: str) -> str:
        return device_topic + "/availability"

    @staticmethod
    def event(device_topic: str) -> str:
        return device_topic + "/event"

    @staticmethod
    def response(device_topic: str, kind: str) -> str:
        return f"{device_topic}/response/{kind}"

    # bridge topics -------------------------------------------------------------------------
    def bridge(self, name: str) -> str:
        return f"{self._bridge}/{name}"

    def bridge_response(self, command: str) -> str:
        return f"{self._bridge}/response/{command}"

    # subscriptions and parsing -------------------------------------------------------------
    def subscriptions(self) -> list[str]:
        b = self.base
        return [
            f"{b}/+/+/set",
            f"{b}/+/+/set/+",
            f"{b}/+/+/get",
            f"{b}/+/+/action",
            f"{b}/bridge/request/+",
            # an id with one unencoded "/" (Tencent ProductId/DeviceName): answered with the
            # encoded form instead of being ignored
            f"{b}/+/+/+/set",
            f"{b}/+/+/+/get",
            f"{b}/+/+/+/action",
        ]

    def parse(self, topic: str) -> CommandTopic | BadCommandTopic | str | None:
        """A device command, a bridge request name (``str``), a command on a topic shape we
        do not serve (``BadCommandTopic``), or ``None`` if not ours."""
        prefix = self.base + "/"
        if not topic.startswith(prefix):
            return None
        parts = topic[len(prefix) :].split("/")
        if parts[0] == "bridge":
            if len(parts) == 3 and parts[1] == "request" and parts[2]:
                return parts[2]
            return None
        if len(parts) == 3 and parts[2] in COMMAND_KINDS:
            return CommandTopic(parts[0], decode_id(parts[1]), parts[2])
        if len(parts) == 4 and parts[2] == "set" and parts[3]:
            prop = parts[3]
            if prop.endswith("_") and prop[:-1] in RESERVED:
                prop = prop[:-1]
            return CommandTopic(parts[0], decode_id(parts[1]), "set", decode_id(prop))
        if len(parts) > 3 and parts[-1] in COMMAND_KINDS and parts[0] and parts[-2] != "response":
            # (…/response/<kind> is our own reply, which the same subscription also matches)
            kind = parts[-1]
            raw = "/".join(parts[1:-1])
            encoded = self.device(parts[0], raw) if raw else f"{self.base}/{parts[0]}/<id>"
            return BadCommandTopic(
                parts[0],
                topic,
                "the device id must be percent-encoded (\"/\" as %2F): "
                f"send to {encoded}/{kind}",
                f"{prefix}{'/'.join(parts[:-1])}/response/{kind}",
            )
        return None
