"""Backpressure from the MQTT side to every vendor socket: stop reading while it is congested.

A vendor socket read in a callback (``gateway.wsclient``, the Aliyun app channel's MQTT client)
cannot ``await``; it asks ``flow.congested`` after each read and, when the gateway's MQTT
connection is behind, stops reading until ``flow.drain()`` returns. The kernel's socket buffer,
then the vendor's TCP window, absorbs the burst instead of our memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Protocol

__all__ = ["Flow", "hold_reading"]


class Flow(Protocol):
    """The MQTT side's congestion signal (``gateway.link.AccountLink`` is one)."""

    @property
    def congested(self) -> bool: ...

    def drain(self) -> Awaitable[None]: ...


def hold_reading(transport: asyncio.Transport, flow: Flow) -> asyncio.Task[None]:
    """Pause ``transport``'s reading until ``flow.drain()`` returns; keep the task while held."""
    transport.pause_reading()

    async def resume() -> None:
        await flow.drain()  # cancelled (shutdown): nothing to resume
        if not transport.is_closing():
            transport.resume_reading()

    return asyncio.get_running_loop().create_task(resume())
