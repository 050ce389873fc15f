"""Aliyun app channel (protocols.aliyun.mqtt) and thing models / device lists (protocols.aliyun.thing).

The first input byte picks the topic suffix; the rest is the MQTT payload (or the TSL / reply
JSON). Oracle: only declared errors.
"""

from __future__ import annotations

from protocols.aliyun import mqtt, thing
from protocols.aliyun.envelope import parse_response
from tests.fuzz._common import DECLARED, NOW_MS, json_of

_TOPICS = [mqtt.down_topic("a1pk", "app_dn", s) for s in mqtt.DOWN_SUFFIXES] + [
    "/sys/a1pk/app_dn/app/down/other", "/not/an/app/topic", "",
]

SEEDS = [
    b"\x02" + b'{"id":"1","params":{"iotId":"i1","items":{"p":{"time":1700000000000,"value":1}}}}',
    b"\x03" + b'{"id":"2","params":{"iotId":"i1","identifier":"alarm","value":{"x":1},"time":1700000000000}}',
    b"\x04" + b'{"id":"3","params":{"iotId":"i1","status":{"value":"1","time":1700000000000}}}',
    b"\x00" + b'{"id":"4","code":200,"message":"success"}',
    b"\x05" + b'{"id":"5","params":{"status":0,"subList":[{"iotId":"s1"}]}}',
    b"\x06" + b'{"id":"6","params":{"iotId":"i1","step":50,"desc":"ok"}}',
    b"\x07" + b'{"properties":[{"identifier":"LastOnTime","dataType":{"type":"date"}},'
    b'{"identifier":"p","dataType":{"type":"int","specs":{"min":"0","max":"10"}}},'
    b'{"identifier":"e","dataType":{"type":"enum","specs":{"0":"a","1":"b"}}}]}',
    b"\x08" + b'{"code":200,"data":{"total":1,"data":[{"iotId":"i1","productKey":"a1pk","deviceName":"d"}]}}',
]


def one_input(data: bytes) -> None:
    if not data:
        return
    pick, payload = data[0], data[1:]
    if pick < len(_TOPICS):
        try:
            mqtt.decode_app_message(_TOPICS[pick], payload, NOW_MS)
        except DECLARED:
            pass
        return
    value = json_of(payload)
    try:
        thing.tsl_to_schema(payload if pick % 2 else value if isinstance(value, dict) else payload)
    except DECLARED:
        pass
    for parse in (thing.parse_bindings, lambda v: parse_response(200 + pick % 300, payload)):
        try:
            parse(value)
        except DECLARED:
            pass
    if isinstance(value, dict):
        mqtt.decode_items(value, NOW_MS)
