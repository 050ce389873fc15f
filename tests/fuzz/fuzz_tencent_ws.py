"""Tencent long connection (protocols.tencent.ws): frames, DeviceChange pushes, replies.

Oracle: only declared errors; and where the hot path (``decode_report``) answers, the general
path (``parse_frame`` → ``parse_device_change`` → ``decode_device_change``) gives that very
``StateChange``.
"""

from __future__ import annotations

from protocols.tencent import ws
from protocols.tencent.template import schema_from_template
from tests.fuzz._common import DECLARED, NOW_MS

_SCHEMA = schema_from_template({"properties": [
    {"id": "power_switch", "mode": "rw", "define": {"type": "bool", "mapping": {"0": "off", "1": "on"}}},
    {"id": "brightness", "mode": "rw", "define": {"type": "int", "min": "0", "max": "100"}},
    {"id": "color", "mode": "rw", "define": {"type": "enum", "mapping": {"0": "Red", "1": "Green"}}},
    {"id": "t", "mode": "r", "define": {"type": "timestamp"}},
    {"id": "s", "mode": "r", "define": {"type": "struct", "specs": [
        {"id": "a", "dataType": {"type": "float"}}]}},
], "events": [{"id": "alarm", "type": "alert", "params": [{"id": "level", "define": {"type": "int"}}]}]})
_DEV = "PRODUCT001/dev_1"

SEEDS = [
    ws.device_change_frame(_DEV, "Property", "Report",
                           {"method": "report", "timestamp": 1_700_000_000,
                            "params": {"power_switch": 1, "brightness": "57", "t": 1700000000.5}},
                           seq=7, ts_ms=NOW_MS).encode(),
    ws.device_change_frame(_DEV, "Event", "Push",
                           {"method": "event_post", "eventId": "alarm", "params": {"level": "3"}},
                           seq=8, ts_ms=NOW_MS).encode(),
    ws.device_change_frame(_DEV, "StatusChange", "Online", None, seq=9, ts_ms=NOW_MS).encode(),
    ws.device_change_frame(_DEV, "Action", "Push",
                           {"method": "action_reply", "actionId": "a", "clientToken": "c", "code": 0,
                            "response": {"x": 1}}, seq=1, ts_ms=NOW_MS).encode(),
    ws.device_change_frame(_DEV, "UserDefined", "Push", b"hello", seq=1, ts_ms=NOW_MS).encode(),
    ws.active_push_reply(3, [_DEV]).encode(),
    b'{"reqId":4,"error":"","data":{"Response":{"Error":{"Code":"InvalidParameter","Message":"x"}}}}',
    b'{"reqId":5,"error":"-1","error_message":"server","data":{}}',
]


def one_input(data: bytes) -> None:
    fast = ws.decode_report(data, now_ms=NOW_MS)
    try:
        frame = ws.parse_frame(data)
    except DECLARED:
        assert fast is None, "decode_report accepted a frame parse_frame rejects"
        return
    if isinstance(frame, ws.Reply):
        assert fast is None
        for check in (ws.yunapi_result, lambda r: ws.active_push_result(r, [_DEV])):
            try:
                check(frame)
            except DECLARED:
                pass
        return
    try:
        change = ws.parse_device_change(frame.params)
        decoded = ws.decode_device_change(change, now_ms=NOW_MS, schema_for={_DEV: _SCHEMA}.get)
    except DECLARED:
        assert fast is None, "decode_report accepted a push the general path rejects"
        return
    if fast is not None:
        assert decoded.events == [fast], (decoded.events, fast)
    try:
        ws.decode_device_change(change, now_ms=NOW_MS, schema_for={_DEV: _SCHEMA}.get)
    except DECLARED:
        pass
