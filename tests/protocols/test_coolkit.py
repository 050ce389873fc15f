"""CoolKit codec: signatures, REST builders/parsers, WS state machine, uiid profiles (byte literals in)."""

from __future__ import annotations

import random

import orjson
import pytest

from protocols.coolkit import profiles, rest, ws
from protocols.coolkit.sign import Signer, canonical_query, make_nonce, sign
from protocols.model import LocalProtocolError, RemoteProtocolError, VendorError
from protocols.tsl import validate_props

SECRET = "OdPuCZ4PkPPi0rVKRVcGmll2NM6vVk0c"
BODY = b'{"email":"1234@gmail.com","password":"12345678","countryCode":"+1"}'
HOSTS = rest.Hosts()
APP = rest.App("APP", Signer(SECRET), HOSTS)


# --- signing -------------------------------------------------------------------------------


def test_official_vector() -> None:
    assert sign(SECRET, BODY) == "ttZ/gluzqrafvGonjMD20p4//arW6KoZKbo1SOMEzCA="
    assert Signer(SECRET)(BODY) == "ttZ/gluzqrafvGonjMD20p4//arW6KoZKbo1SOMEzCA="
    assert Signer(SECRET).verify(BODY, "ttZ/gluzqrafvGonjMD20p4//arW6KoZKbo1SOMEzCA=")
    # One byte of whitespace is a different message: sign exactly what is sent.
    assert sign(SECRET, BODY.replace(b",", b", ")) != sign(SECRET, BODY)


def test_get_canonical_string_sorted_not_encoded() -> None:
    params = {"ts": 1558004249, "nonce": "2323dfgh", "deviceid": "1000012345", "params": "switch|timers"}
    assert canonical_query(params) == "deviceid=1000012345&nonce=2323dfgh&params=switch|timers&ts=1558004249"
    assert canonical_query({"b": True, "a": None}) == "b=true"


def test_nonce_shape() -> None:
    value = make_nonce(random.Random(1))
    assert len(value) == 8 and value.isalnum()


def test_login_v2_signs_the_bytes_it_sends() -> None:
    req = rest.login_request(
        APP, 2, "us", nonce="abcd1234",
        password="12345678", country_code="+1", email="1234@gmail.com",
    )
    assert req.url == "https://us-apia.coolkit.cc/v2/user/login"
    assert req.headers["X-CK-Appid"] == "APP"
    assert req.headers["X-CK-Nonce"] == "abcd1234"
    assert req.body is not None
    assert req.headers["Authorization"] == "Sign " + sign(SECRET, req.body)
    assert orjson.loads(req.body) == {"countryCode": "+1", "email": "1234@gmail.com", "password": "12345678"}


def test_login_v1_body_and_hosts() -> None:
    req = rest.login_request(
        APP, 1, "cn", nonce="n0nce123", ts=1558004249,
        password="pw", country_code="+86", phone_number="+8613185260282",
    )
    assert req.url == "https://cn-api.coolkit.cn:8080/api/user/login"
    assert req.body is not None
    body = orjson.loads(req.body)
    assert body["appid"] == "APP" and body["nonce"] == "n0nce123" and body["version"] == 8
    assert body["ts"] == 1558004249 and body["phoneNumber"] == "+8613185260282"
    assert "X-CK-Appid" not in req.headers
    assert rest.Hosts().base(1, "eu") == "https://eu-api.coolkit.cc:8080"


def test_refresh_v1_signs_sorted_query() -> None:
    req = rest.refresh_request(APP, 1, "eu", nonce="abcdefgh", rt="R/T+", ts=5)
    assert req.method == "GET"
    canon = "appid=APP&grantType=refresh&nonce=abcdefgh&rt=R/T+&ts=5&version=8"
    assert req.headers["Authorization"] == "Sign " + sign(SECRET, canon.encode())
    assert "rt=R%2FT%2B" in req.url


def test_envelopes_and_redirects() -> None:
    assert rest.parse_envelope(200, b'{"error":0,"msg":"","data":{"a":1}}') == {"a": 1}
    with pytest.raises(rest.RegionRedirect) as redirect:
        rest.parse_envelope(200, b'{"error":10004,"msg":"redirection","data":{"region":"eu"}}')
    assert redirect.value.region == "eu"
    with pytest.raises(rest.RegionRedirect) as redirect1:
        rest.parse_envelope(200, b'{"error":301,"region":"as"}', 1)
    assert redirect1.value.region == "as"
    with pytest.raises(VendorError) as err:
        rest.parse_envelope(200, b'{"error":402,"msg":"token expired","data":{}}')
    assert err.value.vendor_code == 402 and err.value.code == "auth"
    with pytest.raises(VendorError) as throttled:
        rest.parse_envelope(200, b'{"error":429,"msg":"slow down","data":{}}')
    assert throttled.value.code == "throttled"
    with pytest.raises(RemoteProtocolError):
        rest.parse_envelope(200, b"<html>")
    assert rest.parse_envelope(200, b'[{"deviceid":"x"}]', 1) == [{"deviceid": "x"}]


def test_login_and_dispatch_parse() -> None:
    login = rest.parse_login({"at": "A", "rt": "R", "user": {"apikey": "K"}, "region": "eu"})
    assert (login.at, login.rt, login.apikey, login.region) == ("A", "R", "K", "eu")
    d = rest.parse_dispatch(200, b'{"port":8080,"IP":"52.80.19.131","reason":"ok","domain":"cn-pconnect2.coolkit.cc","error":0}')
    assert d.url() == "wss://cn-pconnect2.coolkit.cc:8080/api/ws"
    with pytest.raises(RemoteProtocolError):
        rest.parse_dispatch(200, b'{"reason":"busy","error":0}')


def _thing(idx: int, item_type: int = 1, **data: object) -> dict[str, object]:
    base: dict[str, object] = {"deviceid": f"10000000{idx:02x}", "name": f"d{idx}", "apikey": "me",
                               "online": True, "params": {"switch": "on"}, "extra": {"uiid": 1}}
    base.update(data)
    return {"itemType": item_type, "index": idx, "itemData": base}


def test_thing_pager_pages_until_short_page() -> None:
    pager = rest.ThingPager(page_size=2, self_apikey="me")
    assert pager.begin_index == rest.ThingPager.FIRST_INDEX
    nxt = pager.feed({"thingList": [_thing(-3), _thing(-1, 2, apikey="owner")], "total": 5})
    assert nxt == 0
    nxt = pager.feed({"thingList": [_thing(0), {"itemType": 3, "index": 4, "itemData": {"id": "g1", "name": "G", "params": {"switch": "off"}}}], "total": 5})
    assert nxt == 5
    assert pager.feed({"thingList": [{"itemType": 1, "index": 6, "itemData": {}}], "total": 5}) is None
    assert pager.done
    assert pager.total == 5
    assert [t.kind for t in pager.things] == ["device", "device", "device", "group"]
    assert pager.things[1].shared and pager.things[1].owner_apikey == "owner"
    assert pager.things[3].id == "group:g1"
    assert len(pager.bad) == 1


def test_thing_pager_refuses_to_loop() -> None:
    pager = rest.ThingPager(page_size=1)
    pager.feed({"thingList": [_thing(3)]})
    with pytest.raises(RemoteProtocolError):
        pager.feed({"thingList": [_thing(3)]})


def test_v1_devices_marks_shared_by_owner_apikey() -> None:
    things, bad = rest.parse_v1_devices(
        [{"deviceid": "a1", "apikey": "me", "extra": {"extra": {"uiid": 6}}, "params": {}},
         {"deviceid": "a2", "apikey": "other", "uiid": 1},
         {"name": "no id"}], "me")
    assert [(t.id, t.uiid, t.shared) for t in things] == [("a1", 6, False), ("a2", 1, True)]
    assert len(bad) == 1


# --- WebSocket ---------------------------------------------------------------------------------


def _live(version: ws.Version = 2) -> ws.WsSession:
    s = ws.WsSession(version, "APP", "AT", "me")
    frame = orjson.loads(s.handshake(now_ms=1000, nonce="abcdefgh"))
    assert frame["action"] == "userOnline" and frame["version"] == 8 and frame["ts"] == 1
    flag = "hb" if version == 2 else "hbl"
    ev = s.receive(orjson.dumps({"error": 0, "apikey": "me", "config": {flag: 1, "hbInterval": 145}, "sequence": frame["sequence"]}))
    assert isinstance(ev, ws.HandshakeDone)
    assert ev.heartbeat == ws.Heartbeat(145.0, True)
    return s


def test_handshake_v1_hbl_and_default_interval() -> None:
    s = _live(1)
    assert s.heartbeat.enabled and s.heartbeat.dead_after == 160.0
    s2 = ws.WsSession(2, "APP", "AT", "me")
    seq = orjson.loads(s2.handshake(now_ms=5, nonce="x"))["sequence"]
    ev = s2.receive(orjson.dumps({"error": 0, "sequence": seq}))
    assert isinstance(ev, ws.HandshakeDone) and ev.heartbeat.interval == 90.0


def test_heartbeat_ping_delay_within_bounds() -> None:
    hb = ws.Heartbeat(100.0)
    rng = random.Random(7)
    delays = [hb.ping_delay(rng) for _ in range(200)]
    assert all(80.0 <= d <= 100.0 for d in delays)


def test_handshake_failure() -> None:
    s = ws.WsSession(2, "APP", "AT", "me")
    seq = orjson.loads(s.handshake(now_ms=5, nonce="x"))["sequence"]
    ev = s.receive(orjson.dumps({"error": 406, "reason": "Authentication Failed", "sequence": seq}))
    assert ev == ws.HandshakeFailed(406, "Authentication Failed")
    assert s.state == "closed"


def test_sequences_strictly_increase_and_match_replies() -> None:
    s = _live()
    seq1, f1 = s.command("update", now_ms=2000, deviceid="d1", owner_apikey="me", params={"switch": "on"})
    seq2, f2 = s.command("update", now_ms=2000, deviceid="d2", owner_apikey="owner", params={"switch": "off"})
    seq3, _ = s.command("query", now_ms=1500, deviceid="d1", owner_apikey=None, params=[])
    assert int(seq1) < int(seq2) < int(seq3)
    assert "selfApikey" not in orjson.loads(f1)
    doc2 = orjson.loads(f2)
    assert doc2["apikey"] == "owner" and doc2["selfApikey"] == "me"
    ev = s.receive(orjson.dumps({"error": 504, "deviceid": "d2", "sequence": seq2, "reason": "Request Timeout"}))
    assert ev == ws.CommandReply(seq2, 504, "d2", None, "Request Timeout")
    ev = s.receive(orjson.dumps({"error": 0, "deviceid": "d1", "sequence": seq3, "params": {"switch": "on"}}))
    assert isinstance(ev, ws.CommandReply) and ev.params == {"switch": "on"}
    assert isinstance(s.receive(orjson.dumps({"error": 0, "sequence": seq3})), ws.Ignored)  # duplicate
    assert s.close() == [seq1]
    with pytest.raises(LocalProtocolError):
        s.command("update", now_ms=3000, deviceid="d1", owner_apikey=None, params={})


def test_v1_command_has_ts_zero() -> None:
    s = _live(1)
    _, frame = s.command("update", now_ms=2000, deviceid="d1", owner_apikey=None, params={"switch": "on"})
    assert orjson.loads(frame)["ts"] == 0


def test_pushes_and_garbage() -> None:
    s = _live()
    assert isinstance(s.receive("pong"), ws.Pong)
    ev = s.receive(b'{"action":"update","deviceid":"d1","apikey":"me","userAgent":"device","params":{"switch":"off"},"from":"device","seq":"12"}')
    assert ev == ws.DeviceUpdate("d1", {"switch": "off"}, "me", 12)
    ev = s.receive(b'{"action":"sysmsg","deviceid":"d1","apikey":"me","ts":0,"params":{"online":false}}')
    assert ev == ws.SysMsg("d1", False, {"online": False})
    assert s.receive(b'{"action":"reportSubDevice","deviceid":"x"}') == ws.Ignored("reportSubDevice")
    assert s.receive(b'{"error":406,"reason":"logged in elsewhere"}') == ws.ServerError(406, "logged in elsewhere")
    for garbage in (b"{nope", b"[1,2]", b'{"action":"update","params":{}}', b'{"action":"update","deviceid":"d","params":3}', b"\xff\xfe"):
        with pytest.raises(RemoteProtocolError):
            s.receive(garbage)
    assert s.state == "live"


# --- profiles ----------------------------------------------------------------------------------


def test_single_switch_roundtrip() -> None:
    p = profiles.profile_for(1)
    schema = profiles.schema_for(1)
    values, flagged = profiles.decode_params(p, schema, {"switch": "on", "rssi": "-50", "fwVersion": "3.0.1", "startup": "stay"})
    assert values == {"switch": True, "rssi": -50, "fwVersion": "3.0.1", "startup": "stay"}
    assert flagged == []
    cmd = validate_props(schema, {"switch": False})
    assert profiles.encode_params(p, schema, cmd) == {"switch": "off"}


def test_multi_channel_switches() -> None:
    p = profiles.profile_for(2)
    schema = profiles.schema_for(2, {"ck_channel_name": {"0": "Kitchen"}})
    assert schema.prop("switch_0") is not None and schema.prop("switch_0").name == "Kitchen"  # type: ignore[union-attr]
    assert schema.prop("switch_2") is None
    pushed = {"switches": [{"switch": "on", "outlet": 0}, {"switch": "off", "outlet": 1},
                           {"switch": "off", "outlet": 2}, {"switch": "off", "outlet": 3}]}
    values, _ = profiles.decode_params(p, schema, pushed)
    assert values == {"switch_0": True, "switch_1": False}
    cmd = validate_props(schema, {"switch_1": True, "switch_0": "off"})
    assert profiles.encode_params(p, schema, cmd) == {
        "switches": [{"switch": "off", "outlet": 0}, {"switch": "on", "outlet": 1}]}
    assert profiles.query_names(p, ["switch_0", "switch_1", "rssi"]) == ["switches", "rssi"]


def test_lights_sensors_power() -> None:
    b1 = profiles.profile_for(22)
    s = profiles.schema_for(22)
    values, _ = profiles.decode_params(b1, s, {"state": "on", "channel2": "255", "zyx_mode": 2})
    assert values == {"state": True, "channel2": 255, "zyx_mode": 2}
    assert profiles.encode_params(b1, s, validate_props(s, {"channel2": 10, "state": True})) == {"channel2": "10", "state": "on"}
    b05 = profiles.profile_for(104)
    s = profiles.schema_for(104)
    cmd = validate_props(s, {"ltype": "color", "color": {"r": 255, "g": 0, "b": 0, "br": 50}})
    assert profiles.encode_params(b05, s, cmd) == {"ltype": "color", "color": {"r": 255, "g": 0, "b": 0, "br": 50}}
    with pytest.raises(Exception):  # noqa: B017 - CommandError, out of range
        validate_props(s, {"color": {"r": 256}})
    th = profiles.profile_for(15)
    s = profiles.schema_for(15)
    values, flagged = profiles.decode_params(th, s, {"currentTemperature": "21.5", "currentHumidity": "unavailable", "switch": "off"})
    assert values["currentTemperature"] == 21.5 and values["switch"] is False
    assert flagged == ["currentHumidity"] and values["currentHumidity"] == "unavailable"
    pw = profiles.profile_for(32)
    s = profiles.schema_for(32)
    values, _ = profiles.decode_params(pw, s, {"power": "12.34", "voltage": "230.10", "current": "0.05"})
    assert values == {"power": 12.34, "voltage": 230.1, "current": 0.05}
    with pytest.raises(Exception):  # noqa: B017 - read-only
        validate_props(s, {"power": 3})


def test_unknown_uiid_passes_through() -> None:
    schema = profiles.schema_for(9999)
    assert schema.passthrough
    values, flagged = profiles.decode_params(None, schema, {"switch": "on", "x": "1"})
    assert values == {"switch": "on", "x": "1"} and flagged == []
    assert profiles.encode_params(None, schema, validate_props(schema, {"anything": [1]})) == {"anything": [1]}
