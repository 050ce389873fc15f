"""The long connection (seed 002, 长连接通信: 注册监听 / 心跳 / 设备状态推送), sans I/O.

Client → server, JSON text frames ``{"action", "reqId", "params"}``:

- ``ActivePush`` (注册监听) subscribes ``params.DeviceIds`` with ``params.AccessToken``. The reply
  is ``{"error": "", "error_message": "", "data": {"deviceIds": [...]}, "reqId"}``; a *failure*
  looks like success with an empty ``data.deviceIds`` (seed 输出示例：失败).
- ``YunApi`` with ``params.Action = "AppDeviceTraceHeartBeat"`` (心跳) and ``params.ActionParams =
  {DeviceIds, AccessToken, RequestId}`` keeps the devices traced ("每60s 调用一次"; the current
  official SDKs send it every 50 s, the first right after ``ActivePush``). Errors come back two
  ways: a top-level ``"error": "-1"`` with an empty ``data`` (服务器错误), or ``data.Response.Error``
  (逻辑错误).

Replies carry the request's ``reqId``. Pushes carry ``"push": true``, ``"action": "DeviceChange"``
and ``params = {Time, Type, SubType, Topic, Payload, Seq, DeviceId}``; ``Payload`` is base64 of
the device's JSON message (``push.decode_payload``: lenient base64, NULs stripped).

Decoding a ``DeviceChange`` (Type × SubType, seed Type/SubType 类型说明):

- SubType ``Online``/``Offline`` → ``Availability`` (whatever the Type; the seed sends them as
  ``StatusChange``); other ``StatusChange`` subtypes (``Bind``/``Unbind`` in the SDK) → an event.
- SubType ``Report``/``Push`` of ``Property``/``Shadow``/``Template``/``Event``/``Action``: the
  payload's ``method`` decides — ``report`` (and the legacy ``{"type":"update","state":
  {"reported":…}}``, and ``get_status_reply``'s ``data.reported``) → ``StateChange``;
  ``control`` (and legacy ``{"type":"delta","payload":{"state":…}}``) → ``DeviceEvent("control")``:
  a control *sent to* the device is not device state, its ``Report`` follows if it applied;
  ``event_post`` / ``events_post`` → ``DeviceEvent`` per event; ``action`` → ``DeviceEvent("action")``;
  ``action_reply`` → ``ActionReply`` (matched by ``clientToken``); any other method → an event
  named after it (never silently dropped).
- ``UserDefined`` → ``DeviceEvent("user_defined", {"topic", "payload"})``; its payload may be any
  text, so non-JSON is kept as a string.

The seed's decoded ``report`` example wraps a whole report inside ``params``
(``{"method":"report","params":{"timestamp":0,"params":{…},"method":"report",…}}``); such a nested
envelope is unwrapped.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Final

import orjson

from ..model import (
    ActionReply,
    Availability,
    DeviceEvent,
    EventSpec,
    RemoteProtocolError,
    Schema,
    StateChange,
    VendorError,
    json_object,
)
from ..tsl import normalize
from .api import vendor_error
from .push import PayloadError, decode_payload, tencent_report, tencent_time_ms
from .push import device_ts as _device_ts  # the fast path's rule, not a copy

__all__ = [
    "DEFAULT_WS_URL",
    "HEARTBEAT_ACTION",
    "PUSH_SUBTYPES",
    "PUSH_TYPES",
    "Decoded",
    "DeviceChange",
    "Push",
    "Reply",
    "Request",
    "active_push_frame",
    "active_push_reply",
    "active_push_result",
    "decode_device_change",
    "decode_report",
    "device_change_frame",
    "encode_payload",
    "format_time",
    "heartbeat_frame",
    "hello_frame",
    "parse_device_change",
    "parse_frame",
    "parse_request",
    "reply_frame",
    "yunapi_frame",
    "yunapi_result",
]

DEFAULT_WS_URL: Final = "wss://iot.cloud.tencent.com/iotstudio_v2_weapp_1"
HEARTBEAT_ACTION: Final = "AppDeviceTraceHeartBeat"
PUSH_TYPES: Final = (
    "StatusChange",
    "Property",
    "Template",
    "Event",
    "Action",
    "Shadow",
    "UserDefined",
)
PUSH_SUBTYPES: Final = ("Online", "Offline", "Report", "Push")

_dumps: Final = orjson.dumps
_loads: Final = orjson.loads
_CST: Final = timezone(timedelta(hours=8))
_ReqId = str | int


def _frame(obj: Mapping[str, Any]) -> str:
    return _dumps(obj).decode()


# --------------------------------------------------------------------------------------------
# Client frames


def active_push_frame(
    req_id: _ReqId,
    device_ids: Sequence[str],
    access_token: str,
    *,
    app_key: str | None = None,
    platform: str | None = None,
    region_id: int | str | None = None,
) -> str:
    """注册监听. ``AppKey``/``Platform``/``RegionId`` are what the official JS SDK adds."""
    params: dict[str, Any] = {"DeviceIds": list(device_ids), "AccessToken": access_token}
    if app_key:
        params["AppKey"] = app_key
    if platform:
        params["Platform"] = platform
    if region_id is not None:
        params["RegionId"] = region_id
    return _frame({"action": "ActivePush", "reqId": req_id, "params": params})


def yunapi_frame(
    req_id: _ReqId,
    action: str,
    action_params: Mapping[str, Any],
    access_token: str,
    *,
    request_id: str | None = None,
) -> str:
    """Any tokenapi ``Action`` over the socket; ``AccessToken``/``RequestId`` go in ``ActionParams``."""
    params = dict(action_params)
    params["AccessToken"] = access_token
    params["RequestId"] = request_id if request_id is not None else str(req_id)
    return _frame(
        {"action": "YunApi", "reqId": req_id, "params": {"Action": action, "ActionParams": params}}
    )


def heartbeat_frame(
    req_id: _ReqId, device_ids: Sequence[str], access_token: str, *, platform: str | None = None
) -> str:
    """心跳: ``YunApi`` / ``AppDeviceTraceHeartBeat`` for the subscribed devices."""
    params: dict[str, Any] = {"DeviceIds": list(device_ids)}
    if platform:
        params["Platform"] = platform
    return yunapi_frame(req_id, HEARTBEAT_ACTION, params, access_token)


def hello_frame(req_id: _ReqId) -> str:
    """The Android/iOS SDKs' application keep-alive (the server answers ``hello world``)."""
    return _frame({"action": "Hello", "reqId": req_id})


# --------------------------------------------------------------------------------------------
# Server frames, as the emulator sends them


def encode_payload(body: Mapping[str, Any] | bytes | str) -> str:
    """base64 of a device message, as ``Payload`` carries it."""
    raw = (
        body.encode()
        if isinstance(body, str)
        else body
        if isinstance(body, bytes)
        else _dumps(body)
    )
    return base64.b64encode(raw).decode("ascii")


_last_time: tuple[int, str] = (-1, "")


def format_time(ts_ms: int) -> str:
    """``Time`` as the seed prints it: ISO 8601 with the +08:00 offset, second resolution.

    The string is kept for the current second: an emulator pushing 20k frames/s otherwise spent
    a sixth of its CPU in ``datetime`` (py-spy on bench.load), skewing the latency it measures.
    """
    global _last_time
    second = ts_ms // 1000
    if _last_time[0] != second:
        _last_time = (second, datetime.fromtimestamp(second, _CST).isoformat(timespec="seconds"))
    return _last_time[1]


def device_change_frame(
    device: str,
    type_: str,
    subtype: str,
    payload: Mapping[str, Any] | bytes | str | None,
    *,
    seq: int,
    ts_ms: int,
    topic: str = "",
) -> str:
    """A ``DeviceChange`` push."""
    params = {
        "Time": format_time(ts_ms),
        "Type": type_,
        "SubType": subtype,
        "Topic": topic,
        "Payload": "" if payload is None else encode_payload(payload),
        "Seq": seq,
        "DeviceId": device,
    }
    return _frame({"action": "DeviceChange", "params": params, "push": True})


def reply_frame(
    req_id: _ReqId, data: Mapping[str, Any], *, error: str = "", error_message: str = ""
) -> str:
    return _frame(
        {"error": error, "error_message": error_message, "data": dict(data), "reqId": req_id}
    )


def active_push_reply(req_id: _ReqId, device_ids: Sequence[str]) -> str:
    return reply_frame(req_id, {"deviceIds": list(device_ids)})


@dataclass(frozen=True, slots=True)
class Request:
    """A client frame as the server sees it."""

    action: str
    req_id: _ReqId | None
    params: Mapping[str, Any]


def parse_request(data: str | bytes) -> Request:
    obj = json_object(data, "frame")
    action = obj.get("action")
    if not isinstance(action, str) or not action:
        raise RemoteProtocolError("frame has no action")
    params = obj.get("params")
    req_id = obj.get("reqId")
    if req_id is not None and (isinstance(req_id, bool) or not isinstance(req_id, (str, int))):
        raise RemoteProtocolError("reqId must be a string or an integer")
    return Request(action, req_id, params if isinstance(params, Mapping) else {})


# --------------------------------------------------------------------------------------------
# Server → client frames, as the gateway reads them


@dataclass(frozen=True, slots=True)
class Reply:
    req_id: _ReqId
    error: str
    error_message: str
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Push:
    action: str
    params: Mapping[str, Any]


def parse_frame(data: str | bytes) -> Reply | Push:
    """One server frame; ``RemoteProtocolError`` when it is neither a reply nor a push."""
    obj = json_object(data, "frame")
    if obj.get("push"):
        params = obj.get("params")
        if isinstance(params, (str, bytes)):  # the seed types params as String: tolerate it
            try:
                params = _loads(params)
            except orjson.JSONDecodeError:
                raise RemoteProtocolError("push params is not JSON") from None
        if not isinstance(params, Mapping):
            raise RemoteProtocolError("push without params")
        return Push(str(obj.get("action") or ""), params)
    req_id = obj.get("reqId")
    if req_id is None or isinstance(req_id, bool) or not isinstance(req_id, (str, int)):
        raise RemoteProtocolError("frame is neither a push nor a reply (no reqId)")
    data_obj = obj.get("data")
    return Reply(
        req_id,
        str(obj.get("error") or ""),
        str(obj.get("error_message") or ""),
        data_obj if isinstance(data_obj, Mapping) else {},
    )


def _raise_transport_error(reply: Reply) -> None:
    # 服务器错误: {"error": "-1", "error_message": "后台连接出错…", "data": {}}
    if reply.error and reply.error != "0":
        raise VendorError("vendor", reply.error, reply.error_message or "server error")


def yunapi_result(reply: Reply) -> Mapping[str, Any]:
    """The ``Response`` of a ``YunApi`` reply, raising for both error forms."""
    _raise_transport_error(reply)
    response = reply.data.get("Response")
    if not isinstance(response, Mapping):
        if reply.error_message:
            raise VendorError("vendor", reply.error or "Unknown", reply.error_message)
        raise RemoteProtocolError("YunApi reply has no data.Response")
    error = response.get("Error")
    if error:
        if isinstance(error, Mapping):
            raise vendor_error(error.get("Code"), error.get("Message"))
        raise vendor_error(error, "")
    return response


def active_push_result(reply: Reply, requested: Sequence[str]) -> tuple[str, ...]:
    """The subscribed device ids. An empty ``deviceIds`` for a non-empty request is the seed's
    failure form (bad token or no bound device): ``VendorError("rejected", "ActivePush.NoDevice")``.
    """
    _raise_transport_error(reply)
    ids = reply.data.get("deviceIds", reply.data.get("DeviceIds"))
    if ids is None:
        ids = []
    if not isinstance(ids, list):
        raise RemoteProtocolError("ActivePush reply deviceIds is not an array")
    accepted = tuple(str(i) for i in ids)
    if requested and not accepted:
        raise VendorError(
            "rejected", "ActivePush.NoDevice", reply.error_message or "no device subscribed"
        )
    return accepted


# --------------------------------------------------------------------------------------------
# DeviceChange decoding


@dataclass(frozen=True, slots=True)
class DeviceChange:
    device: str
    type: str
    subtype: str
    topic: str
    payload: str
    seq: int | None
    time_ms: int | None


# ``Time``: ISO 8601 (the seed prints ``+08:00``) or epoch s/ms → epoch ms, else None. A
# kernel of ``push``: the seed's layout is parsed in C when compiled (``datetime`` otherwise).
_parse_time: Final = tencent_time_ms


def parse_device_change(params: Mapping[str, Any]) -> DeviceChange:
    """The ``params`` of a ``DeviceChange`` push. ``DeviceId`` may be missing in the seed's
    short examples; it is then taken from the ``Topic`` (``$thing/up/<kind>/<pid>/<name>``)."""
    type_ = params.get("Type")
    subtype = params.get("SubType")
    if not isinstance(type_, str) or not isinstance(subtype, str):
        raise RemoteProtocolError("DeviceChange without Type/SubType")
    topic = params.get("Topic") or ""
    device = params.get("DeviceId")
    if not isinstance(device, str) or "/" not in device:
        parts = str(topic).split("/")
        if len(parts) >= 3 and parts[-1] and parts[-2]:
            device = f"{parts[-2]}/{parts[-1]}"
        else:
            raise RemoteProtocolError("DeviceChange without a DeviceId")
    payload = params.get("Payload") or ""
    if not isinstance(payload, str):
        raise RemoteProtocolError("DeviceChange Payload is not a string")
    seq = params.get("Seq")
    return DeviceChange(
        device,
        type_,
        subtype,
        str(topic),
        payload,
        seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
        _parse_time(params.get("Time")),
    )


Event = StateChange | Availability | DeviceEvent | ActionReply


@dataclass(slots=True)
class Decoded:
    """Events of one push, and the ids of values that did not fit the schema (to be counted)."""

    events: list[Event] = field(default_factory=list)
    flagged: list[str] = field(default_factory=list)




def _decode_text(payload: str) -> Any:
    """For ``UserDefined``: JSON when it is JSON, else the text itself."""
    try:
        return decode_payload(payload)
    except PayloadError:
        pass
    raw = payload.strip().rstrip("=").replace("-", "+").replace("_", "/")
    try:
        data = binascii.a2b_base64(raw + "=" * (-len(raw) % 4), strict_mode=True)
        return data.replace(b"\x00", b"").decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise RemoteProtocolError("UserDefined Payload is not base64 text") from None


def _params_schema(params: Iterable[Any]) -> Schema:
    return Schema(tuple(params))


def _event(
    out: Decoded, device: str, ev: Mapping[str, Any], ts: int, schema: Schema | None
) -> None:
    event_id = ev.get("eventId") or ev.get("event_id") or ev.get("id")
    if not isinstance(event_id, str) or not event_id:
        raise RemoteProtocolError("event without eventId")
    params = ev.get("params") or {}
    if not isinstance(params, Mapping):
        raise RemoteProtocolError(f"event {event_id!r} params is not an object")
    spec: EventSpec | None = None
    if schema is not None:
        spec = next((e for e in schema.events if e.id == event_id), None)
    level = str(ev.get("type") or (spec.level if spec else "info"))
    values = dict(params)
    if spec is not None and spec.params:
        values, flagged = normalize(_params_schema(spec.params), params)
        out.flagged.extend(f"{event_id}.{f}" for f in flagged)
    out.events.append(DeviceEvent(device, event_id, level, values, _device_ts(ev, ts)))


def _report(out: Decoded, device: str, props: object, ts: int, seq: int | None) -> None:
    """Property values as the device sent them: the gateway's link normalizes state, once."""
    if not isinstance(props, Mapping):
        raise RemoteProtocolError("report params is not an object")
    out.events.append(StateChange(device, props, ts, seq, precision_ms=PUSH_PRECISION_MS))


def _decode_body(
    out: Decoded,
    change: DeviceChange,
    body: object,
    ts: int,
    schema: Schema | None,
) -> None:
    device = change.device
    if not isinstance(body, Mapping):
        raise RemoteProtocolError("Payload is not a JSON object")
    method = body.get("method")
    legacy = body.get("type")
    if method is None and legacy == "update":
        state = body.get("state")
        if isinstance(state, Mapping) and isinstance(state.get("reported"), Mapping):
            _report(out, device, state["reported"], _device_ts(body, ts), change.seq)
            return
        raise RemoteProtocolError("legacy update without state.reported")
    if method is None and legacy == "delta":
        inner = body.get("payload")
        state = inner.get("state") if isinstance(inner, Mapping) else None
        if not isinstance(state, Mapping):
            raise RemoteProtocolError("legacy delta without payload.state")
        out.events.append(DeviceEvent(device, "control", "info", dict(state), ts))
        return
    if not isinstance(method, str) or not method:
        raise RemoteProtocolError("Payload has no method")
    if method == "report":
        params = body.get("params")
        # The seed's decoded example nests a whole report inside params: unwrap it.
        if (
            isinstance(params, Mapping)
            and params.get("method") == "report"
            and isinstance(params.get("params"), Mapping)
        ):
            body, params = params, params["params"]
        _report(out, device, params, _device_ts(body, ts), change.seq)
    elif method == "get_status_reply":
        data = body.get("data")
        reported = data.get("reported") if isinstance(data, Mapping) else None
        if not isinstance(reported, Mapping):
            raise RemoteProtocolError("get_status_reply without data.reported")
        _report(out, device, reported, _device_ts(body, ts), change.seq)
    elif method == "control":
        params = body.get("params")
        if not isinstance(params, Mapping):
            raise RemoteProtocolError("control params is not an object")
        out.events.append(DeviceEvent(device, "control", "info", dict(params), ts))
    elif method == "event_post":
        _event(out, device, body, ts, schema)
    elif method == "events_post":
        params = body.get("params")
        events = params.get("events") if isinstance(params, Mapping) else None
        if not isinstance(events, list):
            raise RemoteProtocolError("events_post without params.events")
        for ev in events:
            if not isinstance(ev, Mapping):
                raise RemoteProtocolError("events_post item is not an object")
            _event(out, device, ev, _device_ts(body, ts), schema)
    elif method == "action":
        params = body.get("params") or {}
        out.events.append(
            DeviceEvent(
                device,
                "action",
                "info",
                {
                    "action": body.get("actionId"),
                    "params": params,
                    "clientToken": body.get("clientToken"),
                },
                ts,
            )
        )
    elif method == "action_reply":
        response = body.get("response")
        code = body.get("code", 0)
        out.events.append(
            ActionReply(
                device,
                str(body.get("actionId") or ""),
                dict(response) if isinstance(response, Mapping) else {},
                _device_ts(body, ts),
                client_token=str(body["clientToken"])
                if body.get("clientToken") is not None
                else None,
                code=code if isinstance(code, int) and not isinstance(code, bool) else -1,
                message=str(body.get("status") or ""),
            )
        )
    else:
        rest = {k: v for k, v in body.items() if k != "method"}
        out.events.append(DeviceEvent(device, method, "info", rest, ts))


#: Seed 002 gives a pushed report's time in whole seconds (``Time``; a device ``timestamp`` in
#: seconds, or 0), while ``AppGetDeviceData`` gives ``LastUpdate`` in milliseconds.
PUSH_PRECISION_MS = 1000


def decode_report(data: str | bytes, *, now_ms: int) -> StateChange | None:
    """The hot path: a whole ``DeviceChange`` frame that is a property report → its
    ``StateChange`` in one ``push.tencent_report`` call (values not normalized: the gateway does that once).

    ``None`` for every other frame (replies, other pushes, anything malformed): the caller then
    takes ``parse_frame`` → ``parse_device_change`` → ``decode_device_change``, which yields the
    same ``StateChange`` for a report (tests/speedups/test_speedups.py) and words the errors.
    """
    hit = tencent_report(data, now_ms)
    if hit is None:
        return None
    return StateChange(hit[0], hit[1], hit[2], hit[3], None, PUSH_PRECISION_MS)


def decode_device_change(
    change: DeviceChange,
    *,
    now_ms: int,
    schema_for: Callable[[str], Schema | None] | None = None,
) -> Decoded:
    """Model events of one ``DeviceChange`` (see the module docstring for the mapping).

    Property values are passed on as the device sent them (the gateway's link normalizes
    state, in one place). With ``schema_for``, an event's parameters are normalized through the
    event's schema and its level taken from it when the push names none.

    Raises ``RemoteProtocolError`` for a push that cannot be understood (garbled Payload, no
    method, unknown SubType): the caller counts it and goes on.
    """
    out = Decoded()
    device = change.device
    ts = change.time_ms or now_ms
    subtype = change.subtype
    if subtype in ("Online", "Offline"):
        out.events.append(Availability(device, subtype == "Online", ts))
        return out
    if change.type == "StatusChange":
        params: dict[str, Any] = {}
        if change.payload:
            try:
                params = {"payload": decode_payload(change.payload)}
            except PayloadError as exc:
                raise RemoteProtocolError(f"StatusChange {subtype} Payload: {exc}") from None
        out.events.append(DeviceEvent(device, subtype.lower() or "status", "info", params, ts))
        return out
    if subtype not in ("Report", "Push"):
        raise RemoteProtocolError(f"unknown SubType {subtype!r} for Type {change.type!r}")
    if not change.payload:
        raise RemoteProtocolError(f"{change.type}/{subtype} push with an empty Payload")
    if change.type == "UserDefined":
        body = _decode_text(change.payload)
        out.events.append(
            DeviceEvent(
                device, "user_defined", "info", {"topic": change.topic, "payload": body}, ts
            )
        )
        return out
    try:
        body = decode_payload(change.payload)
    except PayloadError as exc:
        raise RemoteProtocolError(f"{change.type}/{subtype} Payload: {exc}") from None
    schema = schema_for(device) if schema_for is not None else None
    _decode_body(out, change, body, ts, schema)
    return out
