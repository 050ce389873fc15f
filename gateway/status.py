"""``cloud2mqtt status``: the accounts of a running gateway, read from its ``bridge/*`` topics.

Subscribes (with the runtime's own MQTT client) to the retained ``bridge/state``,
``bridge/accounts``, ``bridge/health`` and ``bridge/info`` of one base topic and shows a table of
accounts — vendor, name, state, since (how long ago), devices, last error, and in cluster mode
the instance that runs it — and the totals. In cluster mode ``bridge/health`` is the live
instances' sum (gateway/instances.py), so the rates are the cluster's, and its ``instances``
name the instances it counted, each with its uptime.
Live (a ``rich`` table refreshed in place) until Ctrl-C, or ``--once``: plain text for scripts,
exit 0; exit 1 with one line when no gateway answers within ``--timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any, TextIO

import orjson

from .mqtt.client import MqttClient

__all__ = ["Snapshot", "ago", "render_plain", "run_status", "write_table"]

TOPICS = ("state", "accounts", "health", "info")


def ago(ms: int | None, now_ms: int | None = None) -> str:
    """``since`` as a person reads it: ``12s``, ``5m 03s``, ``2h 10m``, ``3d 4h``."""
    if not ms:
        return "-"
    now_ms = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    s = max(0, (now_ms - ms) // 1000)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


class Snapshot:
    """The last value of each ``bridge/*`` topic, as received."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.values: dict[str, Any] = {}
        self.changed = asyncio.Event()

    def on_message(self, topic: str, payload: bytes, props: dict[str, Any]) -> None:
        name = topic.rsplit("/", 1)[-1]
        if not payload:
            self.values.pop(name, None)
        else:
            try:
                self.values[name] = orjson.loads(payload)
            except orjson.JSONDecodeError:
                return
        self.changed.set()

    @property
    def complete(self) -> bool:
        return "state" in self.values and "accounts" in self.values

    @property
    def clustered(self) -> bool:
        """A cluster's merged ``bridge/accounts``: each entry names its instance."""
        return any("instance" in a for a in self.values.get("accounts") or [])

    def headers(self) -> list[str]:
        return [*HEADERS, "INSTANCE"] if self.clustered else HEADERS

    def rows(self) -> list[list[str]]:
        accounts = self.values.get("accounts") or []
        clustered = self.clustered
        rows = []
        for a in sorted(accounts, key=lambda a: (str(a.get("vendor")), str(a.get("name")))):
            state = str(a.get("state", "?")) + (" !" if a.get("attention") else "")
            rows.append([
                str(a.get("vendor", "?")), str(a.get("name", "?")), state, ago(a.get("since")),
                str(a.get("devices", 0)), str(a.get("error") or "")[:80],
            ])  # fmt: skip
            if clustered:
                rows[-1].append(str(a.get("instance") or "-"))
        return rows

    def totals(self) -> str:
        accounts = self.values.get("accounts") or []
        health = self.values.get("health") or {}
        info = self.values.get("info") or {}
        bridge = (self.values.get("state") or {}).get("state", "unknown")
        online = sum(1 for a in accounts if a.get("state") == "online")
        attention = sum(1 for a in accounts if a.get("attention"))
        devices = sum(int(a.get("devices") or 0) for a in accounts)
        parts = [
            f"bridge {bridge}",
            f"accounts {online}/{len(accounts)} online",
            f"{attention} need attention" if attention else "",
            f"devices {devices}",
        ]
        rates = health.get("rates") or {}
        if rates:
            parts.append(f"published {rates.get('published_per_s', 0)}/s")
        instances = health.get("instances")
        if isinstance(instances, dict) and instances:  # a cluster's merged bridge/health
            up = ", ".join(
                f"{name} up {_uptime(own)}" for name, own in sorted(instances.items())
            )
            parts.append(f"cluster {len(instances)} instance(s): {up}")
        elif live := (info.get("cluster") or {}).get("live"):
            parts.append(f"cluster {len(live)} instance(s)")
        if info.get("version"):
            parts.append(f"v{info['version']} ({info.get('speedups', '?')})")
        return " | ".join(p for p in parts if p)


HEADERS = ["VENDOR", "NAME", "STATE", "SINCE", "DEVICES", "LAST ERROR"]


def _uptime(own: Any) -> str:
    """An instance's uptime from its part of the merged ``bridge/health``."""
    uptime = own.get("uptime_s") if isinstance(own, dict) else None
    if not isinstance(uptime, int):
        return "?"
    return ago(1, 1 + uptime * 1000)  # "how long ago it started"


def render_plain(snap: Snapshot, out: TextIO) -> None:
    write_table([snap.headers(), *snap.rows()], out)
    out.write(snap.totals() + "\n")


def write_table(rows: list[list[str]], out: TextIO) -> None:
    """``rows`` (the first: headers) as plain text in aligned columns, for scripts and pipes."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def _render_rich(snap: Snapshot, source: str) -> Any:
    from rich.table import Table

    table = Table(title=f"cloud2mqtt status — {source}", caption=snap.totals(), expand=False)
    styles = {"online": "green", "connecting": "yellow", "backoff": "yellow", "attention": "red"}
    for h in snap.headers():
        table.add_column(h, justify="right" if h == "DEVICES" else "left")
    for row in snap.rows():
        style = styles.get(row[2].rstrip(" !"), "")
        table.add_row(*row[:2], f"[{style}]{row[2]}[/]" if style else row[2], *row[3:])
    return table


async def run_status(
    host: str,
    port: int,
    *,
    base: str = "cloud2mqtt",
    username: str | None = None,
    password: str | None = None,
    ssl: Any = None,
    once: bool = False,
    timeout: float = 5.0,
    out: TextIO = sys.stdout,
) -> int:
    snap = Snapshot(base)
    client = MqttClient(
        host, port, client_id=f"cloud2mqtt-status-{os.getpid()}", username=username,
        password=password, ssl=ssl, server_hostname=host, on_message=snap.on_message,
        reconnect=not once,
    )  # fmt: skip
    source = f"{host}:{port}, base topic {base!r}"
    try:
        await asyncio.wait_for(client.connect(), timeout)
    except (OSError, TimeoutError) as exc:
        print(f"cloud2mqtt status: cannot reach the broker at {host}:{port}: {exc}", file=sys.stderr)
        return 1
    try:
        await client.subscribe([(f"{base}/bridge/{t}", 0) for t in TOPICS])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not snap.complete and loop.time() < deadline:
            snap.changed.clear()
            try:
                await asyncio.wait_for(snap.changed.wait(), deadline - loop.time())
            except TimeoutError:
                break
        if not snap.complete:
            print(f"cloud2mqtt status: no gateway answered on {source} within {timeout:g}s",
                  file=sys.stderr)  # fmt: skip
            return 1
        if once:
            await asyncio.sleep(0.2)  # the other retained bridge topics arrive together
            render_plain(snap, out)
            return 0
        from rich.live import Live

        with Live(_render_rich(snap, source), refresh_per_second=2, transient=False) as live:
            while True:
                snap.changed.clear()
                try:
                    await asyncio.wait_for(snap.changed.wait(), 1.0)
                except TimeoutError:
                    pass  # refresh "since" anyway
                live.update(_render_rich(snap, source))
    finally:
        await client.disconnect()
