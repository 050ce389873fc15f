"""XiakeCloud replies (protocols.xky.envelope) and the records in them (protocols.xky.records).

The first input byte picks the HTTP status and the record parser; the rest is the body.
Oracle: only declared errors, and a list parsed twice diffs to nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from protocols.xky import envelope, records
from tests.fuzz._common import DECLARED, NOW_MS, json_of

_STATUSES = (200, 200, 401, 429, 500, 502)
_PARSERS: tuple[Callable[[Any], Any], ...] = (
    records.parse_device_list, records.parse_device, records.parse_login, records.parse_temp_session,
    records.parse_user, records.parse_node_list, records.parse_subaccount_list,
    records.parse_subaccount, records.parse_multi_device,
)

SEEDS = [
    b"\x00" + b'{"code":0,"msg":"ok","data":[{"sn":"XKY001","online":1,"name":"a","node":"n1",'
    b'"data":{"switch":1,"temp":"21.5"}}]}',
    b"\x07" + b'{"code":0,"data":{"session":"s","user":{"id":1}}}',
    b"\x02" + b'{"code":401,"msg":"session invalid"}',
    b"\x0b" + b'{"code":0,"data":{"list":[{"sn":"XKY002","online":"offline"}]}}',
    b"\x03" + b"<html>502 Bad Gateway</html>",
]


def one_input(data: bytes) -> None:
    if not data:
        return
    pick, body = data[0], data[1:]
    status = _STATUSES[pick % len(_STATUSES)]
    try:
        payload = envelope.parse_response(status, body)
    except DECLARED:
        payload = json_of(body)
    parse = _PARSERS[pick // len(_STATUSES) % len(_PARSERS)]
    try:
        parsed = parse(payload)
    except DECLARED:
        return
    if parse is records.parse_device_list:
        snap = records.snapshot(parsed)
        assert records.diff(snap, parsed).empty, "a list diffed against itself changed"
        for record in parsed:
            records.device_info(record)
            records.availability(record, NOW_MS)
            records.encode_device(record)
