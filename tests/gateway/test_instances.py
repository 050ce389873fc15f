"""The cluster's merged ``bridge/accounts`` / ``bridge/devices`` (gateway/instances.py) over
plain values: only each instance's owned accounts, sorted, the same on every instance."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.instances import InstanceSnapshots

OWNERS = {"a1": "gw-a", "b1": "gw-b", "b2": "gw-b", "free": None}


def snapshots(instance: str, owners: dict[str, str | None] = OWNERS) -> InstanceSnapshots:
    return InstanceSnapshots(instance, lambda: lambda vendor, account: owners.get(account))


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
    assert a.peers() == ["gw-b"]
    assert a.receive("gw-b", "accounts", b""), "a clean stop clears its snapshot"
    assert a.peers() == [] and a.merge("accounts", []) == []
    assert not a.receive("gw-b", "accounts", b"")
