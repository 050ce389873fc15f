"""What every emulator shares: its knobs (``CloudOptions``, built from keywords or from the
``simulate`` arguments), the async-context lifecycle (with its HTTP site, task and server
teardown), the ``Reject`` of a refused call, the ``simulate`` serve loop (with ``--print-config``
and a loud ``PortInUse``) and the ``/_control`` dispatcher."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import inspect
import random
import socket
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Self

import orjson
from aiohttp import web

__all__ = [
    "BUILD_ONLY",
    "CloudOptions",
    "PortInUse",
    "Reject",
    "SimulatedCloud",
    "add_common_arguments",
    "cancel_tasks",
    "close_server",
    "companion_port",
    "control_response",
    "fault_table",
    "serve_forever",
    "toml_accounts_block",
]


class PortInUse(OSError):
    """``serve`` could not listen: ``port`` on ``host`` is taken (or not ours to take).

    An ``OSError`` (``errno`` ``EADDRINUSE``), so a caller that does not import the emulators
    can still catch it as one. ``cloud2mqtt simulate`` prints ``str(exc)`` and exits non-zero.
    """

    def __init__(self, host: str, port: int, detail: str = "") -> None:
        self.host = host
        self.port = port
        message = f"port {port} on {host} is already in use; pick free ports with --port"
        if detail:
            message += f" ({detail})"
        super().__init__(errno.EADDRINUSE, message)

    def __str__(self) -> str:
        return str(self.strerror)


class Reject(Exception):
    """A call the emulated cloud refuses: ``code`` and ``message`` go into the vendor's error
    reply, ``extra`` into the fields some vendors add (CoolKit's ``region``)."""

    def __init__(self, code: Any, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


#: ``metadata`` of an option that only shapes how the cloud is built (a count of devices at
#: start, the seed): it does not become an attribute of the cloud.
BUILD_ONLY: Mapping[str, bool] = {"build_only": True}


@dataclass(frozen=True, kw_only=True)
class CloudOptions:
    """The knobs of an emulated cloud; each vendor's options add its own to these.

    ``port`` (and a vendor's other ports) 0: a free port, picked at ``start``.
    """

    host: str = "127.0.0.1"
    port: int = 0
    seed: int = field(default=0, metadata=BUILD_ONLY)  # of the cloud's ``rng``

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides: Any) -> Self:
        """The options ``cloud2mqtt simulate`` asked for: every option that has an argument of
        its name in ``args`` (``--ws-port`` gives ``ws_port``), then ``overrides``."""
        given = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        return cls(**{**given, **overrides})


def companion_port(args: argparse.Namespace) -> int:
    """``--ws-port``, by default the one after ``--port`` (a free one when ``--port`` is 0)."""
    if args.ws_port is not None:
        return int(args.ws_port)
    return int(args.port) + 1 if args.port else 0


class SimulatedCloud:
    """Base of the emulated clouds: ``async with Cloud(...) as cloud`` starts and stops it.

    ``Cloud(options)`` or ``Cloud(**knobs)`` (the fields of the subclass's ``Options``): every
    option but the ``BUILD_ONLY`` ones becomes an attribute of the cloud, which tests and faults
    may change while it runs (``port`` becomes the one bound); ``rng`` is seeded with ``seed``.
    A subclass serves its HTTP API (on an ``_http_app``, which routes ``/_control`` to the
    methods its ``FAULTS`` names) with ``_serve_http`` in ``start`` and ``_stop_http`` in ``stop``.
    """

    vendor: ClassVar[str]  # the ``vendor`` of its ``[[accounts]]`` table
    Options: ClassVar[type[CloudOptions]] = CloudOptions
    #: ``POST /_control/<fault>``: each fault and the method it calls (``fault_table``)
    FAULTS: ClassVar[Mapping[str, str]] = {}
    options: CloudOptions
    host: str
    port: int
    _runner: web.AppRunner | None = None

    def __init__(self, options: CloudOptions | None = None, /, **knobs: Any) -> None:
        if options is None:
            options = self.Options(**knobs)
        elif knobs:
            raise TypeError("pass the options or the knobs, not both")
        self.options = options
        for f in fields(options):
            if not f.metadata.get("build_only"):
                setattr(self, f.name, getattr(options, f.name))
        self.rng = random.Random(options.seed)

    @property
    def url(self) -> str:
        """Where the HTTP API is (a vendor with a path prefix adds it)."""
        return f"http://{self.host}:{self.port}"

    def account_config(self, name: str = "demo", **overrides: Any) -> dict[str, Any]:
        """The ``[[accounts]]`` table that points a gateway at this emulator."""
        return self._accounts_table(name, overrides, **self._account_settings())

    def _account_settings(self) -> dict[str, Any]:
        """What ``account_config`` puts in the table after ``vendor`` and ``name``."""
        raise NotImplementedError

    def _accounts_table(
        self, name: str, overrides: Mapping[str, Any], **settings: Any
    ) -> dict[str, Any]:
        """An ``[[accounts]]`` table for a gateway: ``settings``, then ``overrides``."""
        return {"vendor": self.vendor, "name": name, **settings, **overrides}

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _http_app(self, **kwargs: Any) -> web.Application:
        """A ``web.Application(**kwargs)`` that already routes ``POST /_control/<fault>``; the
        vendor adds its API's routes after it."""
        app = web.Application(**kwargs)
        app.router.add_post("/_control/{fault}", self._control)
        return app

    async def _control(self, request: web.Request) -> web.Response:
        """``POST /_control/<fault>``: the method ``FAULTS`` names (see ``control_response``)."""
        actions = {fault: getattr(self, method) for fault, method in self.FAULTS.items()}
        return await control_response(request, actions)

    async def _serve_http(self, app: web.Application) -> None:
        """Serve ``app`` on ``host``:``port``; a ``port`` of 0 becomes the one bound."""
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = self._runner.addresses[0][1]

    async def _stop_http(self) -> None:
        """Stop what ``_serve_http`` started (nothing when it did not run)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def cancel_tasks(tasks: Collection[asyncio.Task[Any]]) -> None:
    """Cancel every one of ``tasks``, then wait until each has ended."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def close_server(server: Any) -> None:
    """Close a listening (asyncio or websockets) server; wait two seconds at most for it."""
    server.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.wait_closed(), 2)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every ``cloud2mqtt simulate <vendor>`` has (called by each ``add_arguments``)."""
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="also print a ready-to-paste TOML [[accounts]] block for this emulator",
    )


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return orjson.dumps(value).decode()  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _toml_key(key: str) -> str:
    bare = key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key)
    return key if bare else orjson.dumps(key).decode()


def toml_accounts_block(account: Mapping[str, Any]) -> str:
    """``account`` as a TOML ``[[accounts]]`` table (``None`` values left out: TOML has none)."""
    lines = ["[[accounts]]"]
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in account.items() if v is not None]
    return "\n".join(lines) + "\n"


def _taken(host: str, ports: Iterable[int]) -> int | None:
    """The first of ``ports`` that cannot be bound on ``host`` right now."""
    for port in ports:
        if not port:
            continue
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            try:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
            except OSError:
                return port
    return None


async def start_or_raise(cloud: SimulatedCloud, host: str, ports: Iterable[int]) -> None:
    """``cloud.start()``; a failed bind becomes ``PortInUse`` naming the port (what was
    already started is stopped first)."""
    try:
        await cloud.start()
    except OSError as exc:
        if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
            raise
        await cloud.stop()
        wanted = list(ports)
        port = _taken(host, wanted)
        raise PortInUse(host, port if port is not None else wanted[0], exc.strerror or "") from exc


async def serve_forever(
    cloud: SimulatedCloud,
    account_config: Callable[[], dict[str, Any]],
    *,
    args: argparse.Namespace | None = None,
    ports: Iterable[int] = (),
) -> None:
    """``cloud2mqtt simulate``: start, print the ``[[accounts]]`` table as one JSON line (tools
    and tests read it) and, with ``--print-config``, as a TOML block; run until cancelled.

    Raises ``PortInUse`` when one of ``ports`` (those ``args`` asked for) cannot be bound.
    """
    host = getattr(args, "host", "127.0.0.1") if args is not None else "127.0.0.1"
    await start_or_raise(cloud, host, ports)
    account = account_config()
    print(orjson.dumps(account).decode(), flush=True)
    if args is not None and getattr(args, "print_config", False):
        print(toml_accounts_block(account), end="", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await cloud.stop()


def fault_table(*same: str, **renamed: str) -> dict[str, str]:
    """A ``SimulatedCloud.FAULTS`` table: the faults ``same`` call the method of their name, each
    of ``renamed`` the method it names (``bind_code="set_bind_code"``).

    The JSON body's values reach the method as they come: one that needs an ``int`` or a
    ``str`` (a count may come as ``"3"``) converts it itself."""
    return {**{name: name for name in same}, **renamed}


async def control_response(
    request: web.Request, actions: Mapping[str, Callable[..., Any]]
) -> web.Response:
    """``POST /_control/<fault>`` of every emulator: the JSON object body becomes the keyword
    arguments of ``actions[fault]`` (awaited when it returns an awaitable).

    ``{"ok": true, "result": …}``; an unknown fault is 404, a body that is not a JSON object or
    arguments the action refuses (``TypeError``/``ValueError``/``KeyError``) are 400, both with
    ``{"ok": false, "error": …}``.
    """
    fault = request.match_info["fault"]
    action = actions.get(fault)
    if action is None:
        return web.json_response({"ok": False, "error": f"unknown fault {fault!r}"}, status=404)
    try:
        params = orjson.loads(await request.read() or b"{}")
        if not isinstance(params, dict):
            raise ValueError("body must be a JSON object")
        result = action(**params)
        if inspect.isawaitable(result):
            result = await result
    except (TypeError, ValueError, KeyError) as exc:  # orjson.JSONDecodeError is a ValueError
        return web.json_response({"ok": False, "error": str(exc)}, status=400)
    return web.json_response({"ok": True, "result": result})
