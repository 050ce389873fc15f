"""Slot leases (gateway/cluster/leases.py) against a real nats-server.

The rounds are driven by hand on a manual clock (``tick()``, ``fence()``) where the timing is
the point; the tests of a stopped, disconnected or killed server run in real time with a short
lease, waiting with ``eventually()``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from gateway.cluster.leases import SLOTS_KEY, SlotCountMismatch, SlotLeases, slot_of
from gateway.cluster.node import LEASES_BUCKET, open_bucket
from tests.helpers import ManualClock, eventually

SLOTS = 64


def test_slot_of_is_stable_and_spread():
    # fixed values (blake2b, not hash()): the same on every instance, run and Python
    assert slot_of("tencent", "home", 64) == 26
    assert slot_of("coolkit", "x.y", 1024) == 144
    used = {slot_of("coolkit", f"acct{i}", 64) for i in range(1000)}
    assert used == set(range(64))


class Member:
    """One instance's leases plus what its callbacks saw."""

    def __init__(self, leases: SlotLeases) -> None:
        self.leases = leases
        self.gained: list[int] = []
        self.lost: list[int] = []

    @property
    def held(self) -> set[int]:
        return set(self.leases.held())


@pytest.fixture
async def member(nats_client: Callable[..., Any]) -> Callable[..., Any]:
    made: list[Member] = []

    async def make(name: str, **kwargs: Any) -> Member:
        nc = await nats_client()
        kv = await open_bucket(nc, LEASES_BUCKET)
        member: Member

        async def gained(slot: int) -> None:
            member.gained.append(slot)

        async def lost(slot: int) -> None:
            member.lost.append(slot)

        kwargs.setdefault("slots", SLOTS)
        member = Member(SlotLeases(kv, name, on_gained=gained, on_lost=lost, **kwargs))
        member.nc = nc  # type: ignore[attr-defined]
        made.append(member)
        return member

    yield make
    for m in made:
        for task in m.leases._tasks:
            task.cancel()


def manual(clock: ManualClock) -> dict[str, Any]:
    """A manual monotonic clock and a wall clock that moves with it."""
    return {"clock": clock, "wall": lambda: 1.7e9 + clock.now, "ttl": 3.0}


async def rounds(*members: Member, n: int = 1) -> None:
    for _ in range(n):
        for m in members:
            await m.leases.tick()
            others = [o for o in members if o is not m]
            for o in others:
                assert not (m.held & o.held), "a slot held by two instances"


async def test_two_instances_split_the_slots_fairly(member):
    clock = ManualClock()
    a, b = await member("a", **manual(clock)), await member("b", **manual(clock))
    await rounds(a, b)  # the first round only announces: nobody claims yet
    assert a.held == b.held == set()
    await rounds(a, b)
    assert len(a.held) == len(b.held) == SLOTS // 2
    assert a.held | b.held == set(range(SLOTS))
    assert sorted(a.gained) == sorted(a.held) and sorted(b.gained) == sorted(b.held)
    await rounds(a)  # a reads what b claimed after a's round
    owners = a.leases.owners()
    assert {s for s, o in owners.items() if o == "b"} == b.held
    await rounds(a, b, n=3)  # renewals change nothing
    assert len(a.held) == len(b.held) == SLOTS // 2 and not a.lost and not b.lost


async def test_a_joining_instance_takes_its_share_a_few_slots_a_round(member):
    clock = ManualClock()
    a = await member("a", max_releases=4, **manual(clock))
    await rounds(a, n=2)
    assert len(a.held) == SLOTS
    first = a.held
    b = await member("b", max_releases=4, **manual(clock))
    moved = 0
    for _ in range(SLOTS // 2 // 4 + 2):
        before = a.held
        await rounds(b, a)
        assert len(before - a.held) <= 4, "at most max_releases a round"
        assert a.held <= first, "sticky: a gives slots up, never swaps them"
        moved += len(before - a.held)
    assert len(a.held) == len(b.held) == SLOTS // 2
    assert moved == SLOTS // 2
    assert sorted(a.lost) == sorted(b.held)  # a stopped each slot's accounts before b got it


async def test_a_stopped_instance_hands_its_slots_over_at_once(member):
    clock = ManualClock()
    a, b = await member("a", **manual(clock)), await member("b", **manual(clock))
    await rounds(a, b, n=2)
    a_slots = a.held
    await a.leases.stop()
    assert sorted(a.lost) == sorted(a_slots)
    await rounds(b)  # no waiting for expiry: a freed its slots and withdrew its presence
    assert b.held == set(range(SLOTS))


async def test_a_vanished_instance_s_slots_move_only_after_the_lease_expires(member):
    clock = ManualClock()
    a, b = await member("a", **manual(clock)), await member("b", **manual(clock))
    await rounds(a, b, n=2)
    a_slots = a.held
    await a.nc.close()  # gone without a word
    clock.now += 2.9  # just short of the ttl
    await rounds(b)
    assert b.held.isdisjoint(a_slots)
    clock.now += 0.2  # b has seen the same revision for a whole ttl now
    await rounds(b)
    assert b.held == set(range(SLOTS))
    # and a, had it kept running, had fenced itself before then:
    assert set(await a.leases.fence()) == a_slots and sorted(a.lost) == sorted(a_slots)


async def test_the_watchdog_fences_before_expiry_on_a_manual_clock(member):
    clock = ManualClock()
    a = await member("a", **manual(clock))
    await rounds(a, n=2)
    slot = min(a.held)
    expiry = a.leases.expiry(slot)
    assert expiry == pytest.approx(clock.now + 3.0)
    clock.now = expiry - a.leases.margin - 0.01
    assert await a.leases.fence() == []
    clock.now += 0.02  # past expiry - margin: every lease is given up, none has expired yet
    assert set(await a.leases.fence()) == set(range(SLOTS))
    assert clock.now < expiry
    assert a.held == set()


# ---------------------------------------------------------------------------- one slot count


async def joined(member: Callable[..., Any], name: str, clock: ManualClock, slots: int) -> Member:
    """A member with ``slots`` that joined and has claimed its share (two rounds)."""
    m: Member = await member(name, **manual(clock), slots=slots)
    await m.leases.join()
    await rounds(m, n=2)
    return m


async def test_an_instance_with_another_slot_count_refuses_to_join(member):
    clock = ManualClock()
    a = await joined(member, "a", clock, slots=4)
    assert a.held == {0, 1, 2, 3}
    b = await member("b", **manual(clock), slots=8)
    with pytest.raises(SlotCountMismatch) as refused:
        await b.leases.join()
    message = str(refused.value)
    assert message.startswith("cluster.slots: this instance has slots = 8, the cluster uses 4")
    assert "running: a" in message and "stop every instance" in message and "\n" not in message
    await rounds(a)
    assert a.leases.live() == ["a"], "the refused instance withdrew its presence"
    assert a.held == {0, 1, 2, 3} and not a.lost


async def test_a_second_process_under_the_same_instance_id_cannot_change_the_count(member):
    """Its own id is not another instance, but another process under it is: it must not take
    the cluster for stopped (the live one would then run nothing from its next round)."""
    clock = ManualClock()
    a = await member("a", **manual(clock), slots=4)
    await a.leases.join()
    await rounds(a)  # announced, no slot claimed yet
    twin = await member("a", **manual(clock), slots=8)
    with pytest.raises(SlotCountMismatch, match=r"running: a \(another process\)"):
        await twin.leases.join()
    await rounds(a, n=2)
    assert a.held == {0, 1, 2, 3} and a.leases.mismatch is None


async def test_joiners_with_different_counts_at_once_one_wins(member):
    """Each joiner writes its presence, then the record by compare-and-set: whichever writes
    second finds the other's count and presence, so exactly one of them joins."""
    for n in range(2):  # a fresh bucket, then one whose only instance (the winner) stopped
        a = await member(f"a{n}", slots=4)
        b = await member(f"b{n}", slots=8)
        results = await asyncio.gather(a.leases.join(), b.leases.join(), return_exceptions=True)
        assert sorted(type(r).__name__ for r in results) == ["NoneType", "SlotCountMismatch"]
        winner = a if results[0] is None else b
        entry = await winner.leases.kv.get(SLOTS_KEY)
        assert orjson.loads(entry.value) == {"slots": winner.leases.slots}
        await winner.leases.stop()


async def test_the_count_changes_once_every_instance_stopped_cleanly(member):
    clock = ManualClock()
    a = await joined(member, "a", clock, slots=4)
    await a.leases.stop()  # frees its slots, withdraws its presence
    b = await joined(member, "b", clock, slots=8)  # no one runs, no lease names an owner
    assert b.held == set(range(8))
    old = await member("a-again", **manual(clock), slots=4)
    with pytest.raises(SlotCountMismatch, match="the cluster uses 8"):
        await old.leases.join()


async def test_leases_left_by_a_crash_keep_the_count(member):
    clock = ManualClock()
    a = await joined(member, "a", clock, slots=4)
    await a.nc.close()  # crashed: its slots still name it
    clock.now += 10  # its presence has expired
    b = await member("b", **manual(clock), slots=8)
    with pytest.raises(SlotCountMismatch, match="slot leases still name a, which did not stop"):
        await b.leases.join()


async def test_an_instance_whose_count_is_no_longer_recorded_releases_every_slot(member):
    """Cut off while the others stopped and came back with another count, an instance must
    not go on running its slots: each round reads the record again."""
    clock = ManualClock()
    a = await joined(member, "a", clock, slots=4)
    assert a.held == {0, 1, 2, 3}
    await a.leases.kv.put(SLOTS_KEY, orjson.dumps({"slots": 8}))
    await rounds(a, n=2)
    assert a.held == set() and sorted(a.lost) == [0, 1, 2, 3]
    assert a.leases.mismatch == 8 and a.leases.owners() == dict.fromkeys(range(4))


# ---------------------------------------------------------------------------- real time


async def test_real_time_handover_when_a_connection_closes(member):
    a = await member("a", ttl=1.5)
    b = await member("b", ttl=1.5)
    overlap: list[set[int]] = []

    async def watch() -> None:
        while True:
            if a.held & b.held:
                overlap.append(a.held & b.held)
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    await a.leases.start()
    await b.leases.start()
    try:
        await eventually(lambda: len(a.held) == len(b.held) == SLOTS // 2, timeout=10)
        closed_at = time.monotonic()
        await a.nc.close()
        await eventually(lambda: b.held == set(range(SLOTS)), timeout=10)
        assert time.monotonic() - closed_at >= 1.5 - 0.5  # not before a's leases could expire
        assert not a.held and sorted(a.lost) == sorted(a.gained)  # a fenced itself
        assert overlap == []
    finally:
        watcher.cancel()
        await b.leases.stop()
        await a.leases.stop()


async def test_self_fencing_fires_before_expiry_when_nats_is_killed(member, nats_server):
    a = await member("a", ttl=3.0)  # margin 0.75 s: room for a busy CI loop
    fenced_at: dict[int, tuple[float, float]] = {}

    async def lost(slot: int) -> None:
        fenced_at[slot] = (time.monotonic(), a.leases.fenced[slot])

    a.leases.on_lost = lost
    await a.leases.start()
    try:
        await eventually(lambda: len(a.held) == SLOTS, timeout=10)
        nats_server.kill()
        await eventually(lambda: len(fenced_at) == SLOTS, timeout=10)
        assert a.held == set()
        for slot, (when, expiry) in fenced_at.items():
            assert when < expiry, f"slot {slot} fenced {when - expiry:.3f}s after its expiry"
    finally:
        for task in a.leases._tasks:
            task.cancel()
