"""What every emulator shares: the async-context lifecycle and the ``simulate`` serve loop."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Mapping
from typing import Any, Self

import orjson
from aiohttp import web

__all__ = ["SimulatedCloud", "control_response", "serve_forever"]


class SimulatedCloud:
    """Base of the emulated clouds: ``async with Cloud(...) as cloud`` starts and stops it."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve_forever(
    cloud: SimulatedCloud, account_config: Callable[[], dict[str, Any]]
) -> None:
    """``cloud2mqtt simulate``: start, print the ``[[accounts]]`` table as JSON, run until cancelled."""
    await cloud.start()
    print(orjson.dumps(account_config()).decode(), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await cloud.stop()


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
