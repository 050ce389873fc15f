"""Integration harness: a private mosquitto per test, the gateway in-process, a paho probe.

The probe is a plain paho-mqtt client (an independent MQTT implementation, not ours) that
subscribes to ``#`` and records everything, so tests see the topic tree as a user's client does.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.mosquitto import Mosquitto
from gateway.vendors import VENDORS
from tests.helpers import eventually

IN_CI = os.environ.get("CI", "").lower() == "true"


def peer_unavailable(reason: str) -> None:
    """Skip a cross-check against an official vendor library locally; fail in CI."""
    if IN_CI:
        pytest.fail(f"peer library unavailable in CI: {reason}")
    pytest.skip(reason)


def install_peer(peer_dir: Path, package: str) -> None:
    """``npm install`` the official vendor library ``package`` a peer in ``peer_dir`` runs
    (once: nothing to do when it is there); unavailable without npm or when the install fails."""
    if (peer_dir / "node_modules" / package / "package.json").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        peer_unavailable("npm not installed")
        return
    try:
        subprocess.run([npm, "install", "--no-audit", "--no-fund"], cwd=peer_dir, check=True,
                       capture_output=True, timeout=300)  # fmt: skip
    except (subprocess.SubprocessError, OSError) as exc:
        peer_unavailable(f"npm install {package} failed: {exc}")


def _decode(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload


class Probe:
    def __init__(self, host: str, port: int, topic: str = "#") -> None:
        self.messages: list[tuple[str, Any, bool]] = []
        self.props: list[Any] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=f"probe-{id(self)}", protocol=paho.MQTTv5
        )
        self.client.on_message = self._on_message
        self._subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_connect = lambda c, u, f, rc, p: (c.subscribe(topic, qos=1), self._connected.set())
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append((msg.topic, _decode(msg.payload), bool(msg.retain)))
            self.props.append(msg.properties)

    async def ready(self) -> None:
        await eventually(self._subscribed.is_set, "the probe connected and got its SUBACK")

    def find(self, topic: str, predicate: Callable[[Any], bool] | None = None, start: int = 0) -> list[Any]:
        with self._lock:
            msgs = list(self.messages[start:])
        return [p for t, p, _ in msgs if t == topic and (predicate is None or predicate(p))]

    async def wait_for(
        self,
        topic: str,
        predicate: Callable[[Any], bool] | None = None,
        timeout: float = 10.0,
        start: int = 0,
    ) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            found = self.find(topic, predicate, start)
            if found:
                return found[-1]
            if time.monotonic() > deadline:
                seen = sorted({t for t, _, _ in self.messages})
                raise TimeoutError(f"nothing on {topic!r} matching within {timeout}s; topics seen: {seen[:40]}")
            await asyncio.sleep(0.02)

    def mark(self) -> int:
        with self._lock:
            return len(self.messages)

    def publish(
        self,
        topic: str,
        payload: Any,
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation: bytes | None = None,
    ) -> None:
        if not isinstance(payload, (bytes, str)):
            payload = orjson.dumps(payload)
        props = None
        if response_topic:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = response_topic
            if correlation is not None:
                props.CorrelationData = correlation
        self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)

    def close(self) -> None:
        # Disconnect first: it wakes paho's network thread, which then ends at once; stopping
        # the thread first waits out its 1 s select timeout (most of a test's teardown).
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session (what a connector is given, or a test's own client of an
    emulator), closed after the test."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def mosquitto() -> AsyncIterator[Mosquitto]:
    broker = Mosquitto()
    await broker.start()
    yield broker
    await broker.stop()
    broker.cleanup()


@pytest.fixture
async def probe(mosquitto: Mosquitto) -> AsyncIterator[Probe]:
    p = Probe(mosquitto.host, mosquitto.port)
    await p.ready()
    yield p
    p.close()


@pytest.fixture
async def gateway_factory(
    mosquitto: Mosquitto, tmp_path: Any
) -> AsyncIterator[Callable[..., Any]]:
    started: list[Gateway] = []

    async def factory(
        accounts: list[dict[str, Any]], *, connectors: Any = None,
        homeassistant: dict[str, Any] | None = None,
        http: dict[str, Any] | None = None, rates: dict[str, Any] | None = None,
        cluster: dict[str, Any] | None = None, **gateway_opts: Any,
    ) -> Gateway:
        opts = {
            "state_dir": str(tmp_path / "state"),
            "health_interval": 0.5,
            "command_timeout": 3.0,
            "offline_grace": 2.0,
        }
        opts.update(gateway_opts)
        raw = {"mqtt": {"url": mosquitto.url, "client_id": f"gw-{len(started)}"}, "gateway": opts, "accounts": accounts}
        if rates is not None:  # [rates.<vendor>] (gateway/rates.py)
            raw["rates"] = rates
        if http is not None:  # [http] (gateway/http.py)
            raw["http"] = http
        if homeassistant is not None:  # [homeassistant] (gateway/consumers/homeassistant.py)
            raw["homeassistant"] = homeassistant
        if cluster is not None:  # [cluster] (gateway/cluster/)
            raw["cluster"] = cluster
        vendors = {**VENDORS, **(connectors or {})}
        gw = Gateway(parse_config(raw, vendors=vendors))
        started.append(gw)  # stopped afterwards even when start() fails half-way
        await gw.start()
        return gw

    yield factory
    for gw in started:
        try:
            async with asyncio.timeout(20):  # a safety net: a hung stop fails, it does not hang
                await gw.stop()
        except TimeoutError:
            raise AssertionError("Gateway.stop() did not return within 20s") from None


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Any] | None:
    """Tests marked ``both_loops`` (the gateway end to end: ``pytestmark =
    pytest.mark.both_loops`` in the module) run on both event loops, the gateway's uvloop and
    stdlib asyncio, as uvloop's own suite does; every other test runs on the default loop."""
    if item.get_closest_marker("both_loops") is not None:
        import uvloop

        return {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}
    # pytest-asyncio 1.5 rejects None from this hook ("must return a non-empty mapping").
    return {"asyncio": asyncio.new_event_loop}
