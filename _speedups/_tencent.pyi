from collections.abc import Callable, Iterable, Mapping
from typing import Any

_Report = tuple[str, dict[str, Any], int, int | None]

def configure(
    *,
    payload_error: type[Exception],
    time_ms_py: Callable[[object], int | None],
    device_ts_py: Callable[[Mapping[str, Any], int], int],
    report_py: Callable[[bytes | str, int], _Report | None],
    day_ms: int,
    ms_from: int,
    not_report_types: Iterable[str],
    report_subtypes: Iterable[str],
) -> tuple[
    Callable[[bytes | str], Any],
    Callable[[object], int | None],
    Callable[[Mapping[str, Any], int], int],
    Callable[[bytes | str, int], _Report | None],
]: ...
def configuration() -> dict[str, Any]: ...
def decode_payload(data: bytes | str) -> Any: ...
def tencent_time_ms(value: object) -> int | None: ...
def device_ts(body: Mapping[str, Any], fallback: int) -> int: ...
def tencent_report(frame: bytes | str, now_ms: int) -> _Report | None: ...
def _scanner_accepts(frame: object) -> bool: ...  # test hook: the frame scanner reads frame itself
