"""A real Node-RED 4 runs the README's example flow (docs/node-red-flow.json) against the real
gateway and the Tencent emulator: its ``mqtt in`` (auto-detect) gets typed JSON state, and a
``set`` it sends with an MQTT 5 response topic is answered on that topic."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from emulators.tencent import TencentCloud
from gateway.topics import encode_id
from tests.helpers import emulator

from ..conftest import Probe
from .harness import NodeRed, eventually

pytestmark = pytest.mark.consumer

FLOW = Path(__file__).resolve().parents[2] / "docs" / "node-red-flow.json"


cloud = emulator(lambda: TencentCloud(devices=2, latency=0.01))


def example_flow(tmp_path: Path, host: str, port: int) -> tuple[Path, Path, Path]:
    """The example flow as shipped, pointed at the test's broker and temp files."""
    nodes: list[dict[str, Any]] = json.loads(FLOW.read_text())
    state_file, reply_file = tmp_path / "state.jsonl", tmp_path / "replies.jsonl"
    by_id = {n["id"]: n for n in nodes}
    by_id["c2m.broker"].update(broker=host, port=str(port))
    by_id["c2m.state.file"]["filename"] = str(state_file)
    by_id["c2m.reply.file"]["filename"] = str(reply_file)
    flows = tmp_path / "flows.json"
    flows.write_text(json.dumps(nodes))
    return flows, state_file, reply_file


def json_lines(path: Path) -> list[Any]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_example_flow_typed_state_and_response_topic(
    gateway_factory: Any,
    probe: Probe,
    cloud: TencentCloud,
    mosquitto: Any,
    node_red: Callable[[Path], Awaitable[NodeRed]],
    tmp_path: Path,
) -> None:
    await gateway_factory([cloud.account_config("home", heartbeat=0.5)])
    light = cloud.device_ids()[0]
    light_topic = f"cloud2mqtt/tencent/{encode_id(light)}"
    await probe.wait_for(light_topic, lambda p: isinstance(p, dict) and "power_switch" in p)

    flows, state_file, reply_file = example_flow(tmp_path, mosquitto.host, mosquitto.port)
    nr = await node_red(flows)

    # mqtt in with auto-detect parsed the JSON: the file holds objects with real booleans and
    # numbers, not strings of JSON.
    def typed_light_state() -> dict[str, Any] | None:
        for line in json_lines(state_file):
            if isinstance(line, dict) and isinstance(line.get("power_switch"), bool):
                return line
        return None

    state = await eventually(typed_light_state, f"{state_file} holds the light's typed state",
                             context=nr.log_tail)
    assert isinstance(state["brightness"], int) and isinstance(state["last_seen"], int), state

    async with aiohttp.ClientSession() as http, http.post(
        f"{nr.url}/cloud2mqtt/set",
        json={"topic": f"{light_topic}/set", "payload": {"power_switch": True, "transaction": "nr-1"}},
    ) as resp:
        assert resp.status == 202, await resp.text()

    def reply() -> dict[str, Any] | None:
        return next((r for r in json_lines(reply_file) if r.get("transaction") == "nr-1"), None)

    got = await eventually(reply, f"{reply_file} holds the reply to transaction nr-1",
                           context=nr.log_tail)
    assert got["status"] == "ok", got
    await eventually(
        lambda: any(isinstance(s, dict) and s.get("power_switch") is True for s in json_lines(state_file)),
        "Node-RED saw the light's state turn on", context=nr.log_tail,
    )
