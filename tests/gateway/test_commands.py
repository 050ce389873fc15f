"""The command handler over plain values: validation before any vendor call, one reply each."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.bridge import BridgeRequests
from gateway.commands import ECHO_LIMIT, CommandHandler
from gateway.connectors.base import Connector
from gateway.connectors.session import NeedsAttention
from protocols.model import ActionSpec, CommandResult, DeviceInfo, Property, Schema

from .conftest import Core

SCHEMA = Schema(
    properties=(
        Property("power", type="bool"),
        Property("level", type="int", min=0, max=10),
        Property("temp", type="float", access="r"),
    ),
    actions=(ActionSpec("blink", "Blink", input=(Property("times", type="int", min=1, max=5),)),),
)


class FakeConnector:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail: Exception | None = None

    async def set(self, device: str, props: dict[str, Any]) -> CommandResult:
        self.calls.append(("set", props))
        if self.fail:
            raise self.fail
        return CommandResult.ok()

    async def get(self, device: str, props: list[str]) -> CommandResult:
        self.calls.append(("get", props))
        return CommandResult.ok({"power": 1, "level": "7"})  # as the vendor gives them

    async def action(self, device: str, action: str, params: dict[str, Any]) -> CommandResult:
        self.calls.append(("action", (action, params)))
        return CommandResult.ok({"output": {}})

    async def request(self, command: str, payload: Any) -> CommandResult:
        return CommandResult.error("invalid", f"unknown request {command!r} for v")


class Accounts:
    def __init__(self, connector: FakeConnector) -> None:
        self._connector = connector

    def account_keys(self) -> list[tuple[str, str]]:
        return [("v", "acc")]

    def connector(self, key: tuple[str, str]) -> Connector | None:
        return self._connector  # type: ignore[return-value]

    async def restart_account(self, key: tuple[str, str]) -> None:
        return None


class Harness:
    def __init__(self, core: Core, check_topic: Any = None) -> None:
        self.core = core
        self.connector = FakeConnector()
        accounts = Accounts(self.connector)
        self.handler = CommandHandler(
            topics=core.topics, registry=core.registry, publisher=core.publisher,
            health=core.health, connector=accounts.connector,
            bridge=BridgeRequests(core.publisher, core.registry, accounts), timeout=1.0,
            **({"check_topic": check_topic} if check_topic else {}),
        )  # fmt: skip
        rec, _ = core.registry.upsert("v", "acc", DeviceInfo("P/d1", "Lamp", "M", SCHEMA))
        core.registry.apply_availability(rec, True, 1, None)

    async def send(self, topic: str, payload: bytes, props: dict[str, Any] | None = None) -> None:
        self.handler.on_message(topic, payload, props or {})
        await asyncio.gather(*self.handler._tasks)

    def replies(self, topic: str) -> list[Any]:
        return self.core.mqtt.on(topic)


DEV = "base/v/P%2Fd1"


@pytest.fixture
def h(core: Core) -> Harness:
    return Harness(core)


async def test_valid_set_reaches_the_connector_and_is_answered_once(h: Harness) -> None:
    await h.send(f"{DEV}/set", b'{"power": "on", "transaction": "t1"}')
    assert h.connector.calls == [("set", {"power": True})]
    assert h.replies(f"{DEV}/response/set") == [{"status": "ok", "transaction": "t1"}]


@pytest.mark.parametrize(
    "payload",
    [b'{"level": 11}', b'{"temp": 1.5}', b'{"nope": 1}', b'[1]', b"not json", b'{"level": "x"}'],
)
async def test_invalid_set_is_answered_without_a_vendor_call_and_counted(
    h: Harness, payload: bytes
) -> None:
    await h.send(f"{DEV}/set", payload)
    (reply,) = h.replies(f"{DEV}/response/set")
    assert reply["status"] == "error" and reply["error"]["code"] == "invalid"
    assert h.connector.calls == []
    assert h.core.health.counters["bad_commands"]["v"] == 1


async def test_unknown_device_reply_echoes_the_transaction(h: Harness) -> None:
    await h.send("base/v/ghost/set", b'{"power": true, "transaction": "t9"}')
    (reply,) = h.replies("base/v/ghost/response/set")
    assert reply["transaction"] == "t9" and reply["error"]["code"] == "invalid"


async def test_huge_values_and_ids_are_clipped_in_replies(h: Harness) -> None:
    big = "x" * 1_000_000
    await h.send(f"{DEV}/set", b'{"level": "' + big.encode() + b'"}')
    await h.send(f"base/v/{'y' * 60_000}/get", b"{}")
    for reply in h.replies(f"{DEV}/response/set") + h.replies(f"base/v/{'y' * 60_000}/response/get"):
        assert len(reply["error"]["message"]) < ECHO_LIMIT + 100


async def test_deep_nesting_is_invalid_not_a_recursion_error(h: Harness) -> None:
    deep = b"[" * 1000 + b"]" * 1000
    await h.send(f"{DEV}/set/level", deep)
    await h.send(f"{DEV}/action", b'{"action": "blink", "params": {"times": ' + deep + b"}}")
    replies = h.replies(f"{DEV}/response/set") + h.replies(f"{DEV}/response/action")
    assert [r["error"]["code"] for r in replies] == ["invalid", "invalid"]
    assert all("deeper than" in r["error"]["message"] for r in replies)
    assert h.core.health.counters["bad_commands"]["v"] == 2


async def test_unencoded_id_gets_one_reply_naming_the_encoded_form(h: Harness) -> None:
    await h.send("base/v/P/d1/set", b'{"power": true, "transaction": "t2"}')
    (reply,) = h.replies("base/v/P/d1/response/set")
    assert reply["transaction"] == "t2" and reply["error"]["code"] == "invalid"
    assert "base/v/P%2Fd1/set" in reply["error"]["message"]
    assert h.connector.calls == []


async def test_response_topic_with_a_wildcard_is_refused_and_never_published_to(
    core: Core,
) -> None:
    h = Harness(core, check_topic=lambda t: "wildcard" if "#" in t or "+" in t else None)
    await h.send(f"{DEV}/get", b"{}", {"response_topic": "x/#", "correlation_data": b"c"})
    (reply,) = h.replies(f"{DEV}/response/get")
    assert reply["error"]["code"] == "invalid" and "Response Topic" in reply["error"]["message"]
    assert h.replies("x/#") == []
    await h.send(f"{DEV}/get", b"{}", {"response_topic": "ok/topic", "correlation_data": b"c"})
    assert h.replies("ok/topic") == [
        {"status": "ok", "transaction": None, "data": {"power": True, "level": 7}}
    ]


async def test_get_replies_are_normalized_and_filtered_to_the_asked_props(h: Harness) -> None:
    await h.send(f"{DEV}/get", b'{"props": ["level"], "transaction": "g"}')
    assert h.replies(f"{DEV}/response/get") == [
        {"status": "ok", "transaction": "g", "data": {"level": 7}}
    ]


async def test_link_error_under_a_command_is_answered_with_its_code(h: Harness) -> None:
    h.connector.fail = NeedsAttention("credentials refused")
    await h.send(f"{DEV}/set", b'{"power": true}')
    (reply,) = h.replies(f"{DEV}/response/set")
    assert reply["error"]["code"] == "auth"


async def test_unknown_bridge_request_lists_the_known_ones(h: Harness) -> None:
    await h.send("base/bridge/request/frobnicate", b'{"transaction": 5}')
    (reply,) = h.replies("base/bridge/response/frobnicate")
    assert reply["transaction"] == 5
    assert "known: health, devices, accounts, resync" in reply["error"]["message"]
