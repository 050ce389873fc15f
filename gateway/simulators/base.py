"""What every emulator shares: the async-context lifecycle and the ``simulate`` serve loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Self

import orjson

__all__ = ["SimulatedCloud", "serve_forever"]


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
