from collections.abc import Callable
from typing import Any

def configure(
    *, encode_publish_py: Callable[..., bytes], max_remaining: int, max_field: int
) -> Callable[..., bytes]: ...
def configuration() -> dict[str, Any]: ...
def encode_publish(
    topic: str | bytes,
    payload: bytes,
    qos: int = 0,
    retain: bool = False,
    packet_id: int = 0,
    props: bytes | None = None,
    dup: bool = False,
) -> bytes: ...
