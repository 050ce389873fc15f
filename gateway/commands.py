"""MQTT commands → vendor calls → exactly one reply each.

A command is validated against the device schema before any vendor call; an invalid one is
answered with ``error``/``invalid`` at once (and counted in ``bad_commands``). A valid one runs
in its own task under the configured timeout. The reply goes to ``…/response/<kind>`` and,
when the command carried an MQTT 5 Response Topic, there too with its Correlation Data.

Every reply echoes the command's ``transaction`` when the payload named one, errors included.
Whatever of the command is echoed back (ids, values in error messages) is clipped to
``ECHO_LIMIT`` characters, and JSON nested deeper than ``MAX_DEPTH`` is refused, so a hostile
command cannot make a huge reply, a huge log line or a ``RecursionError``.

Cluster mode hands the handler a ``router`` (gateway/cluster/routing.py): a command for a device
this instance does not run, and a bridge request about an account it does not run, go to the
instance that runs it, which executes it with ``execute_here`` / ``bridge_result`` and sends the
result back; the reply is still written here, once, by the instance that received the command.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson

from protocols.model import CommandError, CommandResult, Schema, VendorError
from protocols.tsl import normalize, validate, validate_props

from .connectors.session import LinkError
from .logflags import DEBUG
from .topics import BadCommandTopic, CommandTopic, Topics

if TYPE_CHECKING:
    from .bridge import BridgeRequests
    from .connectors.base import Connector
    from .health import Health
    from .publisher import Publisher
    from .registry import DeviceRecord, Registry

__all__ = ["ECHO_LIMIT", "MAX_DEPTH", "CommandHandler", "CommandRouter", "clip"]

log = logging.getLogger("cloud2mqtt.commands")

#: at most this many characters of anything a command sent are echoed in a reply or a log line
ECHO_LIMIT: Final = 200
#: JSON nested deeper than this is refused (``invalid``)
MAX_DEPTH: Final = 32


def clip(text: object, limit: int = ECHO_LIMIT) -> str:
    """``text`` (or its ``str``) cut to ``limit`` characters, saying how much was left out."""
    s = text if isinstance(text, str) else str(text)
    if len(s) <= limit:
        return s
    return f"{s[:limit]}… ({len(s) - limit} more characters)"


def _depth_ok(value: Any, limit: int) -> bool:
    """Whether ``value`` nests at most ``limit`` containers deep (iteratively: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True


def _checked(value: Any) -> Any:
    if not _depth_ok(value, MAX_DEPTH):
        raise CommandError("invalid", f"payload nests deeper than {MAX_DEPTH} levels")
    return value


def _loads(payload: bytes) -> Any:
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise CommandError("invalid", "payload is not JSON") from None
    return _checked(value)


def _parse_object(payload: bytes) -> tuple[dict[str, Any], Any]:
    """A JSON-object command: its fields without ``transaction``, and the ``transaction``."""
    body = _loads(payload) if payload.strip() else {}
    if not isinstance(body, dict):
        raise CommandError("invalid", "payload must be a JSON object")
    transaction = body.pop("transaction", None)
    return body, transaction


def _reply(result: CommandResult, transaction: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"status": result.status, "transaction": transaction}
    if result.data is not None:
        out["data"] = result.data
    if result.status != "ok":
        out["error"] = {
            "code": result.code or ("timeout" if result.status == "timeout" else "vendor"),
            "vendor_code": result.vendor_code,
            "message": clip(result.message) if result.message is not None else None,
        }
    return out


def result_label(result: CommandResult) -> str:
    """A command's outcome as ``/metrics`` labels it: ``ok`` or the reply's error code."""
    if result.status == "ok":
        return "ok"
    return result.code or ("timeout" if result.status == "timeout" else "vendor")


class CommandRouter(Protocol):
    """Cluster mode: where a command goes that this instance cannot run itself."""

    async def device_command(
        self, vendor: str, device: str, kind: str, request: dict[str, Any]
    ) -> tuple[str, CommandResult]:
        """Run the command on the instance that runs the device (never raises): the account
        it ran on (``-`` when none) and the result to reply with."""
        ...

    async def bridge_request(self, command: str, request: dict[str, Any]) -> CommandResult | None:
        """The result from the instance that runs the account the request is about, or from
        every live instance for a request to the whole cluster (``options``), or None when it
        is to be answered here (not about one account, or the account runs here)."""
        ...


@dataclass(kw_only=True, eq=False)
class CommandHandler:
    """Turns command messages into vendor calls and answers each exactly once.

    Feed it every message of the command subscriptions with ``on_message`` (the MQTT client's
    callback); it spawns one task per command. ``cancel_all()`` on shutdown. It sees the
    registry, the publisher and a connector lookup, never the gateway.
    """

    topics: Topics
    registry: Registry
    publisher: Publisher
    health: Health
    connector: Callable[[tuple[str, str]], Connector | None]
    bridge: BridgeRequests
    timeout: float
    check_topic: Callable[[str], str | None] = lambda topic: None
    #: cluster mode: what this instance does not run is run by its owner (module docstring)
    router: CommandRouter | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False, repr=False)

    def on_message(self, topic: str, payload: bytes, props: dict[str, Any]) -> None:
        target = self.topics.parse(topic)
        if target is None:
            return
        self.health.totals["commands"] += 1
        if DEBUG.on:
            log.debug("command in: %s %s", clip(topic), clip(payload.decode("utf-8", "replace")))
        coro: Coroutine[Any, Any, None]
        if isinstance(target, str):
            coro = self._bridge_request(target, payload, props)
        elif isinstance(target, BadCommandTopic):
            coro = self._bad_topic(target, payload, props)
        else:
            coro = self._device_command(target, payload, props)
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float) -> None:
        """Shutdown: let the commands in flight finish (each answers within its own timeout)
        for at most ``timeout`` seconds, then cancel what is left."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        await self.cancel_all()

    async def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------ device commands

    async def _device_command(
        self, target: CommandTopic, payload: bytes, props: dict[str, Any]
    ) -> None:
        rec = self.registry.get(target.vendor, target.device)
        device_topic = rec.topic if rec else self.topics.device(target.vendor, target.device)
        account = rec.account if rec else "-"
        transaction: Any = None
        try:
            if target.kind == "set" and target.prop is not None:
                # A bare value; JSON if it parses (numbers, true), else the raw string.
                try:
                    body = _checked(orjson.loads(payload))
                except orjson.JSONDecodeError:
                    body = payload.decode("utf-8", "replace")
                request: dict[str, Any] = {target.prop: body}
            else:
                request, transaction = _parse_object(payload)
            self._check_response_topic(props)
        except CommandError as exc:
            result = self.refused(target.vendor, account, target.kind, target.device, exc)
        else:
            here = rec is not None and self.connector((rec.vendor, rec.account)) is not None
            if self.router is not None and not here:
                account, result = await self.router.device_command(
                    target.vendor, target.device, target.kind, request
                )
            elif rec is None:
                unknown = CommandError(
                    "invalid", f"unknown device {target.vendor}/{clip(target.device)}"
                )
                result = self.refused(target.vendor, "-", target.kind, target.device, unknown)
            else:
                result = await self.execute(rec, target.kind, request)
        self.health.count_labelled("commands", target.vendor, account, result_label(result))
        self.send_reply(
            self.topics.response(device_topic, target.kind), _reply(result, transaction), props
        )

    async def execute_here(
        self, vendor: str, device: str, kind: str, request: dict[str, Any]
    ) -> tuple[str, CommandResult] | None:
        """A routed command (cluster mode): run it when this instance runs the device's
        account, as ``(account, result)``; None when it does not."""
        rec = self.registry.get(vendor, device)
        if rec is None or self.connector((rec.vendor, rec.account)) is None:
            return None
        return rec.account, await self.execute(rec, kind, request)

    async def execute(self, rec: DeviceRecord, kind: str, request: dict[str, Any]) -> CommandResult:
        """Validate and run one parsed command on its device; every failure is a result."""
        try:
            return await self._run(rec, kind, request)
        except CommandError as exc:
            return self.refused(rec.vendor, rec.account, kind, rec.device, exc)
        except VendorError as exc:
            return CommandResult.error(exc.code, exc.message, exc.vendor_code)
        except LinkError as exc:  # the account's link failed under the command
            return CommandResult.error(exc.reply_code, str(exc))
        except Exception as exc:
            log.exception("command %s on %s/%s failed", kind, rec.vendor, clip(rec.device))
            return CommandResult.error("vendor", f"internal error: {type(exc).__name__}")

    def refused(
        self, vendor: str, account: str, kind: str, device: str, exc: CommandError
    ) -> CommandResult:
        if exc.code == "invalid":
            self.health.count("bad_commands", vendor)
            log.warning(
                "[%s/%s] rejected %s command for device %s: %s",
                vendor, account, kind, clip(device), clip(exc.message),
            )  # fmt: skip
        return CommandResult.error(exc.code, exc.message, exc.vendor_code)

    async def _run(self, rec: DeviceRecord, kind: str, request: dict[str, Any]) -> CommandResult:
        """Validate ``request`` against the device's schema, then call its connector."""
        connector = self.connector((rec.vendor, rec.account))
        if connector is None:
            raise CommandError("offline", f"account {rec.account} is not running")
        schema = rec.info.schema
        call: Coroutine[Any, Any, CommandResult]
        if kind == "set":
            values = validate_props(schema, request)
            if rec.online is False:
                raise CommandError("offline", f"device {clip(rec.device)} is offline")
            call = connector.set(rec.device, values)
        elif kind == "get":
            wanted = request.get("props", [])
            if not isinstance(wanted, list) or not all(isinstance(p, str) for p in wanted):
                raise CommandError("invalid", '"props" must be a list of property ids')
            unknown = [p for p in wanted if schema.prop(p) is None]
            if unknown and not schema.passthrough:
                raise CommandError("invalid", f"unknown property {clip(unknown[0])!r}")
            call = self._normalized_get(connector.get(rec.device, wanted), schema, wanted)
        else:
            action = request.get("action")
            params = request.get("params", {})
            if not isinstance(action, str) or not action:
                raise CommandError("invalid", '"action" must name an action')
            if not isinstance(params, dict):
                raise CommandError("invalid", '"params" must be an object')
            spec = schema.action(action)
            if spec is None and not schema.passthrough:
                raise CommandError("invalid", f"unknown action {clip(action)!r}")
            if spec is not None:
                by_id = {p.id: p for p in spec.input}
                for key in params:
                    if key not in by_id:
                        raise CommandError(
                            "invalid", f"action {action!r} has no input {clip(key)!r}"
                        )
                params = {k: validate(by_id[k], v, writing=False) for k, v in params.items()}
            if rec.online is False:
                raise CommandError("offline", f"device {clip(rec.device)} is offline")
            call = connector.action(rec.device, action, params)
            if spec is not None:
                call = self._normalized_output(call, Schema(spec.output))
        try:
            async with asyncio.timeout(self.timeout):
                return await call
        except TimeoutError:
            return CommandResult(
                "timeout", code="timeout", message=f"no answer within {self.timeout:g}s"
            )

    @staticmethod
    async def _normalized_get(
        call: Coroutine[Any, Any, CommandResult], schema: Schema, wanted: list[str]
    ) -> CommandResult:
        """A ``get`` answers in the tree's terms: values normalized here, the one place for
        replies as the link is for pushed state; only the asked-for properties."""
        result = await call
        if result.status == "ok" and isinstance(result.data, dict):
            values, _ = normalize(schema, result.data)
            if wanted:
                values = {k: v for k, v in values.items() if k in wanted}
            result = CommandResult.ok(values)
        return result

    @staticmethod
    async def _normalized_output(
        call: Coroutine[Any, Any, CommandResult], output: Schema
    ) -> CommandResult:
        result = await call
        data = result.data
        if (
            result.status == "ok"
            and isinstance(data, dict)
            and isinstance(data.get("output"), dict)
        ):
            result = CommandResult.ok({**data, "output": normalize(output, data["output"])[0]})
        return result

    async def _bad_topic(
        self, target: BadCommandTopic, payload: bytes, props: dict[str, Any]
    ) -> None:
        """A command on a topic shape we do not serve: one ``invalid`` reply saying why."""
        transaction: Any = None
        try:
            _, transaction = _parse_object(payload)
        except CommandError:
            pass
        self.health.count("bad_commands", target.vendor)
        log.warning("rejected command on %s: %s", clip(target.topic), target.reason)
        result = CommandResult.error("invalid", target.reason)
        self.send_reply(target.response_topic, _reply(result, transaction), props)

    def _check_response_topic(self, props: dict[str, Any]) -> None:
        """A Response Topic comes from outside: refuse one we must not publish to."""
        response_topic = props.get("response_topic")
        if response_topic is None:
            return
        reason = (
            self.check_topic(response_topic) if isinstance(response_topic, str) else "not a string"
        )
        if reason is not None:
            props.pop("response_topic", None)
            raise CommandError("invalid", f"unusable MQTT 5 Response Topic: {reason}")

    def send_reply(self, topic: str, reply: dict[str, Any], props: dict[str, Any]) -> None:
        if DEBUG.on:
            log.debug("command out: %s %s", clip(topic), clip(str(reply)))
        self.publisher.reply(topic, orjson.dumps(reply), props)

    # ------------------------------------------------------------------ bridge requests

    async def _bridge_request(self, command: str, payload: bytes, props: dict[str, Any]) -> None:
        transaction: Any = None
        try:
            request, transaction = _parse_object(payload)
            self._check_response_topic(props)
        except CommandError as exc:
            result = self._bridgerefused(command, exc)
        else:
            routed = None
            if self.router is not None:
                routed = await self.router.bridge_request(command, request)
            result = routed if routed is not None else await self.bridge_result(command, request)
        self.send_reply(self.topics.bridge_response(command), _reply(result, transaction), props)

    async def bridge_result(self, command: str, request: dict[str, Any]) -> CommandResult:
        """Answer one parsed bridge request here; every failure is a result."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self.bridge.handle(command, request)
        except TimeoutError:
            return CommandResult("timeout", code="timeout", message="no answer in time")
        except CommandError as exc:
            return self._bridgerefused(command, exc)
        except VendorError as exc:
            return CommandResult.error(exc.code, exc.message, exc.vendor_code)
        except LinkError as exc:
            return CommandResult.error(exc.reply_code, str(exc))
        except Exception as exc:
            log.exception("bridge request %s failed", clip(command))
            return CommandResult.error("vendor", f"internal error: {type(exc).__name__}")

    def _bridgerefused(self, command: str, exc: CommandError) -> CommandResult:
        if exc.code == "invalid":
            self.health.count("bad_commands", "bridge")
            log.warning("rejected bridge request %s: %s", clip(command), clip(exc.message))
        return CommandResult.error(exc.code, exc.message, exc.vendor_code)
