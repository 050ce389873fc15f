"""XiakeCloud (xky): sans-I/O client API — request builders, reply parsers, change detection.

XiakeCloud has no push channel; the gateway polls ``get_device_list`` and publishes only what
changed. ``api`` builds requests exactly as the seed marks them (GET query / POST JSON, always
``source: true``); ``envelope`` holds the one assumption about reply envelopes and error codes;
``records`` maps reply payloads to the normalized model and diffs two listings.
"""

from __future__ import annotations

from . import api
from .envelope import ASSUMED_ENVELOPE, SessionInvalid, parse_response
from .records import (
    ASSUMED_FIELDS,
    SCHEMA,
    WRITABLE,
    Changes,
    DeviceRecord,
    diff,
    parse_device,
    parse_device_list,
)

__all__ = [
    "ASSUMED_ENVELOPE",
    "ASSUMED_FIELDS",
    "SCHEMA",
    "WRITABLE",
    "Changes",
    "DeviceRecord",
    "SessionInvalid",
    "api",
    "diff",
    "parse_device",
    "parse_device_list",
    "parse_response",
]
