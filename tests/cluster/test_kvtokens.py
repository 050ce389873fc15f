"""Tokens in KV (gateway/cluster/kvtokens.py): what one instance saves, another loads."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gateway.cluster.kvtokens import KvTokenStore, escape_key, kv_key, unescape_key
from gateway.cluster.node import TOKENS_BUCKET, open_bucket
from gateway.tokens import TokenStore
from tests.helpers import eventually


@pytest.fixture
async def store(nats_client: Callable[..., Any]) -> AsyncIterator[Callable[..., Any]]:
    started: list[KvTokenStore] = []

    async def make() -> KvTokenStore:
        s = KvTokenStore()
        await s.start(await open_bucket(await nats_client(), TOKENS_BUCKET))
        started.append(s)
        return s

    yield make
    for s in started:
        await s.close(timeout=1)


@pytest.mark.parametrize("name", ["home", "a.b", "..", "x=y", "ünï", "a/b", ""])
def test_keys_are_valid_nats_keys_and_reversible(name):
    key = kv_key(f"tencent/{name}")
    vendor, _, account = key.partition(".")
    assert vendor == "tencent" and "." not in account and account
    assert set(account) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-=")
    assert unescape_key(escape_key(name)) == name


async def test_a_save_on_one_instance_loads_on_another(store):
    a, b = await store(), await store()
    assert isinstance(a, TokenStore)  # what Gateway(tokens=…) and the connectors take
    a.slot("tencent", "home.1").save({"token": "t1", "expires": 123})
    assert a.slot("tencent", "home.1").load() == {"token": "t1", "expires": 123}  # at once
    slot_b = b.slot("tencent", "home.1")
    await eventually(lambda: slot_b.load() == {"token": "t1", "expires": 123})
    b.slot("tencent", "home.1").save({"token": "t2"})  # the account moved to b, which renews
    await eventually(lambda: a.slot("tencent", "home.1").load() == {"token": "t2"})
    a.slot("tencent", "home.1").save(None)
    await eventually(lambda: slot_b.load() is None)


async def test_a_starting_instance_finds_every_saved_token(store):
    a = await store()
    for i in range(20):
        a.slot("coolkit", f"acct{i}").save({"at": f"token-{i}"})
    await a.drain()
    c = await store()  # start() returns once the bucket as it is has been mirrored
    assert [c.slot("coolkit", f"acct{i}").load() for i in range(20)] == [
        {"at": f"token-{i}"} for i in range(20)
    ]


async def test_saves_are_coalesced_and_the_last_one_wins(store):
    a, b = await store(), await store()
    slot = a.slot("aliyun", "x")
    for i in range(200):
        slot.save({"n": i})
    assert slot.load() == {"n": 199}  # the mirror never steps back
    await a.drain()
    assert a.kv is not None
    entry = await a.kv.get(kv_key("aliyun/x"))
    assert entry.value == b'{"n":199}'
    assert (entry.revision or 0) < 50, "200 saves in a burst are not 200 writes"
    await eventually(lambda: b.slot("aliyun", "x").load() == {"n": 199})
    assert slot.load() == {"n": 199}
