"""Aliyun Living codec: signing vectors, envelope errors, MQTT credentials, pushes, TSL."""

from __future__ import annotations

import os
import time
import types

import orjson
import pytest

from protocols import tsl as ntsl
from protocols.aliyun import (
    API,
    BindReply,
    OtaProgress,
    TopoAddStatus,
    build_bind,
    build_request,
    content_md5,
    decode_app_message,
    denormalize,
    down_topics,
    mqtt_credentials,
    parse_bindings,
    parse_client_id,
    parse_request,
    parse_response,
    sign_request,
    signature_for,
    string_to_sign,
    tsl_to_schema,
    verify_credentials,
)
from protocols.aliyun.signing import sign
from protocols.model import (
    Availability,
    CommandError,
    DeviceEvent,
    RemoteProtocolError,
    StateChange,
    VendorError,
)

# ------------------------------------------------------------------------------- signing


def test_public_signature_vector() -> None:
    headers = {"x-ca-signature-headers": "baseclient", "baseclient": "go"}
    text = string_to_sign("", "", headers, {"sdk": "apigateway"})
    assert text == "\n\n\n\n\nbaseclient:go\n?sdk=apigateway"
    assert sign("", text) == "h3zZzWDRJ+OiWSlhFl1YKhOvk5hOfxxOVIeH9kV86vw="


def test_content_md5_vector() -> None:
    assert content_md5(b'{"test":"ok"}') == "b969h28MOfCVGrra1smdCg=="


def test_url_sorted_and_empty_value_without_equals() -> None:
    text = string_to_sign("post", "/p", {}, {"b": "2", "a": "", "c": "3"}, {"aa": "x"})
    assert text.endswith("\n/p?a&aa=x&b=2&c=3")
    assert text.startswith("POST\n")


def test_signature_headers_colon_and_comma_are_equivalent() -> None:
    base = {"x-ca-key": "k", "x-ca-nonce": "n", "accept": "application/json"}
    comma = string_to_sign("POST", "/x", {**base, "X-Ca-Signature-Headers": "x-ca-nonce,x-ca-key"})
    colon = string_to_sign("POST", "/x", {**base, "X-Ca-Signature-Headers": "x-ca-key:x-ca-nonce"})
    assert comma == colon
    assert "x-ca-key:k\nx-ca-nonce:n\n/x" in comma


def test_empty_headers_block_adds_no_newline() -> None:
    assert string_to_sign("GET", "/x", {"accept": "a", "date": "d"}) == "GET\na\n\n\nd\n/x"


def test_sign_request_names_every_xca_and_custom_header() -> None:
    body = b'{"id":"1"}'
    out = sign_request(
        "key",
        "secret",
        "POST",
        "/thing/tsl/get",
        {"X-Ca-Nonce": "n1", "X-Ca-Timestamp": "1700000000000", "X-Custom": "v",
         "Host": "h", "User-Agent": "ua", "Date": "Thu, 06 Feb 2020 07:32:54 GMT"},
        body=body,
    )
    assert out["x-ca-signature-headers"] == (
        "x-ca-key,x-ca-nonce,x-ca-signaturemethod,x-ca-timestamp,x-custom"
    )
    assert out["content-md5"] == content_md5(body)
    assert out["content-type"] == "application/octet-stream"
    assert all(k == k.lower() for k in out)
    sig, _ = signature_for("secret", "POST", "/thing/tsl/get", out, None, body)
    assert sig == out["x-ca-signature"]
    # Tampering with the body's MD5 or a signed header breaks it.
    assert signature_for("secret", "POST", "/thing/tsl/get", {**out, "x-custom": "w"}, None, body)[0] != sig


def test_sign_request_form_body_goes_into_url_without_md5() -> None:
    body = b"b=2&a=1"
    out = sign_request(
        "key", "s", "POST", "/f", {"content-type": "application/x-www-form-urlencoded"}, body=body
    )
    assert "content-md5" not in out
    sig, text = signature_for("s", "POST", "/f", out, None, body)
    assert text.endswith("/f?a=1&b=2") and sig == out["x-ca-signature"]


def test_sign_request_defaults_timestamp_and_nonce() -> None:
    out = sign_request("key", "s", "POST", "/p")
    assert abs(int(out["x-ca-timestamp"]) - time.time() * 1000) < 60_000
    assert len(out["x-ca-nonce"]) == 36


def _peer_import(name: str) -> None:
    try:
        __import__(name)
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"{name} not installed")


@pytest.mark.peer
def test_peer_official_signer_agrees() -> None:
    _peer_import("alibabacloud_apigateway_util")
    from alibabacloud_apigateway_util.client import Client as Util
    from Tea.request import TeaRequest

    # The public vector through the official function itself (TeaRequest would turn an empty
    # method into GET, so a plain object carries the request, as the upstream test does).
    plain = types.SimpleNamespace(
        method="", pathname="", headers={"baseclient": "go", "accept": "", "date": ""},
        query={"sdk": "apigateway"},
    )
    assert Util.get_signature(plain, "") == "h3zZzWDRJ+OiWSlhFl1YKhOvk5hOfxxOVIeH9kV86vw="

    # A full request as the official IoT client builds it (lower-case keys, date, nonce).
    body = build_request("1.0.4", {"iotId": "dev1"}, "tok", request_id="42")
    headers = {
        "host": "api.link.aliyun.com",
        "date": "Thu, 06 Feb 2020 07:32:54 GMT",
        "x-ca-nonce": "0123456789abcdef0123456789abcdef",
        "x-ca-signaturemethod": "HmacSHA256",
        "accept": "application/json",
        "user-agent": "AlibabaCloud",
        "content-type": "application/octet-stream",
    }
    ours = sign_request("app-key", "app-secret", "POST", "/thing/tsl/get", headers, body=body)
    req = TeaRequest()
    req.method, req.pathname = "POST", "/thing/tsl/get"
    req.headers = {**headers, "x-ca-key": "app-key", "content-md5": Util.get_content_md5(body.decode())}
    req.query = {}
    assert Util.get_signature(req, "app-secret") == ours["x-ca-signature"]
    assert req.headers["x-ca-signature-headers"] == ours["x-ca-signature-headers"]
    assert req.headers["content-md5"] == ours["content-md5"]


# ------------------------------------------------------------------------------- envelope


def test_request_envelope_shape() -> None:
    body = orjson.loads(build_request("1.0.5", {"iotId": "x"}, "tok", request_id="r1"))
    assert body == {
        "id": "r1",
        "version": "1.0",
        "request": {"apiVer": "1.0.5", "iotToken": "tok"},
        "params": {"iotId": "x"},
    }
    req = parse_request(orjson.dumps(body))
    assert (req.id, req.api_ver, req.iot_token, dict(req.params)) == ("r1", "1.0.5", "tok", {"iotId": "x"})


def test_parse_response_ok_and_errors() -> None:
    assert parse_response(200, b'{"code":200,"message":"success","data":{"a":1}}') == {"a": 1}
    cases = {
        401: "auth",
        429: "throttled",
        460: "invalid",
        2062: "auth",
        2065: "rejected",
        28504: "offline",
        29004: "rejected",
        12345: "vendor",
    }
    for code, category in cases.items():
        with pytest.raises(VendorError) as info:
            parse_response(200, orjson.dumps({"code": code, "message": "m"}))
        assert info.value.code == category and info.value.vendor_code == code


def test_parse_response_gateway_http_errors() -> None:
    with pytest.raises(VendorError) as info:
        parse_response(429, b"", "Throttled by PLUGIN Flow Control")
    assert info.value.code == "throttled"
    with pytest.raises(VendorError) as info:
        parse_response(401, b"", "Invalid Signature")
    assert info.value.code == "auth" and "Invalid Signature" in info.value.message
    with pytest.raises(RemoteProtocolError):
        parse_response(200, b"<html>")
    with pytest.raises(RemoteProtocolError):
        parse_response(200, b'{"message":"no code"}')


def test_api_versions_from_seed() -> None:
    assert API["properties_set"].path == "/thing/properties/set"
    assert API["list_bindings"].version == "1.0.8"


# ------------------------------------------------------------------------------- MQTT


def test_mqtt_credentials_documented_vector() -> None:
    creds = mqtt_credentials("pk", "device", "secret", 789, client_id="12345")
    assert creds.password.upper() == "FAFD82A3D602B37FB0FA8B7892F24A477F851A14"
    assert creds.client_id == "12345|securemode=2,signmethod=hmacsha1,timestamp=789|"
    assert creds.username == "device&pk"


def test_mqtt_credentials_defaults_and_modes() -> None:
    creds = mqtt_credentials("pk", "dn", "s", 1, secure_mode=3, sign_method="hmacsha256")
    bare, ext = parse_client_id(creds.client_id)
    assert bare == "pk&dn"
    assert ext == {"securemode": "3", "signmethod": "hmacsha256", "timestamp": "1"}
    assert len(creds.password) == 64


def test_verify_credentials() -> None:
    def secret_for(pk: str, dn: str) -> str | None:
        return "s3cret" if (pk, dn) == ("pk", "dn") else None

    creds = mqtt_credentials("pk", "dn", "s3cret", 1700000000)
    assert verify_credentials(creds.client_id, creds.username, creds.password.upper().encode(), secret_for) == ("pk", "dn")
    assert verify_credentials(creds.client_id, creds.username, b"00", secret_for) == 4
    assert verify_credentials(creds.client_id, "dn&other", creds.password, secret_for) == 5
    assert verify_credentials("pk&dn", creds.username, creds.password, secret_for) == 4  # no signmethod
    assert verify_credentials(creds.client_id, None, creds.password, secret_for) == 4
    # Without timestamp in the extension, the timestamp is not part of the content.
    plain = mqtt_credentials("pk", "dn", "s3cret", 0)
    import hashlib
    import hmac

    pw = hmac.new(b"s3cret", b"clientIdxdeviceNamednproductKeypk", hashlib.sha1).hexdigest()
    assert verify_credentials("x|securemode=2,signmethod=hmacsha1|", "dn&pk", pw, secret_for) == ("pk", "dn")
    del plain


@pytest.mark.peer
def test_peer_linkkit_credentials_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    _peer_import("linkkit")
    import warnings

    from linkkit import linkkit as lk_mod

    monkeypatch.setattr(lk_mod.time, "time", lambda: 1700000000.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lk = lk_mod.LinkKit("cn-shanghai", "a1PK", "appDN", "devsecret")
        lk._LinkKit__config_mqtt_client_internal()
    client = lk._LinkKit__mqtt_client
    their_id = client._client_id.decode()
    their_user = client._username.decode()
    their_pw = client._password.decode()
    ours = mqtt_credentials("a1PK", "appDN", "devsecret", 1700000000)
    assert their_user == ours.username
    assert their_pw.lower() == ours.password.lower()
    assert parse_client_id(their_id)[0] == parse_client_id(ours.client_id)[0]
    # And our server-side check accepts what the official SDK sends (with its extra ext keys).
    assert verify_credentials(their_id, their_user, their_pw, lambda pk, dn: "devsecret") == ("a1PK", "appDN")


def test_topics_and_bind() -> None:
    topics = down_topics("pk", "dn")
    assert "/sys/pk/dn/app/down/thing/properties" in topics
    assert all("#" not in t and "+" not in t for t in topics)
    topic, payload = build_bind("pk", "dn", "tok", "pk&dn", msg_id="m1")
    assert topic == "/sys/pk/dn/app/up/account/bind"
    assert orjson.loads(payload) == {
        "id": "m1", "version": "1.0", "request": {"clientId": "pk&dn"}, "params": {"iotToken": "tok"},
    }


SEED_PROPERTIES = b"""{
  "id": "157355878660810192", "version": "1.0",
  "params": {"iotId": "0300MSKL03667c544f69342a74Sv4Za4", "productKey": "X5eCzh6fEH7",
    "deviceName": "5gJtxDVeGAkaEztpisjX",
    "items": {"temperature": {"time": 1510292697471, "value": 30},
              "meterReadingMonth": {"time": 1510292697470, "value": 715665571},
              "alarm": {"time": 1510292697470, "value": "normal"}}},
  "method": "thing.properties"}"""


def test_decode_properties_keeps_item_times() -> None:
    msg = decode_app_message("/sys/pk/dn/app/down/thing/properties", SEED_PROPERTIES, 1)
    assert isinstance(msg, StateChange)
    assert msg.device == "0300MSKL03667c544f69342a74Sv4Za4"
    assert msg.props == {"temperature": 30, "meterReadingMonth": 715665571, "alarm": "normal"}
    assert msg.prop_ts == {"temperature": 1510292697471, "meterReadingMonth": 1510292697470, "alarm": 1510292697470}
    assert msg.ts_ms == 1510292697471


def test_decode_events_status_topo_ota() -> None:
    ev = decode_app_message(
        "/sys/pk/dn/app/down/thing/events",
        orjson.dumps({"params": {"identifier": "BrokenInfo", "type": "error", "iotId": "d1",
                                 "value": {"Power": "on"}, "time": 5}, "method": "thing.events"}),
        1,
    )
    assert ev == DeviceEvent("d1", "BrokenInfo", "error", {"Power": "on"}, 5)
    for value, online, reason in ((1, True, None), (3, False, "offline"), (0, False, "inactive"), (8, False, "disabled")):
        av = decode_app_message(
            "/sys/pk/dn/app/down/thing/status",
            orjson.dumps({"params": {"iotId": "d1", "status": {"time": 7, "value": value}}}),
            1,
        )
        assert av == Availability("d1", online, 7, reason)
    topo = decode_app_message(
        "/sys/pk/dn/app/down/thing/topo/add/status",
        orjson.dumps({"id": "1", "param": {"status": 0, "subIotId": "sub", "newGwIotId": "gw"},
                      "method": "thing.topo.add.status"}),
        1,
    )
    assert isinstance(topo, TopoAddStatus) and topo.ok and topo.sub_iot_id == "sub" and topo.new_gateway == "gw"
    ota = decode_app_message(
        "/sys/pk/dn/app/down/ota/device/forward",
        orjson.dumps({"params": {"iotId": "d1", "step": -2, "upgradeStatus": 3, "srcVersion": "1", "destVersion": "2"}}),
        1,
    )
    assert isinstance(ota, OtaProgress) and ota.to_event(9).level == "error"
    reply = decode_app_message("/sys/pk/dn/app/down/account/bind_reply", b'{"id":"m","code":2043,"message":"check iotToken failed"}', 1)
    assert reply == BindReply("m", 2043, "check iotToken failed")
    assert decode_app_message("/sys/pk/dn/app/down/thing/other", b"{}", 1) is None


@pytest.mark.parametrize(
    "topic,payload",
    [
        ("/sys/pk/dn/app/down/thing/properties", b"not json"),
        ("/sys/pk/dn/app/down/thing/properties", b'{"params":{"items":{}}}'),
        ("/sys/pk/dn/app/down/thing/properties", b'{"params":{"iotId":"d","items":[]}}'),
        ("/sys/pk/dn/app/down/thing/status", b'{"params":{"iotId":"d","status":{"value":9}}}'),
        ("/sys/pk/dn/app/down/thing/events", b'{"params":{"iotId":"d"}}'),
        ("/sys/pk/dn/app/down/thing/topo/add/status", b'{"param":{}}'),
        ("/not/an/app/topic", b"{}"),
    ],
)
def test_decode_garbage_is_a_remote_error(topic: str, payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_app_message(topic, payload, 1)


# ------------------------------------------------------------------------------- TSL

TSL = {
    "schema": "http://aliyun/iot/thing/desc/schema",
    "properties": [
        {"identifier": "LightSwitch", "name": "主灯开关", "accessMode": "rw",
         "dataType": {"type": "bool", "specs": {"0": "关闭", "1": "开启"}}},
        {"identifier": "Brightness", "accessMode": "rw",
         "dataType": {"type": "int", "specs": {"min": "0", "max": "100", "step": "1", "unit": "%"}}},
        {"identifier": "Temp", "accessMode": "r", "dataType": {"type": "double", "specs": {"min": "-40", "max": "85.5"}}},
        {"identifier": "Ratio", "dataType": {"type": "float", "specs": {}}},
        {"identifier": "Label", "dataType": {"type": "text", "specs": {"length": "32"}}},
        {"identifier": "Since", "dataType": {"type": "date", "specs": {}}},
        {"identifier": "Mode", "dataType": {"type": "enum", "specs": {"0": "auto", "1": "manual"}}},
        {"identifier": "Color", "dataType": {"type": "struct", "specs": [
            {"identifier": "r", "dataType": {"type": "int", "specs": {"min": "0", "max": "255"}}},
            {"identifier": "on", "dataType": {"type": "bool", "specs": {"0": "off", "1": "on"}}}]}},
        {"identifier": "Points", "dataType": {"type": "array", "specs": {"size": "4", "item": {"type": "double"}}}},
        {"identifier": 7},
    ],
    "events": [
        {"identifier": "post", "type": "info", "outputData": []},
        {"identifier": "Error", "name": "故障上报", "type": "alert",
         "outputData": [{"identifier": "ErrorCode", "dataType": {"type": "enum", "specs": {"0": "正常"}}}]},
    ],
    "services": [
        {"identifier": "get", "inputData": ["LightSwitch"], "outputData": []},
        {"identifier": "set", "inputData": [], "outputData": []},
        {"identifier": "ToggleLightSwitch", "name": "翻转主灯开关", "inputData": [
            {"identifier": "times", "dataType": {"type": "int", "specs": {"min": "1", "max": "3"}}}], "outputData": []},
    ],
}


def test_tsl_to_schema_types_and_specs() -> None:
    schema = tsl_to_schema(TSL)
    sw = schema.prop("LightSwitch")
    assert sw is not None and sw.type == "bool" and sw.enum == {False: "关闭", True: "开启"} and sw.access == "rw"
    br = schema.prop("Brightness")
    assert br is not None and (br.type, br.min, br.max, br.step, br.unit) == ("int", 0, 100, 1, "%")
    temp = schema.prop("Temp")
    assert temp is not None and temp.type == "float" and temp.access == "r" and temp.max == 85.5
    assert schema.prop("Ratio").type == "float"  # type: ignore[union-attr]
    label = schema.prop("Label")
    assert label is not None and label.type == "string" and label.length == 32
    assert schema.prop("Since").type == "timestamp"  # type: ignore[union-attr]
    mode = schema.prop("Mode")
    assert mode is not None and mode.enum == {0: "auto", 1: "manual"}
    color = schema.prop("Color")
    assert color is not None and [f.id for f in color.fields] == ["r", "on"]
    pts = schema.prop("Points")
    assert pts is not None and pts.length == 4 and pts.item is not None and pts.item.type == "float"
    assert [e.id for e in schema.events] == ["Error"] and schema.events[0].level == "alert"
    assert [a.id for a in schema.actions] == ["ToggleLightSwitch"]
    assert schema.actions[0].input[0].max == 3
    # A JSON string is accepted too (data of /thing/tsl/get sometimes is one).
    assert tsl_to_schema(orjson.dumps(TSL).decode()) == schema


def test_values_coerced_and_denormalized_through_schema() -> None:
    schema = tsl_to_schema(TSL)
    values, flagged = ntsl.normalize(
        schema, {"LightSwitch": 1, "Brightness": "42", "Since": "1700000000000",
                 "Color": {"r": 3, "on": 0}, "Points": [1, "2.5"], "Mode": "1", "Temp": "hot"}
    )
    assert values["LightSwitch"] is True and values["Brightness"] == 42
    assert values["Since"] == 1700000000000 and values["Color"] == {"r": 3, "on": False}
    assert values["Points"] == [1.0, 2.5] and values["Mode"] == 1
    assert flagged == ["Temp"]
    valid = ntsl.validate_props(schema, {"LightSwitch": True, "Since": 1700000000000, "Color": {"r": 1, "on": True}})
    assert denormalize(valid, schema) == {"LightSwitch": 1, "Since": "1700000000000", "Color": {"r": 1, "on": 1}}
    with pytest.raises(CommandError):
        ntsl.validate_props(schema, {"Temp": 3})  # read-only


def test_parse_bindings_page() -> None:
    data = {
        "total": 3, "pageNo": 1, "pageSize": 2,
        "data": [
            {"iotId": "a", "nickName": "Lamp", "productKey": "pk", "deviceName": "d1", "status": 1, "productModel": "L1"},
            {"deviceId": "b", "deviceName": "d2", "status": 3},
            {"nickName": "no id"},
        ],
    }
    infos, total = parse_bindings(data)
    assert total == 3
    assert [(i.device, i.name, i.online) for i in infos] == [("a", "Lamp", True), ("b", "d2", False)]
    assert infos[0].model == "L1" and infos[0].extra["productKey"] == "pk"
    with pytest.raises(RemoteProtocolError):
        parse_bindings("nope")
