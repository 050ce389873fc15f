"""``XkyCloud``: the emulated XiakeCloud (what it serves and the faults it injects: see the
package docstring, ``emulators.xky``)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from aiohttp import web

from protocols.xky import api
from protocols.xky.envelope import ASSUMED_ENVELOPE, encode_error, encode_ok
from protocols.xky.records import DeviceRecord, encode_device

from ..base import (
    BUILD_ONLY,
    CloudOptions,
    Reject,
    SimulatedCloud,
    add_common_arguments,
    cancel_tasks,
    fault_table,
    serve_forever,
)

__all__ = ["XkyCloud", "XkyOptions", "add_arguments", "demo_cloud", "serve"]

log = logging.getLogger("cloud2mqtt.sim.xky")

_T = TypeVar("_T")

# Codes of the assumed envelope the emulator answers with (see protocols.xky.envelope).
SESSION_INVALID = ASSUMED_ENVELOPE.session_invalid
BAD_ARGS, FORBIDDEN, NOT_FOUND, BAD_LOGIN = 400, 403, 404, 1001


@dataclass
class SimDevice:
    sn: str
    name: str = ""
    desc: str = ""
    tags: list[str] = field(default_factory=list)
    node: str | None = None
    online: bool = True
    model: str = "android"

    def record(self, report_online: bool) -> dict[str, Any]:
        rec = DeviceRecord(
            self.sn,
            self.name,
            self.desc,
            tuple(self.tags),
            self.node,
            self.online if report_online else None,
            {"model": self.model},
        )
        out = encode_device(rec)
        if not report_online:
            out.pop("online", None)
        return out


@dataclass
class SimSub:
    id: str
    account: str
    password: str
    description: str = ""
    devices: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "account": self.account,
            "description": self.description,
            "devices": list(self.devices),
        }


@dataclass
class SimNode:
    id: str
    serial: str
    name: str


@dataclass
class SimSession:
    account: str
    sub: str | None  # sub-account id, None for the main account
    expires: float | None  # loop.time()


@dataclass
class Fault:
    kind: str  # fail | slow | malformed
    count: int
    path: str | None
    status: int = 500
    seconds: float = 0.0
    garble: str = "garble"


@dataclass
class Call:
    method: str
    path: str
    args: dict[str, Any]
    at: float  # time.monotonic()


@dataclass(frozen=True, kw_only=True)
class XkyOptions(CloudOptions):
    """The knobs of an ``XkyCloud``: its main account, what it has at start, session lifetimes
    (seconds; ``session_ttl`` None: never) and the background life."""

    account: str = "demo"
    password: str = "demo-pass"
    key: str = api.DEFAULT_KEY
    devices: int = field(default=3, metadata=BUILD_ONLY)
    nodes: int = field(default=1, metadata=BUILD_ONLY)
    subaccount: tuple[str, str] | None = field(default=("kid", "kid-pass"), metadata=BUILD_ONLY)
    session_ttl: float | None = None
    temp_session_ttl: float = 300.0
    change_interval: float | None = None
    churn_interval: float | None = None
    report_online: bool = True


class XkyCloud(SimulatedCloud):
    """One emulated XiakeCloud with a single main account (plus its sub-accounts)."""

    vendor = "xky"
    Options = XkyOptions
    options: XkyOptions

    def __init__(self, options: XkyOptions | None = None, /, **knobs: Any) -> None:
        super().__init__(options, **knobs)
        self.uid = "934"
        self.devices: dict[str, SimDevice] = {}
        self.nodes: dict[str, SimNode] = {}
        self.subs: dict[str, SimSub] = {}
        self.multi: list[str] = []
        self.sessions: dict[str, SimSession] = {}
        self.faults: list[Fault] = []
        self.calls: list[Call] = []
        self._ids = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()  # ends pending "slow" replies at stop()
        for i in range(self.options.nodes):
            node_id = str(next(self._ids))
            self.nodes[node_id] = SimNode(node_id, f"{i + 1:032d}", f"node {i + 1}")
        for _ in range(self.options.devices):
            self.add_device()
        subaccount = self.options.subaccount
        if subaccount is not None:
            sub_id = str(next(self._ids))
            self.subs[sub_id] = SimSub(
                sub_id, subaccount[0], subaccount[1], "demo sub-account", list(self.devices)[:1]
            )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._stopping.clear()
        app = self._http_app()
        app.router.add_route("*", "/{path:.*}", self._handle)
        await self._serve_http(app)
        if self.change_interval:
            self._tasks.append(asyncio.create_task(self._every(self.change_interval, self._change)))
        if self.churn_interval:
            self._tasks.append(asyncio.create_task(self._every(self.churn_interval, self._churn)))
        log.info("xky emulator on %s (account %s)", self.url, self.account)

    async def stop(self) -> None:
        self._stopping.set()
        await cancel_tasks(self._tasks)
        self._tasks.clear()
        await self._stop_http()

    def _account_settings(self) -> dict[str, Any]:
        return dict(
            base_url=self.url,
            account=self.account,
            password=self.password,
            poll_interval=2.0,
            min_poll_interval=0.5,
        )

    # ------------------------------------------------------------------ driving devices

    def add_device(
        self,
        sn: str | None = None,
        *,
        name: str | None = None,
        desc: str = "",
        tags: list[str] | None = None,
        node: str | None = None,
        online: bool = True,
    ) -> str:
        sn = sn or f"{self.rng.getrandbits(32):08x}"
        if node is None and self.nodes:
            node = next(iter(self.nodes))
        name = name if name is not None else f"device {sn}"
        self.devices[sn] = SimDevice(sn, name, desc, list(tags or []), node, online)
        return sn

    def remove_device(self, sn: str) -> None:
        self.devices.pop(sn, None)
        self.multi = [s for s in self.multi if s != sn]
        for sub in self.subs.values():
            sub.devices = [s for s in sub.devices if s != sn]

    def update_device(self, sn: str, **fields: Any) -> None:
        dev = self.devices[sn]
        for key, value in fields.items():
            if key not in ("name", "desc", "tags", "node", "online", "model"):
                raise KeyError(key)
            setattr(dev, key, list(value) if key == "tags" else value)

    def set_online(self, sn: str, online: bool) -> None:
        self.devices[sn].online = online

    # ------------------------------------------------------------------ faults

    FAULTS = fault_table(
        "fail", "slow", "malformed", "expire_sessions", "reset", "add_device", "remove_device",
        "update_device", "set_online",
    )  # fmt: skip

    def expire_sessions(self) -> None:
        self.sessions.clear()

    def fail(self, count: int = 1, status: int = 500, path: str | None = None) -> None:
        self.faults.append(Fault("fail", count, path, status=status))

    def slow(self, seconds: float, count: int = 1, path: str | None = None) -> None:
        self.faults.append(Fault("slow", count, path, seconds=seconds))

    def malformed(self, count: int = 1, kind: str = "garble", path: str | None = None) -> None:
        if kind not in ("garble", "shape", "record"):
            raise ValueError(f"unknown malformed kind {kind!r}")
        self.faults.append(Fault("malformed", count, path, garble=kind))

    def reset(self) -> None:
        self.faults.clear()

    def count(self, path: str) -> int:
        """How many calls ``path`` received (tests)."""
        return sum(1 for c in self.calls if c.path == path)

    def _take_faults(self, path: str) -> list[Fault]:
        """Every pending ``slow`` fault for ``path``, then at most one that replaces the reply."""
        taken: list[Fault] = []
        replaced = False
        for fault in self.faults:
            if fault.count <= 0 or fault.path not in (None, path):
                continue
            if fault.kind != "slow":
                if replaced:
                    continue
                replaced = True
            fault.count -= 1
            taken.append(fault)
        taken.sort(key=lambda f: f.kind != "slow")
        self.faults = [f for f in self.faults if f.count > 0]
        return taken

    # ------------------------------------------------------------------ background life

    async def _every(self, interval: float, step: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(interval)
            step()

    def _change(self) -> None:
        if not self.devices:
            return
        dev = self.devices[self.rng.choice(sorted(self.devices))]
        if self.rng.random() < 0.5:
            dev.online = not dev.online
        else:
            dev.desc = f"changed {self.rng.randrange(1000)}"

    def _churn(self) -> None:
        if self.devices and (len(self.devices) > 5 or self.rng.random() < 0.5):
            self.remove_device(self.rng.choice(sorted(self.devices)))
        else:
            self.add_device(f"{self.rng.getrandbits(32):08x}")

    # ------------------------------------------------------------------ the API

    async def _handle(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["path"]
        body = await request.read()
        for fault in self._take_faults(path):
            if fault.kind == "slow":
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), fault.seconds)
            elif fault.kind == "fail":
                return web.Response(
                    status=fault.status, text=f"<html>{fault.status} emulated</html>"
                )
            elif fault.garble == "garble":
                return web.Response(
                    body=b'{"code":0,"data":[{"sn":', content_type="application/json"
                )
            elif fault.garble == "shape":
                return self._reply(encode_ok("not what you expected"))
            else:
                return self._reply(encode_ok([{"sn": "ok"}, {"name": "record without a serial"}]))
        try:
            endpoint, args = api.parse_request(request.method, path, request.query, body)
        except api.BadRequest as exc:
            self.calls.append(Call(request.method, path, {}, time.monotonic()))
            return self._reply(encode_error(exc.code, exc.message))
        self.calls.append(Call(request.method, path, api.redact(args), time.monotonic()))
        handler = getattr(self, "_api_" + path.strip("/"), None)
        try:
            if handler is None:
                raise Reject(NOT_FOUND, f"{endpoint.name} is not emulated")
            data = await handler(args)
        except Reject as exc:
            return self._reply(encode_error(exc.code, exc.message))
        if args.get("source") is not True:
            # seed: "source — whether to decrypt the returned result"; without it the payload
            # stays encrypted. The emulator stands in base64 for the cipher.
            data = base64.b64encode(orjson.dumps(data)).decode()
        return self._reply(encode_ok(data))

    @staticmethod
    def _reply(body: bytes) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    def _session(self, args: dict[str, Any]) -> SimSession:
        token = args.get("session")
        sess = self.sessions.get(token) if isinstance(token, str) else None
        if sess is None:
            raise Reject(SESSION_INVALID, "session invalid")
        if sess.expires is not None and asyncio.get_running_loop().time() >= sess.expires:
            del self.sessions[token]  # type: ignore[arg-type]
            raise Reject(SESSION_INVALID, "session expired")
        return sess

    def _main_only(self, args: dict[str, Any]) -> SimSession:
        sess = self._session(args)
        if sess.sub is not None:
            raise Reject(FORBIDDEN, "not allowed for a sub-control account")
        return sess

    def _visible(self, sess: SimSession) -> list[str]:
        if sess.sub is None:
            return list(self.devices)
        sub = self.subs.get(sess.sub)
        return [sn for sn in (sub.devices if sub else []) if sn in self.devices]

    def _device(self, sess: SimSession, args: dict[str, Any]) -> SimDevice:
        sn = args.get("sn")
        if not isinstance(sn, str) or not sn:
            raise Reject(BAD_ARGS, "sn is required")
        if sn not in self.devices:
            raise Reject(NOT_FOUND, f"no device {sn}")
        if sn not in self._visible(sess):
            raise Reject(FORBIDDEN, f"device {sn} is not yours")
        return self.devices[sn]

    def _new_session(self, account: str, sub: str | None, ttl: float | None) -> str:
        token = secrets.token_hex(16)
        expires = None if ttl is None else asyncio.get_running_loop().time() + ttl
        self.sessions[token] = SimSession(account, sub, expires)
        return token

    async def _api_login(self, args: dict[str, Any]) -> Any:
        if args.get("key", api.DEFAULT_KEY) != self.key:
            raise Reject(BAD_LOGIN, "unknown software key")
        account, password, subname = (
            args.get("account"),
            args.get("password"),
            args.get("subaccount"),
        )
        if account != self.account:
            raise Reject(BAD_LOGIN, "wrong account or password")
        if not subname:
            if password != self.password:
                raise Reject(BAD_LOGIN, "wrong account or password")
            return {"session": self._new_session(account, None, self.session_ttl), "id": self.uid}
        for sub in self.subs.values():
            if sub.account == subname and sub.password == password:
                return {
                    "session": self._new_session(account, sub.id, self.session_ttl),
                    "id": sub.id,
                }
        raise Reject(BAD_LOGIN, "wrong sub-account or password")

    async def _api_logout(self, args: dict[str, Any]) -> Any:
        self._session(args)
        self.sessions.pop(args["session"], None)
        return None

    async def _api_get_temp_session(self, args: dict[str, Any]) -> Any:
        sess = self._session(args)
        return {"session": self._new_session(sess.account, sess.sub, self.temp_session_ttl)}

    async def _api_get_user(self, args: dict[str, Any]) -> Any:
        sess = self._session(args)
        user: dict[str, Any] = {
            "id": self.uid,
            "account": sess.account,
            "devices": len(self._visible(sess)),
        }
        if sess.sub is not None:
            user["subaccount"] = self.subs[sess.sub].account
        return user

    # sub-control accounts

    async def _api_add_subaccount(self, args: dict[str, Any]) -> Any:
        self._main_only(args)
        account, password = args.get("account"), args.get("password")
        if (
            not isinstance(account, str)
            or not account
            or not isinstance(password, str)
            or not password
        ):
            raise Reject(BAD_ARGS, "account and password are required")
        if any(s.account == account for s in self.subs.values()):
            raise Reject(BAD_ARGS, f"sub-account {account} exists")
        sub_id = str(next(self._ids))
        self.subs[sub_id] = SimSub(sub_id, account, password, str(args.get("description") or ""))
        return {"id": sub_id}

    async def _api_get_subaccount_list(self, args: dict[str, Any]) -> Any:
        self._main_only(args)
        return [s.record() for s in self.subs.values()]

    def _sub(self, args: dict[str, Any]) -> SimSub:
        return self._by_id(self.subs, args, "sub-account")

    def _by_id(self, table: dict[str, _T], args: dict[str, Any], what: str) -> _T:
        """The sub-account or node server ``args["id"]`` names (main account only)."""
        self._main_only(args)
        found = table.get(str(args.get("id")))
        if found is None:
            raise Reject(NOT_FOUND, f"no such {what}")
        return found

    async def _api_get_subaccount(self, args: dict[str, Any]) -> Any:
        return self._sub(args).record()

    async def _api_set_subaccount(self, args: dict[str, Any]) -> Any:
        sub = self._sub(args)
        devices = args.get("devices")
        if devices is not None:
            if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
                raise Reject(BAD_ARGS, "devices must be an array of serial numbers")
            unknown = [d for d in devices if d not in self.devices]
            if unknown:
                raise Reject(NOT_FOUND, f"no device {unknown[0]}")
            sub.devices = list(devices)
        if isinstance(args.get("password"), str) and args["password"]:
            sub.password = args["password"]
        if isinstance(args.get("description"), str):
            sub.description = args["description"]
        return None

    async def _api_delete_subaccount(self, args: dict[str, Any]) -> Any:
        sub = self._sub(args)
        del self.subs[sub.id]
        self.sessions = {t: s for t, s in self.sessions.items() if s.sub != sub.id}
        return None

    # node servers

    def _node(self, args: dict[str, Any]) -> SimNode:
        return self._by_id(self.nodes, args, "node")

    async def _api_add_node(self, args: dict[str, Any]) -> Any:
        self._main_only(args)
        serial, name = args.get("serial"), args.get("name")
        if not isinstance(serial, str) or not serial or not isinstance(name, str):
            raise Reject(BAD_ARGS, "serial and name are required")
        node_id = str(next(self._ids))
        self.nodes[node_id] = SimNode(node_id, serial, name)
        return {"id": node_id}

    async def _api_get_node_list(self, args: dict[str, Any]) -> Any:
        self._session(args)
        return [{"id": n.id, "serial": n.serial, "name": n.name} for n in self.nodes.values()]

    async def _api_set_node(self, args: dict[str, Any]) -> Any:
        node = self._node(args)
        if not isinstance(args.get("name"), str):
            raise Reject(BAD_ARGS, "name is required")
        node.name = args["name"]
        return None

    async def _api_del_node(self, args: dict[str, Any]) -> Any:
        node = self._node(args)
        del self.nodes[node.id]
        for dev in self.devices.values():
            if dev.node == node.id:
                dev.node = None
        return None

    # devices

    async def _api_get_device_list(self, args: dict[str, Any]) -> Any:
        sess = self._session(args)
        return [self.devices[sn].record(self.report_online) for sn in self._visible(sess)]

    async def _api_get_device(self, args: dict[str, Any]) -> Any:
        dev = self._device(self._session(args), args)
        out = dev.record(self.report_online)
        # seed: "including connection information for the device"
        out["connection"] = {"host": self.host, "port": self.port, "key": secrets.token_hex(8)}
        return out

    async def _api_set_device(self, args: dict[str, Any]) -> Any:
        dev = self._device(self._session(args), args)
        for key in ("name", "desc"):
            if key in args and not isinstance(args[key], str):
                raise Reject(BAD_ARGS, f"{key} must be a string")
        tags = args.get("tags")
        if tags is not None and (
            not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)
        ):
            raise Reject(BAD_ARGS, "tags must be an array of strings")
        if "name" in args:
            dev.name = args["name"]
        if "desc" in args:
            dev.desc = args["desc"]
        if tags is not None:
            dev.tags = list(tags)
        return None

    async def _api_del_device(self, args: dict[str, Any]) -> Any:
        dev = self._device(self._main_only(args), args)
        self.remove_device(dev.sn)
        return None

    async def _api_get_multi_device(self, args: dict[str, Any]) -> Any:
        sess = self._session(args)
        visible = set(self._visible(sess))
        return [sn for sn in self.multi if sn in visible]

    async def _api_set_multi_device(self, args: dict[str, Any]) -> Any:
        sess = self._session(args)
        sns = args.get("sns")
        if not isinstance(sns, list) or not all(isinstance(s, str) for s in sns):
            raise Reject(BAD_ARGS, "sns must be an array of serial numbers")
        visible = set(self._visible(sess))
        unknown = [s for s in sns if s not in visible]
        if unknown:
            raise Reject(NOT_FOUND, f"no device {unknown[0]}")
        self.multi = list(dict.fromkeys(sns))
        return None


def demo_cloud(devices: int = 4) -> XkyCloud:
    """The emulator as ``cloud2mqtt demo`` runs it: a device changes every 2 s (online state or
    remarks), one comes or goes every 20 s; free port."""
    return XkyCloud(devices=devices, change_interval=2.0, churn_interval=20.0)


# ---------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--account", default="demo")
    parser.add_argument("--password", default="demo-pass")
    parser.add_argument("--devices", type=int, default=3, help="devices at start")
    parser.add_argument("--nodes", type=int, default=1, help="node servers at start")
    parser.add_argument("--session-ttl", type=float, default=None, help="seconds (default: never)")
    parser.add_argument("--temp-session-ttl", type=float, default=300.0)
    parser.add_argument("--change-interval", type=float, default=None,
                        help="seconds between random device changes (online, remarks)")  # fmt: skip
    parser.add_argument("--churn-interval", type=float, default=None,
                        help="seconds between a device appearing or disappearing")  # fmt: skip
    parser.add_argument("--no-online", action="store_true", help="omit the online field")
    parser.add_argument("--seed", type=int, default=0)


async def serve(args: argparse.Namespace) -> None:
    cloud = XkyCloud(XkyOptions.from_args(args, report_online=not args.no_online))
    await serve_forever(cloud, cloud.account_config, args=args, ports=(args.port,))
