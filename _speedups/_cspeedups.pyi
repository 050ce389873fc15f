from collections.abc import Mapping
from typing import Any

from protocols.model import Schema

TRUE_WORDS: frozenset[str]
FALSE_WORDS: frozenset[str]

def decode_payload(data: bytes | str) -> Any: ...
def tencent_time_ms(value: object) -> int | None: ...
def tencent_report(
    frame: bytes | str, now_ms: int
) -> tuple[str, dict[str, Any], int, int | None] | None: ...
def _scanner_accepts(frame: object) -> bool: ...  # test hook: the frame scanner reads frame itself
def normalize(schema: Schema, props: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]: ...
def encode_publish(
    topic: str | bytes,
    payload: bytes,
    qos: int = 0,
    retain: bool = False,
    packet_id: int = 0,
    props: bytes | None = None,
    dup: bool = False,
) -> bytes: ...
