"""Vendor tokens in a JetStream KV bucket, so that an account that moves reuses its session.

Connectors read and write tokens synchronously (``ctx.tokens.load()`` / ``save()``, see
gateway/tokens.py); a KV call is a network round trip. So the store keeps an in-memory mirror
of the whole bucket:

* ``start()`` opens a watch on every key and returns once the watch has delivered the bucket as
  it is (the first connector then finds every token another instance saved);
* from then on each update another instance writes reaches the mirror through the watch;
* ``put()`` (a connector's ``save()``) changes the mirror at once and queues the value for one
  background writer, which puts (or deletes) keys in the order they were first queued; a key
  saved again before its write is coalesced into one write of the latest value; a failed write
  stays queued and is tried again;
* a watched update never overwrites a key that has a write of ours queued or in flight, nor
  one older than the last revision we wrote, so the mirror does not step back.

Keys are ``<vendor>.<account>`` with every character other than letters, digits, ``_`` and ``-``
written ``=XX`` (hex): NATS keys split tokens at ``.`` and an account name may hold dots.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import TYPE_CHECKING, Any

import orjson
from nats.errors import Error as NatsError
from nats.js.kv import KV_DEL, KV_PURGE

from ..backoff import Backoff
from ..tokens import TokenStore
from .tasks import stop_tasks

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

__all__ = ["KvTokenStore", "escape_key", "kv_key", "unescape_key"]

log = logging.getLogger("cloud2mqtt.cluster.tokens")

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def escape_key(part: str) -> str:
    """Any text → one NATS key token (letters, digits, ``_``, ``-``, and ``=XX`` for the rest)."""
    return _UNSAFE.sub(lambda m: "".join(f"={b:02X}" for b in m.group().encode()), part) or "="


def kv_key(store_key: str) -> str:
    """``vendor/account`` (the ``TokenStore`` key) → the KV key ``vendor.account``, escaped."""
    vendor, _, account = store_key.partition("/")
    return f"{escape_key(vendor)}.{escape_key(account)}"


class KvTokenStore(TokenStore):
    """A ``TokenStore`` whose file is a KV bucket; see the module docstring."""

    def __init__(self) -> None:
        super().__init__(None)
        self.kv: KeyValue | None = None
        self._queued: dict[str, dict[str, Any] | None] = {}
        self._in_flight: str | None = None
        self._written: dict[str, int] = {}  # KV key → the last revision we wrote
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, kv: KeyValue, timeout: float = 10.0) -> None:
        """Mirror the bucket, then keep the mirror current and write what is saved."""
        self.kv = kv
        watcher = await kv.watchall()
        loop = asyncio.get_running_loop()
        caught_up = loop.create_future()
        self._tasks = [
            loop.create_task(self._watch(watcher, caught_up), name="cluster-tokens-watch"),
            loop.create_task(self._write_loop(), name="cluster-tokens-write"),
        ]
        async with asyncio.timeout(timeout):
            await caught_up

    async def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (waiting at most ``timeout``), then stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.drain()
        await stop_tasks(self._tasks)  # nats-py can swallow a cancellation (tasks.py)
        self._tasks = []

    async def drain(self) -> None:
        """Return once every queued write has been confirmed."""
        while self._queued or self._in_flight is not None:
            self._idle.clear()
            await self._idle.wait()

    # ------------------------------------------------------------------ the TokenStore side

    def put(self, key: str, value: dict[str, Any] | None) -> None:
        with self._lock:
            self._set(key, value)
            self._queued[key] = None if value is None else dict(value)
        self._wake.set()

    def flush(self) -> None:
        """Nothing to do at once: writes go out in the background (``close()`` waits)."""

    # ------------------------------------------------------------------ background

    async def _watch(self, watcher: Any, caught_up: asyncio.Future[None]) -> None:
        by_kv_key: dict[str, str] = {}
        async for entry in watcher:
            if entry is None:  # the bucket as it was is delivered
                if not caught_up.done():
                    caught_up.set_result(None)
                continue
            key = by_kv_key.get(entry.key) or _store_key(entry.key)
            by_kv_key[entry.key] = key
            if key in self._queued or key == self._in_flight:
                continue  # our newer value is on its way
            if (entry.revision or 0) < self._written.get(key, 0):
                continue
            with self._lock:
                if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                    self._data.pop(key, None)
                    continue
                try:
                    value = orjson.loads(entry.value)
                except orjson.JSONDecodeError:
                    log.warning("ignoring unreadable tokens under %s", entry.key)
                    continue
                if isinstance(value, dict):
                    self._data[key] = value

    async def _write_loop(self) -> None:
        assert self.kv is not None
        backoff = Backoff(0.2, 5.0)
        while True:
            if not self._queued:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            key = next(iter(self._queued))
            with self._lock:
                value = self._queued.pop(key)
            self._in_flight = key
            try:
                async with asyncio.timeout(5):
                    if value is None:
                        await self.kv.delete(kv_key(key))
                    else:
                        self._written[key] = await self.kv.put(kv_key(key), orjson.dumps(value))
            except (NatsError, TimeoutError) as exc:
                log.warning(
                    "saving tokens of %s to NATS failed (%s); retrying", key, type(exc).__name__
                )
                with self._lock:
                    self._queued.setdefault(key, value)  # unless a newer save came meanwhile
                self._in_flight = None
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            self._in_flight = None


def _store_key(kv: str) -> str:
    vendor, _, account = kv.partition(".")
    return f"{unescape_key(vendor)}/{unescape_key(account)}"


def unescape_key(part: str) -> str:
    """The inverse of ``escape_key``."""
    if part == "=":
        return ""
    raw = re.sub(rb"=([0-9A-F]{2})", lambda m: bytes([int(m.group(1), 16)]), part.encode())
    return raw.decode("utf-8", "replace")
