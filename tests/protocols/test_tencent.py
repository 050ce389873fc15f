"""Tencent codec on the seed's examples: API parsers, WS frames, DeviceChange pushes, templates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from protocols.model import (
    ActionReply,
    Availability,
    DeviceEvent,
    LocalProtocolError,
    Property,
    RemoteProtocolError,
    Schema,
    StateChange,
    VendorError,
)
from protocols.tencent import api, template, ws
from protocols.tencent.push import decode_payload
from protocols.tsl import normalize, validate_props

FIXTURES = Path(__file__).parents[1] / "fixtures" / "tencent"
RESP = json.loads((FIXTURES / "responses.json").read_text("utf-8"))
PUSHES = json.loads((FIXTURES / "pushes.json").read_text("utf-8"))
DAMAGED = json.loads((FIXTURES / "pushes_damaged.json").read_text("utf-8"))
NOW = 1_700_000_000_000


def _decode(frame: Any, schema: Schema | None = None) -> ws.Decoded:
    push = ws.parse_frame(orjson.dumps(frame))
    assert isinstance(push, ws.Push) and push.action == "DeviceChange"
    change = ws.parse_device_change(push.params)
    return ws.decode_device_change(change, now_ms=NOW, schema_for=lambda _d: schema)


def _light_schema() -> Schema:
    products = api.parse_products(
        api.parse_response(
            json.loads((FIXTURES / "products_light_response.json").read_text("utf-8"))
        )
    )
    return template.schema_from_template(products["QDA1PZLBNB"].template)


# --------------------------------------------------------------------------------------------
# Pushes: fixtures


@pytest.mark.parametrize("case", PUSHES, ids=[c["name"] for c in PUSHES])
def test_fixture_payload_decodes_as_printed(case: dict[str, Any]) -> None:
    payload = case["frame"]["params"]["Payload"]
    if case["decoded"] is None:
        assert payload == ""
    else:
        assert decode_payload(payload) == case["decoded"]


def test_seed_control_payload_is_the_printed_one() -> None:
    frame = PUSHES[0]["frame"]
    assert frame["params"]["Payload"] == (
        "eyJtZXRob2QiOiJjb250cm9sIiwiY2xpZW50VG9rZW4iOiIxMjM0NTY3OCIsInBhcmFtcyI6eyJzd2l0Y2giOjB9fQ=="
    )
    decoded = _decode(frame)
    # A control pushed to the device is not its state: an event.
    assert decoded.events == [
        DeviceEvent("productId/deviceName", "control", "info", {"switch": 0}, 1689231611000)
    ]


@pytest.mark.parametrize("case", DAMAGED, ids=[c["name"] for c in DAMAGED])
def test_damaged_payloads_are_rejected(case: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError):
        _decode(case["frame"])


def test_event_report() -> None:
    (event,) = _decode(PUSHES[1]["frame"], _light_schema()).events
    assert event == DeviceEvent(
        "US4CJ11DIK/LIAO", "low_voltage", "alert", {"voltage": 2.278081}, 1554986556000
    )


def test_property_report_nested_as_printed() -> None:
    decoded = _decode(PUSHES[2]["frame"])
    assert decoded.events == [
        StateChange("WTJZX0MF2/device_property001", {"brightness": 59}, 1572403260000, 6, precision_ms=1000)
    ]


def test_action_push_and_reply() -> None:
    (push,) = _decode(PUSHES[3]["frame"]).events
    assert isinstance(push, DeviceEvent) and push.event_id == "action"
    assert push.params == {
        "action": "light_blink",
        "params": {"color": 1, "time": 6, "total_time": 60},
        "clientToken": "136947493::req_1",
    }
    (reply,) = _decode(PUSHES[4]["frame"]).events
    assert reply == ActionReply(
        "0CPSFIRP28/testble", "", {"result": 1}, 1620912845000, "136947493::req_1", 0, "succ"
    )


def test_status_change() -> None:
    assert _decode(PUSHES[5]["frame"]).events == [
        Availability("22F9Y6II70/light1", True, 1553757453000)
    ]
    assert _decode(PUSHES[6]["frame"]).events == [
        Availability("22F9Y6II70/light1", False, 1553757453000)
    ]


def _frame(
    type_: str, subtype: str, body: Any, device: str = "P/d", **extra: Any
) -> dict[str, Any]:
    payload = "" if body is None else ws.encode_payload(body)
    params = {
        "Time": "2023-07-13T14:19:48+08:00",
        "Type": type_,
        "SubType": subtype,
        "Topic": "",
        "Payload": payload,
        "Seq": 9,
        "DeviceId": device,
        **extra,
    }
    return {"action": "DeviceChange", "params": params, "push": True}


TS = 1689229188000


@pytest.mark.parametrize("type_", ws.PUSH_TYPES)
@pytest.mark.parametrize("subtype", ["Online", "Offline"])
def test_every_type_online_offline(type_: str, subtype: str) -> None:
    assert _decode(_frame(type_, subtype, None)).events == [
        Availability("P/d", subtype == "Online", TS)
    ]


@pytest.mark.parametrize("type_", ["Property", "Shadow", "Template"])
def test_report_and_push_of_state_types(type_: str) -> None:
    report = {
        "method": "report",
        "params": {"power_switch": 1, "brightness": "40"},
        "clientToken": "c1",
    }
    schema = _light_schema()
    (change,) = _decode(_frame(type_, "Report", report), schema).events
    # values as sent; the link normalizes state once (gateway/link.py), to the tree's form
    assert change == StateChange("P/d", report["params"], TS, 9, precision_ms=1000)
    assert normalize(schema, change.props) == ({"power_switch": True, "brightness": 40}, [])
    (control,) = _decode(
        _frame(type_, "Push", {"method": "control", "params": {"power_switch": 0}})
    ).events
    assert control == DeviceEvent("P/d", "control", "info", {"power_switch": 0}, TS)


def test_legacy_forms() -> None:
    update = {
        "type": "update",
        "state": {"reported": {"brightness": 3}},
        "version": 2,
        "clientToken": "API-ControlDeviceData-1",
    }
    assert _decode(_frame("Shadow", "Report", update)).events == [
        StateChange("P/d", {"brightness": 3}, TS, 9, precision_ms=1000)
    ]
    delta = {"type": "delta", "payload": {"state": {"brightness": 4}, "version": 0}}
    assert _decode(_frame("Shadow", "Push", delta)).events == [
        DeviceEvent("P/d", "control", "info", {"brightness": 4}, TS)
    ]
    events_post = {
        "method": "events_post",
        "params": {
            "events": [
                {
                    "eventId": "status_report",
                    "type": "info",
                    "timestamp": TS + 5,
                    "params": {"status": 1, "message": "x"},
                },
                {
                    "eventId": "hardware_fault",
                    "type": "fault",
                    "params": {"name": "tf", "error_code": 2},
                },
            ]
        },
    }
    first, second = _decode(_frame("Event", "Report", events_post), _light_schema()).events
    assert first == DeviceEvent(
        "P/d", "status_report", "info", {"status": True, "message": "x"}, TS + 5
    )
    assert second == DeviceEvent(
        "P/d", "hardware_fault", "fault", {"name": "tf", "error_code": 2}, TS
    )


def test_event_push_action_types_and_other_methods() -> None:
    (ev,) = _decode(_frame("Event", "Push", {"method": "event_reply", "code": 0})).events
    assert ev == DeviceEvent("P/d", "event_reply", "info", {"code": 0}, TS)
    reply = {
        "method": "action_reply",
        "actionId": "blink",
        "clientToken": "ct",
        "code": 1,
        "status": "fail",
        "response": {},
    }
    (ar,) = _decode(_frame("Action", "Report", reply)).events
    assert ar == ActionReply("P/d", "blink", {}, TS, "ct", 1, "fail")
    status = {"method": "get_status_reply", "data": {"reported": {"brightness": 1}}}
    assert _decode(_frame("Template", "Report", status)).events == [
        StateChange("P/d", {"brightness": 1}, TS, 9, precision_ms=1000)
    ]


def test_user_defined_and_status_bind() -> None:
    (ev,) = _decode(_frame("UserDefined", "Report", b"raw text")).events
    assert ev == DeviceEvent(
        "P/d", "user_defined", "info", {"topic": "", "payload": "raw text"}, TS
    )
    (ev,) = _decode(_frame("UserDefined", "Push", {"a": 1})).events
    assert ev.params == {"topic": "", "payload": {"a": 1}}  # type: ignore[union-attr]
    (ev,) = _decode(_frame("StatusChange", "Bind", None)).events
    assert ev == DeviceEvent("P/d", "bind", "info", {}, TS)


def test_device_timestamp_used_when_plausible() -> None:
    body = {"method": "report", "params": {"brightness": 1}, "timestamp": TS + 123}
    assert _decode(_frame("Property", "Report", body)).events[0].ts_ms == TS + 123
    body["timestamp"] = 1  # a device without a clock: the push time wins
    assert _decode(_frame("Property", "Report", body)).events[0].ts_ms == TS


def test_flagged_values_are_kept_and_listed() -> None:
    body = {"method": "report", "params": {"brightness": "bright", "power_switch": 1}}
    decoded = _decode(_frame("Property", "Report", body), _light_schema())
    # state is normalized (and its misfits listed) once, by the link: the codec passes it on
    assert decoded.events[0].props == body["params"]  # type: ignore[union-attr]
    assert decoded.flagged == []
    values, flagged = normalize(_light_schema(), decoded.events[0].props)  # type: ignore[union-attr]
    assert values == {"brightness": "bright", "power_switch": True}
    assert flagged == ["brightness"]


@pytest.mark.parametrize(
    "frame",
    [
        b"not json",
        b"[1,2]",
        b'{"error":"","data":{}}',  # no reqId, no push
        orjson.dumps({"push": True, "action": "DeviceChange"}),
    ],
)
def test_bad_frames(frame: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        ws.parse_frame(frame)


@pytest.mark.parametrize(
    "frame",
    [
        _frame("Property", "Report", None),  # empty payload
        _frame("Property", "Report", {"params": {}}),  # no method
        _frame("Property", "Sideways", {"method": "report", "params": {}}),  # unknown subtype
        _frame("Property", "Report", {"method": "report", "params": [1]}),
        {
            "action": "DeviceChange",
            "push": True,
            "params": {"Type": "Property", "SubType": "Online"},
        },
    ],
)
def test_bad_pushes(frame: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError):
        _decode(frame)


def test_device_id_from_topic() -> None:
    params = {"Type": "Event", "SubType": "Online", "Topic": "$thing/up/event/US4CJ11DIK/LIAO"}
    assert ws.parse_device_change(params).device == "US4CJ11DIK/LIAO"


# --------------------------------------------------------------------------------------------
# WS replies


def _reply(name: str) -> ws.Reply:
    reply = ws.parse_frame(orjson.dumps(RESP[name]))
    assert isinstance(reply, ws.Reply) and reply.req_id == "req0001"
    return reply


def test_active_push_replies() -> None:
    ids = ["产品ID/DeviceName", "产品ID/DeviceName"]
    assert ws.active_push_result(_reply("ws_active_push_ok"), ids) == tuple(ids)
    with pytest.raises(VendorError) as err:
        ws.active_push_result(_reply("ws_active_push_fail"), ids)
    assert err.value.code == "rejected"


def test_heartbeat_replies() -> None:
    assert ws.yunapi_result(_reply("ws_heartbeat_ok")) == {"RequestId": "rest-client"}
    with pytest.raises(VendorError) as err:
        ws.yunapi_result(_reply("ws_heartbeat_server_error"))
    assert (err.value.code, err.value.vendor_code) == ("vendor", "-1")
    with pytest.raises(VendorError) as err:
        ws.yunapi_result(_reply("ws_heartbeat_logic_error"))
    assert (err.value.code, err.value.vendor_code) == (
        "rejected",
        "UnauthorizedOperation.APPNoPermissionToStudioProduct",
    )


def test_client_frames_match_the_seed() -> None:
    assert orjson.loads(ws.active_push_frame("req0001", ["P/a"], "tok")) == {
        "action": "ActivePush",
        "reqId": "req0001",
        "params": {"DeviceIds": ["P/a"], "AccessToken": "tok"},
    }
    assert orjson.loads(ws.heartbeat_frame("req0002", ["P/a"], "tok")) == {
        "action": "YunApi",
        "reqId": "req0002",
        "params": {
            "Action": "AppDeviceTraceHeartBeat",
            "ActionParams": {"DeviceIds": ["P/a"], "AccessToken": "tok", "RequestId": "req0002"},
        },
    }


def test_server_frames_roundtrip() -> None:
    frame = ws.device_change_frame(
        "P/d", "Property", "Report", {"method": "report", "params": {"a": 1}}, seq=3, ts_ms=TS
    )
    push = ws.parse_frame(frame)
    assert isinstance(push, ws.Push)
    change = ws.parse_device_change(push.params)
    assert (change.device, change.seq, change.time_ms) == ("P/d", 3, TS)
    req = ws.parse_request(ws.heartbeat_frame(7, ["P/d"], "t"))
    assert (req.action, req.req_id) == ("YunApi", 7)


# --------------------------------------------------------------------------------------------
# HTTP API


def test_login_and_errors() -> None:
    token = api.parse_token(api.parse_response(RESP["login_ok"]))
    assert token == api.Token("d2*****8514", 1556076201000)
    with pytest.raises(VendorError) as err:
        api.parse_response(RESP["login_fail"])
    assert (err.value.code, err.value.vendor_code) == (
        "auth",
        "InvalidParameterValue.ErrorUserNotExists",
    )


@pytest.mark.parametrize(
    ("code", "normalized"),
    [
        ("InvalidParameterValue.InvalidAccessToken", "auth"),
        ("VERIFY_LOGIN_FAIL", "auth"),
        ("InvalidParameterValue.InvalidSignature", "auth"),
        ("InvalidParameterValue.TimestampExpired", "rejected"),
        ("InvalidParameterValue.NonceUsed", "rejected"),
        ("FailedOperation.DeviceOffline", "offline"),
        ("LimitExceeded.FamilyDeviceExceedLimit", "throttled"),
        ("UnauthorizedOperation.NoPermissionToFamily", "rejected"),
        ("ResourceNotFound.DeviceNotExist", "invalid"),
        ("InvalidParameterValue", "invalid"),
        ("InternalError", "vendor"),
    ],
)
def test_error_mapping(code: str, normalized: str) -> None:
    with pytest.raises(VendorError) as err:
        api.parse_response(
            {"Response": {"Error": {"Code": code, "Message": "m"}, "RequestId": "r"}}
        )
    assert err.value.code == normalized
    assert api.is_token_error(err.value) == (
        code in ("InvalidParameterValue.InvalidAccessToken", "VERIFY_LOGIN_FAIL")
    )


def test_sdk_envelope_accepted() -> None:
    assert api.parse_response({"code": 0, "msg": "", "data": {"Data": {"Token": "t"}}})["Data"] == {
        "Token": "t"
    }
    with pytest.raises(VendorError) as err:
        api.parse_response(
            {
                "code": 1,
                "msg": "x",
                "data": {"Error": {"Code": "InvalidParameterValue.InvalidAccessToken"}},
            }
        )
    assert err.value.code == "auth"
    with pytest.raises(RemoteProtocolError):
        api.parse_response(b"<html>")


def test_lists_and_state() -> None:
    families = api.parse_family_list(api.parse_response(RESP["family_list"]))
    assert families.items == (api.FamilyRecord("a1c6939b39d345b897*****a12c", "family_name", 0),)
    assert families.next_offset(0) is None
    devices = api.parse_device_list(api.parse_response(RESP["device_list"]), "f1")
    (dev,) = devices.items
    assert (dev.device_id, dev.product_id, dev.device_name, dev.alias, dev.family_id) == (
        "R32****0EU/df****yY",
        "R32*****EU",
        "df2eSJyY",
        "df2eSJyY",
        "f1",
    )
    assert api.parse_device_statuses(api.parse_response(RESP["device_statuses"])) == {
        "22F9Y6II70/light1": True
    }
    assert api.parse_device_statuses({"Devices": [{"DeviceId": "P/x", "Online": 1}]}) == {
        "P/x": False
    }
    values, stamps = api.parse_device_data(api.parse_response(RESP["device_data"]))
    assert values == {"brightness": 8, "color": 1, "light_switch": 0, "name": "light1"}
    assert set(stamps.values()) == {1552904784552}
    assert api.Page((1, 2), 5).next_offset(0) == 2


def test_request_builders() -> None:
    assert api.device_list_params("f", 50, 50) == {
        "FamilyId": "f",
        "RoomId": "",
        "Offset": 50,
        "Limit": 50,
    }
    with pytest.raises(LocalProtocolError):
        api.device_list_params("f", 0, 51)
    assert api.control_params("22F9Y6II7O/light1", {"light_switch": 0}) == {
        "ProductId": "22F9Y6II7O",
        "DeviceName": "light1",
        "Data": '{"light_switch":0}',
    }
    assert api.action_params("P/d", "actionid", {"color": 6})["InputParams"] == '{"color":6}'
    assert api.parse_response(RESP["control_ok"]) == {"Data": "", "RequestId": "req_1"}
    sync = api.parse_action_result(api.parse_response(RESP["action_sync_ok"]))
    assert (sync.ok, sync.output, sync.client_token) == (True, None, "1ee12*****7df703e0d")
    assert api.parse_action_result({"Status": "succ", "OutputParams": '{"result":1}'}).output == {
        "result": 1
    }
    assert api.parse_action_result(api.parse_response(RESP["action_async_ok"])).ok
    with pytest.raises(LocalProtocolError):
        api.split_device_id("nodevice")


# --------------------------------------------------------------------------------------------
# Data templates


def test_seed_products_template_inside_profile() -> None:
    products = api.parse_products(
        api.parse_response(json.loads((FIXTURES / "products_response.json").read_text("utf-8")))
    )
    schema = template.schema_from_template(products["FVYYYEL4ON"].template)
    assert [p.id for p in schema.properties] == ["mac", "signal", "ssid", "severip", "nmacs"]
    signal = schema.prop("signal")
    assert signal == Property(
        "signal", "wifi强度", "int", unit="dbm", min=-180, max=180, step=1, access="r"
    )
    assert schema.prop("mac") == Property("mac", "mac地址", "string", length=30, access="r")


def test_light_template() -> None:
    schema = _light_schema()
    assert schema.prop("power_switch") == Property(
        "power_switch", "电灯开关", "bool", enum={False: "关", True: "开"}
    )
    assert schema.prop("color") == Property(
        "color", "颜色", "enum", enum={0: "Red", 1: "Green", 2: "Blue"}
    )
    assert schema.prop("brightness") == Property(
        "brightness", "亮度", "int", unit="%", min=0, max=100, step=1
    )
    assert schema.prop("Temperature") == Property(
        "Temperature", "温度", "float", min=0.0, max=100.0, step=1.0
    )
    assert [(e.id, e.level) for e in schema.events] == [
        ("status_report", "info"),
        ("low_voltage", "alert"),
        ("hardware_fault", "fault"),
    ]
    assert schema.events[1].params[0] == Property(
        "voltage", "Voltage", "float", unit="V", min=0.0, max=24.0, step=1.0, access="r"
    )
    assert not schema.passthrough


def test_template_types_and_commands() -> None:
    tpl = {
        "properties": [
            {"id": "t", "mode": "rw", "define": {"type": "timestamp"}},
            {
                "id": "mode",
                "mode": "rw",
                "define": {"type": "stringenum", "mapping": {"auto": "Auto", "eco": "Eco"}},
            },
            {
                "id": "pos",
                "mode": "rw",
                "define": {
                    "type": "struct",
                    "specs": [
                        {"id": "on", "name": "On", "dataType": {"type": "bool"}},
                        {
                            "id": "x",
                            "name": "X",
                            "dataType": {"type": "int", "min": "0", "max": "9"},
                        },
                    ],
                },
            },
            {"id": "list", "mode": "rw", "define": {"type": "array", "arrayInfo": {"type": "int"}}},
            {"id": "weird", "mode": "rw", "define": {"type": "hologram"}},
        ],
        "actions": [
            {
                "id": "blink",
                "name": "Blink",
                "input": [{"id": "on", "define": {"type": "bool"}}],
                "output": [{"id": "result", "define": {"type": "int"}}],
            }
        ],
    }
    schema = template.schema_from_template(json.dumps(tpl))
    assert schema.passthrough  # "weird" is unknown: its values flow as they are
    assert schema.prop("weird") is None
    assert schema.prop("mode").enum == {"auto": "Auto", "eco": "Eco"}  # type: ignore[union-attr]
    values = validate_props(
        schema, {"t": 1_600_000_000_000, "mode": "eco", "pos": {"on": True, "x": 3}, "list": [1, 2]}
    )
    assert template.denormalize(schema, values) == {
        "t": 1_600_000_000,
        "mode": "eco",
        "pos": {"on": 1, "x": 3},
        "list": [1, 2],
    }
    light = _light_schema()
    assert template.denormalize(
        light, validate_props(light, {"power_switch": True, "color": "2"})
    ) == {"power_switch": 1, "color": 2}
    action = schema.action("blink")
    assert action is not None
    assert template.denormalize(action.input, {"on": False}) == {"on": 0}


def test_template_errors() -> None:
    with pytest.raises(RemoteProtocolError):
        template.schema_from_template("{not json")
    with pytest.raises(RemoteProtocolError):
        template.schema_from_template([1])
    assert template.schema_from_template("").passthrough
