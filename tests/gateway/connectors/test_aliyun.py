"""Aliyun connector configuration (every bad value names its key) and its 429 breaker."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.connectors.aliyun import AliyunConnector, AliyunOptions, Breaker
from gateway.errors import ConfigError
from gateway.tokens import TokenStore
from protocols.model import VendorError
from tests.helpers import ManualClock, RecordingContext

BASE: dict[str, Any] = {
    "app_key": "k",
    "app_secret": "s",
    "product_key": "pk",
    "device_name": "dn",
    "device_secret": "ds",
    "iot_token": "tok",
}


def test_defaults() -> None:
    opts = AliyunConnector.parse_options(BASE, "accounts[0]")
    assert isinstance(opts, AliyunOptions)
    assert opts.tls and opts.port == 8883 and opts.host == "pk.iot-as-mqtt.cn-shanghai.aliyuncs.com"
    assert opts.api_url == "https://api.link.aliyun.com" and opts.keepalive == 60
    plain = AliyunConnector.parse_options({**BASE, "tls": False, "region": "ap-southeast-1"}, "a")
    assert plain.port == 1883 and plain.host == "pk.iot-as-mqtt.ap-southeast-1.aliyuncs.com"


@pytest.mark.parametrize(
    "change,key",
    [
        ({"app_secret": None}, "accounts[0].app_secret"),
        ({"device_secret": ""}, "accounts[0].device_secret"),
        ({"iot_token": None}, "accounts[0].iot_token"),
        ({"refresh_token": "r"}, "accounts[0].identity_id"),
        ({"api_url": "ftp://x"}, "accounts[0].api_url"),
        ({"mqtt_port": 70000}, "accounts[0].mqtt_port"),
        ({"keepalive": 10}, "accounts[0].keepalive"),
        ({"page_size": 500}, "accounts[0].page_size"),
        ({"tls": "yes"}, "accounts[0].tls"),
        ({"client_id": "a|b"}, "accounts[0].client_id"),
        ({"bogus": 1}, "accounts[0].bogus"),
    ],
)
def test_bad_values_name_their_key(change: dict[str, Any], key: str) -> None:
    raw = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        AliyunConnector.parse_options(raw, "accounts[0]")
    assert info.value.key == key


def test_refresh_only_account_is_valid() -> None:
    raw = {k: v for k, v in BASE.items() if k != "iot_token"}
    opts = AliyunConnector.parse_options({**raw, "refresh_token": "r", "identity_id": "i"}, "a")
    assert opts.iot_token is None and opts.refresh_token == "r"


def test_throttle_cap_defaults_to_two_minutes() -> None:
    opts = AliyunConnector.parse_options(BASE, "a")
    assert opts.throttle_cooldown == 60 and opts.throttle_cap == 120
    with pytest.raises(ConfigError) as info:
        AliyunConnector.parse_options({**BASE, "throttle_cap": 0}, "accounts[0]")
    assert info.value.key == "accounts[0].throttle_cap"


# ---------------------------------------------------------------------- the 429 breaker


def throttled(breaker: Breaker) -> bool:
    try:
        breaker.admit()
    except VendorError as exc:
        assert exc.code == "throttled"
        return True
    return False


def test_breaker_pause_doubles_up_to_its_cap() -> None:
    clock = ManualClock(1000.0)
    breaker = Breaker(60.0, cap=120.0, clock=clock)
    pauses = []
    for _ in range(4):
        breaker.trip()
        pauses.append(breaker.remaining())
        clock.now += breaker.remaining()
        assert breaker.admit() is True  # the half-open probe … which is throttled again
    assert pauses == [60.0, 120.0, 120.0, 120.0]  # not 60 → 120 → 240 → 480


def test_breaker_fails_fast_while_open() -> None:
    clock = ManualClock(1000.0)
    breaker = Breaker(60.0, clock=clock)
    assert breaker.admit() is False  # closed: a plain call, not a probe
    breaker.trip()
    assert throttled(breaker)
    clock.now += 59.9
    assert throttled(breaker) and breaker.remaining() > 0


def test_breaker_half_open_lets_one_probe_through_and_its_success_closes() -> None:
    clock = ManualClock(1000.0)
    breaker = Breaker(60.0, clock=clock)
    breaker.trip()
    clock.now += 60.0
    assert breaker.remaining() == 0
    assert breaker.admit() is True  # the probe
    assert throttled(breaker)  # the others fail fast while the probe is out
    breaker.success()
    assert breaker.admit() is False and breaker.admit() is False  # closed: every call goes
    breaker.trip()
    assert breaker.remaining() == 60.0  # a new episode starts from the base cooldown


def test_breaker_probe_without_a_verdict_lets_the_next_call_probe() -> None:
    clock = ManualClock(1000.0)
    breaker = Breaker(60.0, clock=clock)
    breaker.trip()
    clock.now += 60.0
    probe = breaker.admit()
    assert probe is True
    breaker.release(probe)  # timed out or cancelled: nothing learnt about the throttling
    assert breaker.admit() is True
    breaker.release(False)  # a plain call's release does not free the probe
    assert throttled(breaker)


# ---------------------------------------------------------------------- the token slot


def connector_with(saved: dict[str, Any] | None, **options: Any) -> AliyunConnector:
    store = TokenStore(None)
    slot = store.slot("aliyun", "a")
    if saved is not None:
        store.put("aliyun/a", saved)
    opts = AliyunConnector.parse_options({**BASE, **options}, "a")
    ctx = RecordingContext("aliyun", "a", slot)
    return AliyunConnector(opts, ctx, None)  # type: ignore[arg-type]  # no HTTP: nothing is called


def test_saved_tokens_are_used_only_for_the_credentials_they_came_from() -> None:
    identity = connector_with(None).token_identity()
    saved = {"identity": identity, "iot_token": "fresh", "refresh_token": "r2", "expires_ms": 5}
    c = connector_with(saved)
    assert (c.iot_token, c.refresh_token, c.token_expires_ms) == ("fresh", "r2", 5)
    other = connector_with(saved, iot_token="another-token")  # reconfigured: not its tokens
    assert (other.iot_token, other.token_expires_ms) == ("another-token", None)


def test_tokens_saved_before_the_session_base_still_load() -> None:
    identity = connector_with(None).token_identity()
    c = connector_with({"source": identity, "iot_token": "fresh", "expires_ms": 5})
    assert (c.iot_token, c.token_expires_ms) == ("fresh", 5)
