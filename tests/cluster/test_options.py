"""Cluster mode and ``bridge/request/options``: the request reaches one instance (the shared
subscription), and every live instance applies it (gateway/cluster/routing.py ``EVERYWHERE``).
The log level is per process, so the instances are real ``cloud2mqtt run`` processes; each one's
level is read from its own retained ``bridge/instances/<id>/info``. A third instance that the
leases count live but that never answers is named in the one reply."""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.cluster.node import LEASES_BUCKET
from gateway.cluster.routing import subject
from tests.conftest import Probe

B = "cloud2mqtt"
NAMES = ["gw-a", "gw-b"]
REQUEST = f"{B}/bridge/request/options"
RESPONSE = f"{B}/bridge/response/options"


def info(name: str) -> str:
    return f"{B}/bridge/instances/{name}/info"


async def ask(probe: Probe, level: str, transaction: str) -> Any:
    """Send one options request to the cluster; its one reply."""
    mark = probe.mark()
    probe.publish(REQUEST, {"log_level": level, "transaction": transaction})
    reply = await probe.wait_for(
        RESPONSE, lambda p: p.get("transaction") == transaction, start=mark, timeout=15
    )
    return reply, mark


async def test_an_options_request_changes_the_log_level_of_every_live_instance(
    instance_process: Any, probe: Probe, nats_client: Any
) -> None:
    for name in NAMES:
        await instance_process(name, [], command_timeout=1.0)
    for name in NAMES:  # both up at info level, each seeing the other
        await probe.wait_for(
            info(name),
            lambda p: p["log_level"] == "info" and p["cluster"]["live"] == NAMES,
            timeout=30,
        )

    reply, mark = await ask(probe, "debug", "all")
    assert reply["status"] == "ok", reply
    data = reply["data"]
    assert data["applied"] == NAMES and data["no_answer"] == [], data
    assert data["answered_by"] in NAMES and data["options"] == {"log_level": "debug"}
    for name in NAMES:  # the effect, on each process
        await probe.wait_for(info(name), lambda p: p["log_level"] == "debug", start=mark)
    assert len(probe.find(RESPONSE, lambda p: p.get("transaction") == "all")) == 1

    # A third instance the leases count live (its presence is fresh) that hears its requests
    # and never answers (a hung process): the others apply the change, the reply names it.
    nc = await nats_client()
    kv = await nc.jetstream().key_value(LEASES_BUCKET)
    expires = int((time.time() + 600) * 1000)
    await kv.put("instance.gw-x", orjson.dumps({"expires": expires}))

    async def hang(msg: Any) -> None:
        pass

    await nc.subscribe(subject("gw-x"), cb=hang)
    for name in NAMES:
        await probe.wait_for(info(name), lambda p: "gw-x" in p["cluster"]["live"], timeout=15)
    reply, mark = await ask(probe, "warning", "partial")
    assert reply["status"] == "error" and reply["error"]["code"] == "unavailable", reply
    assert reply["data"]["applied"] == NAMES and reply["data"]["no_answer"] == ["gw-x"]
    assert "gw-x" in reply["error"]["message"]
    for name in NAMES:
        await probe.wait_for(info(name), lambda p: p["log_level"] == "warning", start=mark)
    assert len(probe.find(RESPONSE, lambda p: p.get("transaction") == "partial")) == 1

    # A value the receiving instance refuses is refused at once, for the whole cluster.
    reply, mark = await ask(probe, "loud", "bad")
    assert reply["status"] == "error" and reply["error"]["code"] == "invalid", reply
    for name in NAMES:  # nobody applied anything
        assert all(p["log_level"] == "warning" for p in probe.find(info(name), start=mark))
