"""The rate model (gateway/rates.py): buckets, windows, intervals and scopes, on an injected clock."""

from __future__ import annotations

import asyncio
import heapq
import random
from typing import Any

import pytest

from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.rates import (
    ASSUMED,
    ASSUMED_LIMITS,
    Deferred,
    LocalPacer,
    RateLimited,
    RatesConfig,
    VendorRates,
    account_scope,
    app_scope,
    divided,
    ip_scope,
    parse_rates,
)
from tests.helpers import max_in_any_second


class Clock:
    """A fake clock whose ``sleep`` wakes sleepers in time order: ``run()`` drives it, moving
    the time to the earliest wake-up whenever every task is blocked on a sleep."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._n = 0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._n += 1
        heapq.heappush(self._sleepers, (self.now + max(seconds, 0.0), self._n, fut))
        await fut

    async def run(self, *coros: Any) -> list[Any]:
        tasks = [asyncio.ensure_future(c) for c in coros]
        while not all(t.done() for t in tasks):
            for _ in range(5):
                await asyncio.sleep(0)
            if self._sleepers:
                at, _, fut = heapq.heappop(self._sleepers)
                self.now = max(self.now, at)
                fut.set_result(None)
        return [t.result() for t in tasks]


def pacer(clock: Clock, **vendors: VendorRates) -> LocalPacer:
    cfg = RatesConfig()
    cfg.vendors.update(vendors)
    return LocalPacer(cfg, clock=clock, sleep=clock.sleep, rng=random.Random(1))


def test_coolkit_rules_reserve_per_endpoint_and_window() -> None:
    """Moved from test_coolkit_connector (the old coolkit_rate.RateLimiter), same assertions."""
    clock = Clock()
    rules = VendorRates(1.0, 1, window_calls=3, window_seconds=10.0, endpoint_interval=0.5,
                        account_connect_interval=5.0, slack=0.0)  # fmt: skip
    p = pacer(clock, coolkit=rules)
    ip = ip_scope("coolkit")
    assert p.reserve("call", ip, endpoint="/a") == 0.0
    assert p.reserve("call", ip, endpoint="/b") == 0.0
    assert p.reserve("call", ip, endpoint="/a") == pytest.approx(0.505)
    assert p.reserve("call", ip, endpoint="/c") == pytest.approx(10.0, abs=0.01)  # wait it out


def test_bucket_grants_burst_then_rate() -> None:
    clock = Clock()
    p = pacer(clock, tencent=VendorRates(connect_per_second=5.0, connect_burst=10))
    ip = ip_scope("tencent")
    delays = [p.reserve("connect", ip) for _ in range(30)]
    assert delays[:10] == [0.0] * 10
    assert delays[10:] == pytest.approx([0.2 * (i + 1) for i in range(20)])
    # never more than burst + rate in any second
    assert max_in_any_second(delays) <= 10 + 5


def test_bucket_refills_with_time() -> None:
    clock = Clock()
    p = pacer(clock, tencent=VendorRates(connect_per_second=2.0, connect_burst=2))
    ip = ip_scope("tencent")
    assert [p.reserve("connect", ip) for _ in range(3)] == pytest.approx([0.0, 0.0, 0.5])
    clock.now = 10.0  # a long quiet spell refills the burst, no more
    assert [p.reserve("connect", ip) for _ in range(3)] == pytest.approx([0.0, 0.0, 0.5])


def test_scopes_are_separate_and_all_apply() -> None:
    clock = Clock()
    rates = VendorRates(connect_per_second=100.0, connect_burst=100,
                        app_calls_per_second=1.0, app_calls_burst=1)  # fmt: skip
    p = pacer(clock, aliyun=rates)
    a, b = app_scope("aliyun", "key-a"), app_scope("aliyun", "key-b")
    ip = ip_scope("aliyun")
    assert p.reserve("call", ip, a) == 0.0
    assert p.reserve("call", ip, b) == 0.0  # another app key has its own bucket
    assert p.reserve("call", ip, a) == pytest.approx(1.0)  # the tighter scope decides
    # connect slots are not calls: the app bucket does not hold them back
    assert p.reserve("connect", ip, a) == 0.0


def test_account_handshake_interval_is_per_account() -> None:
    clock = Clock()
    rates = dict(ASSUMED_LIMITS)["coolkit"]
    p = pacer(clock, coolkit=rates)
    ip = ip_scope("coolkit")
    one, two = account_scope("coolkit", "one"), account_scope("coolkit", "two")
    assert p.reserve("handshake", ip, one, endpoint="WS userOnline") == 0.0
    # the other account waits only for the per-IP interface spacing
    assert p.reserve("handshake", ip, two, endpoint="WS userOnline") == pytest.approx(
        0.5 * 1.05 + 0.005
    )
    # the same account waits the userOnline interval (20 s assumed, with the seed's slack)
    assert p.reserve("handshake", ip, one, endpoint="WS userOnline") == pytest.approx(
        20 * 1.05 + 0.005
    )


def test_optional_calls_degrade_first_and_commands_are_refused_not_queued() -> None:
    clock = Clock()
    rates = VendorRates(connect_per_second=1.0, connect_burst=1, calls_per_second=1.0,
                        calls_burst=8)  # fmt: skip
    p = pacer(clock, xky=rates)
    ip = ip_scope("xky")
    for _ in range(7):
        assert p.reserve("call", ip, endpoint="poll", optional=True) == 0.0
    # 1 of 8 tokens left: below the headroom (25 %) optional calls must leave
    with pytest.raises(Deferred):
        p.reserve("call", ip, endpoint="poll", optional=True)
    # a required call still goes, at once; a command waits within its bound
    assert p.reserve("call", ip, endpoint="list") == 0.0
    assert p.reserve("command", ip, endpoint="set", max_wait=2.0) == pytest.approx(1.0)
    assert p.reserve("call", ip, endpoint="list") == pytest.approx(2.0)
    with pytest.raises(RateLimited) as info:
        p.reserve("command", ip, endpoint="set", max_wait=0.5)
    assert info.value.retry_after == pytest.approx(3.0)
    # a refused command reserved nothing: the next call's slot did not move
    assert p.reserve("call", ip, endpoint="list") == pytest.approx(3.0)


async def test_acquire_spreads_a_mass_reconnect_and_reports_waiting() -> None:
    clock = Clock()
    p = pacer(clock, tencent=VendorRates(connect_per_second=5.0, connect_burst=10))
    changes: list[tuple[str, bool]] = []
    p.on_waiting = lambda vendor, account, waiting: changes.append((account, waiting))
    granted: list[float] = []

    async def one(i: int) -> None:
        await p.acquire("connect", ip_scope("tencent"), account_scope("tencent", f"a{i}"))
        granted.append(clock.now)

    n = 200
    await clock.run(*(one(i) for i in range(n)))
    assert len(granted) == n
    assert max_in_any_second(granted) <= 5 + 10
    assert max(granted) <= 1.2 * n / 5  # all back within 1.2 × N / rate
    waited = {a for a, w in changes if w}
    assert len(waited) >= n - 10 and all(changes.count((a, False)) == 1 for a in waited)
    assert p.waiting() == {}


def test_budget_shows_usage_limits_and_share() -> None:
    clock = Clock()
    p = pacer(clock, coolkit=ASSUMED_LIMITS["coolkit"], tencent=ASSUMED_LIMITS["tencent"])
    ip = ip_scope("coolkit")
    for name, n in (("a", 3), ("b", 1)):
        for i in range(n):
            p.reserve("call", ip, account_scope("coolkit", name), endpoint=f"GET /v2/x{i}")
    p.reserve("connect", ip, account_scope("coolkit", "a"))
    budget = p.budget("coolkit", "a")
    calls = budget["ip"]["calls"]
    assert (calls["used"], calls["share"], calls["limit"], calls["window_s"]) == (4, 3, 300, 300.0)
    assert "seed 001" in calls["source"]
    assert budget["ip"]["connects"]["share"] == 1
    assert budget["account"]["calls"] == {
        "used": 3, "limit": None, "window_s": 60.0, "source": "none documented or configured"
    }  # fmt: skip
    assert budget["by_endpoint"] == {"GET /v2/x0": 1, "GET /v2/x1": 1, "GET /v2/x2": 1}
    # no documented call limit for Tencent: the limit reads null, usage still shows
    tip, acc = ip_scope("tencent"), account_scope("tencent", "t")
    p.reserve("call", tip, acc, endpoint="AppGetDeviceData")
    tb = p.budget("tencent", "t")
    assert tb["ip"]["calls"]["limit"] is None and tb["ip"]["calls"]["used"] == 1
    assert tb["ip"]["connects"]["limit"] == 10 + 5 * 60
    assert tb["ip"]["connects"]["source"] == ASSUMED


def test_rates_table_names_its_assumptions() -> None:
    for vendor in ("tencent", "aliyun", "xky"):
        assert ASSUMED_LIMITS[vendor].source("connect_per_second") == ASSUMED
    assert "seed 001" in ASSUMED_LIMITS["coolkit"].source("window_calls")


def test_rates_config_per_vendor() -> None:
    cfg = parse_config({"rates": {"tencent": {"connect_per_second": 50, "connect_burst": 20},
                                  "coolkit": {"endpoint_interval": False}}})  # fmt: skip
    t = cfg.rates.for_vendor("tencent")
    assert (t.connect_per_second, t.connect_burst, t.source("connect_burst")) == (50.0, 20, "configured")
    assert cfg.rates.for_vendor("coolkit").endpoint_interval is None
    assert cfg.rates.for_vendor("xky") == ASSUMED_LIMITS["xky"]
    bad: list[tuple[dict[str, Any], str]] = [
        ({"nope": {}}, "rates.nope"),
        ({"tencent": {"connect_per_second": 0}}, "rates.tencent.connect_per_second"),
        ({"tencent": {"connect_burst": 1.5}}, "rates.tencent.connect_burst"),
        ({"tencent": {"speed": 1}}, "rates.tencent.speed"),
        ({"tencent": {"window_calls": 10}}, "rates.tencent.window_calls"),
    ]
    for raw, key in bad:
        with pytest.raises(ConfigError) as info:
            parse_rates(raw, ASSUMED_LIMITS)
        assert info.value.key == key


def test_polls_keep_each_accounts_own_minimum_interval() -> None:
    """XiakeCloud's minimum poll spacing is a rule of the account scope (kind ``poll``): the
    vendor default for one account, its own ``min_poll_interval`` for another; other calls of
    the same account (commands, get_device) are not held to it."""
    clock = Clock()
    p = pacer(clock, xky=VendorRates(5.0, 10, account_poll_interval=5.0))
    p.configure_account("xky", "fast", {"account_poll_interval": 1.0})
    ip, slow, fast = ip_scope("xky"), account_scope("xky", "slow"), account_scope("xky", "fast")
    assert [p.reserve("poll", ip, slow, endpoint="GET /get_device_list") for _ in range(3)] == (
        pytest.approx([0.0, 5.005, 10.01])
    )
    assert [p.reserve("poll", ip, fast, endpoint="GET /get_device_list") for _ in range(3)] == (
        pytest.approx([0.0, 1.005, 2.01])
    )
    assert p.reserve("command", ip, slow, endpoint="POST /set_device") == 0.0
    assert p.budget("xky", "slow")["account"]["intervals_s"] == {"poll": 5.0}
    assert p.budget("xky", "fast")["account"]["intervals_s"] == {"poll": 1.0}
    assert ASSUMED_LIMITS["xky"].source("account_poll_interval") == ASSUMED
    with pytest.raises(ConfigError):
        p.configure_account("xky", "bad", {"account_poll_interval": 0})


def test_instances_sharing_one_egress_ip_each_pace_to_their_part() -> None:
    """Cluster mode: two instances behind one IP each keep half of every per-IP and per-app-key
    budget (so together they keep the vendor's limit); an account's own rules are not divided."""
    clock = Clock()
    rules = VendorRates(4.0, 4, window_calls=300, window_seconds=300.0, endpoint_interval=0.5,
                        account_connect_interval=20.0, app_calls_per_second=10.0,
                        app_calls_burst=20, slack=0.0)  # fmt: skip
    p = pacer(clock, coolkit=rules)
    ip, acc = ip_scope("coolkit"), account_scope("coolkit", "a")
    assert p.reserve("call", ip, endpoint="/x") == 0.0
    p.share_by_demand({"gw-b": None})  # a peer without demands: plain division, 1/2 each
    assert [p.reserve("connect", ip) for _ in range(3)] == pytest.approx([0.0, 0.0, 0.5])
    assert p.reserve("call", ip, endpoint="/x") == pytest.approx(1.005)  # 0.5 s spacing × 2
    assert p.reserve("handshake", ip, acc, endpoint="/ws") == 0.0
    assert p.reserve("handshake", ip, acc, endpoint="/ws") == pytest.approx(20.005)  # not halved
    budget = p.budget("coolkit", "a")
    assert budget["ip"]["instances"] == 2 and budget["ip"]["calls"]["limit"] == 150
    assert budget["ip"]["part"] == 0.5
    assert "instances" not in budget["account"]
    assert divided(rules, 0.5).app_calls_per_second == 5.0 and divided(rules, 0.5).app_calls_burst == 10
    assert divided(rules, 1.0) is rules
    p.share_by_demand({})  # alone again
    assert p.budget("coolkit", "a")["ip"]["calls"]["limit"] == 300


class Cluster:
    """Pacers of instances sharing one egress IP, on one fake clock, and the presence values
    of their lease rounds: ``round(name)`` is one instance's round (publish its demand, then
    read the others' as they last published them), as gateway/cluster/leases.py runs it."""

    TTL = 3.0

    def __init__(self, names: str, rates: VendorRates, raise_after: float = TTL) -> None:
        self.clock = Clock()
        self.pacers = {name: pacer(self.clock, tencent=rates) for name in names}
        self.board: dict[str, dict[str, int]] = {n: {} for n in names}  # all joined, idle
        for name, p in self.pacers.items():
            p.raise_after = raise_after
            p.share_by_demand({o: {} for o in names if o != name})

    def round(self, name: str) -> None:
        p = self.pacers[name]
        self.board[name] = p.demand()
        p.share_by_demand({o: d for o, d in self.board.items() if o != name})

    def rounds(self, n: int = 1) -> None:
        """``n`` rounds of every instance, ``TTL/3`` apart, in turn."""
        for _ in range(n):
            for name in self.pacers:
                self.round(name)
            self.clock.now += self.TTL / 3

    def want(self, name: str, slots: int) -> None:
        for _ in range(slots):
            self.pacers[name].reserve("connect", IP)

    def parts(self) -> dict[str, float]:
        return {name: p.part(IP) for name, p in self.pacers.items()}


IP = ip_scope("tencent")
RATES = VendorRates(connect_per_second=6.0, connect_burst=6)


def test_instances_with_equal_demand_each_keep_exactly_one_nth() -> None:
    c = Cluster("abc", RATES)
    for _ in range(4):
        for name in "abc":
            c.want(name, 5)
        c.rounds()
    assert c.parts() == {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}
    assert c.pacers["a"]._scope(IP).rates.connect_per_second == 2.0
    assert c.pacers["a"].budget("tencent", "x") == {}  # no account of x used the scope
    c.pacers["a"].reserve("connect", IP, account_scope("tencent", "x"))
    ip = c.pacers["a"].budget("tencent", "x")["ip"]
    assert (ip["instances"], ip["part"], ip["connects"]["limit"]) == (3, 0.3333, 2 + 2 * 60)


def test_a_busy_instance_among_idle_ones_gets_most_of_the_budget() -> None:
    c = Cluster("abc", RATES)
    c.rounds()
    assert c.parts() == {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}
    for _ in range(6):  # a has a backlog of 40 slots a round; b and c are idle
        c.want("a", 40)
        c.rounds()
    parts = c.parts()
    assert parts["a"] == 41 / 43 and parts["b"] == parts["c"] == 1 / 43
    assert c.pacers["a"]._scope(IP).rates.connect_per_second == pytest.approx(6.0 * 41 / 43)
    # an idle instance keeps a slot of burst: its first call goes at once
    assert c.pacers["b"].reserve("connect", IP) == 0.0
    # the backlog served, a goes back to its equal part
    c.rounds(4)
    assert c.parts() == {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}


def test_parts_never_add_up_to_more_than_one_while_demands_change() -> None:
    """Every instance reads the others one round late; a raise of its own weight counts only
    after a lease TTL (three rounds), a drop at once. Checked after every single round through
    a random sequence of demands; without the delay (``raise_after = 0``) the same sequence
    overshoots."""

    def worst(raise_after: float) -> float:
        c = Cluster("abc", RATES, raise_after=raise_after)
        rng = random.Random(7)
        most = 0.0
        for _ in range(60):
            for name in "abc":
                c.want(name, rng.choice([0, 0, 1, 5, 30, 100]))
                c.round(name)
                most = max(most, sum(c.parts().values()))
            c.clock.now += Cluster.TTL / 3
        return most

    assert worst(raise_after=Cluster.TTL) <= 1 + 1e-12
    assert worst(raise_after=0.0) > 1.2


def test_an_instance_of_an_older_version_among_the_peers_means_equal_parts() -> None:
    c = Cluster("ab", RATES)
    for _ in range(6):
        c.want("a", 40)
        c.rounds()
    assert c.parts()["a"] > 0.9
    c.pacers["a"].share_by_demand({"b": {}, "old": None})  # "old" publishes no demand
    assert c.parts()["a"] == 1 / 3


async def test_demand_counts_slots_taken_since_the_last_round_and_the_backlog() -> None:
    clock = Clock()
    p = pacer(clock, tencent=VendorRates(connect_per_second=1.0, connect_burst=2))
    tasks = [asyncio.ensure_future(p.acquire("call", IP)) for _ in range(2)]
    tasks += [asyncio.ensure_future(p.acquire("connect", IP, account_scope("tencent", f"a{i}")))
              for i in range(5)]  # fmt: skip
    for _ in range(3):
        await asyncio.sleep(0)
    # 7 slots taken; the 5 connects wait for theirs (each starts after a jitter)
    assert p.demand() == {"ip/tencent": 7 + 5}
    assert p.demand() == {"ip/tencent": 5}  # the backlog counts again, the slots taken do not
    await clock.run(*tasks)
    assert p.demand() == {}
    assert p.demand() == {}  # idle
