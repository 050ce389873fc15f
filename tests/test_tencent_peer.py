"""Cross-check with the official Tencent mini-program SDK, npm ``qcloud-iotexplorer-appdev-sdk``.

The SDK has no appapi signer (its token comes from the app's own server), so the check is on the
long connection (tests/peers/tencent/peer.cjs): the SDK's own ``IotWebsocket`` connects to the
emulator, its ``ActivePush`` and ``AppDeviceTraceHeartBeat`` frames are accepted (the emulator
verifies the token and the devices), its reply matching resolves both, and every push the emulator
sends — report, control, event, offline/online, async action push and reply — is decoded by the
SDK to the same values our codec decodes.

Skipped locally when Node/npm cannot install the package; failing under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from emulators.tencent import TencentCloud
from protocols.tencent import api
from tests.conftest import install_peer, peer_unavailable
from tests.emulators.test_tencent import Client
from tests.helpers import emulator

pytestmark = pytest.mark.peer

PEER_DIR = Path(__file__).parent / "peers" / "tencent"


def _node_args() -> list[str]:
    node = shutil.which("node")
    if node is None:
        peer_unavailable("node not installed")
        raise AssertionError  # unreachable
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout
    major = int(version.strip().lstrip("v").split(".")[0])
    if major < 20:
        peer_unavailable(f"node {version.strip()} has no WebSocket")
    # Node 20/21 have the standard WebSocket behind a flag; 22+ by default.
    return [node, "--experimental-websocket"] if major < 22 else [node]


@pytest.fixture(scope="module")
def node() -> list[str]:
    args = _node_args()
    install_peer(PEER_DIR, "qcloud-iotexplorer-appdev-sdk")
    return args


class Peer:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []

    async def next(self, event: str, timeout: float = 10) -> Any:
        async def read() -> Any:
            assert self.proc.stdout is not None
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    stderr = await self.proc.stderr.read() if self.proc.stderr else b""
                    raise AssertionError(
                        f"peer exited: {self.lines}\n{stderr.decode(errors='replace')}"
                    )
                if not raw.startswith(b"{"):
                    continue
                line = orjson.loads(raw)
                self.lines.append(line)
                if line["event"] == "fatal":
                    raise AssertionError(f"peer failed: {line['data']}")
                if line["event"] == event:
                    return line["data"]

        return await asyncio.wait_for(read(), timeout)


cloud = emulator(lambda: TencentCloud(devices=2, latency=0.01))


async def test_official_sdk_on_the_emulator_socket(node: list[str], cloud: TencentCloud) -> None:
    async with aiohttp.ClientSession() as http:
        client = Client(cloud, http)
        token = await client.login()
        light, sensor = cloud.device_ids()
        arg = {
            "wsUrl": cloud.ws_url,
            "token": token,
            "appKey": cloud.app_key,
            "deviceIds": [light, sensor],
        }
        proc = await asyncio.create_subprocess_exec(
            *node, "peer.cjs", orjson.dumps(arg).decode(), cwd=PEER_DIR,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "NODE_NO_WARNINGS": "1"},
        )  # fmt: skip
        peer = Peer(proc)
        try:
            # The SDK's own frames were accepted and its reqId matching resolved the replies.
            assert await peer.next("activePushResult") == {"deviceIds": [light, sensor]}
            beat = await peer.next("heartbeatResult")
            assert set(beat) == {"Response"} and "Error" not in beat["Response"]
            await peer.next("ready")
            assert cloud.stats["active_push"] >= 2 and cloud.stats["heartbeats"] >= 2

            cloud.report(sensor, {"temperature": 23.5, "humidity": 40})
            report = await peer.next("wsReport")
            assert report["deviceId"] == sensor
            assert {k: v["Value"] for k, v in report["deviceData"].items()} == {
                "temperature": 23.5,
                "humidity": 40,
            }

            await client.call(
                "AppControlDeviceData",
                api.control_params(light, {"power_switch": 1, "brightness": 9}),
            )
            control = await peer.next("wsControl")
            assert control["deviceId"] == light
            assert {k: v["Value"] for k, v in control["deviceData"].items()} == {
                "power_switch": 1,
                "brightness": 9,
            }
            report = await peer.next("wsReport")
            assert {k: v["Value"] for k, v in report["deviceData"].items()} == {
                "power_switch": 1,
                "brightness": 9,
            }

            cloud.event(sensor, "low_voltage", {"voltage": 2.5})
            event = await peer.next("wsEventReport")
            assert event["deviceId"] == sensor
            assert event["Payload"]["eventId"] == "low_voltage" and event["Payload"]["params"] == {
                "voltage": 2.5
            }

            cloud.set_online(light, False)
            status = await peer.next("wsStatusChange")
            assert status == {"deviceId": light, "deviceStatus": 0}
            cloud.set_online(light, True)
            assert (await peer.next("wsStatusChange"))["deviceStatus"] == 1

            sent = api.parse_action_result(
                await client.call(
                    "AppCallDeviceActionAsync", api.action_params(light, "light_blink", {"time": 2})
                )
            )
            pushed = await peer.next("wsActionPush")
            assert pushed["Payload"]["clientToken"] == sent.client_token
            assert pushed["Payload"]["actionId"] == "light_blink"
            reply = await peer.next("wsActionReport")
            assert reply["Payload"]["clientToken"] == sent.client_token
            assert reply["Payload"]["response"] == {"result": 1}
        finally:
            if proc.stdin is not None:
                proc.stdin.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 5)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def test_js_stringification_matches_node(node: list[str]) -> None:
    """The signer writes values as JavaScript's ``String(value)`` (the official SDK builds the
    string with ``key + '=' + value``); Node itself is the oracle, on random doubles too."""
    import random
    import struct

    from protocols.tencent.sign import canonical_string, js_string

    rng = random.Random(7)
    values: list[Any] = [
        True,
        False,
        0,
        -5,
        1.0,
        0.1,
        1e21,
        1e-7,
        123456789.125,
        "a b&c",
        [1, "x", True, [2.5]],
        [],
    ]
    for _ in range(2000):
        bits = struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]
        if bits == bits and abs(bits) != float("inf"):
            values.append(bits)
        values.append(rng.uniform(-1e6, 1e6))
        values.append(rng.random() * 10 ** rng.randint(-30, 30))
    script = (
        "const v=JSON.parse(require('fs').readFileSync(0,'utf8'));"
        "process.stdout.write(JSON.stringify({each:v.map(x=>String(x)),"
        "joined:Object.keys(v[0]).sort().map(k=>k+'='+v[0][k]).join('&')}))"
    )
    params = {
        "Timestamp": 1552621825,
        "Enabled": True,
        "Ratio": 1.0,
        "DeviceIds": ["P/a", "P/b"],
        "Nonce": 2,
    }
    payload = orjson.dumps([params, *values[1:]])
    proc = subprocess.run(
        [*node, "-e", script], input=payload, capture_output=True, timeout=30, check=True
    )
    out = orjson.loads(proc.stdout)
    assert out["each"][1:] == [js_string(v) for v in values[1:]]
    assert out["joined"] == canonical_string(params)
