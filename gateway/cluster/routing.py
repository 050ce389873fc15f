"""Commands in a cluster: each arrives at one instance and is answered once, by that instance.

Arrival. Every instance subscribes to the command topics (``Topics.subscriptions()``) through
one MQTT 5 shared subscription, ``$share/<group>/<filter>`` with ``group`` derived from the
base topic (``share_group``), so the broker hands each command to one instance of the group.
The PUBLISH it receives carries the real topic, so parsing is the same as with one instance.

Routing. The receiving instance runs the command itself when it runs the device's account
(``CommandHandler``'s local path, unchanged). Otherwise it asks the other instances over NATS
request/reply, each on its own subject ``c2m.cmd.<instance id>``: one request at a time, first
the owners of that vendor's accounts (``Cluster.owner_lookup``: the slot leases, in
account-name order), then any other live instance. An instance that runs the device executes the
command exactly as a single instance would (``CommandHandler.execute``: validation, vendor call
under ``command_timeout``) and answers with the result; one that does not answers "not here" at
once and the next is asked. The first that runs it is the only one that executes it.

Why ask rather than look the device up: a command topic names the vendor and the device, not
the account, and only the registry of the instance that runs an account knows its devices. A
cluster-wide device → account index (a KV bucket) would have to be written on every device
change, cleaned up, and would still be stale while an account moves; carrying the account in
the topic would change the public topics. Asking costs one NATS round trip per instance that
does not run the device (sub-millisecond on a LAN), needs no state, and the owners of the
vendor's accounts are asked first, so the usual cost is one round trip. A device shared into
two accounts that run on two instances is executed by the first asked, never by both.

Replies. The result travels back over NATS and the receiving instance writes the one MQTT reply
(``…/response/<kind>`` and the Response Topic with its Correlation Data), so a late answer from
an owner is dropped with the request's inbox and never becomes a second reply. The receiving
instance answers itself when:

* an owner took longer than ``command_timeout`` + ``HOP`` (status and code ``timeout``: the
  command may or may not have run, as with a vendor that does not answer in time);
* no instance runs the device while an account of its vendor has no running instance, or an
  instance could not be reached (code ``unavailable``: the account is moving; try again);
* no instance runs the device and every account of its vendor runs somewhere (``invalid``,
  "unknown device", as with one instance).

Bridge requests arrive the same way, once. Those about one account (``resync`` and vendor
requests naming an ``account``) go to the instance that holds that account's slot; the others
(``health``, ``devices``, ``accounts``, …) are answered by the receiving instance from its view
(which is the cluster's merge: gateway/instances.py).

Requests to the whole cluster (``EVERYWHERE``: ``options``, the log level) are applied by the
receiving instance and then by every other live instance, asked at once, each on its own
``c2m.cmd.<id>`` with the same ``bridge`` request a routed account request uses (so a peer
applies it exactly as if it had received it). One reply says who ``applied`` it and who gave
``no_answer`` within ``command_timeout`` + ``HOP`` (or ``refused`` it); it is an error
(``unavailable``) unless every live instance applied it. Why a request to each peer and not one
message on a broadcast subject: the asker has to know whom it waits for in any case (the live
set the leases see: a broadcast cannot say who did not hear it), each answer names its instance,
a peer of the previous version already answers it, and no new subscription is needed. A value
this instance refuses (an unknown level) is answered at once, without asking the others.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import orjson
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError

from protocols.model import CommandError, CommandResult

from .kvtokens import escape_key

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

    from ..commands import CommandHandler
    from ..config import AccountConfig

__all__ = ["EVERYWHERE", "HOP", "CommandRouter", "share_group", "subject"]

log = logging.getLogger("cloud2mqtt.cluster")

#: what a routed command may take beyond ``command_timeout``: the NATS hops and the validation
HOP: Final = 1.0

#: bridge requests the operator makes of the cluster: every live instance applies them
EVERYWHERE: Final = frozenset({"options"})


def share_group(base_topic: str) -> str:
    """The shared-subscription group of every instance serving ``base_topic`` (a group name
    may not contain ``/``, ``+`` or ``#``; a base topic may)."""
    digest = hashlib.blake2b(base_topic.encode(), digest_size=6).hexdigest()
    return f"cloud2mqtt-{digest}"


def subject(instance_id: str) -> str:
    """The NATS subject on which ``instance_id`` runs commands routed to it."""
    return f"c2m.cmd.{escape_key(instance_id)}"


def _result(raw: Any) -> CommandResult:
    if not isinstance(raw, dict) or raw.get("status") not in ("ok", "error", "timeout"):
        return CommandResult.error("vendor", "internal error: a malformed routed answer")
    return CommandResult(
        raw["status"], raw.get("data"), raw.get("code"), raw.get("vendor_code"),
        raw.get("message") or "",
    )  # fmt: skip


def _dump_result(result: CommandResult) -> dict[str, Any]:
    return {
        "status": result.status,
        "data": result.data,
        "code": result.code,
        "vendor_code": result.vendor_code,
        "message": result.message,
    }


def _unavailable(message: str) -> CommandResult:
    return CommandResult.error("unavailable", message)


class CommandRouter:
    """See the module docstring. ``start(nc)`` serves this instance's subject; ``serve``
    hands it the gateway's ``CommandHandler`` (which calls back for what it cannot run)."""

    def __init__(
        self,
        instance_id: str,
        accounts: list[AccountConfig],
        owners: Callable[[], Callable[[str, str], str | None]],
        live: Callable[[], list[str]],
        timeout: float,
    ) -> None:
        self.instance_id = instance_id
        self.accounts = accounts
        self._owners = owners  # who runs (vendor, account) as last read (Cluster.owner_lookup)
        self._live = live  # the live instances (SlotLeases.live)
        self.timeout = timeout
        self.handler: CommandHandler | None = None
        self.nc: Client | None = None
        self._sub: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: device commands sent to another instance, by outcome (``answered`` by the owner,
        #: ``timeout``, ``unavailable``, ``unknown``: no instance has the device); for /metrics
        self.routed: Counter[str] = Counter()
        #: commands and requests from other instances this one ran
        self.served = 0

    def serve(self, handler: CommandHandler) -> None:
        self.handler = handler
        handler.router = self

    async def start(self, nc: Client) -> None:
        self.nc = nc
        self._sub = await nc.subscribe(subject(self.instance_id), cb=self._on_request)

    async def stop(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except NatsError:
                pass
            self._sub = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------ asking

    async def device_command(
        self, vendor: str, device: str, kind: str, request: dict[str, Any]
    ) -> tuple[str, CommandResult]:
        accounts = sorted(a.name for a in self.accounts if a.vendor == vendor)
        if not accounts:
            return "-", self._unknown(vendor, device, kind)
        runs = self._owners()
        owner_of = {name: runs(vendor, name) for name in accounts}
        moving = [name for name, owner in owner_of.items() if owner is None]
        asked: list[str] = []
        for owner in [*owner_of.values(), *self._live()]:
            if owner is not None and owner != self.instance_id and owner not in asked:
                asked.append(owner)
        body = {"op": "device", "vendor": vendor, "device": device, "kind": kind,
                "request": request}  # fmt: skip
        deadline = asyncio.get_running_loop().time() + self.timeout + HOP
        unreachable: list[str] = []
        for instance in asked:
            answer = await self._ask(instance, body, deadline)
            if isinstance(answer, CommandResult):
                self.routed["timeout"] += 1
                return "-", answer
            if answer is None:
                unreachable.append(instance)
            elif answer.get("here"):
                self.routed["answered"] += 1
                return str(answer.get("account") or "-"), _result(answer.get("result"))
        if moving or unreachable:
            self.routed["unavailable"] += 1
            why = []
            if moving:
                why.append(f"account(s) {', '.join(moving)} moving between instances")
            if unreachable:
                why.append(f"instance(s) {', '.join(unreachable)} unreachable")
            because = "; ".join(why)
            return "-", _unavailable(
                f"no instance runs device {vendor}/{device[:200]} now ({because}); try again"
            )
        self.routed["unknown"] += 1
        return "-", self._unknown(vendor, device, kind)

    async def bridge_request(self, command: str, request: dict[str, Any]) -> CommandResult | None:
        handler = self.handler
        assert handler is not None, "serve() first"
        if command in EVERYWHERE:
            return await self._everywhere(command, request)
        if command != "resync" and command in handler.bridge.BUILTIN:
            return None  # about the whole gateway: this instance's view
        name, vendor = request.get("account"), request.get("vendor")
        if not isinstance(name, str):
            return None  # the local answer says what is missing
        matches = [a for a in self.accounts if a.name == name and vendor in (None, a.vendor)]
        if len(matches) > 1:
            return CommandResult.error(
                "invalid", f'account {name[:200]!r} exists for several vendors: add "vendor"'
            )
        if not matches:
            return None  # unknown everywhere: the local answer says so
        account = matches[0]
        if handler.connector((account.vendor, account.name)) is not None:
            return None  # runs here
        owner = self._owners()(account.vendor, account.name)
        label = f"{account.vendor}/{account.name}"
        if owner is None or owner == self.instance_id:
            return _unavailable(f"account {label} is moving between instances; try again")
        deadline = asyncio.get_running_loop().time() + self.timeout + HOP
        body = {"op": "bridge", "command": command, "request": request}
        answer = await self._ask(owner, body, deadline)
        if answer is None:
            return _unavailable(f"account {label}: instance {owner} unreachable; try again")
        if isinstance(answer, CommandResult):
            return answer
        return _result(answer.get("result"))

    async def _everywhere(self, command: str, request: dict[str, Any]) -> CommandResult:
        """Apply the request here, then on every other live instance at once; one answer: this
        instance's, with ``answered_by``, ``applied`` and ``no_answer`` (and ``refused``)."""
        assert self.handler is not None
        local = await self.handler.bridge_result(command, request)
        if local.status != "ok":
            return local  # refused here: asking the others would only repeat it
        peers = [i for i in self._live() if i != self.instance_id]
        deadline = asyncio.get_running_loop().time() + self.timeout + HOP
        body = {"op": "bridge", "command": command, "request": request}
        answers = await asyncio.gather(*(self._ask(i, body, deadline) for i in peers))
        applied, no_answer, refused = [self.instance_id], [], {}
        for instance, answer in zip(peers, answers, strict=True):
            if answer is None or isinstance(answer, CommandResult):
                no_answer.append(instance)  # gone, or not within the deadline
                continue
            result = _result(answer.get("result"))
            if result.status == "ok":
                applied.append(instance)
            else:
                refused[instance] = result.message or str(result.code)
        data: dict[str, Any] = {
            **(local.data or {}), "answered_by": self.instance_id,
            "applied": sorted(applied), "no_answer": sorted(no_answer),
        }  # fmt: skip
        if refused:
            data["refused"] = dict(sorted(refused.items()))
        if not no_answer and not refused:
            return CommandResult.ok(data)
        missing = ", ".join(sorted([*no_answer, *refused]))
        log.warning("cluster: %s applied on %s only; not on %s", command,
                    ", ".join(data["applied"]), missing)  # fmt: skip
        return CommandResult(
            "error", data, "unavailable",
            message=f"{command} applied on {', '.join(data['applied'])}; not on {missing}",
        )  # fmt: skip

    async def _ask(
        self, instance: str, body: dict[str, Any], deadline: float
    ) -> dict[str, Any] | CommandResult | None:
        """One request to ``instance``: its answer, a ``timeout`` result when it did not answer
        before ``deadline`` (it may have run the command), or None when it has no subscriber
        (gone: it ran nothing) or NATS is down."""
        if self.nc is None:
            return None
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            if remaining <= 0:
                raise TimeoutError
            msg = await self.nc.request(
                subject(instance), orjson.dumps(body, default=str), timeout=remaining
            )
        except NoRespondersError:
            return None
        except TimeoutError:
            return CommandResult(
                "timeout", code="timeout",
                message=f"instance {instance} did not answer within "
                f"{self.timeout + HOP:g}s; the command may or may not have run",
            )  # fmt: skip
        except NatsError as exc:
            log.warning("cluster: routing to %s failed: %s", instance, type(exc).__name__)
            return None
        try:
            answer = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            answer = None
        return answer if isinstance(answer, dict) else {}

    def _unknown(self, vendor: str, device: str, kind: str) -> CommandResult:
        unknown = CommandError("invalid", f"unknown device {vendor}/{device[:200]}")
        assert self.handler is not None
        return self.handler.refused(vendor, "-", kind, device, unknown)

    # ------------------------------------------------------------------ answering

    async def _on_request(self, msg: Msg) -> None:
        # nats-py runs one subscription's callbacks one after the other: one task per command
        task = asyncio.get_running_loop().create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: Msg) -> None:
        handler = self.handler
        if handler is None:
            return
        try:
            body = orjson.loads(msg.data)
            request = body.get("request")
            if not isinstance(request, dict):
                raise ValueError("no request")
            if body.get("op") == "device":
                done = await handler.execute_here(
                    str(body["vendor"]), str(body["device"]), str(body["kind"]), request
                )
                answer: dict[str, Any] = {"here": False}
                if done is not None:
                    self.served += 1
                    answer = {"here": True, "account": done[0], "result": _dump_result(done[1])}
            elif body.get("op") == "bridge":
                self.served += 1
                result = await handler.bridge_result(str(body["command"]), request)
                answer = {"result": _dump_result(result)}
            else:
                raise ValueError(f"unknown op {body.get('op')!r}")
        except (orjson.JSONDecodeError, ValueError, KeyError, AttributeError) as exc:
            # A peer on another version, or a stray publisher: counted, logged, and answered at
            # once (the asker replies with this instead of waiting for its timeout).
            handler.health.count("bad_peer_messages", "cluster")
            log.warning("cluster: malformed routed request on %s: %s: %s", msg.subject,
                        type(exc).__name__, str(exc)[:200])  # fmt: skip
            refused = CommandResult.error(
                "invalid", f"instance {self.instance_id} could not read the routed request"
            )
            answer = {"here": True, "account": "-", "result": _dump_result(refused)}
        try:
            await msg.respond(orjson.dumps(answer, default=str))
        except NatsError as exc:
            log.warning("cluster: answering a routed command failed: %s", type(exc).__name__)
