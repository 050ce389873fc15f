"""The connector contract, written once and run for every vendor of ``gateway.vendors.VENDORS``
on both event loops.

Each test runs the real gateway against the vendor's real emulator (driven through its binding,
tests/contract/bindings.py) and a private mosquitto, and asserts on the topic tree as a user's
client sees it (the paho probe): what a user of any vendor may rely on.

- login: the account reaches ``online`` on ``bridge/accounts``;
- list: ``bridge/devices`` lists every device the emulator has, each with its schema;
- push → retained state: a change made in the emulator lands on the device's retained topic;
- set → exactly one reply, and the emulator's value changed;
- socket drop → resync: the account comes back online and a change made while the link was
  down, never pushed, appears (only a resync can bring it);
- garbage frame counted on ``bridge/health``, and the next valid push still arrives;
- clean stop: ``Gateway.stop()`` leaves ``bridge/state`` offline and the account ``stopped``.

A vendor that cannot do an item as such (XiakeCloud has no push socket) says in its binding how
it satisfies it; nothing here is skipped per vendor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.topics import encode_id
from gateway.vendors import VENDORS
from tests.conftest import Probe

from .bindings import BINDINGS, Binding

pytestmark = pytest.mark.both_loops

B = "cloud2mqtt"
ACCOUNT = "contract"


@pytest.fixture(params=sorted(VENDORS))
async def binding(request: pytest.FixtureRequest, gateway_factory: Any) -> AsyncIterator[Binding]:
    """The vendor's binding with its emulator running; every vendor of VENDORS, none skipped.

    It comes after ``gateway_factory`` so that the emulator stops before the gateways do, as
    in the integration tests. (On uvloop, a gateway stopped from a fixture teardown — a new
    ``run_until_complete`` after the test's — while a Tencent or CoolKit cloud is still
    talking can lose its cancellation inside Python 3.11's ``asyncio.wait_for`` and never
    stop; ``test_clean_stop`` stops it inside the test, with the cloud alive.) The same
    ``wait_for`` flaw can still make an Aliyun gateway's stop hang now and then, when the
    cancellation meets a refused reconnect: ``gateway_factory`` then fails the teardown
    after 20 s instead of hanging.
    """
    cls = BINDINGS.get(request.param)
    if cls is None:
        pytest.fail(
            f"vendor {request.param!r} is in gateway.vendors.VENDORS but has no binding in "
            "tests/contract/bindings.py"
        )
    b = cls()
    await b.start()
    yield b
    await b.stop()


def state_topic(vendor: str, device: str) -> str:
    return f"{B}/{vendor}/{encode_id(device)}"


def ours(binding: Binding) -> Callable[[Any], dict[str, Any] | None]:
    """The contract account's entry in a ``bridge/accounts`` payload (``None`` if absent)."""

    def entry(payload: Any) -> dict[str, Any] | None:
        if not isinstance(payload, list):
            return None
        for a in payload:
            if a.get("vendor") == binding.vendor and a.get("name") == ACCOUNT:
                return dict(a)
        return None

    return entry


async def account_entry(
    probe: Probe, binding: Binding, predicate: Callable[[dict[str, Any]], bool], start: int = 0
) -> dict[str, Any]:
    """The latest ``bridge/accounts`` entry of the contract account matching ``predicate``."""
    entry = ours(binding)
    payload = await probe.wait_for(
        f"{B}/bridge/accounts", lambda p: (e := entry(p)) is not None and predicate(e), start=start
    )
    found = entry(payload)
    assert found is not None
    return found


async def start(binding: Binding, gateway_factory: Any, probe: Probe) -> tuple[Gateway, int]:
    """The gateway on the binding's account, online, with the binding's device in the tree;
    returns it and the ``since`` of the account's online state."""
    gw = await gateway_factory([binding.account(ACCOUNT)])
    online = await account_entry(probe, binding, lambda a: a["state"] == "online")
    await probe.wait_for(
        state_topic(binding.vendor, binding.device), lambda p: isinstance(p, dict) and bool(p)
    )
    return gw, online["since"]


async def test_login_account_online(binding: Binding, gateway_factory: Any, probe: Probe) -> None:
    await gateway_factory([binding.account(ACCOUNT)])
    online = await account_entry(probe, binding, lambda a: a["state"] == "online")
    assert online["error"] is None and online["attention"] is False, online


async def test_list_every_device_with_schema(
    binding: Binding, gateway_factory: Any, probe: Probe
) -> None:
    await start(binding, gateway_factory, probe)
    expected = binding.devices()
    assert expected, "the emulator has no devices to list"

    def listed(p: Any) -> set[str]:
        if not isinstance(p, list):
            return set()
        return {d["id"] for d in p if d["vendor"] == binding.vendor and d["account"] == ACCOUNT}

    devices = await probe.wait_for(f"{B}/bridge/devices", lambda p: listed(p) == expected)
    by_id = {d["id"]: d for d in devices if d["id"] in expected}
    for device, desc in by_id.items():
        assert isinstance(desc["schema"], dict), desc
        assert isinstance(desc["schema"]["properties"], list), desc
        assert desc["topic"] == state_topic(binding.vendor, device)
    settable = binding.settable()
    props = {p["id"]: p for p in by_id[settable.device]["schema"]["properties"]}
    assert "w" in props[settable.prop]["access"], props[settable.prop]


async def test_push_lands_on_the_retained_state(
    binding: Binding, gateway_factory: Any, probe: Probe, mosquitto: Any
) -> None:
    await start(binding, gateway_factory, probe)
    topic = state_topic(binding.vendor, binding.device)
    mark = probe.mark()
    change = await binding.push()

    def carries(p: Any) -> bool:
        return isinstance(p, dict) and p.get(change.prop) == change.value

    await probe.wait_for(topic, carries, start=mark)
    late = Probe(mosquitto.host, mosquitto.port, topic)  # a client arriving afterwards
    try:
        await late.ready()
        await late.wait_for(topic, carries)
        first_topic, first, retained = late.messages[0]
        assert (first_topic, retained) == (topic, True), late.messages[0]
        assert carries(first), first
    finally:
        late.close()


async def test_set_gets_exactly_one_reply(
    binding: Binding, gateway_factory: Any, probe: Probe
) -> None:
    await start(binding, gateway_factory, probe)
    s = binding.settable()
    assert binding.read(s.device, s.prop) != s.vendor_value, "pick a value the device lacks"
    topic = state_topic(binding.vendor, s.device)
    mark = probe.mark()
    probe.publish(f"{topic}/set", {s.prop: s.value, "transaction": "contract-1"})
    reply = await probe.wait_for(
        f"{topic}/response/set", lambda p: p.get("transaction") == "contract-1", start=mark
    )
    assert reply == {"status": "ok", "transaction": "contract-1"}, reply
    assert binding.read(s.device, s.prop) == s.vendor_value
    # A barrier: a command answered at once, sent after our reply arrived. Its reply comes
    # after anything the gateway published for ours, so a second reply would be seen by now.
    unknown = f"{B}/{binding.vendor}/{encode_id('no-such-device')}"
    probe.publish(f"{unknown}/set", {"x": 1, "transaction": "barrier"})
    await probe.wait_for(
        f"{unknown}/response/set", lambda p: p.get("transaction") == "barrier", start=mark
    )
    replies = probe.find(f"{topic}/response/set", start=mark)
    assert replies == [reply], replies


async def test_socket_drop_resyncs(binding: Binding, gateway_factory: Any, probe: Probe) -> None:
    _gw, since = await start(binding, gateway_factory, probe)
    mark = probe.mark()
    quiet = binding.change_quietly()  # never pushed: only a re-read can bring it
    await binding.drop()
    await probe.wait_for(
        state_topic(binding.vendor, binding.device),
        lambda p: isinstance(p, dict) and p.get(quiet.prop) == quiet.value,
        start=mark,
    )
    again = await account_entry(
        probe, binding, lambda a: a["state"] == "online" and a["since"] > since, start=mark
    )
    assert again["error"] is None, again


async def test_garbage_frame_is_counted(
    binding: Binding, gateway_factory: Any, probe: Probe
) -> None:
    await start(binding, gateway_factory, probe)
    counter, vendor = binding.garbage_counter, binding.vendor
    # A snapshot taken after the start: whatever the start itself counted is in ``before``.
    snapshot = await probe.wait_for(
        f"{B}/bridge/health", lambda p: isinstance(p, dict), start=probe.mark()
    )
    before = snapshot["counters"].get(counter, {}).get(vendor, 0)
    mark = probe.mark()
    await binding.garble()
    health = await probe.wait_for(
        f"{B}/bridge/health",
        lambda p: p["counters"].get(counter, {}).get(vendor, 0) > before,
        start=mark,
    )
    assert health["counters"][counter][vendor] == before + 1, health["counters"]
    change = await binding.push()
    await probe.wait_for(
        state_topic(vendor, binding.device),
        lambda p: isinstance(p, dict) and p.get(change.prop) == change.value,
        start=mark,
    )


async def test_clean_stop(binding: Binding, gateway_factory: Any, probe: Probe) -> None:
    gw, _since = await start(binding, gateway_factory, probe)
    await probe.wait_for(f"{B}/bridge/state", lambda p: p == {"state": "online"})
    mark = probe.mark()
    await gw.stop()
    await probe.wait_for(f"{B}/bridge/state", lambda p: p == {"state": "offline"}, start=mark)
    await account_entry(probe, binding, lambda a: a["state"] == "stopped", start=mark)
