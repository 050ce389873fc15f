from collections.abc import Callable, Iterable, Mapping
from typing import Any

# Schemas and properties are protocols.model's; not imported here (nothing in _speedups
# imports upward), so they are typed by what the twin reads of them.
Schema = Any
Property = Any

def configure(
    *,
    coerce: Callable[[Property, Any], Any],
    not_coercible: object,
    true_words: Iterable[str],
    false_words: Iterable[str],
    ms_from: int,
) -> Callable[[Schema, Mapping[str, Any]], tuple[dict[str, Any], list[str]]]: ...
def configuration() -> dict[str, Any]: ...
def normalize(schema: Schema, props: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]: ...
