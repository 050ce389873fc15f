"""The one list of vendors.

Each entry names, by import path only, the parts a vendor consists of: its sans-I/O protocol
package, its connector class, its emulator module and the seed it follows. Nothing is imported
here, so reading the list (``cloud2mqtt --help``, ``check-config``) costs nothing and never
loads an emulator. The CLI, the demo, the configuration, packaging checks and the contract
tests all read this list.

Adding a vendor: write ``protocols/<vendor>/``, ``gateway/connectors/<vendor>.py`` and
``emulators/<vendor>/``, then add one ``Vendor`` line below. The contract suite
(``tests/contract/``) then runs for it on both event loops.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .connectors.base import Connector

__all__ = ["VENDORS", "Vendor", "connector_class", "emulator_module", "vendor"]


@dataclass(frozen=True, slots=True)
class Vendor:
    """One vendor: what it is called and where its parts live (import paths, not imports)."""

    #: the ``vendor`` key of ``[[accounts]]`` and the second level of the topic tree
    name: str
    #: a human-readable name (manufacturer in Home Assistant, the CLI's help)
    title: str
    #: the sans-I/O protocol package
    protocol: str
    #: ``module:Class`` of the connector
    connector: str
    #: the emulator module (``add_arguments``, ``serve``, ``demo_cloud``)
    emulator: str
    #: the seed documents it follows (``../shared/seeds``)
    seeds: tuple[str, ...]


VENDORS: Final[dict[str, Vendor]] = {
    v.name: v
    for v in (
        Vendor("tencent", "Tencent IoT Explorer", "protocols.tencent",
               "gateway.connectors.tencent:TencentConnector", "emulators.tencent", ("002",)),
        Vendor("coolkit", "CoolKit / eWeLink", "protocols.coolkit",
               "gateway.connectors.coolkit:CoolkitConnector", "emulators.coolkit", ("001", "003")),
        Vendor("aliyun", "Aliyun Living IoT", "protocols.aliyun",
               "gateway.connectors.aliyun:AliyunConnector", "emulators.aliyun", ("004",)),
        Vendor("xky", "XiakeCloud", "protocols.xky",
               "gateway.connectors.xky:XkyConnector", "emulators.xky", ("000",)),
    )
}  # fmt: skip


def vendor(name: str) -> Vendor:
    """The vendor called ``name``; ``KeyError`` when there is none."""
    return VENDORS[name]


def connector_class(name: str) -> type[Connector]:
    """Import and return the connector class of vendor ``name``."""
    module, _, attr = VENDORS[name].connector.partition(":")
    cls: type[Connector] = getattr(importlib.import_module(module), attr)
    return cls


def emulator_module(name: str) -> ModuleType:
    """Import the emulator of vendor ``name`` (only ``simulate``, ``demo`` and tests do)."""
    return importlib.import_module(VENDORS[name].emulator)
