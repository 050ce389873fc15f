"""The cluster's merged ``bridge/accounts`` / ``bridge/devices`` / ``bridge/health``
(gateway/instances.py) over plain values: only each instance's owned accounts and only the live
instances' health, sorted, the same on every instance."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.instances import InstanceSnapshots, merge_health, merge_info

OWNERS = {"a1": "gw-a", "b1": "gw-b", "b2": "gw-b", "free": None}


def snapshots(
    instance: str, owners: dict[str, str | None] = OWNERS, live: tuple[str, ...] = ()
) -> InstanceSnapshots:
    return InstanceSnapshots(
        instance, lambda: lambda vendor, account: owners.get(account), live=lambda: live
    )


def account(name: str, state: str = "online") -> dict[str, Any]:
    return {"vendor": "v", "name": name, "state": state}


def device(name: str, acct: str) -> dict[str, Any]:
    return {"vendor": "v", "account": acct, "id": name, "topic": f"base/v/{name}"}


def test_the_merge_keeps_each_instances_owned_accounts_once_and_is_the_same_everywhere() -> None:
    a, b = snapshots("gw-a"), snapshots("gw-b")
    own_a = [account("b1", "stopped"), account("a1")]  # b1 moved to gw-b
    own_b = [account("b2"), account("b1"), account("free", "stopped")]
    assert a.receive("gw-b", "accounts", orjson.dumps(own_b))
    assert b.receive("gw-a", "accounts", orjson.dumps(own_a))
    assert not a.receive("gw-b", "accounts", orjson.dumps(own_b)), "unchanged: no re-merge"
    merged = a.merge("accounts", own_a)
    assert merged == b.merge("accounts", own_b)
    assert [(e["name"], e["instance"], e["state"]) for e in merged] == [
        ("a1", "gw-a", "online"), ("b1", "gw-b", "online"), ("b2", "gw-b", "online"),
    ]  # fmt: skip


def test_devices_follow_their_accounts_owner() -> None:
    a = snapshots("gw-a")
    a.receive("gw-b", "devices", orjson.dumps([device("d2", "b1"), device("d0", "a1")]))
    merged = a.merge("devices", [device("d1", "a1"), device("d3", "b1")])
    assert [d["id"] for d in merged] == ["d1", "d2"]
    assert "instance" not in merged[0]


def test_a_peer_that_leaves_or_sends_junk_and_our_own_echo() -> None:
    a = snapshots("gw-a")
    assert a.receive("gw-b", "accounts", orjson.dumps([account("b1")]))
    assert not a.receive("gw-a", "accounts", orjson.dumps([account("x")])), "own echo"
    assert not a.receive("gw-b", "accounts", b"not json")
    assert not a.receive("gw-b", "accounts", b'{"a": 1}')
    assert not a.receive("gw-b", "health", b"[]")
    assert not a.receive("gw-b", "info", b"[]"), "an info snapshot is an object"
    assert not a.receive("gw-b", "logging", b"{}"), "not a snapshot kind"
    assert a.peers() == ["gw-b"]
    assert a.receive("gw-b", "accounts", b""), "a clean stop clears its snapshot"
    assert a.peers() == [] and a.merge("accounts", []) == []
    assert not a.receive("gw-b", "accounts", b"")


def health(
    instance: str, *, ts: int, uptime: int, pid: int, devices: int, online: int, published: int,
    rate: float, bad_frames: dict[str, int], connected: bool = True, speedups: str = "cython",
) -> dict[str, Any]:
    """A health snapshot shaped as ``Publisher.health_snapshot`` makes it in cluster mode."""
    return {
        "ts": ts, "uptime_s": uptime, "rates": {"published_per_s": rate, "state_per_s": 0.0},
        "totals": {"published": published, "state": 1}, "counters": {"bad_frames": bad_frames},
        "devices": devices, "accounts": {"total": 2, "online": online},
        "mqtt": {"connected": connected, "published": published, "dropped": 1, "unacked": 0},
        "speedups": speedups, "pid": pid, "instance": instance,
    }  # fmt: skip


A = health("gw-a", ts=2000, uptime=50, pid=11, devices=3, online=2, published=100, rate=0.1,
           bad_frames={"tencent": 1})  # fmt: skip
B = health("gw-b", ts=1500, uptime=7, pid=22, devices=4, online=1, published=40, rate=0.2,
           bad_frames={"tencent": 2, "xky": 5}, connected=False, speedups="python")  # fmt: skip


def test_merged_health_adds_up_every_number_and_keeps_each_process_own_fields() -> None:
    merged = merge_health({"gw-b": B, "gw-a": A})
    assert merged == {
        "accounts": {"online": 3, "total": 4},
        "counters": {"bad_frames": {"tencent": 3, "xky": 5}},
        "devices": 7,
        "instances": {
            "gw-a": {"mqtt": {"connected": True}, "pid": 11, "speedups": "cython", "ts": 2000,
                     "uptime_s": 50},
            "gw-b": {"mqtt": {"connected": False}, "pid": 22, "speedups": "python", "ts": 1500,
                     "uptime_s": 7},
        },
        "mqtt": {"dropped": 2, "published": 140, "unacked": 0},
        "rates": {"published_per_s": 0.3, "state_per_s": 0.0},  # not 0.30000000000000004
        "totals": {"published": 140, "state": 2},
        "ts": 2000,  # the newest snapshot's
    }  # fmt: skip
    # deterministic: the same snapshots in any order give the same bytes, keys sorted
    again = merge_health({"gw-a": A, "gw-b": B})
    assert orjson.dumps(again) == orjson.dumps(merged)
    assert list(merged) == sorted(merged) and list(merged["mqtt"]) == sorted(merged["mqtt"])


def test_one_instance_and_fields_whose_type_differs_between_versions() -> None:
    alone = merge_health({"gw-a": A})
    assert alone["devices"] == 3 and list(alone["instances"]) == ["gw-a"]
    newer = {**B, "devices": {"new": "shape"}, "extra_total": 9}
    merged = merge_health({"gw-a": A, "gw-b": newer})
    assert "devices" not in merged, "not a number everywhere: not summed"
    assert merged["instances"]["gw-a"]["devices"] == 3
    assert merged["instances"]["gw-b"]["devices"] == {"new": "shape"}
    assert merged["extra_total"] == 9, "a number only one instance reports is still added up"


def test_only_the_live_instances_health_counts() -> None:
    live = ("gw-a", "gw-b")
    a = snapshots("gw-a", live=live)
    assert a.receive("gw-b", "health", orjson.dumps(B))
    assert a.receive("gw-dead", "health", orjson.dumps({**B, "devices": 1000}))
    assert not a.receive("gw-b", "health", orjson.dumps(B)), "unchanged"
    assert not a.receive("gw-b", "health", b"[1]")
    merged = a.merge_health(A)
    assert sorted(merged["instances"]) == ["gw-a", "gw-b"] and merged["devices"] == 7
    b = snapshots("gw-b", live=live)  # the peer merges the same snapshots the same way
    assert b.receive("gw-a", "health", orjson.dumps(A))
    assert orjson.dumps(b.merge_health(B)) == orjson.dumps(merged)
    assert a.receive("gw-b", "health", b""), "a clean stop clears its health"
    assert list(a.merge_health(A)["instances"]) == ["gw-a"]


def test_merged_info_keeps_what_all_say_alike_and_each_ones_own_apart() -> None:
    def info(instance: str, level: str, held: list[int]) -> dict[str, Any]:
        return {
            "version": "1.2.0", "commit": "abc", "log_level": level,
            "config": {"mqtt": {"url": "mqtt://b:1883"},
                       "gateway": {"instance_id": instance, "base_topic": "c2m"}},
            "cluster": {"instance": instance, "slots": 4, "lease_ttl": 1.0,
                        "live": ["gw-a", "gw-b"], "held": held, "accounts": {"v/a": instance}},
        }  # fmt: skip

    mine = info("gw-a", "info", [0, 1])
    merged = merge_info({"gw-b": info("gw-b", "debug", [2, 3]), "gw-a": mine}, mine["cluster"])
    assert merged["version"] == "1.2.0" and merged["commit"] == "abc"
    assert merged["config"] == {"mqtt": {"url": "mqtt://b:1883"}, "gateway": {"base_topic": "c2m"}}
    assert "log_level" not in merged
    assert merged["instances"] == {
        "gw-a": {"log_level": "info", "held": [0, 1], "config": {"gateway": {"instance_id": "gw-a"}}},
        "gw-b": {"log_level": "debug", "held": [2, 3], "config": {"gateway": {"instance_id": "gw-b"}}},
    }  # fmt: skip
    assert merged["cluster"] == {"slots": 4, "lease_ttl": 1.0, "live": ["gw-a", "gw-b"],
                                 "accounts": {"v/a": "gw-a"}}  # fmt: skip
    # the same snapshots give the same bytes on every instance (sorted keys at every level)
    again = merge_info({"gw-a": mine, "gw-b": info("gw-b", "debug", [2, 3])}, mine["cluster"])
    assert orjson.dumps(again) == orjson.dumps(merged)
    # a rolling upgrade: the version differs, so each instance's goes apart
    newer = {**info("gw-b", "info", [2, 3]), "version": "1.3.0"}
    merged = merge_info({"gw-a": mine, "gw-b": newer}, mine["cluster"])
    assert "version" not in merged and merged["log_level"] == "info"
    assert (merged["instances"]["gw-a"]["version"], merged["instances"]["gw-b"]["version"]) == (
        "1.2.0", "1.3.0",
    )  # fmt: skip

