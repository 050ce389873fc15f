"""One gateway's membership of a cluster: between ``SlotLeases`` and the gateway's accounts.

``Cluster`` connects to NATS, opens (or creates) the two KV buckets, mirrors the tokens
(``KvTokenStore``) and runs the slot leases. A gained slot starts the configured accounts that
hash into it (``start_account``); a lost one stops them (``stop_account``) and returns once
their vendor sessions are closed, which is what self-fencing waits on. ``describe()`` is what
``bridge/info`` shows: this instance, the live instances, and which instance runs each account.
``router`` (routing.py) runs commands for accounts that run elsewhere on their owner.

Order matters at both ends: ``start()`` mirrors the tokens before the first lease round, so an
account that moves here finds the session its previous owner saved; ``stop()`` stops the
accounts and frees their slots (the others take them over at once, not after ``lease_ttl``),
then writes the last token saves, then closes the NATS connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import nats
from nats.errors import Error as NatsError
from nats.js.errors import BucketNotFoundError

from .kvtokens import KvTokenStore
from .leases import SlotLeases, slot_of
from .routing import CommandRouter

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.kv import KeyValue

    from ..config import AccountConfig, ClusterConfig

__all__ = ["LEASES_BUCKET", "TOKENS_BUCKET", "Cluster", "ClusterUnavailable", "open_bucket"]

log = logging.getLogger("cloud2mqtt.cluster")

LEASES_BUCKET = "c2m_leases"
TOKENS_BUCKET = "c2m_tokens"

AccountKey = tuple[str, str]


class ClusterUnavailable(ConnectionError):
    """NATS could not be reached (or JetStream is off) when the gateway started: without
    leases it must not run any account, so it does not start (``cloud2mqtt run`` exits 1)."""


async def open_bucket(nc: Client, bucket: str) -> KeyValue:
    """The KV bucket ``bucket`` (history 1), created when it is not there yet."""
    js = nc.jetstream()
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        return await js.create_key_value(bucket=bucket, history=1)


class Cluster:
    """See the module docstring. ``start_account`` / ``stop_account`` are the gateway's."""

    def __init__(
        self,
        config: ClusterConfig,
        accounts: list[AccountConfig],
        *,
        start_account: Callable[[AccountConfig], None],
        stop_account: Callable[..., Awaitable[None]],
        on_change: Callable[[], None] | None = None,
        command_timeout: float = 10.0,
    ) -> None:
        self.config = config
        self.instance_id = config.instance_id
        self.tokens = KvTokenStore()
        self._start_account = start_account
        self._stop_account = stop_account
        self._on_change = on_change
        self.by_slot: dict[int, list[AccountConfig]] = {}
        self._slot: dict[AccountKey, int] = {}
        for account in accounts:
            slot = slot_of(account.vendor, account.name, config.slots)
            self.by_slot.setdefault(slot, []).append(account)
            self._slot[account.vendor, account.name] = slot
        self.nc: Client | None = None
        self.leases: SlotLeases | None = None
        self._last_error = ""
        #: commands for accounts run elsewhere go to their owner (``router.serve(handler)``)
        self.router = CommandRouter(
            self.instance_id, accounts,
            owners=self.owner_lookup,
            live=self.live,
            timeout=command_timeout,
        )  # fmt: skip

    async def start(self) -> None:
        """Connect, mirror the tokens, start the lease rounds. Raises ``ClusterUnavailable``."""
        servers = ", ".join(self.config.servers)
        try:
            self.nc = await nats.connect(
                servers=self.config.servers,
                name=f"cloud2mqtt-{self.instance_id}",
                connect_timeout=5,
                # a few tries at start-up (else nats-py tries forever), then forever: a lost
                # NATS must not end the cluster membership for good
                max_reconnect_attempts=3,
                reconnect_time_wait=1,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
            )
            self.nc.options["max_reconnect_attempts"] = -1
            tokens_kv = await open_bucket(self.nc, TOKENS_BUCKET)
            leases_kv = await open_bucket(self.nc, LEASES_BUCKET)
        except (OSError, NatsError, TimeoutError) as exc:
            if self.nc is not None:
                await self.nc.close()
            raise ClusterUnavailable(
                f"cluster: cannot use NATS JetStream at {servers}: {type(exc).__name__} {exc}"
            ) from None
        await self.tokens.start(tokens_kv)
        await self.router.start(self.nc)
        self.leases = SlotLeases(
            leases_kv,
            self.instance_id,
            slots=self.config.slots,
            ttl=self.config.lease_ttl,
            max_releases=self.config.max_moves,
            on_gained=self._gained,
            on_lost=self._lost,
            on_change=self._on_change,
        )
        await self.leases.start()
        log.info(
            "cluster: %s joined (NATS %s, %d slots, lease %gs)", self.instance_id,
            servers, self.config.slots, self.config.lease_ttl,
        )  # fmt: skip

    async def stop(self) -> None:
        if self.leases is not None:
            await self.leases.stop()
        await self.router.stop()
        await self.tokens.close()
        if self.nc is not None:
            await self.nc.close()

    async def _on_error(self, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if text != self._last_error:  # nats-py reports every reconnect attempt
            log.warning("cluster: NATS: %s", text)
        self._last_error = text

    async def _on_disconnected(self) -> None:
        log.warning("cluster: disconnected from NATS; leases not renewed now are given up")

    async def _on_reconnected(self) -> None:
        self._last_error = ""
        log.info("cluster: reconnected to NATS")

    async def _gained(self, slot: int) -> None:
        for account in self.by_slot.get(slot, ()):
            self._start_account(account)

    async def _lost(self, slot: int) -> None:
        accounts = self.by_slot.get(slot, ())
        # Self-fencing: the sessions must be gone within the lease's margin; a connector's
        # graceful leave (a vendor logout) gets half of it, not the usual 5 s.
        within = self.leases.margin / 2 if self.leases is not None else 5.0
        await asyncio.gather(
            *(self._stop_account((a.vendor, a.name), close_timeout=within) for a in accounts)
        )

    def others_serve(self) -> bool:
        """Whether other instances serve the base topic: while running, from the last lease
        round; after ``stop()``, from a fresh read made once this instance had left."""
        if self.leases is None:
            return False
        if self.leases.started:
            return any(i != self.instance_id for i in self.leases.live())
        return bool(self.leases.others_at_stop)

    def owner_lookup(self) -> Callable[[str, str], str | None]:
        """Who runs ``(vendor, account)`` as of the last lease round (None: nobody now); the
        leases are read once, the lookup is cheap (the merged ``bridge/accounts``)."""
        owners = self.leases.owners() if self.leases is not None else {}
        slots = self.config.slots

        def owner(vendor: str, account: str) -> str | None:
            slot = self._slot.get((vendor, account))
            return owners.get(slot_of(vendor, account, slots) if slot is None else slot)

        return owner

    def live(self) -> list[str]:
        """The live instances as of the last lease round (this one included)."""
        return self.leases.live() if self.leases is not None else []

    def serving(self) -> bool:
        """Between ``start()`` and ``stop()``: the lease rounds run."""
        return self.leases is not None and self.leases.started

    def describe(self) -> dict[str, Any]:
        """``bridge/info``'s ``cluster``: who this is, who is live, who runs which account."""
        owners = self.leases.owners() if self.leases is not None else {}
        return {
            "instance": self.instance_id,
            "slots": self.config.slots,
            "lease_ttl": self.config.lease_ttl,
            "live": self.leases.live() if self.leases is not None else [],
            "held": self.leases.held() if self.leases is not None else [],
            "accounts": {
                f"{a.vendor}/{a.name}": owners.get(slot)
                for slot, accounts in sorted(self.by_slot.items())
                for a in accounts
            },
        }
