"""Aliyun connector configuration: every bad value names its key."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.connectors.aliyun import AliyunConnector, AliyunOptions
from gateway.errors import ConfigError

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
