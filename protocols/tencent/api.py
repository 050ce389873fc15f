"""``appapi`` / ``tokenapi`` request builders and response parsers (seed 002, 应用端 API 简介).

Two entry points, both ``POST`` with a JSON body (seed 调用方式):

- ``…/exploreropen/appapi`` before login: public parameters ``Action``, ``RequestId``, ``AppKey``,
  ``Timestamp`` (UNIX seconds), ``Nonce`` (random positive int) and ``Signature`` (see ``sign``);
- ``…/exploreropen/tokenapi`` after login: ``Action``, ``RequestId``, ``AccessToken``.

Every answer is ``{"Response": {…, "RequestId"}}`` and an error is ``Response.Error.{Code,Message}``
(seed 输出示例：失败). The official mini-program SDK reads a ``{"code", "msg", "data"}`` envelope
from the same URL instead; ``parse_response`` accepts both, so a gateway keeps working whichever
one the cloud really sends.

Builders return plain dicts (the body to POST); parsers take the decoded JSON (or bytes) and
return small typed records. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from ..model import ErrorCode, LocalProtocolError, RemoteProtocolError, VendorError, json_value
from .sign import sign

__all__ = [
    "APPAPI",
    "AUTH_CODES",
    "DEFAULT_API_URL",
    "MAX_LIMIT",
    "OVERSEA_API_URL",
    "TOKENAPI",
    "ActionResult",
    "DeviceRecord",
    "FamilyRecord",
    "Page",
    "ProductRecord",
    "Token",
    "action_params",
    "appapi_body",
    "control_params",
    "device_data_params",
    "device_list_params",
    "device_statuses_params",
    "error_code",
    "family_list_params",
    "is_token_error",
    "login_weixin_params",
    "parse_action_result",
    "parse_device_data",
    "parse_device_list",
    "parse_device_statuses",
    "parse_family_list",
    "parse_products",
    "parse_response",
    "parse_token",
    "products_params",
    "split_device_id",
    "tokenapi_body",
    "vendor_error",
]

DEFAULT_API_URL: Final = "https://iot.cloud.tencent.com/api/exploreropen"
OVERSEA_API_URL: Final = "https://oversea.iotcloud.tencentiotcloud.com/api/exploreropen"
APPAPI: Final = "appapi"
TOKENAPI: Final = "tokenapi"
MAX_LIMIT: Final = 50  # AppGetFamilyList / AppGetFamilyDeviceList: "最大值为50"

# Codes that mean "log in again": the seed's InvalidAccessToken, and the mini SDK's
# VERIFY_LOGIN_FAIL (utils/errorHelper.js isVerifyLoginError matches both by substring).
AUTH_CODES: Final = ("InvalidAccessToken", "VERIFY_LOGIN_FAIL")

_dumps: Final = orjson.dumps


# --------------------------------------------------------------------------------------------
# Errors


def error_code(vendor_code: str) -> ErrorCode:
    """Normalized category of a Tencent error code (the reply contract's ``error.code``).

    ``auth``: the token or the app's credentials are no good (log in again / needs a human);
    ``offline``: the device is offline; ``throttled``: a rate limit; ``invalid``: the request is
    wrong (bad parameter, unknown device); ``rejected``: refused although well-formed (no
    permission, replayed nonce, stale timestamp); ``vendor``: the cloud failed.
    """
    code = vendor_code or ""
    if any(marker in code for marker in AUTH_CODES):
        return "auth"
    if code in (
        "InvalidParameterValue.InvalidSignature",
        "InvalidParameterValue.ErrorUserNotExists",
        "ResourceNotFound.AppNotExists",
        "AuthFailure",
    ) or code.startswith("AuthFailure."):
        return "auth"
    if code == "FailedOperation.DeviceOffline" or code.endswith("DeviceOffline"):
        return "offline"
    if code.startswith(("LimitExceeded", "RequestLimitExceeded")):
        return "throttled"
    if code in ("InvalidParameterValue.TimestampExpired", "InvalidParameterValue.NonceUsed"):
        return "rejected"
    if code.startswith(("UnauthorizedOperation", "FailedOperation")):
        return "rejected"
    if code.startswith(
        (
            "InvalidParameter",
            "InvalidAction",
            "ErrorRequiredParamNotFound",
            "ResourceNotFound",
            "MissingParameter",
        )
    ):
        return "invalid"
    return "vendor"


def vendor_error(vendor_code: object, message: object) -> VendorError:
    code = str(vendor_code) if vendor_code not in (None, "") else "Unknown"
    return VendorError(error_code(code), code, str(message or ""))


def is_token_error(exc: BaseException) -> bool:
    """Does this error mean the AccessToken is no longer accepted (re-login once)?"""
    return isinstance(exc, VendorError) and any(m in str(exc.vendor_code) for m in AUTH_CODES)


# --------------------------------------------------------------------------------------------
# Request bodies


def appapi_body(
    action: str,
    params: Mapping[str, object],
    *,
    app_key: str,
    app_secret: str,
    timestamp: int,
    nonce: int,
    request_id: str,
) -> dict[str, Any]:
    """A signed pre-login request body."""
    if nonce <= 0:
        raise LocalProtocolError("Nonce must be a positive integer")
    body: dict[str, Any] = dict(params)
    body.update(
        Action=action, AppKey=app_key, Timestamp=timestamp, Nonce=nonce, RequestId=request_id
    )
    body.pop("Signature", None)
    body["Signature"] = sign(app_secret, body)
    return body


def tokenapi_body(
    action: str, params: Mapping[str, object], *, access_token: str, request_id: str
) -> dict[str, Any]:
    """A post-login request body."""
    body: dict[str, Any] = dict(params)
    body.update(Action=action, RequestId=request_id, AccessToken=access_token)
    return body


def login_weixin_params(open_id: str, nick_name: str = "", avatar: str = "") -> dict[str, Any]:
    """``AppGetTokenByWeiXin`` (用户注册登录): logs in, registering the user on first call."""
    if not open_id:
        raise LocalProtocolError("AppGetTokenByWeiXin needs a WxOpenID")
    return {"WxOpenID": open_id, "NickName": nick_name or open_id, "Avatar": avatar}


def _page(offset: int, limit: int) -> dict[str, Any]:
    if offset < 0 or not 0 < limit <= MAX_LIMIT:
        raise LocalProtocolError(f"Offset must be >= 0 and Limit in 1..{MAX_LIMIT}")
    return {"Offset": offset, "Limit": limit}


def family_list_params(offset: int = 0, limit: int = MAX_LIMIT) -> dict[str, Any]:
    return _page(offset, limit)


def device_list_params(
    family_id: str, offset: int = 0, limit: int = MAX_LIMIT, room_id: str = ""
) -> dict[str, Any]:
    # RoomId "" lists the whole family ("如果要获取家庭所有设备，则该字段为''").
    return {"FamilyId": family_id, "RoomId": room_id, **_page(offset, limit)}


def device_statuses_params(device_ids: Sequence[str]) -> dict[str, Any]:
    return {"DeviceIds": list(device_ids)}


def split_device_id(device_id: str) -> tuple[str, str]:
    """``"ProductId/DeviceName"`` → ``(ProductId, DeviceName)``."""
    product, sep, name = device_id.partition("/")
    if not sep or not product or not name:
        raise LocalProtocolError(f"device id {device_id!r} is not ProductId/DeviceName")
    return product, name


def device_data_params(device_id: str) -> dict[str, Any]:
    product, name = split_device_id(device_id)
    return {"ProductId": product, "DeviceName": name}


def products_params(product_ids: Iterable[str]) -> dict[str, Any]:
    return {"ProductIds": sorted(set(product_ids))}


def control_params(device_id: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """``AppControlDeviceData``: ``Data`` is a JSON *string* of the (denormalized) values."""
    if not data:
        raise LocalProtocolError("AppControlDeviceData needs at least one value")
    product, name = split_device_id(device_id)
    return {"ProductId": product, "DeviceName": name, "Data": _dumps(dict(data)).decode()}


def action_params(device_id: str, action_id: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """``AppCallDeviceActionSync``/``Async``: ``InputParams`` is a JSON string."""
    if not action_id:
        raise LocalProtocolError("an action needs an ActionId")
    product, name = split_device_id(device_id)
    return {
        "ProductId": product,
        "DeviceName": name,
        "ActionId": action_id,
        "InputParams": _dumps(dict(inputs)).decode(),
    }


# --------------------------------------------------------------------------------------------
# Responses


def _object(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RemoteProtocolError(f"{what} is not an object")
    return value


def parse_response(body: bytes | str | Mapping[str, Any]) -> dict[str, Any]:
    """The ``Response`` object of a reply; ``VendorError`` for ``Response.Error``.

    Also accepts the ``{"code", "msg", "data"}`` envelope the official JS SDK reads.
    """
    if isinstance(body, (bytes, bytearray, str)):
        body = json_value(body, "reply")
    envelope = _object(body, "reply")
    if "Response" in envelope:
        response = dict(_object(envelope["Response"], "Response"))
    elif "code" in envelope or "data" in envelope:
        data = envelope.get("data")
        response = dict(data) if isinstance(data, Mapping) else {}
        code = envelope.get("code")
        if code and "Error" not in response:
            raise vendor_error(code, envelope.get("msg"))
    else:
        raise RemoteProtocolError("reply has neither Response nor data")
    error = response.get("Error")
    if error:
        if isinstance(error, Mapping):
            raise vendor_error(error.get("Code"), error.get("Message"))
        raise vendor_error(error, response.get("Message", ""))
    return response


def _json_field(value: object, what: str) -> Any:
    """A field the seed types as a JSON *string* (``Data``, ``OutputParams``); objects pass."""
    if isinstance(value, (str, bytes, bytearray)):
        if not value:
            return {}
        return json_value(value, what)
    return value if value is not None else {}


@dataclass(frozen=True, slots=True)
class Token:
    token: str
    expire_at_ms: int | None  # ExpireAt is UNIX seconds on the wire


def parse_token(response: Mapping[str, Any]) -> Token:
    data = response.get("Data", response)
    data = _object(data, "Data")
    token = data.get("Token") or data.get("AccessToken")
    if not isinstance(token, str) or not token:
        raise RemoteProtocolError("login reply carries no Token")
    expire = data.get("ExpireAt")
    expire_ms = None
    if isinstance(expire, (int, float)) and not isinstance(expire, bool) and expire > 0:
        expire_ms = int(expire * 1000) if expire < 100_000_000_000 else int(expire)
    return Token(token, expire_ms)


@dataclass(frozen=True, slots=True)
class Page:
    items: tuple[Any, ...]
    total: int

    def next_offset(self, offset: int) -> int | None:
        """Offset of the next page, or None when this was the last one."""
        following = offset + len(self.items)
        return following if self.items and following < self.total else None


@dataclass(frozen=True, slots=True)
class FamilyRecord:
    family_id: str
    name: str = ""
    role: int | None = None


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    device_id: str
    product_id: str
    device_name: str
    alias: str = ""
    room_id: str = ""
    family_id: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


def _total(response: Mapping[str, Any], count: int) -> int:
    total = response.get("Total")
    return int(total) if isinstance(total, int) and not isinstance(total, bool) else count


def parse_family_list(response: Mapping[str, Any]) -> Page:
    raw = response.get("FamilyList") or []
    if not isinstance(raw, list):
        raise RemoteProtocolError("FamilyList is not an array")
    items = tuple(
        FamilyRecord(
            str(f["FamilyId"]),
            str(f.get("Name", "")),
            f.get("Role") if isinstance(f.get("Role"), int) else None,
        )
        for f in raw
        if isinstance(f, Mapping) and f.get("FamilyId")
    )
    return Page(items, _total(response, len(raw)))


def parse_device_list(response: Mapping[str, Any], family_id: str = "") -> Page:
    raw = response.get("DeviceList") or []
    if not isinstance(raw, list):
        raise RemoteProtocolError("DeviceList is not an array")
    items: list[DeviceRecord] = []
    for d in raw:
        if not isinstance(d, Mapping):
            continue
        product, name = d.get("ProductId"), d.get("DeviceName")
        device_id = d.get("DeviceId") or (f"{product}/{name}" if product and name else None)
        if not isinstance(device_id, str) or "/" not in device_id:
            continue
        if not product or not name:
            product, _, name = device_id.partition("/")
        items.append(
            DeviceRecord(
                device_id,
                str(product),
                str(name),
                alias=str(d.get("AliasName") or ""),
                room_id=str(d.get("RoomId") or ""),
                family_id=family_id,
                extra={
                    k: v
                    for k, v in d.items()
                    if k in ("IconUrl", "CreateTime", "UpdateTime", "UserID")
                },
            )
        )
    return Page(tuple(items), _total(response, len(raw)))


def parse_device_statuses(response: Mapping[str, Any]) -> dict[str, bool]:
    """``{DeviceId: online}``. Seed: ``"Online": 0 //0 在线; 1: 离线`` — 0 means *online*.

    The output table names the list ``Devices``, the example ``DeviceStatuses``: both accepted.
    """
    raw = response.get("DeviceStatuses")
    if raw is None:
        raw = response.get("Devices") or []
    if not isinstance(raw, list):
        raise RemoteProtocolError("DeviceStatuses is not an array")
    out: dict[str, bool] = {}
    for d in raw:
        if not isinstance(d, Mapping):
            continue
        device_id = d.get("DeviceId") or (
            f"{d['ProductId']}/{d['DeviceName']}"
            if d.get("ProductId") and d.get("DeviceName")
            else None
        )
        online = d.get("Online")
        if isinstance(device_id, str) and isinstance(online, int) and not isinstance(online, bool):
            out[device_id] = online == 0
    return out


def parse_device_data(response: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """``AppGetDeviceData``: ``Data`` is a JSON string ``{prop: {"Value", "LastUpdate" (ms)}}``.

    Returns the values and each value's ``LastUpdate``. A bare ``{prop: value}`` is accepted too.
    """
    data = _json_field(response.get("Data"), "Data")
    if not isinstance(data, Mapping):
        raise RemoteProtocolError("Data is not an object")
    values: dict[str, Any] = {}
    stamps: dict[str, int] = {}
    for key, item in data.items():
        if isinstance(item, Mapping) and "Value" in item:
            values[key] = item["Value"]
            last = item.get("LastUpdate", item.get("lastUpdate"))
            if isinstance(last, (int, float)) and not isinstance(last, bool) and last > 0:
                stamps[key] = int(last * 1000) if last < 100_000_000_000 else int(last)
        else:
            values[key] = item
    return values, stamps


@dataclass(frozen=True, slots=True)
class ProductRecord:
    product_id: str
    name: str
    template: Any  # raw DataTemplate (object or JSON string); see template.schema_from_template
    extra: Mapping[str, Any] = field(default_factory=dict)


def parse_products(response: Mapping[str, Any]) -> dict[str, ProductRecord]:
    raw = response.get("Products") or []
    if not isinstance(raw, list):
        raise RemoteProtocolError("Products is not an array")
    out: dict[str, ProductRecord] = {}
    for p in raw:
        if not isinstance(p, Mapping) or not p.get("ProductId"):
            continue
        pid = str(p["ProductId"])
        extra = {k: p[k] for k in ("NetType", "CategoryId", "ProductType", "Description") if k in p}
        out[pid] = ProductRecord(pid, str(p.get("Name", "")), p.get("DataTemplate"), extra)
    return out


@dataclass(frozen=True, slots=True)
class ActionResult:
    client_token: str
    status: str
    output: Mapping[str, Any] | None

    @property
    def ok(self) -> bool:
        # Seed examples: "succ" (sync) and "Sent" (async).
        return self.status.lower() in ("succ", "success", "sent", "")


def parse_action_result(response: Mapping[str, Any]) -> ActionResult:
    output = response.get("OutputParams")
    parsed = _json_field(output, "OutputParams") if output not in (None, "") else None
    if parsed is not None and not isinstance(parsed, Mapping):
        parsed = {"value": parsed}
    return ActionResult(
        str(response.get("ClientToken") or ""), str(response.get("Status") or ""), parsed
    )
