"""One gateway per base topic: each instance announces itself, a second one refuses to start.

Each instance holds a small MQTT connection of its own whose last will marks its retained
``<base>/bridge/instances/<instance id>`` offline, so the topic says which instances are alive
even after a crash. Before the gateway connects its main client (whose client id a second
instance would share, taking over each other's session), ``Presence.claim()`` reads the
retained announcements of the base topic: another instance announcing ``online`` means a live
gateway already serves this base topic, and ``claim()`` raises ``InstanceConflict`` saying who
and where. Running several instances that share the accounts is cluster mode's job, not this:
there (``claim(shared=True)``) the other instances are expected and only announced.

When the broker cannot be reached at start-up the check cannot be made: ``claim()`` says so in
its return value and the announcement is made once the broker is there.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any

import orjson

from .mqtt.client import MqttClient, Will

__all__ = ["InstanceConflict", "Presence"]

log = logging.getLogger("cloud2mqtt.presence")


class InstanceConflict(Exception):
    """Another live instance announces itself on the same broker and base topic."""


class Presence:
    """The instance's own announcement, and the check for another live one.

    ``client_kwargs`` are the main MQTT client's connection settings (host, port, TLS,
    credentials); the presence connection uses its own client id.
    """

    def __init__(self, base: str, instance_id: str, **client_kwargs: Any) -> None:
        self.instance_id = instance_id
        self.prefix = f"{base}/bridge/instances/"
        self.topic = self.prefix + instance_id
        self._probe_topic = f"{base}/bridge/instances-probe/{instance_id}"
        self._state_topic = f"{base}/bridge/state"
        self._bridge_state: object = None
        self.info = {
            "id": instance_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": int(time.time() * 1000),
        }
        offline = orjson.dumps({"state": "offline", **self.info})
        client_id = f"{client_kwargs.pop('client_id', 'cloud2mqtt')}-presence-{instance_id}"[:64]
        client_kwargs.pop("will", None)
        client_kwargs.pop("on_message", None)
        client_kwargs.pop("on_connect", None)
        client_kwargs.pop("buffer_size", None)
        self._seen: dict[str, dict[str, Any]] = {}
        self._probe: asyncio.Future[None] | None = None
        self.client = MqttClient(
            client_id=client_id,
            will=Will(self.topic, offline, 1, True),
            on_message=self._on_message,
            on_connect=self._announce,
            **client_kwargs,
        )

    def _on_message(self, topic: str, payload: bytes, props: dict[str, Any]) -> None:
        if topic == self._probe_topic:
            if self._probe is not None and not self._probe.done():
                self._probe.set_result(None)
            return
        try:
            value = orjson.loads(payload) if payload else {}
        except orjson.JSONDecodeError:
            log.warning("ignoring an unreadable announcement on %s", topic[:200])
            return
        if not isinstance(value, dict):
            return
        if topic == self._state_topic:
            self._bridge_state = value.get("state")
        else:
            self._seen[topic[len(self.prefix) :]] = value

    async def _announce(self) -> None:
        self.client.publish(self.topic, orjson.dumps({"state": "online", **self.info}), 1, True)

    def others_online(self) -> list[dict[str, Any]]:
        """The other instances that announce ``online`` (from the retained announcements)."""
        return [
            {"id": name, **value}
            for name, value in self._seen.items()
            if name != self.instance_id and value.get("state") == "online"
        ]

    async def claim(
        self, timeout: float = 5.0, *, strict: bool = False, shared: bool = False
    ) -> bool:
        """Check for another live instance, then announce this one.

        Returns False when the broker could not be reached (nothing checked; the announcement
        follows once it is). Raises ``InstanceConflict`` when another instance is live, and,
        with ``strict`` (the demo), also when ``<base>/bridge/state`` says ``online`` without
        any announcement (a gateway of an older version serves this base topic). With
        ``shared`` (cluster mode) other instances are expected: nothing is refused.
        """
        try:
            async with asyncio.timeout(timeout):
                await self.client.connect()
        except (OSError, TimeoutError, ConnectionError) as exc:
            log.warning(
                "could not check for another instance on the broker (%s); starting anyway",
                type(exc).__name__,
            )
            self.client.start()
            return False
        loop = asyncio.get_running_loop()
        self._probe = loop.create_future()
        await self.client.subscribe(
            [(self.prefix + "+", 1), (self._state_topic, 1), (self._probe_topic, 1)]
        )
        # Retained messages are delivered right after the SUBACK; a message we publish to our
        # own probe topic comes back after them, so when it is here every announcement is.
        self.client.publish(self._probe_topic, b"", 1, False)
        try:
            async with asyncio.timeout(timeout):
                await self._probe
        except TimeoutError:
            log.warning("no answer from the broker while checking for another instance")
        others = [] if shared else self.others_online()
        if strict and not others and self._bridge_state == "online":
            others = [{"id": "unannounced", "host": "?", "pid": "?"}]
        if others:
            other = others[0]
            await self.client.disconnect()
            raise InstanceConflict(
                f"another cloud2mqtt instance ({other['id']} on {other.get('host', '?')}, "
                f"pid {other.get('pid', '?')}) is live on this broker with base topic "
                f"{self.prefix.removesuffix('/bridge/instances/')!r}: stop it, or give this "
                "one its own gateway.base_topic (running several instances over the same "
                "accounts is cluster mode, not yet available)"
            )
        await self._announce()
        return True

    async def release(self, *, leave_no_trace: bool = False) -> None:
        """Announce this instance offline (a clean disconnect fires no will), or clear its
        announcement (``leave_no_trace``), and disconnect."""
        if self.client.connected:
            gone = b"" if leave_no_trace else orjson.dumps({"state": "offline", **self.info})
            self.client.publish(self.topic, gone, 1, True)
            await self.client.flush(2)
        await self.client.disconnect()
