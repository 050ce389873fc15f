"""Persisted vendor tokens, one JSON file for every vendor and account.

A restart must not log in again (CoolKit blocks IPs that repeat logins; Tencent and Aliyun
tokens live for hours). Writes are atomic (temp file + ``os.replace``) and the file is created
with mode 0600 because it holds credentials.

A save is written at once unless the file was written less than ``min_interval`` ago; then it
is coalesced into one write at the end of that interval. Rewriting the whole file per save made
10,000 accounts logging in at start-up O(N²) (71 s of a 106 s start with 3,000 accounts).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("cloud2mqtt.tokens")


class TokenStore:
    def __init__(self, path: str | os.PathLike[str] | None, min_interval: float = 1.0) -> None:
        self.path = Path(path) if path else None
        self.min_interval = min_interval
        self._data: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._last_write = float("-inf")
        self._pending: asyncio.TimerHandle | None = None
        if self.path and self.path.exists():
            try:
                loaded = json.loads(self.path.read_text("utf-8"))
                if isinstance(loaded, dict):
                    self._data = {k: v for k, v in loaded.items() if isinstance(v, dict)}
            except (OSError, ValueError) as exc:
                log.warning("token store %s unreadable (%s); starting empty", self.path, exc)

    def slot(self, vendor: str, account: str) -> TokenSlot:
        return TokenSlot(self, f"{vendor}/{account}")

    def get(self, key: str) -> dict[str, Any] | None:
        value = self._data.get(key)
        return dict(value) if value is not None else None

    def put(self, key: str, value: dict[str, Any] | None) -> None:
        with self._lock:
            self._set(key, value)
        if self._pending is not None:
            return  # a coalesced write is already due
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        wait = self._last_write + self.min_interval - time.monotonic()
        if loop is None or wait <= 0:
            self.flush()
        else:
            self._pending = loop.call_later(wait, self.flush)

    def _set(self, key: str, value: dict[str, Any] | None) -> None:
        """Change the in-memory copy (the caller holds the lock); a copy of ``value`` is kept."""
        if value is None:
            self._data.pop(key, None)
        else:
            self._data[key] = dict(value)

    def flush(self) -> None:
        """Write now (also called on shutdown so a coalesced save is never lost)."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        with self._lock:
            self._last_write = time.monotonic()
            self._write()

    def _write(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # it holds tokens
        fd, tmp = tempfile.mkstemp(prefix=".tokens-", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self._data, fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


class TokenSlot:
    """One account's tokens; what a connector sees of the store."""

    __slots__ = ("_key", "_store")

    def __init__(self, store: TokenStore, key: str) -> None:
        self._store = store
        self._key = key

    def load(self) -> dict[str, Any] | None:
        return self._store.get(self._key)

    def save(self, value: dict[str, Any] | None) -> None:
        self._store.put(self._key, value)
