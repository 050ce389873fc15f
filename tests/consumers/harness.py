"""Real consumers as subprocesses: Home Assistant (headless, REST) and Node-RED.

No fixed sleeps: every wait is ``eventually(condition, "what we wait for")``, which polls and on
timeout names the unmet condition together with the process's log tail.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from gateway.mosquitto import free_port
from tests.helpers import eventually as shared_eventually

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T | None]] | Callable[[], T | None],
    what: str,
    timeout: float = 30.0,
    interval: float = 0.1,
    context: Callable[[], str] | None = None,
) -> T:
    """``tests.helpers.eventually`` for a process that is still coming up: a probe that fails
    to connect counts as "not yet", and a timeout also shows ``context()`` (a log tail)."""
    last_exc: list[BaseException] = []

    async def tolerant() -> T | None:
        try:
            result = probe()
            if inspect.isawaitable(result):
                result = await result
            return result  # type: ignore[return-value]
        except (aiohttp.ClientError, OSError, ValueError, KeyError) as exc:
            last_exc[:] = [exc]
            return None

    try:
        return await shared_eventually(tolerant, what, timeout=timeout, interval=interval)  # type: ignore[no-any-return]
    except AssertionError as exc:
        extra = f"\nlast error: {last_exc[0]!r}" if last_exc else ""
        if context is not None:
            extra += "\n" + context()
        raise AssertionError(f"{exc}{extra}") from None


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return f"({path} unreadable)"


class _Process:
    """A child process in its own process group, stopped with SIGTERM then SIGKILL."""

    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def _spawn(self, cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )

    def log_tail(self) -> str:
        status = "running" if self.proc and self.proc.poll() is None else f"exited {self.proc and self.proc.returncode}"
        return f"--- {self.log} ({status}) ---\n{_tail(self.log)}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def stop(self, grace: float = 30.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:  # wait for the exit itself, not a poll loop
            await asyncio.wait_for(asyncio.to_thread(proc.wait), grace)
        except TimeoutError:
            pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ------------------------------------------------------------------------------------------
# Home Assistant


def _config_entry(domain: str, title: str, data: dict[str, Any], options: dict[str, Any],
                  version: int, minor_version: int) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    return {
        "created_at": now,
        "data": data,
        "discovery_keys": {},
        "disabled_by": None,
        "domain": domain,
        "entry_id": uuid.uuid4().hex,
        "minor_version": minor_version,
        "modified_at": now,
        "options": options,
        "pref_disable_new_entities": False,
        "pref_disable_polling": False,
        "source": "user",
        "subentries": [],
        "title": title,
        "unique_id": None,
        "version": version,
    }


def write_ha_config(config_dir: Path, http_port: int, broker_host: str, broker_port: int,
                    discovery_prefix: str = "homeassistant") -> None:
    """A minimal headless configuration: http + api, no default_config; the MQTT entry
    pre-written in the storage format of Home Assistant 2025.4 (config entries 1.5, MQTT 1.2:
    broker in ``data``, discovery settings in ``options``)."""
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "configuration.yaml").write_text(
        "homeassistant:\n"
        "  name: cloud2mqtt-test\n"
        "  latitude: 0\n  longitude: 0\n  elevation: 0\n"
        "  unit_system: metric\n  time_zone: UTC\n  country: DE\n  currency: EUR\n"
        "http:\n"
        "  server_host: 127.0.0.1\n"
        f"  server_port: {http_port}\n"
        "api:\n"
        "logger:\n"
        "  default: warning\n"
        "  logs:\n"
        "    homeassistant.components.mqtt: info\n"
    )
    storage = config_dir / ".storage"
    storage.mkdir(exist_ok=True)
    entry = _config_entry(
        "mqtt", broker_host,
        {"broker": broker_host, "port": broker_port},
        {"discovery": True, "discovery_prefix": discovery_prefix},
        version=1, minor_version=2,
    )
    (storage / "core.config_entries").write_text(json.dumps({
        "version": 1, "minor_version": 5, "key": "core.config_entries",
        "data": {"entries": [entry]},
    }))


class HomeAssistant(_Process):
    """One headless Home Assistant on a free port, talked to through its REST API."""

    def __init__(self, hass: Path, config_dir: Path, broker_host: str, broker_port: int,
                 discovery_prefix: str = "homeassistant") -> None:
        self.hass = hass
        self.config_dir = config_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = config_dir / "ha-stdout.log"
        self.token: str | None = None
        self.session: aiohttp.ClientSession | None = None
        write_ha_config(config_dir, self.port, broker_host, broker_port, discovery_prefix)

    def log_tail(self) -> str:
        return super().log_tail() + "\n" + _tail(self.config_dir / "home-assistant.log")

    async def start(self, timeout: float = 120.0) -> float:
        """Start, onboard an owner, wait until running with MQTT loaded; return seconds taken."""
        started = time.monotonic()
        self._spawn([str(self.hass), "-c", str(self.config_dir), "--skip-pip", "--log-no-color"],
                    cwd=self.config_dir)
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        deadline = started + timeout

        def left() -> float:
            return max(1.0, deadline - time.monotonic())

        async def onboarding_up() -> bool:
            if not self.alive():
                raise RuntimeError("Home Assistant exited:\n" + self.log_tail())
            assert self.session is not None
            async with self.session.get(f"{self.url}/api/onboarding") as resp:
                return resp.status == 200

        await eventually(onboarding_up, "Home Assistant's onboarding API answers", left(),
                         context=self.log_tail)
        await self._onboard()

        async def running() -> bool:
            cfg = await self.get("/api/config")
            return cfg.get("state") == "RUNNING"

        await eventually(running, "Home Assistant reports state RUNNING", left(),
                         context=self.log_tail)

        async def mqtt_loaded() -> bool:
            entries = await self.get("/api/config/config_entries/entry?domain=mqtt")
            return any(e.get("state") == "loaded" for e in entries)

        await eventually(mqtt_loaded, "the MQTT config entry is loaded", left(),
                         context=self.log_tail)
        return time.monotonic() - started

    async def _onboard(self) -> None:
        assert self.session is not None
        client_id = f"{self.url}/"
        async with self.session.post(f"{self.url}/api/onboarding/users", json={
            "client_id": client_id, "name": "Test", "username": "test",
            "password": "test-password-1", "language": "en",
        }) as resp:
            body = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"onboarding failed: {resp.status} {body}")
        async with self.session.post(f"{self.url}/auth/token", data={
            "grant_type": "authorization_code", "code": body["auth_code"], "client_id": client_id,
        }) as resp:
            tok = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"token exchange failed: {resp.status} {tok}")
        self.token = tok["access_token"]

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def get(self, path: str) -> Any:
        assert self.session is not None
        async with self.session.get(self.url + path, headers=self._headers()) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        assert self.session is not None
        async with self.session.post(self.url + path, headers=self._headers(), json=body or {}) as resp:
            text = await resp.text()
            if resp.status >= 400:
                raise RuntimeError(f"POST {path} -> {resp.status}: {text}")
            return json.loads(text) if text else None

    async def states(self) -> dict[str, dict[str, Any]]:
        return {s["entity_id"]: s for s in await self.get("/api/states")}

    async def state(self, entity_id: str) -> dict[str, Any] | None:
        return (await self.states()).get(entity_id)

    async def call(self, domain: str, service: str, **data: Any) -> Any:
        return await self.post(f"/api/services/{domain}/{service}", data)

    async def wait_entity(self, entity_id: str, predicate: Callable[[dict[str, Any]], bool] | None = None,
                          timeout: float = 30.0) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            st = await self.state(entity_id)
            if st is not None and (predicate is None or predicate(st)):
                return st
            return None

        what = f"entity {entity_id} exists" + (" and matches" if predicate else "")
        return await eventually(check, what, timeout, context=self.log_tail)

    async def entities_of_device(self, identifier: str) -> list[str]:
        """Entity ids of the MQTT device with this identifier, through a template (the REST
        API has no device registry endpoint)."""
        tpl = (
            "{% set ns = namespace(out=[]) %}"
            "{% for e in integration_entities('mqtt') %}"
            "{% for i in device_attr(device_id(e), 'identifiers') or [] %}"
            f"{{% if i[1] == {json.dumps(identifier)} %}}{{% set ns.out = ns.out + [e] %}}{{% endif %}}"
            "{% endfor %}{% endfor %}"
            "{{ ns.out | tojson }}"
        )
        assert self.session is not None
        async with self.session.post(self.url + "/api/template", headers=self._headers(),
                                     json={"template": tpl}) as resp:
            text = await resp.text()
            if resp.status >= 400:
                raise RuntimeError(f"template -> {resp.status}: {text}")
        return list(json.loads(text))

    def problems(self) -> list[str]:
        """Warnings and errors Home Assistant logged about MQTT entities or their templates."""
        text = _tail(self.config_dir / "home-assistant.log", 10_000_000)
        return [
            line for line in text.splitlines()
            if (" WARNING " in line or " ERROR " in line)
            and ("components.mqtt" in line or "helpers.template" in line)
        ]

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None
        await self.stop()


# ------------------------------------------------------------------------------------------
# Node-RED


NODE_RED_SETTINGS = """\
// Headless Node-RED for the cloud2mqtt tests: no editor, no credential secret prompt,
// flows from the file given on the command line.
module.exports = {
    uiHost: "127.0.0.1",
    httpAdminRoot: "/admin",
    httpNodeRoot: "/",
    disableEditor: true,
    credentialSecret: false,
    flowFilePretty: true,
    logging: { console: { level: "info", metrics: false, audit: false } },
    functionExternalModules: false,
    externalModules: { autoInstall: false, palette: { allowInstall: false } },
    telemetry: { enabled: false },
    diagnostics: { enabled: false },
    runtimeState: { enabled: false },
    contextStorage: { default: { module: "memory" } },
};
"""


class NodeRed(_Process):
    def __init__(self, node_red: Path, user_dir: Path, flows: Path) -> None:
        self.node_red = node_red
        self.user_dir = user_dir
        self.flows = flows
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = user_dir / "node-red.log"
        user_dir.mkdir(parents=True, exist_ok=True)
        (user_dir / "settings.js").write_text(NODE_RED_SETTINGS)

    async def start(self, timeout: float = 60.0) -> float:
        started = time.monotonic()
        env = dict(os.environ, NODE_RED_ENABLE_PROJECTS="false")
        self._spawn(
            [str(self.node_red), "-u", str(self.user_dir), "-p", str(self.port),
             "-s", str(self.user_dir / "settings.js"), str(self.flows)],
            cwd=self.user_dir, env=env,
        )

        def flows_started() -> bool:
            if not self.alive():
                raise RuntimeError("Node-RED exited:\n" + self.log_tail())
            return "Started flows" in _tail(self.log, 100_000)

        await eventually(flows_started, "Node-RED logs 'Started flows'", timeout,
                         context=self.log_tail)
        return time.monotonic() - started
