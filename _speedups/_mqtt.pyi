from collections.abc import Callable
from typing import Any

def configure(
    *, encode_publish_py: Callable[..., bytes], max_remaining: int, max_field: int
) -> Callable[..., bytes]: ...
def configuration() -> dict[str, Any]: ...

# The kernel takes exactly the arguments of its owner's pure rule,
# ``gateway.mqtt.codec.encode_publish_py``, and declines to it for anything unusual; that function
# is the one place its signature is written (a stub here cannot import upward to name it).
encode_publish: Callable[..., bytes]
