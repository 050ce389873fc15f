"""Slot leases: which instance of a cluster runs which accounts.

Theory of operation
-------------------
Accounts map onto ``slots`` fixed slots by a stable hash (``slot_of``: blake2b of
``vendor/account``; Python's ``hash()`` differs per process). Each slot is the key
``slot.<n>`` of a JetStream KV bucket (history 1) whose value says who holds it::

    {"owner": "<instance id>" | null, "incarnation": "<random, per process>", "expires": <epoch ms>}

and whose KV revision is the lease's fencing number: every write is a compare-and-set
(``create`` while the key is absent, ``update(last=revision)`` after), so two instances can
never both win one revision.

Every ``ttl/3`` an instance runs one round (``tick``):

1. renew its presence key ``instance.<id>`` (``{"expires": <epoch ms>, "incarnation": …}``,
   plus what ``presence()`` adds: the pacer's ``demand``): the live set is every instance whose
   presence has not expired, this one included; ``on_presence`` gets the others' values;
2. read every slot; renew each slot it holds with ``update(last=<its revision>)``;
3. fair share = ceil(slots / live instances). Below it, claim free slots (absent, or owner
   null) and then expired ones; above it, release slots, at most ``max_releases`` a round so
   that a joining instance does not move every account at once. Rebalancing is sticky: an
   instance holding no more than its fair share never gives a slot up.

No decision needs a shared clock. A holder counts its lease from the start of the round that
sent the claim or renewal whose confirmation it has (before that round read the presences: so an instance
that holds a slot read every presence less than ``ttl - margin`` ago, which the pacer's sharing
by demand relies on, gateway/rates.py); an observer counts a lease as expired once the slot's revision
has stayed the same for ``ttl`` from the moment *it* first saw that revision, which is later.
The wall-clock ``expires`` fields are for people reading the bucket and for the live set (a
fair share computed on a skewed clock is only less fair, never unsafe).

Self-fencing: a vendor cloud cannot check a fencing token, so only the holder can prevent two
logins to one account. When ``sent + ttl - margin`` passes without a newer confirmation (NATS
gone, a renewal stuck) a watchdog calls ``on_lost(slot)`` — which stops that slot's vendor
sessions — before any other instance could count the lease as expired. ``margin`` (default
``ttl/4``) is the time ``on_lost`` has to close the sessions.

One slot as this instance sees it:

=========  ==========================================  ========  ===========================
state      event                                       next      callback
=========  ==========================================  ========  ===========================
free       claim confirmed                             held      ``on_gained``
expired    claim confirmed (``update(last=rev)``)      held      ``on_gained``
held       renewal confirmed                           held      —
held       renewal refused (the revision moved)        other's   ``on_lost``
held       ``sent + ttl - margin`` passed unconfirmed  fenced    ``on_lost`` (watchdog)
held       above the fair share, chosen to release     free      ``on_lost``, then write free
held       ``stop()``                                  free      ``on_lost``, then write free
fenced     a late confirmation made it ours again      held      ``on_gained`` (next round)
=========  ==========================================  ========  ===========================

One slot count for the whole cluster
------------------------------------
Two instances with different ``slots`` would hash one account into different slots and both
run it. The count is therefore recorded in the bucket, under ``cluster.slots``
(``{"slots": <n>}``), and ``join()`` (before the first round) agrees with it or refuses:

1. write this instance's presence (so that a joiner deciding after this one sees it);
2. read the record. Absent: ``create`` it with this instance's count. Equal: confirm it with
   ``update(last=<its revision>)``. Different: refuse (``SlotCountMismatch``) while any other
   instance is live or any slot lease still names an owner; when none does (every instance
   stopped cleanly) the record is replaced, also by ``update(last=<its revision>)``;
3. a write that lost its compare-and-set means another joiner wrote in between: read again.

Every joiner writes the record after its presence, so of a confirming and a replacing joiner
the second to write finds the first's presence (or its count) and refuses. Each round reads the
record again; an instance whose count is no longer the recorded one (it was cut off while all
the others stopped and the count changed) releases every slot and claims none.

Cut off: when no round has succeeded for ``ttl`` and the instance holds no slot (the watchdog
fenced them all: NATS is unreachable from here), it is ``cut_off`` and calls ``on_cut_off(True)``
once; the first round that succeeds again calls ``on_cut_off(False)``. It runs no account then,
and its view of the others is stale: the gateway reports it (``bridge/state``) instead of
vouching for the cluster.

Time comes from ``clock`` (monotonic) and ``wall`` (epoch seconds), both injectable: the unit
tests drive ``tick()`` and ``fence()`` by hand on a manual clock instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError

from ..errors import ConfigError
from .kvtokens import escape_key, unescape_key
from .tasks import stop_tasks

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

__all__ = ["LEASES_BUCKET", "SLOTS_KEY", "SlotCountMismatch", "SlotLeases", "slot_of"]

log = logging.getLogger("cloud2mqtt.cluster")

LEASES_BUCKET = "c2m_leases"
#: the key of the leases bucket that records the cluster's slot count
SLOTS_KEY = "cluster.slots"

SlotCallback = Callable[[int], Awaitable[None]]


def slot_of(vendor: str, account: str, slots: int) -> int:
    """The slot of an account: the same on every instance, every run and every Python."""
    digest = hashlib.blake2b(f"{vendor}/{account}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % slots


class SlotCountMismatch(ConfigError):
    """This instance's ``cluster.slots`` is not the count the cluster runs with: it must not
    join (it would run accounts that run elsewhere). ``cloud2mqtt run`` prints it, exits 2."""

    def __init__(self, own: int, recorded: object, busy: str) -> None:
        super().__init__(
            "cluster.slots",
            f"this instance has slots = {own}, the cluster uses {recorded} (recorded in the "
            f"NATS KV bucket {LEASES_BUCKET}, key {SLOTS_KEY}; {busy}): every instance must "
            f"use the same number. Set slots = {recorded} here, or, to change the cluster's "
            "number, stop every instance, set the new number in every configuration and start "
            "them again (the first to start records it)",
        )
        self.own = own
        self.recorded = recorded


@dataclass(slots=True)
class _Lease:
    """A slot this instance holds: the revision it wrote and when it sent that write."""

    revision: int
    sent: float


@dataclass(slots=True)
class _Seen:
    """A slot as last read: its revision, its holder, and since when (local clock) that
    revision has been the one seen."""

    revision: int  # 0: the key is absent
    owner: str | None
    incarnation: str | None
    since: float


class SlotLeases:
    """This instance's slot leases in one KV bucket; see the module docstring."""

    def __init__(
        self,
        kv: KeyValue,
        instance_id: str,
        *,
        slots: int = 64,
        ttl: float = 15.0,
        margin: float | None = None,
        max_releases: int = 4,
        on_gained: SlotCallback,
        on_lost: SlotCallback,
        on_change: Callable[[], None] | None = None,
        on_cut_off: Callable[[bool], None] | None = None,
        presence: Callable[[], dict[str, Any]] | None = None,
        on_presence: Callable[[dict[str, dict[str, Any]]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if slots < 1 or ttl <= 0:
            raise ValueError("slots must be positive and ttl more than 0")
        self.kv = kv
        self.instance_id = instance_id
        self.incarnation = secrets.token_hex(8)
        self.slots = slots
        self.ttl = ttl
        self.margin = ttl / 4 if margin is None else margin
        self.interval = ttl / 3
        #: each KV call gives up after this long; a stuck one is the watchdog's business
        self.op_timeout = max(0.2, ttl / 6)
        self.max_releases = max_releases
        self.on_gained = on_gained
        self.on_lost = on_lost
        self.on_change = on_change
        self.on_cut_off = on_cut_off
        #: more fields for this instance's presence value, and who reads the others' each round
        self.presence = presence
        self.on_presence = on_presence
        self._presences: dict[str, dict[str, Any]] = {}
        #: when (``clock``) a round last succeeded (``join()`` counts as one)
        self._last_ok = clock()
        self._cut_off = False
        self.clock = clock
        self.wall = wall
        self._held: dict[int, _Lease] = {}
        #: slots the watchdog gave up, with when (``clock``) their leases would have expired
        self.fenced: dict[int, float] = {}
        self._seen: dict[int, _Seen] = {}
        self._live: list[str] = [instance_id]
        self._tasks: list[asyncio.Task[None]] = []
        #: after ``stop()``: the other instances still live then (unknown: assumed none)
        self.others_at_stop: list[str] = []
        self._wake = asyncio.Event()
        self._rounds = 0
        #: slots gained and given up, by how (``claimed``, ``released``, ``taken_over``,
        #: ``fenced``), and lease rounds that failed: for /metrics
        self.changes: Counter[str] = Counter()
        self.round_failures = 0
        #: the slot count the bucket records when it is not this instance's (None: it is)
        self.mismatch: object = None

    # ------------------------------------------------------------------ what it knows

    def held(self) -> list[int]:
        return sorted(self._held)

    @property
    def cut_off(self) -> bool:
        """No round has succeeded for ``ttl`` and no slot is held (see the module docstring)."""
        return self._cut_off

    @property
    def started(self) -> bool:
        """Between ``start()`` and ``stop()``: the lease rounds run."""
        return bool(self._tasks)

    def live(self) -> list[str]:
        """The instances counted in the last round's fair share (this one included)."""
        return list(self._live)

    def fair_share(self) -> int:
        return math.ceil(self.slots / max(1, len(self._live)))

    def expiry(self, slot: int) -> float | None:
        """When this instance's lease on ``slot`` runs out (``clock`` time), or None."""
        lease = self._held.get(slot)
        return lease.sent + self.ttl if lease is not None else None

    def owners(self) -> dict[int, str | None]:
        """Every slot's holder as last read (this instance's own slots as it holds them)."""
        out = {n: (s.owner if s.revision else None) for n, s in self._seen.items()}
        for n in range(self.slots):
            out.setdefault(n, None)
            if out[n] == self.instance_id and n not in self._held:
                out[n] = None  # fenced or released: not running here
        out.update(dict.fromkeys(self._held, self.instance_id))
        return out

    # ------------------------------------------------------------------ running

    async def start(self) -> None:
        """Run rounds and the self-fencing watchdog in the background."""
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run_rounds(), name="cluster-leases"),
            loop.create_task(self._run_watchdog(), name="cluster-fencing"),
        ]

    async def join(self) -> None:
        """Announce this instance and agree on the slot count (module docstring, "One slot
        count"). Raises ``SlotCountMismatch`` (after withdrawing the presence) when this
        instance's count is not the cluster's, and NATS errors when the bucket cannot be used."""
        twin = await self._twin()
        await self._op(self.kv.put(self._presence_key, self._value(expires_only=True)))
        try:
            while not await self._agree_on_slots(twin):
                pass  # another joiner wrote the record in between: read it again
        except SlotCountMismatch:
            if not twin:  # a twin's presence stays (it rewrites it every round anyway)
                with contextlib.suppress(NatsError, TimeoutError):
                    await self._op(self.kv.delete(self._presence_key))
            raise
        self._last_ok = self.clock()

    async def _twin(self) -> str:
        """Another live process under this instance id (a misconfiguration), read before this
        one's presence replaces its own: "" when there is none."""
        try:
            value = _loads((await self._op(self.kv.get(self._presence_key))).value)
        except KeyNotFoundError:
            return ""
        expires = value.get("expires")
        if value.get("incarnation") == self.incarnation or not isinstance(expires, (int, float)):
            return ""
        return f"running: {self.instance_id} (another process)" if expires > self.wall() * 1000 else ""

    async def _agree_on_slots(self, twin: str) -> bool:
        """One read and one compare-and-set of the record; False when the write lost."""
        mine = orjson.dumps({"slots": self.slots})
        try:
            entry = await self._op(self.kv.get(SLOTS_KEY))
        except KeyNotFoundError:
            try:
                await self._op(self.kv.create(SLOTS_KEY, mine))
            except KeyWrongLastSequenceError:
                return False
            log.info("cluster: recorded slots = %d for the cluster", self.slots)
            return True
        recorded = _loads(entry.value).get("slots")
        if recorded != self.slots:
            busy = twin or await self._busy()
            if busy:
                raise SlotCountMismatch(self.slots, recorded, busy)
        try:
            await self._op(self.kv.update(SLOTS_KEY, mine, entry.revision))
        except KeyWrongLastSequenceError:
            return False
        if recorded != self.slots:
            log.warning(
                "cluster: the cluster's slot count changes from %s to %d (no instance was "
                "running); every instance must now use slots = %d", recorded, self.slots, self.slots,
            )  # fmt: skip
        return True

    async def _busy(self) -> str:
        """Why the recorded slot count cannot change now ("" when it can): other live
        instances, or slot leases that still name an owner."""
        await self._read_live()
        others = [i for i in self._live if i != self.instance_id]
        if others:
            return f"running: {', '.join(others)}"
        holders = set()
        for key in await self._keys():
            if key.startswith("slot."):
                with contextlib.suppress(KeyNotFoundError):
                    owner = _loads((await self._op(self.kv.get(key))).value).get("owner")
                    if isinstance(owner, str):
                        holders.add(owner)
        if holders:
            return (
                f"slot leases still name {', '.join(sorted(holders))}, which did not stop "
                f"cleanly; once none of them runs, 'nats kv rm {LEASES_BUCKET}' clears them"
            )
        return ""

    async def stop(self) -> None:
        """Stop the rounds, stop every held slot's accounts (``on_lost``), then free the
        slots and withdraw the presence key so that the others take over at once."""
        await stop_tasks(self._tasks)  # nats-py can swallow a cancellation (tasks.py)
        self._tasks = []
        for slot in sorted(self._held):
            await self._release(slot)
        with contextlib.suppress(NatsError, TimeoutError):
            async with asyncio.timeout(self.op_timeout):
                await self.kv.delete(self._presence_key)
        # Who is still live, read after this instance's presence is gone: of instances that
        # stop at the same time, the last to read sees no one left (the gateway publishes
        # bridge/state offline only then).
        with contextlib.suppress(NatsError, TimeoutError):
            await self._read_live()
            self.others_at_stop = [i for i in self._live if i != self.instance_id]

    async def _run_rounds(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.round_failures += 1
                log.warning("cluster lease round failed: %s: %s", type(exc).__name__, exc)
            else:
                self._last_ok = self.clock()
            self._wake.set()  # the watchdog recomputes its deadline
            self._check_cut_off()
            await asyncio.sleep(self.interval)

    def _check_cut_off(self) -> None:
        cut_off = not self._held and self.clock() - self._last_ok >= self.ttl
        if cut_off == self._cut_off:
            return
        self._cut_off = cut_off
        if cut_off:
            log.warning(
                "cluster: no lease round has succeeded for %.0fs (NATS unreachable from here): "
                "this instance runs no account until it reaches NATS again", self.clock() - self._last_ok,
            )  # fmt: skip
        else:
            log.info("cluster: lease rounds succeed again")
        if self.on_cut_off is not None:
            self.on_cut_off(cut_off)

    async def _run_watchdog(self) -> None:
        while True:
            await self.fence()
            deadlines = [lease.sent + self.ttl - self.margin for lease in self._held.values()]
            wait = min(deadlines, default=self.clock() + self.interval) - self.clock()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, min(wait, self.interval))):
                    await self._wake.wait()

    async def fence(self) -> list[int]:
        """Give up every slot whose lease could no longer be counted on: ``on_lost`` for each
        one whose ``sent + ttl - margin`` has passed. Returns those slots."""
        now = self.clock()
        overdue = [
            s for s, lease in self._held.items() if now >= lease.sent + self.ttl - self.margin
        ]
        for slot in overdue:
            lease = self._held.pop(slot)
            self.fenced[slot] = lease.sent + self.ttl
            self.changes["fenced"] += 1
            log.warning(
                "cluster: no confirmed renewal of slot %d for %.1fs; stopping its accounts "
                "before the lease can expire", slot, now - lease.sent,
            )  # fmt: skip
            await self._call(self.on_lost, slot)
        if overdue and self.on_change is not None:
            self.on_change()
        return overdue

    # ------------------------------------------------------------------ one round

    async def tick(self) -> None:
        """One round: presence, read, renew, then claim or release towards the fair share."""
        before = self.owners(), set(self._live)
        started = self.clock()
        await self._op(self.kv.put(self._presence_key, self._value(expires_only=True)))
        await self._read_live()
        if self.on_presence is not None:
            self.on_presence(dict(self._presences))
        await self._read_slots()
        for slot in sorted(self._held):
            await self._renew(slot, started)
        self._rounds += 1
        fair = self.fair_share()
        if not await self._check_slot_count():
            pass  # not this cluster's slot count: hold nothing (released above)
        elif len(self._held) > fair:
            extra = sorted(self._held, key=self._preference, reverse=True)
            for slot in extra[: min(self.max_releases, len(self._held) - fair)]:
                await self._release(slot)
        elif len(self._held) < fair and self._rounds > 1:
            # From the second round on: the first one only announces this instance, so that
            # instances started together see each other before they claim.
            for slot in self._claimable()[: fair - len(self._held)]:
                await self._claim(slot, started)
        if self.on_change is not None and (self.owners(), set(self._live)) != before:
            self.on_change()  # who owns what, or who is live (the pacer shares by that)

    def _claimable(self) -> list[int]:
        now = self.clock()
        free, expired = [], []
        for n in range(self.slots):
            if n in self._held:
                continue
            seen = self._seen.get(n)
            if seen is None or seen.revision == 0 or seen.owner is None:
                free.append(n)
            elif seen.owner == self.instance_id and seen.incarnation == self.incarnation:
                free.append(n)  # ours after all: a renewal confirmed after the watchdog fired
            elif now - seen.since >= self.ttl:
                expired.append(n)
        return sorted(free, key=self._preference) + sorted(expired, key=self._preference)

    def _preference(self, slot: int) -> bytes:
        """Each instance's own order of the slots, so that two claiming at once mostly try
        different slots (and release the ones they would claim last)."""
        return hashlib.blake2b(f"{self.instance_id}/{slot}".encode(), digest_size=8).digest()

    async def _read_live(self) -> None:
        now_ms = self.wall() * 1000
        live = {self.instance_id}
        presences: dict[str, dict[str, Any]] = {}
        for key in (k for k in await self._keys() if k.startswith("instance.")):
            with contextlib.suppress(KeyNotFoundError):
                entry = await self._op(self.kv.get(key))
                value = _loads(entry.value)
                if isinstance(value.get("expires"), (int, float)) and value["expires"] > now_ms:
                    instance = unescape_key(key.removeprefix("instance."))
                    live.add(instance)
                    if instance != self.instance_id:
                        presences[instance] = value
        self._live = sorted(live)
        self._presences = presences

    async def _keys(self) -> list[str]:
        try:
            keys: list[str] = await self._op(self.kv.keys())  # its filters are substrings
        except NoKeysError:
            keys = []
        return keys

    async def _check_slot_count(self) -> bool:
        """Whether the bucket still records this instance's slot count (recreating the record
        when it was deleted); when not, say so once and give up every slot."""
        try:
            entry = await self._op(self.kv.get(SLOTS_KEY))
            recorded = _loads(entry.value).get("slots")
        except KeyNotFoundError:
            with contextlib.suppress(KeyWrongLastSequenceError):
                await self._op(self.kv.create(SLOTS_KEY, orjson.dumps({"slots": self.slots})))
            return True  # a lost race is read next round
        if recorded == self.slots:
            self.mismatch = None
            return True
        if self.mismatch is None or self.mismatch != recorded:
            log.error(
                "cluster.slots: the cluster now uses slots = %s, this instance %d; it releases "
                "its slots and runs no account until restarted with slots = %s",
                recorded, self.slots, recorded,
            )  # fmt: skip
        self.mismatch = recorded
        for slot in sorted(self._held):
            await self._release(slot)
        return False

    async def _read_slots(self) -> None:
        async def read(n: int) -> None:
            try:
                entry = await self._op(self.kv.get(self._key(n)))
            except KeyNotFoundError:
                revision, value = 0, {}
            else:
                revision, value = entry.revision or 0, _loads(entry.value)
            seen = self._seen.get(n)
            if seen is None or seen.revision != revision:
                owner = value.get("owner")
                self._seen[n] = _Seen(
                    revision,
                    owner if isinstance(owner, str) else None,
                    value.get("incarnation"),
                    self.clock(),
                )

        await asyncio.gather(*(read(n) for n in range(self.slots)))

    async def _renew(self, slot: int, sent: float) -> None:
        """Renew a held slot; ``sent``: when this round started (the lease counts from then)."""
        lease = self._held.get(slot)
        if lease is None:
            return
        try:
            revision = await self._op(
                self.kv.update(self._key(slot), self._value(), lease.revision)
            )
        except KeyWrongLastSequenceError:
            if self._held.pop(slot, None) is not None:
                self.changes["taken_over"] += 1
                log.warning("cluster: slot %d was taken over; stopping its accounts", slot)
                await self._call(self.on_lost, slot)
            return
        except (NatsError, TimeoutError) as exc:
            log.warning("cluster: renewing slot %d failed (%s)", slot, type(exc).__name__)
            return
        if slot in self._held:  # not fenced meanwhile
            self._held[slot] = _Lease(revision, sent)
        self._seen[slot] = _Seen(revision, self.instance_id, self.incarnation, self.clock())

    async def _claim(self, slot: int, sent: float) -> None:
        """Claim a free or expired slot; ``sent``: when this round started (as ``_renew``)."""
        seen = self._seen.get(slot)
        try:
            if seen is None or seen.revision == 0:
                revision = await self._op(self.kv.create(self._key(slot), self._value()))
            else:
                revision = await self._op(
                    self.kv.update(self._key(slot), self._value(), seen.revision)
                )
        except (NatsError, TimeoutError) as exc:
            log.debug("cluster: claiming slot %d lost the race (%s)", slot, type(exc).__name__)
            return
        self._held[slot] = _Lease(revision, sent)
        self._seen[slot] = _Seen(revision, self.instance_id, self.incarnation, self.clock())
        self._wake.set()
        self.changes["claimed"] += 1
        log.info("cluster: %s holds slot %d", self.instance_id, slot)
        await self._call(self.on_gained, slot)

    async def _release(self, slot: int) -> None:
        lease = self._held.pop(slot, None)
        if lease is None:
            return
        await self._call(self.on_lost, slot)  # the sessions stop before anyone may take over
        self.changes["released"] += 1
        log.info("cluster: %s releases slot %d", self.instance_id, slot)
        free = orjson.dumps({"owner": None, "released_by": self.instance_id})
        try:
            revision = await self._op(self.kv.update(self._key(slot), free, lease.revision))
        except (NatsError, TimeoutError):
            return  # it expires instead
        self._seen[slot] = _Seen(revision, None, None, self.clock())

    # ------------------------------------------------------------------ helpers

    @property
    def _presence_key(self) -> str:
        return f"instance.{escape_key(self.instance_id)}"

    @staticmethod
    def _key(slot: int) -> str:
        return f"slot.{slot}"

    def _value(self, *, expires_only: bool = False) -> bytes:
        expires = int((self.wall() + self.ttl) * 1000)
        if expires_only:
            extra = self.presence() if self.presence is not None else {}
            return orjson.dumps({**extra, "expires": expires, "incarnation": self.incarnation})
        return orjson.dumps(
            {"owner": self.instance_id, "incarnation": self.incarnation, "expires": expires}
        )

    async def _op(self, call: Awaitable[Any]) -> Any:
        async with asyncio.timeout(self.op_timeout):
            return await call

    async def _call(self, callback: SlotCallback, slot: int) -> None:
        try:
            await callback(slot)
        except Exception:
            log.exception("cluster: callback for slot %d failed", slot)


def _loads(raw: bytes | None) -> dict[str, Any]:
    try:
        value = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
