"""MQTT commands → vendor calls → exactly one reply each.

A command is validated against the device schema before any vendor call; an invalid one is
answered with ``error``/``invalid`` at once. A valid one runs in its own task under the
configured timeout. The reply goes to ``…/response/<kind>`` and, when the command carried an
MQTT 5 Response Topic, there too with its Correlation Data.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from protocols.model import CommandError, CommandResult, VendorError
from protocols.tsl import validate, validate_props

from .connectors.session import LinkError
from .topics import CommandTopic, Topics

if TYPE_CHECKING:
    from .bridge import BridgeRequests
    from .connectors.base import Connector
    from .health import Health
    from .publisher import Publisher
    from .registry import Registry

__all__ = ["CommandHandler"]

log = logging.getLogger("cloud2mqtt.commands")


def _parse_json(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise CommandError("invalid", "payload is not JSON") from None


def _reply(result: CommandResult, transaction: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"status": result.status, "transaction": transaction}
    if result.data is not None:
        out["data"] = result.data
    if result.status != "ok":
        out["error"] = {
            "code": result.code or ("timeout" if result.status == "timeout" else "vendor"),
            "vendor_code": result.vendor_code,
            "message": result.message,
        }
    return out


class CommandHandler:
    """Turns command messages into vendor calls and answers each exactly once.

    Feed it every message of the command subscriptions with ``on_message`` (the MQTT client's
    callback); it spawns one task per command. ``cancel_all()`` on shutdown.
    """

    def __init__(
        self,
        *,
        topics: Topics,
        registry: Registry,
        publisher: Publisher,
        health: Health,
        connector: Callable[[tuple[str, str]], Connector | None],
        bridge: BridgeRequests,
        timeout: float,
    ) -> None:
        self.topics = topics
        self.registry = registry
        self.publisher = publisher
        self.health = health
        self.connector = connector
        self.bridge = bridge
        self.timeout = timeout
        self._tasks: set[asyncio.Task[None]] = set()

    def on_message(self, topic: str, payload: bytes, props: dict[str, Any]) -> None:
        target = self.topics.parse(topic)
        if target is None:
            return
        self.health.totals["commands"] += 1
        if isinstance(target, str):
            coro = self._bridge_request(target, payload, props)
        else:
            coro = self._device_command(target, payload, props)
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------ device commands

    async def _device_command(self, target: CommandTopic, payload: bytes, props: dict[str, Any]) -> None:
        rec = self.registry.get(target.vendor, target.device)
        device_topic = rec.topic if rec else self.topics.device(target.vendor, target.device)
        transaction: Any = None
        try:
            if rec is None:
                raise CommandError("invalid", f"unknown device {target.vendor}/{target.device}")
            connector = self.connector((rec.vendor, rec.account))
            if connector is None:
                raise CommandError("offline", f"account {rec.account} is not running")
            body: Any
            if target.kind == "set" and target.prop is not None:
                # A bare value; JSON if it parses (numbers, true), else the raw string.
                try:
                    body = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    body = payload.decode("utf-8", "replace")
                request = {target.prop: body}
            else:
                body = _parse_json(payload) if payload.strip() else {}
                if not isinstance(body, dict):
                    raise CommandError("invalid", "payload must be a JSON object")
                transaction = body.get("transaction")
                request = {k: v for k, v in body.items() if k != "transaction"}
            schema = rec.info.schema
            if target.kind == "set":
                values = validate_props(schema, request)
                if rec.online is False:
                    raise CommandError("offline", f"device {rec.device} is offline")
                call = connector.set(rec.device, values)
            elif target.kind == "get":
                wanted = request.get("props", [])
                if not isinstance(wanted, list) or not all(isinstance(p, str) for p in wanted):
                    raise CommandError("invalid", '"props" must be a list of property ids')
                unknown = [p for p in wanted if schema.prop(p) is None]
                if unknown and not schema.passthrough:
                    raise CommandError("invalid", f"unknown property {unknown[0]!r}")
                call = connector.get(rec.device, wanted)
            else:
                action = request.get("action")
                params = request.get("params", {})
                if not isinstance(action, str) or not action:
                    raise CommandError("invalid", '"action" must name an action')
                if not isinstance(params, dict):
                    raise CommandError("invalid", '"params" must be an object')
                spec = schema.action(action)
                if spec is None and not schema.passthrough:
                    raise CommandError("invalid", f"unknown action {action!r}")
                if spec is not None:
                    by_id = {p.id: p for p in spec.input}
                    for key in params:
                        if key not in by_id:
                            raise CommandError("invalid", f"action {action!r} has no input {key!r}")
                    params = {k: validate(by_id[k], v, writing=False) for k, v in params.items()}
                if rec.online is False:
                    raise CommandError("offline", f"device {rec.device} is offline")
                call = connector.action(rec.device, action, params)
            try:
                result = await asyncio.wait_for(call, self.timeout)
            except TimeoutError:
                result = CommandResult(
                    "timeout", code="timeout", message=f"no answer within {self.timeout:g}s"
                )
        except CommandError as exc:
            if exc.code == "invalid":
                self.health.count("bad_commands", target.vendor)
                log.warning(
                    "[%s/%s] rejected %s command for device %s: %s",
                    target.vendor, rec.account if rec else "-", target.kind, target.device, exc.message,
                )
            result = CommandResult.error(exc.code, exc.message, exc.vendor_code)
        except VendorError as exc:
            result = CommandResult.error(exc.code, exc.message, exc.vendor_code)
        except LinkError as exc:  # the account's link failed under the command
            result = CommandResult.error(exc.reply_code, str(exc))
        except Exception as exc:
            log.exception("command %s on %s/%s failed", target.kind, target.vendor, target.device)
            result = CommandResult.error("vendor", f"internal error: {type(exc).__name__}")
        self.send_reply(self.topics.response(device_topic, target.kind), _reply(result, transaction), props)

    def send_reply(self, topic: str, reply: dict[str, Any], props: dict[str, Any]) -> None:
        self.publisher.reply(topic, orjson.dumps(reply), props)

    # ------------------------------------------------------------------ bridge requests

    async def _bridge_request(self, command: str, payload: bytes, props: dict[str, Any]) -> None:
        transaction: Any = None
        try:
            body = _parse_json(payload) if payload.strip() else {}
            if not isinstance(body, dict):
                raise CommandError("invalid", "payload must be a JSON object")
            transaction = body.get("transaction")
            request = {k: v for k, v in body.items() if k != "transaction"}
            result = await asyncio.wait_for(self.bridge.handle(command, request), self.timeout)
        except TimeoutError:
            result = CommandResult("timeout", code="timeout", message="no answer in time")
        except CommandError as exc:
            if exc.code == "invalid":
                self.health.count("bad_commands", "bridge")
                log.warning("rejected bridge request %s: %s", command, exc.message)
            result = CommandResult.error(exc.code, exc.message, exc.vendor_code)
        except VendorError as exc:
            result = CommandResult.error(exc.code, exc.message, exc.vendor_code)
        except Exception as exc:
            log.exception("bridge request %s failed", command)
            result = CommandResult.error("vendor", f"internal error: {type(exc).__name__}")
        self.send_reply(self.topics.bridge_response(command), _reply(result, transaction), props)
