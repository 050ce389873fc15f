"""Stopping background tasks that call nats-py.

nats-py waits for replies with ``asyncio.wait_for``, which on Python 3.11 can lose a
cancellation that arrives as the reply does: the task then carries on as if nothing happened,
and a plain ``cancel(); await gather(...)`` waits for it forever (seen as a hang of
``Gateway.stop()`` in cluster mode). ``stop_tasks`` cancels again until every task has ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["stop_tasks"]


async def stop_tasks(tasks: Iterable[asyncio.Task[Any]], *, recheck: float = 0.5) -> None:
    """Cancel ``tasks`` and wait until each has ended, cancelling again every ``recheck``
    seconds any that swallowed the cancellation."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=recheck)
