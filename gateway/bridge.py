"""``bridge/request/<command>``: the admin RPC, answered by ``gateway.commands``.

Built-in requests read the publisher's view (``health``, ``devices``, ``accounts``; in cluster
mode they are every instance's, merged: gateway/instances.py) or act on
one account through the supervisor's account control (``resync`` restarts the account's
session); any other request is routed to the named account's connector (vendor requests such
as XiakeCloud's ``multi_device``). An unknown request is answered with the list of known ones.

Other parts add their own requests with ``register`` (``options``: gateway/observability.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from protocols.model import CommandError, CommandResult

if TYPE_CHECKING:
    from .connectors.base import Connector
    from .publisher import Publisher
    from .registry import Registry

__all__ = ["AccountControl", "BridgeRequests"]

AccountKey = tuple[str, str]
Handler = Callable[[dict[str, Any]], Coroutine[Any, Any, CommandResult]]

log = logging.getLogger("cloud2mqtt.bridge")


class AccountControl(Protocol):
    """What the supervisor offers the bridge: the running accounts and their connectors."""

    def account_keys(self) -> list[AccountKey]: ...

    def connector(self, key: AccountKey) -> Connector | None: ...

    def restart_account(self, key: AccountKey) -> Coroutine[Any, Any, None]: ...


class BridgeRequests:
    BUILTIN: tuple[str, ...] = ("health", "devices", "accounts", "resync")

    def __init__(self, publisher: Publisher, registry: Registry, accounts: AccountControl) -> None:
        self.publisher = publisher
        self.registry = registry
        self.accounts = accounts
        self._handlers: dict[str, Handler] = {
            "health": self._health,
            "devices": self._devices,
            "accounts": self._accounts,
            "resync": self._resync,
        }

    def register(self, command: str, handler: Handler) -> Callable[[], None]:
        """Answer ``bridge/request/<command>`` with ``handler``; returns the unregister call."""
        self._handlers[command] = handler
        self.BUILTIN = (*self.BUILTIN, command)

        def unregister() -> None:
            if self._handlers.get(command) is handler:
                del self._handlers[command]
                self.BUILTIN = tuple(c for c in self.BUILTIN if c != command)

        return unregister

    async def handle(self, command: str, request: dict[str, Any]) -> CommandResult:
        handler = self._handlers.get(command)
        if handler is not None:
            return await handler(request)
        key = self._account_key(command, request)
        connector = self.accounts.connector(key)
        if connector is None:
            raise CommandError("offline", f"account {key[0]}/{key[1]} is not running")
        return await connector.request(command, request)

    async def _health(self, request: dict[str, Any]) -> CommandResult:
        return CommandResult.ok(self.publisher.health_view())

    async def _devices(self, request: dict[str, Any]) -> CommandResult:
        return CommandResult.ok({"devices": self.publisher.devices_view()})

    async def _accounts(self, request: dict[str, Any]) -> CommandResult:
        return CommandResult.ok({"accounts": self.publisher.accounts_view()})

    async def _resync(self, request: dict[str, Any]) -> CommandResult:
        key = self._account_key("resync", request)
        log.debug("resync of %s/%s requested", *key)
        await self.accounts.restart_account(key)
        return CommandResult.ok({"account": key[1], "vendor": key[0]})

    def _account_key(self, command: str, request: dict[str, Any]) -> AccountKey:
        account = request.get("account")
        vendor = request.get("vendor")
        if not isinstance(account, str):
            if command not in self.BUILTIN:
                raise CommandError(
                    "invalid",
                    f"unknown request {command!r}; known: {', '.join(self.BUILTIN)} "
                    'and vendor requests, which name an "account"',
                )
            raise CommandError("invalid", '"account" must name a configured account')
        matches = [
            k
            for k in self.accounts.account_keys()
            if k[1] == account and (vendor is None or k[0] == vendor)
        ]
        if not matches:
            raise CommandError("invalid", f"unknown account {account[:200]!r}")
        if len(matches) > 1:
            raise CommandError(
                "invalid", f'account {account!r} exists for several vendors: add "vendor"'
            )
        return matches[0]
