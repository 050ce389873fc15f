"""Fixtures for the real consumers: Home Assistant and Node-RED.

Their installs (minutes for Home Assistant on a cold cache) happen in
``pytest_collection_finish``, after collection and before the first test, so no per-test
timeout applies to them, and only when a selected test needs one. A test then gets the
cached install or, where it cannot be had, skips locally and fails under ``CI=true``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.mosquitto import Mosquitto

from ..conftest import IN_CI
from . import ha_env as ha_install
from . import node_red_env as node_red_install
from .harness import HomeAssistant, NodeRed

_NEEDS = {"ha_env": "ha", "node_red_env": "node-red"}
_ENVS: dict[str, Any] = {}


def consumer_unavailable(reason: str) -> None:
    """Skip a real-consumer test locally; fail it in CI, where the consumer must be there."""
    if IN_CI:
        pytest.fail(f"consumer unavailable in CI: {reason}")
    pytest.skip(reason)


def _wanted(items: list[pytest.Item]) -> set[str]:
    wanted: set[str] = set()
    for item in items:
        names = getattr(item, "fixturenames", ())
        for fixture, kind in _NEEDS.items():
            if fixture in names:
                wanted.add(kind)
    return wanted


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    wanted = _wanted(session.items)
    if not wanted:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")

    def log(line: str) -> None:
        if reporter is not None:
            reporter.write_line(f"[consumers] {line}")

    for kind, module in (("ha", ha_install), ("node-red", node_red_install)):
        if kind not in wanted or kind in _ENVS:
            continue
        started = time.monotonic()
        try:
            _ENVS[kind] = module.ensure(log)
        except Exception as exc:  # any failure to install means unavailable
            _ENVS[kind] = f"{kind} unavailable: {exc}"
        log(f"{kind} ready in {time.monotonic() - started:.1f}s: {_ENVS[kind]}")


def _env(kind: str) -> Any:
    got = _ENVS.get(kind)
    if got is None:
        # Collected in a way that bypassed the hook (e.g. a plugin reordering): install now.
        module = ha_install if kind == "ha" else node_red_install
        try:
            got = _ENVS[kind] = module.ensure()
        except Exception as exc:  # any failure to install means unavailable
            got = _ENVS[kind] = f"{kind} unavailable: {exc}"
    if isinstance(got, str):
        consumer_unavailable(got)
    return got


@pytest.fixture(scope="session")
def ha_env() -> ha_install.HaEnv:
    return _env("ha")  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def node_red_env() -> node_red_install.NodeRedEnv:
    return _env("node-red")  # type: ignore[no-any-return]


@pytest.fixture
async def home_assistant(
    ha_env: Any, mosquitto: Mosquitto, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[HomeAssistant]:
    """A running Home Assistant with MQTT (discovery on) against the test's mosquitto."""
    ha = HomeAssistant(ha_env.hass, tmp_path / "ha", mosquitto.host, mosquitto.port)
    try:
        took = await ha.start()
        request.node.user_properties.append(("ha_start_s", round(took, 1)))
        print(f"[consumers] Home Assistant started in {took:.1f}s")
        yield ha
    finally:
        await ha.close()


@pytest.fixture
async def node_red(
    node_red_env: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[[Path], Awaitable[NodeRed]]]:
    """A factory: start Node-RED headless on a flows file; stopped at teardown."""
    started: list[NodeRed] = []

    async def start(flows: Path) -> NodeRed:
        nr = NodeRed(node_red_env.node_red, tmp_path / f"node-red-{len(started)}", flows)
        started.append(nr)
        took = await nr.start()
        request.node.user_properties.append(("node_red_start_s", round(took, 1)))
        print(f"[consumers] Node-RED started in {took:.1f}s")
        return nr

    yield start
    for nr in started:
        await nr.stop()
