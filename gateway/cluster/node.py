"""One gateway's membership of a cluster: between ``SlotLeases`` and the gateway's accounts.

``Cluster`` connects to NATS, opens (or creates) the two KV buckets, mirrors the tokens
(``KvTokenStore``) and runs the slot leases. A gained slot starts the configured accounts that
hash into it (``start_account``); a lost one stops them (``stop_account``) and returns once
their vendor sessions are closed, which is what self-fencing waits on. ``describe()`` is what
``bridge/info`` shows: this instance, the live instances, and which instance runs each account.
``router`` (routing.py) runs commands for accounts that run elsewhere on their owner.

``start()`` authenticates as ``[cluster]`` says (a .creds file, an nkey seed, a token, a user
and password, or what the URLs carry), over TLS when asked, and agrees with the bucket on the
slot count (``SlotLeases.join``) before anything else. No log line, error or ``repr`` shows a
secret: the servers are shown without their userinfo, and NATS's error texts are scrubbed of
the configured token and passwords.

Order matters at both ends: ``start()`` mirrors the tokens before the first lease round, so an
account that moves here finds the session its previous owner saved; ``stop()`` stops the
accounts and frees their slots (the others take them over at once, not after ``lease_ttl``),
then writes the last token saves, then closes the NATS connection.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from nats.aio.client import Client
from nats.errors import AuthorizationError, NoServersError
from nats.errors import Error as NatsError
from nats.js.errors import BucketNotFoundError

from ..redact import REDACTED, redact_value
from .kvtokens import KvTokenStore
from .leases import LEASES_BUCKET, SlotCountMismatch, SlotLeases, slot_of
from .routing import CommandRouter
from .tasks import stop_tasks
from .view import LeaseView, read_view

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

    from ..config import AccountConfig, ClusterConfig
    from ..rates import Pacer

__all__ = ["LEASES_BUCKET", "TOKENS_BUCKET", "Cluster", "ClusterUnavailable", "open_bucket"]

log = logging.getLogger("cloud2mqtt.cluster")

TOKENS_BUCKET = "c2m_tokens"

AccountKey = tuple[str, str]


class ClusterUnavailable(ConnectionError):
    """NATS could not be reached, refused the credentials or the TLS handshake, or JetStream is
    off, when the gateway started: without leases it must not run any account, so it does not
    start (``cloud2mqtt run`` prints the one line and exits 1)."""


class TlsMissing(NatsError):
    """``[cluster]`` asks for TLS and the server did not require it. nats-py upgrades to TLS
    only when the server's INFO requires it, and would otherwise go on in plain text; the
    connection is refused instead, before a token or password is sent (they are handed to
    nats-py as callables that check first)."""

    def __str__(self) -> str:
        return "the server offers no TLS"


def _tls_required(nc: Client) -> bool:
    """Whether the server's INFO required TLS, so that nats-py upgraded (or failed). nats-py
    2.x keeps that INFO only in ``_server_info``: nothing public says whether TLS is on."""
    info = getattr(nc, "_server_info", None)
    return isinstance(info, dict) and info.get("tls_required") is True


def connect_options(config: ClusterConfig) -> dict[str, Any]:
    """``nats.connect`` keywords for the credentials and TLS of ``[cluster]`` (the config
    check allows one way to authenticate)."""
    options: dict[str, Any] = {}
    if config.credentials:
        options["user_credentials"] = config.credentials
    elif config.nkey_seed:
        options["nkeys_seed"] = config.nkey_seed
    elif config.token:
        options["token"] = config.token
    elif config.user:
        options.update(user=config.user, password=config.password)
    tls = config.ssl_context()
    if tls is not None:
        options["tls"] = tls
    return options


def _only_over_tls(nc: Client, secret: str) -> Callable[[], str]:
    """``secret`` as nats-py takes a credential callback: asked for while it writes CONNECT,
    after the TLS upgrade, it refuses when the server did not require TLS."""

    def give() -> str:
        if not _tls_required(nc):
            raise TlsMissing()
        return secret

    return give


def _refused(exc: BaseException) -> bool:
    return isinstance(exc, AuthorizationError) or "authorization violation" in str(exc).lower()


def _cause(errors: list[BaseException]) -> BaseException:
    """What a failed start says: a refused TLS handshake or authentication if one happened
    (the server then closes, and the next read may see only a reset), else the last error
    that is not nats-py's closing "no servers"."""
    for wanted in (ssl.SSLError, TlsMissing, _refused):
        for exc in errors:
            if isinstance(exc, wanted) if isinstance(wanted, type) else wanted(exc):
                return exc
    told = [exc for exc in errors if not isinstance(exc, NoServersError)]
    return told[-1] if told else errors[-1]


def _secrets(config: ClusterConfig) -> list[str]:
    """The configured NATS secrets, longest first: the token, the password, and each URL's
    password or token (a lone ``token@``)."""
    found = [config.token or "", config.password or ""]
    for url in config.servers:
        parts = urlsplit(url)
        secret = parts.password or parts.username or ""
        found += [secret, unquote(secret)]
    return sorted({s for s in found if s}, key=len, reverse=True)


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
        on_cut_off: Callable[[bool], None] | None = None,
        pacer: Pacer | None = None,
        command_timeout: float = 10.0,
    ) -> None:
        self.config = config
        self.instance_id = config.instance_id
        self.tokens = KvTokenStore()
        self._start_account = start_account
        self._stop_account = stop_account
        self._on_change = on_change
        self._on_cut_off = on_cut_off
        #: ``shared_egress``: the pacer whose demand each lease round publishes and shares by
        self._pacer = pacer
        self.bad_demands = 0  # peers' presence values whose demand was not a table of counts
        self._bad_peers: set[str] = set()
        self.by_slot: dict[int, list[AccountConfig]] = {}
        self._slot: dict[AccountKey, int] = {}
        for account in accounts:
            slot = slot_of(account.vendor, account.name, config.slots)
            self.by_slot.setdefault(slot, []).append(account)
            self._slot[account.vendor, account.name] = slot
        self.nc: Client | None = None
        self.leases: SlotLeases | None = None
        self._last_error = ""
        #: the errors nats-py reported while connecting (its own final one says less)
        self._start_errors: list[BaseException] = []
        self._fatal = asyncio.Event()
        self._joined = False
        self._secrets = _secrets(config)
        #: the servers as logs show them: no userinfo
        self.servers_shown = ", ".join(redact_value(url) for url in config.servers)
        #: commands for accounts run elsewhere go to their owner (``router.serve(handler)``)
        self.router = CommandRouter(
            self.instance_id, accounts,
            owners=self.owner_lookup,
            live=self.live,
            timeout=command_timeout,
        )  # fmt: skip

    def _presence(self) -> dict[str, Any]:
        assert self._pacer is not None
        return {"demand": self._pacer.demand()}

    def _share_by_demand(self, presences: dict[str, dict[str, Any]]) -> None:
        """Each lease round: the pacer shares the per-IP budgets by the live peers' demands
        (``None`` for a peer that publishes none: an older version, or a malformed one)."""
        assert self._pacer is not None
        demands: dict[str, dict[str, int] | None] = {}
        for peer, value in presences.items():
            demand = value.get("demand")
            if demand is not None and not (
                isinstance(demand, dict)
                and all(isinstance(v, int) and not isinstance(v, bool) for v in demand.values())
            ):
                self.bad_demands += 1
                if peer not in self._bad_peers:  # once per peer, not once a round
                    self._bad_peers.add(peer)
                    log.warning(
                        "cluster: instance %s publishes a malformed pacing demand (%.80r); "
                        "sharing the per-IP budgets equally", peer, demand,
                    )  # fmt: skip
                demand = None
            demands[peer] = demand
        self._pacer.share_by_demand(demands)

    async def start(self) -> None:
        """Connect, agree on the slot count, mirror the tokens, start the lease rounds. Raises
        ``ClusterUnavailable``, or ``SlotCountMismatch`` (a ``ConfigError``)."""
        try:
            self.nc = await self._connect(
                name=f"cloud2mqtt-{self.instance_id}",
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
            )
            self.nc.options["max_reconnect_attempts"] = -1
            tokens_kv = await open_bucket(self.nc, TOKENS_BUCKET)
            leases_kv = await open_bucket(self.nc, LEASES_BUCKET)
            self.leases = SlotLeases(
                leases_kv,
                self.instance_id,
                slots=self.config.slots,
                ttl=self.config.lease_ttl,
                max_releases=self.config.max_moves,
                on_gained=self._gained,
                on_lost=self._lost,
                on_change=self._on_change,
                on_cut_off=self._on_cut_off,
                presence=self._presence if self._pacer is not None else None,
                on_presence=self._share_by_demand if self._pacer is not None else None,
            )
            await self.leases.join()
        except SlotCountMismatch:
            await self._abandon()
            raise
        except Exception as exc:  # whatever stops the join: one line, never a traceback
            await self._abandon()
            raise ClusterUnavailable(self._start_failure(exc)) from None
        await self.tokens.start(tokens_kv)
        await self.router.start(self.nc)
        await self.leases.start()
        self._joined = True
        log.info(
            "cluster: %s joined (NATS %s, %d slots, lease %gs)", self.instance_id,
            self.servers_shown, self.config.slots, self.config.lease_ttl,
        )  # fmt: skip

    async def inspect(self) -> LeaseView:
        """``cloud2mqtt leases``: connect as ``start()`` does, read the lease bucket once
        (view.py), close. Joins nothing. Raises ``ClusterUnavailable`` (one line)."""
        nc: Client | None = None
        try:
            nc = await self._connect(name=f"cloud2mqtt-{self.instance_id}-leases")
            try:
                kv = await nc.jetstream().key_value(LEASES_BUCKET)
            except BucketNotFoundError:
                return LeaseView(self.config.slots, None, {}, {})  # no instance ever joined
            return await read_view(kv, self.config.slots)
        except Exception as exc:
            raise ClusterUnavailable(self._start_failure(exc)) from None
        finally:
            if nc is not None:
                await nc.close()

    async def _connect(self, **options: Any) -> Client:
        """``nats.connect`` with ``[cluster]``'s servers, credentials and TLS, a few tries at
        start-up (else nats-py tries for ever; ``start()`` then makes it for ever: a lost NATS
        must not end the membership for good), given up at once when a TLS handshake fails
        (nats-py 2.16 then waits for ever for the TLS socket to close) or, with ``tls``, when
        the server offers none (``TlsMissing``)."""
        options = {
            "servers": self.config.servers, "connect_timeout": 5, "max_reconnect_attempts": 3,
            "reconnect_time_wait": 1, "error_cb": self._on_error,
            **connect_options(self.config), **options,
        }  # fmt: skip
        self._start_errors = []
        self._fatal = asyncio.Event()
        nc = Client()
        # wss:// is TLS by itself; nats:// and tls:// get it only when the server's INFO asks
        insist = self.config.tls and not self.config.servers[0].startswith("wss://")
        if insist:
            for key in ("token", "user", "password"):
                if isinstance(options.get(key), str):
                    options[key] = _only_over_tls(nc, options[key])
        loop = asyncio.get_running_loop()
        connecting = loop.create_task(nc.connect(**options), name="cluster-connect")
        fatal = loop.create_task(self._fatal.wait(), name="cluster-connect-fatal")
        await asyncio.wait({connecting, fatal}, return_when=asyncio.FIRST_COMPLETED)
        await stop_tasks([fatal])
        if not connecting.done():
            await stop_tasks([connecting])
            raise self._start_errors[-1]
        connecting.result()
        if insist and not _tls_required(nc):  # no credentials to guard: still refused
            await nc.close()
            raise TlsMissing()
        return nc

    async def _abandon(self) -> None:
        """A failed start: close what it opened; ``stop()`` then has nothing to do."""
        self.leases = None
        if self.nc is not None:
            await self.nc.close()
            self.nc = None

    def _start_failure(self, exc: BaseException) -> str:
        """The one line that says why the join failed and which ``cluster.*`` key to look at."""
        exc = _cause([*self._start_errors, exc])
        where = f"NATS at {self.servers_shown}"
        if isinstance(exc, ssl.SSLCertVerificationError):
            return (
                f"cluster: {where}: the server's TLS certificate is not trusted "
                f"({exc.verify_message}); check cluster.tls_ca"
            )
        if isinstance(exc, TlsMissing):
            return (
                f"cluster: {where} offers no TLS, and cluster.tls asks for it (so do a tls:// "
                "URL and the cluster.tls_* files): configure TLS on the server (a tls {} block)"
            )
        if isinstance(exc, ssl.SSLError):
            return (
                f"cluster: TLS with {where} failed ({exc.reason or exc}); check cluster.tls_ca, "
                "cluster.tls_cert and cluster.tls_key"
            )
        if _refused(exc):
            keys = self.config.auth_keys()
            if keys:
                return f"cluster: {where} refused the authentication; check {keys}"
            return (
                f"cluster: {where} requires authentication; set cluster.user and "
                "cluster.password, cluster.token, cluster.credentials or cluster.nkey_seed"
            )
        return f"cluster: cannot use NATS JetStream at {self.servers_shown}: {self._describe(exc)}"

    def _describe(self, exc: BaseException) -> str:
        """``Type message``, with any configured secret replaced."""
        text = redact_value(f"{type(exc).__name__}: {exc}")
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    async def stop(self) -> None:
        self._joined = False
        if self.leases is not None:
            await self.leases.stop()
        await self.router.stop()
        await self.tokens.close()
        if self.nc is not None:
            await self.nc.close()

    async def _on_error(self, exc: Exception) -> None:
        if not self._joined:  # start-up: start() reports the cause once, as its error
            self._start_errors.append(exc)
            if isinstance(exc, ssl.SSLError | TlsMissing):
                self._fatal.set()
            return
        text = self._describe(exc)
        if text != self._last_error:  # nats-py reports every reconnect attempt
            log.warning("cluster: NATS: %s", text)
        self._last_error = text

    async def _on_disconnected(self) -> None:
        if not self._joined:
            return  # a failed start closing: start() says why
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
        """Between ``start()`` and ``stop()``, while the lease rounds run and succeed (not
        ``cut_off`` from NATS: then this instance runs nothing and its view is stale)."""
        leases = self.leases
        return leases is not None and leases.started and not leases.cut_off

    def cut_off(self) -> bool:
        """Joined, and NATS unreachable for a lease TTL: no account runs here (leases.py)."""
        return self.leases is not None and self.leases.cut_off

    def stats(self) -> dict[str, Any]:
        """This instance's cluster numbers for ``/metrics`` (gateway/consumers/metrics.py
        ``CLUSTER`` names each key); the lease counts start again with each ``start()``."""
        leases, router = self.leases, self.router
        return {
            "instances": len(leases.live()) if leases is not None else 0,
            "slots": self.config.slots,
            "slots_held": len(leases.held()) if leases is not None else 0,
            "nats_connected": int(self.nc is not None and self.nc.is_connected),
            "slot_changes": dict(leases.changes) if leases is not None else {},
            "lease_round_failures": leases.round_failures if leases is not None else 0,
            "routed": dict(router.routed),
            "peer_requests": router.served,
            "bad_demands": self.bad_demands,
        }

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
