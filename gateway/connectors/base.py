"""What a connector is, and what the gateway offers it.

A connector owns one vendor account: it logs in, lists devices, holds the push channel and
carries commands. It knows its vendor and nothing else; everything it learns goes through its
``AccountContext`` (already bound to vendor and account), which feeds the registry and the MQTT
publisher. The gateway never looks inside a connector.

Contract:
- ``run()`` runs until cancelled. It reconnects by itself (``gateway.backoff.Backoff``) and after
  every (re)connect calls ``ctx.devices(...)`` with the *complete* device list and pushes a full
  state snapshot, because pushes sent during the gap are lost.
- ``set``/``get``/``action`` receive values already validated and normalized against the device
  schema; they denormalize for the vendor, and return a ``CommandResult`` or raise
  ``CommandError``/``VendorError``. The gateway applies the reply timeout around them.
- Bad input from the vendor is reported with ``ctx.bad_input`` (counted and logged with vendor,
  account and device) and skipped; it never ends ``run()``.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

import aiohttp

from protocols.model import CommandResult

from ..link import AccountContext, LinkState

__all__ = ["AccountContext", "Connector", "LinkState"]

class Connector(abc.ABC):
    vendor: ClassVar[str]

    def __init__(self, options: Any, ctx: AccountContext, http: aiohttp.ClientSession) -> None:
        self.options = options
        self.ctx = ctx
        self.http = http

    @classmethod
    @abc.abstractmethod
    def parse_options(cls, raw: Mapping[str, Any], key: str) -> Any:
        """Validate this vendor's account keys; raise ``ConfigError`` naming ``{key}.<field>``."""

    @abc.abstractmethod
    async def run(self) -> None: ...

    async def set(self, device: str, props: dict[str, Any]) -> CommandResult:
        return CommandResult.error("invalid", f"{self.vendor} devices cannot be set")

    async def get(self, device: str, props: list[str]) -> CommandResult:
        return CommandResult.error("invalid", f"{self.vendor} devices cannot be read on demand")

    async def action(self, device: str, action: str, params: dict[str, Any]) -> CommandResult:
        return CommandResult.error("invalid", f"{self.vendor} devices have no actions")

    async def request(self, command: str, payload: Mapping[str, Any]) -> CommandResult:
        """A vendor-specific ``bridge/request/<command>`` routed to this account."""
        return CommandResult.error("invalid", f"unknown request {command!r} for {self.vendor}")

    async def close(self) -> None:
        """Leave cleanly (unbind, logout) on shutdown; ``run()`` is already cancelled.

        Optional: a vendor with nothing to say goodbye to keeps this default.
        """
        return None
