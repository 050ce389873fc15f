"""Connectors, one per vendor, imported lazily so a vendor's dependencies load only when used."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Connector

CONNECTORS: dict[str, str] = {
    "tencent": "gateway.connectors.tencent:TencentConnector",
    "coolkit": "gateway.connectors.coolkit:CoolkitConnector",
    "aliyun": "gateway.connectors.aliyun:AliyunConnector",
    "xky": "gateway.connectors.xky:XkyConnector",
}


def connector_class(vendor: str) -> type[Connector]:
    module, _, name = CONNECTORS[vendor].partition(":")
    cls: type[Connector] = getattr(importlib.import_module(module), name)
    return cls
