"""XiakeCloud codec: request builders against the seed, the assumed envelope and its variants,
record parsers, the mapping to the normalized model, and change detection."""

from __future__ import annotations

import orjson
import pytest

from protocols import tsl
from protocols.model import CommandError, LocalProtocolError, RemoteProtocolError, VendorError
from protocols.xky import api, records
from protocols.xky.envelope import (
    ASSUMED_ENVELOPE,
    SessionInvalid,
    decode_envelope,
    encode_error,
    encode_ok,
    parse_response,
)
from protocols.xky.records import DeviceRecord, diff, parse_device, parse_device_list

# --------------------------------------------------------------------------------------------
# Builders


def test_login_is_a_json_post_with_the_seed_arguments() -> None:
    req = api.login("alice", "pw")
    assert (req.method, req.path, req.query) == ("POST", "/login", None)
    assert req.url("https://api.xky.com/") == "https://api.xky.com/login"
    assert req.body is not None
    assert orjson.loads(req.body) == {
        "key": "xky",
        "account": "alice",
        "subaccount": "",
        "password": "pw",
        "source": True,
    }
    sub = api.login("alice", "pw2", subaccount="kid", key="other")
    assert sub.body is not None
    assert orjson.loads(sub.body)["subaccount"] == "kid"
    assert orjson.loads(sub.body)["key"] == "other"
    assert sub.redacted()["password"] == "***"


def test_get_calls_send_query_parameters_with_booleans_as_true() -> None:
    req = api.get_device("s3ss", "7445ee3a")
    assert req.method == "GET"
    assert req.body is None
    assert req.query == {"sn": "7445ee3a", "session": "s3ss", "source": "true"}
    assert "s3ss" not in str(req.redacted())


# Every call the seed marks isget="true" is a GET here, every other one a POST.
SEED_ISGET = {
    "/login": False,
    "/logout": False,
    "/add_subaccount": False,
    "/get_subaccount_list": True,
    "/get_subaccount": True,
    "/set_subaccount": False,
    "/delete_subaccount": True,
    "/get_temp_session": True,
    "/get_user": True,
    "/add_node": False,
    "/get_node_list": True,
    "/set_node": False,
    "/del_node": False,
    "/get_device_list": True,
    "/get_device": True,
    "/set_device": False,
    "/del_device": False,
    "/get_multi_device": True,
    "/set_multi_device": False,
}

BUILT = [
    api.login("a", "p"),
    api.logout("S"),
    api.add_subaccount("S", "kid", "pw", "desc"),
    api.get_subaccount_list("S"),
    api.get_subaccount("S", "1"),
    api.set_subaccount("S", "1", password="x", description="d", devices=["a", "b"]),
    api.delete_subaccount("S", "1"),
    api.get_temp_session("S"),
    api.get_user("S"),
    api.add_node("S", "1234", "node"),
    api.get_node_list("S"),
    api.set_node("S", "11", "名字"),
    api.del_node("S", "11"),
    api.get_device_list("S"),
    api.get_device("S", "sn1"),
    api.set_device("S", "sn1", name="n", desc="d", tags=["t1", "t2"]),
    api.del_device("S", "sn1"),
    api.get_multi_device("S"),
    api.set_multi_device("S", ["sn1", "sn2"]),
]


@pytest.mark.parametrize("req", BUILT, ids=lambda r: r.path)
def test_every_builder_follows_the_seed_isget_and_sends_source_true(req: api.Request) -> None:
    assert SEED_ISGET[req.path] is (req.method == "GET")
    if req.method == "GET":
        assert req.query is not None and req.query["source"] == "true"
        sent = req.query
    else:
        assert req.body is not None
        sent = orjson.loads(req.body)
        assert sent["source"] is True
    if req.path != "/login":
        assert sent["session"] == "S"
    # and the server side reads it back to the same arguments
    body = req.body or b""
    endpoint, args = api.parse_request(req.method, req.path, req.query or {}, body)
    assert endpoint is req.endpoint
    assert args["source"] is True


def test_endpoint_table_matches_the_seed() -> None:
    for path, get in SEED_ISGET.items():
        assert api.ENDPOINTS[path].get is get, path


def test_set_device_and_multi_device_bodies() -> None:
    req = api.set_device("S", "7445ee3a", name="name", desc="Remarks", tags=["tag 1", "tag 2"])
    assert req.body is not None
    assert orjson.loads(req.body) == {
        "sn": "7445ee3a",
        "name": "name",
        "desc": "Remarks",
        "tags": ["tag 1", "tag 2"],
        "session": "S",
        "source": True,
    }
    only_name = api.set_device("S", "x", name="n")
    assert only_name.body is not None
    assert set(orjson.loads(only_name.body)) == {"sn", "name", "session", "source"}
    multi = api.set_multi_device("S", ("sn1", "sn2"))
    assert multi.body is not None
    assert orjson.loads(multi.body)["sns"] == ["sn1", "sn2"]


@pytest.mark.parametrize(
    "build",
    [
        lambda: api.set_device("S", "x"),
        lambda: api.set_device("S", "", name="n"),
        lambda: api.set_device("S", "x", tags="notalist"),  # type: ignore[arg-type]
        lambda: api.set_device("S", "x", tags=[1]),  # type: ignore[list-item]
        lambda: api.set_multi_device("S", "sn1"),
        lambda: api.get_device_list(""),
        lambda: api.login("", "pw"),
    ],
)
def test_builders_refuse_what_the_seed_does_not_allow(build: object) -> None:
    with pytest.raises(LocalProtocolError):
        build()  # type: ignore[operator]


def test_parse_request_rejects_wrong_method_unknown_path_and_bad_body() -> None:
    with pytest.raises(api.BadRequest) as exc:
        api.parse_request("POST", "/get_device_list", {}, b"{}")
    assert exc.value.code == 405
    with pytest.raises(api.BadRequest) as exc:
        api.parse_request("GET", "/nope", {}, b"")
    assert exc.value.code == 404
    with pytest.raises(api.BadRequest) as exc:
        api.parse_request("POST", "/login", {}, b"[1]")
    assert exc.value.code == 400
    with pytest.raises(api.BadRequest):
        api.parse_request("POST", "/login", {}, b"{nope")


# --------------------------------------------------------------------------------------------
# Envelope (the assumption) and its variants


def test_the_assumed_envelope_round_trips() -> None:
    assert parse_response(200, encode_ok({"session": "abc"})) == {"session": "abc"}
    with pytest.raises(VendorError) as exc:
        parse_response(200, encode_error(404, "no such device"))
    assert (exc.value.code, exc.value.vendor_code, exc.value.message) == (
        "invalid",
        404,
        "no such device",
    )


def test_invalid_session_has_its_own_code_and_exception() -> None:
    with pytest.raises(SessionInvalid) as exc:
        parse_response(200, encode_error(ASSUMED_ENVELOPE.session_invalid, "expired"))
    assert exc.value.code == "auth"
    # bad credentials are auth too, but not a session problem: no re-login loop
    with pytest.raises(VendorError) as bad:
        parse_response(200, encode_error(1001, "wrong password"))
    assert bad.value.code == "auth" and not isinstance(bad.value, SessionInvalid)
    with pytest.raises(VendorError) as other:
        parse_response(200, encode_error(7777, ""))
    assert other.value.code == "vendor" and other.value.vendor_code == 7777


@pytest.mark.parametrize(
    ("body", "data"),
    [
        (b'{"code":0,"msg":"","data":[1,2]}', [1, 2]),
        (b'{"code":"0","data":{"a":1}}', {"a": 1}),  # code as a string, no msg
        (b'{"errcode":0,"errmsg":"ok","result":[]}', []),
        (b'{"status":0,"message":"ok","data":null,"extra":1}', None),
        (b'{"code":0}', None),  # no data
        (b'{"session":"abc","id":5}', {"session": "abc", "id": 5}),  # bare object
        (b'{"data":[{"sn":"a"}]}', [{"sn": "a"}]),  # no code, wrapped
        (b'[{"sn":"a"}]', [{"sn": "a"}]),  # bare list
    ],
)
def test_envelope_variants_are_tolerated(body: bytes, data: object) -> None:
    assert parse_response(200, body) == data


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html>oops</html>",
        b'{"code":0,"data":[',
        b"42",
        b'"text"',
        b'{"code":"x"}',
        b'{"code":true}',
    ],
)
def test_malformed_bodies_are_remote_protocol_errors(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_response(200, body)


def test_http_errors_with_and_without_an_envelope() -> None:
    with pytest.raises(VendorError) as exc:
        parse_response(502, b"<html>bad gateway</html>")
    assert (exc.value.code, exc.value.vendor_code) == ("vendor", "http 502")
    with pytest.raises(VendorError) as exc:
        parse_response(429, b"")
    assert exc.value.code == "throttled"
    with pytest.raises(SessionInvalid):
        parse_response(401, b"unauthorized")
    with pytest.raises(SessionInvalid):
        parse_response(401, encode_error(401, "expired"))
    with pytest.raises(VendorError):
        parse_response(500, encode_ok([]))  # a success envelope on a 500 is still a 500
    assert decode_envelope(b'{"code":3,"msg":7}').message == "7"


# --------------------------------------------------------------------------------------------
# Records


def test_device_record_parsing_is_tolerant() -> None:
    rec = parse_device(
        {
            "sn": "7445ee3a",
            "name": "phone 1",
            "description": "desk",
            "tags": ["a", 2],
            "nodeId": 11,
            "online": 1,
            "ip": "10.0.0.2",
            "secret": "do-not-publish",
        }
    )
    assert rec == DeviceRecord("7445ee3a", "phone 1", "desk", ("a", "2"), "11", True)
    assert rec.extra == {"ip": "10.0.0.2", "secret": "do-not-publish"}
    bare = parse_device({"sn": 1234})
    assert bare == DeviceRecord("1234")
    assert bare.props() == {"name": "", "desc": "", "tags": []}
    assert parse_device(
        {"sn": "x", "tags": "a, b,", "online": "offline", "node": {"id": "n1"}}
    ) == (DeviceRecord("x", tags=("a", "b"), node="n1", online=False))
    assert parse_device([{"sn": "only"}]).sn == "only"


@pytest.mark.parametrize(
    "item",
    [
        {"name": "no sn"},
        {"sn": ""},
        {"sn": "x", "tags": {"a": 1}},
        {"sn": "x", "name": ["list"]},
        {"sn": "x", "online": "maybe"},
        "7445ee3a",
        None,
    ],
)
def test_bad_device_records_are_rejected(item: object) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_device(item)
    # one bad record spoils the whole listing: skipping it would look like a removal
    with pytest.raises(RemoteProtocolError):
        parse_device_list([{"sn": "good"}, item])


@pytest.mark.parametrize(
    "data",
    [
        [{"sn": "a", "name": "A"}, {"sn": "b"}],
        {"list": [{"sn": "a", "name": "A"}, {"sn": "b"}], "total": 2},
        {"devices": [{"sn": "a", "name": "A"}, {"sn": "b"}]},
        {"a": {"name": "A"}, "b": {}},  # keyed by sn
    ],
)
def test_device_list_shapes(data: object) -> None:
    assert [(r.sn, r.name) for r in parse_device_list(data)] == [("a", "A"), ("b", "")]


def test_device_list_edge_shapes() -> None:
    assert parse_device_list(None) == []
    assert parse_device_list([]) == []
    assert parse_device_list({}) == []
    assert [r.sn for r in parse_device_list({"sn": "single"})] == ["single"]
    dup = parse_device_list([{"sn": "a", "name": "1"}, {"sn": "a", "name": "2"}])
    assert [(r.sn, r.name) for r in dup] == [("a", "2")]
    for bad in ("text", 5, {"total": 3}):
        with pytest.raises(RemoteProtocolError):
            parse_device_list(bad)


def test_login_and_other_payloads() -> None:
    assert records.parse_login({"session": "S1", "id": 934}) == records.LoginResult("S1", "934")
    assert records.parse_login("S2") == records.LoginResult("S2", None)
    assert records.parse_login({"token": "S3", "uid": "9"}).session == "S3"
    for bad in ({"id": 1}, None, {"session": ""}, 5):
        with pytest.raises(RemoteProtocolError):
            records.parse_login(bad)
    assert records.parse_temp_session({"session": "T"}) == "T"
    assert records.parse_temp_session("T2") == "T2"
    assert records.parse_user({"id": 1, "account": "a"}) == {"id": 1, "account": "a"}
    with pytest.raises(RemoteProtocolError):
        records.parse_user([1])
    nodes = records.parse_node_list([{"id": 11, "serial": "1234", "name": "n"}])
    assert nodes == [records.NodeRecord("11", "1234", "n")]
    assert records.parse_node_list({"11": {"name": "n"}}) == [records.NodeRecord("11", "", "n")]
    subs = records.parse_subaccount_list(
        {"list": [{"id": "1", "account": "kid", "description": "d", "devices": ["a"]}]}
    )
    assert subs == [records.SubaccountRecord("1", "kid", "d", ("a",))]
    assert records.parse_subaccount({"id": 2, "account": "k", "devices": ["x"]}).devices == ("x",)
    assert records.parse_multi_device(["a", "b"]) == ["a", "b"]
    assert records.parse_multi_device({"sns": ["a"]}) == ["a"]
    assert records.parse_multi_device([{"sn": "a"}]) == ["a"]
    assert records.parse_multi_device(None) == []


def test_encode_device_round_trips_through_the_parser() -> None:
    rec = DeviceRecord("s1", "n", "d", ("t",), "node-1", False, {"ip": "1.2.3.4"})
    encoded = records.encode_device(rec)
    assert encoded["sn"] == "s1" and encoded["ip"] == "1.2.3.4"
    again = parse_device(orjson.loads(orjson.dumps(encoded)))
    assert again == rec and again.extra == rec.extra


# --------------------------------------------------------------------------------------------
# Normalized model


def test_model_mapping_and_schema() -> None:
    rec = DeviceRecord("s1", "Phone", "desk", ("a",), "n1", True, {"password": "x"})
    info = records.device_info(rec)
    assert (info.device, info.name, info.model, info.online) == ("s1", "Phone", "xky", True)
    assert info.schema is records.SCHEMA
    assert "password" not in str(info.extra)
    assert records.device_info(DeviceRecord("s2")).name == "s2"
    change = records.state_change(rec, 123)
    assert (change.device, change.ts_ms) == ("s1", 123)
    assert change.props == {
        "name": "Phone",
        "desc": "desk",
        "tags": ["a"],
        "node": "n1",
        "online": True,
    }
    av = records.availability(rec, 5)
    assert av is not None and av.online and av.device == "s1"
    assert records.availability(DeviceRecord("s3"), 5) is None
    # only name/desc/tags are writable: the gateway's validation rejects the rest
    assert {"name", "desc", "tags"} == records.WRITABLE
    assert tsl.validate_props(records.SCHEMA, {"name": "x", "tags": ["a", "b"]}) == {
        "name": "x",
        "tags": ["a", "b"],
    }
    for bad in ({"node": "n2"}, {"online": False}, {"color": "red"}, {"tags": "notalist"}):
        with pytest.raises(CommandError) as exc:
            tsl.validate_props(records.SCHEMA, bad)
        assert exc.value.code == "invalid"
    values, flagged = tsl.normalize(records.SCHEMA, change.props)
    assert flagged == [] and values == change.props


# --------------------------------------------------------------------------------------------
# Change detection


def test_diff_from_nothing_adds_everything() -> None:
    a, b = DeviceRecord("a", online=True), DeviceRecord("b")
    changes = diff({}, [a, b])
    assert changes.added == (a, b)
    assert not changes.changed and not changes.removed and not changes.availability
    assert dict(changes.snapshot) == {"a": a, "b": b}


def test_diff_reports_only_what_changed() -> None:
    prev = records.snapshot(
        [
            DeviceRecord("a", "A", online=True),
            DeviceRecord("b", "B", tags=("x",), node="n1", online=True),
            DeviceRecord("c", "C"),
            DeviceRecord("gone"),
        ]
    )
    now = [
        DeviceRecord("a", "A", online=True, extra={"heartbeat": 99}),  # extra is not a change
        DeviceRecord("b", "B", tags=("x", "y"), node=None, online=False),
        DeviceRecord("c", "C2"),
        DeviceRecord("new", online=False),
    ]
    changes = diff(prev, now)
    assert [r.sn for r in changes.added] == ["new"]
    assert [(r.sn, dict(p)) for r, p in changes.changed] == [
        ("b", {"node": None, "online": False, "tags": ["x", "y"]}),
        ("c", {"name": "C2"}),
    ]
    assert [r.sn for r in changes.availability] == ["b"]
    assert [r.sn for r in changes.info] == ["b", "c"]
    assert changes.removed == ("gone",)
    assert not changes.empty
    assert diff(changes.snapshot, now).empty


def test_diff_online_becoming_unknown_is_a_state_change_but_no_availability() -> None:
    changes = diff(records.snapshot([DeviceRecord("a", online=True)]), [DeviceRecord("a")])
    assert [dict(p) for _, p in changes.changed] == [{"online": None}]
    assert changes.availability == ()


def test_diff_everything_removed() -> None:
    changes = diff(records.snapshot([DeviceRecord("a"), DeviceRecord("b")]), [])
    assert changes.removed == ("a", "b") and changes.snapshot == {}
