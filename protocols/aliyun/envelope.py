"""The Living API envelope (seed 1. API概述: 公共请求参数 / 公共返回参数) and its error codes.

Request::

    {"id": "...", "version": "1.0", "request": {"apiVer": "1.0.5", "iotToken": "..."},
     "params": {...}}

Response::

    {"id": "...", "code": 200, "message": "success", "localizedMsg": "...", "data": ...}

``parse_response`` turns an error reply (an HTTP error from the gateway itself, or a ``code``
other than 200 in the body) into ``VendorError`` with the reply contract's category, keeping the
vendor's code verbatim. The server half (``parse_request``, ``build_response``) is what the
emulator uses, so both sides share one reading of the envelope.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from ..model import ErrorCode, RemoteProtocolError, VendorError, json_value

__all__ = [
    "API",
    "AUTH_CODES",
    "ERROR_CATEGORY",
    "Api",
    "ApiRequest",
    "build_request",
    "build_response",
    "error_category",
    "parse_request",
    "parse_response",
]


@dataclass(frozen=True, slots=True)
class Api:
    path: str
    version: str


#: The APIs the gateway uses, with the ``apiVer`` the seed documents for each.
API: Final = {
    "ping": Api("/kit/debug/ping", "1.0.0"),
    "list_bindings": Api("/uc/listBindingByAccount", "1.0.8"),
    "tsl": Api("/thing/tsl/get", "1.0.4"),
    "properties_get": Api("/thing/properties/get", "1.0.4"),
    "properties_set": Api("/thing/properties/set", "1.0.5"),
    "service_invoke": Api("/thing/service/invoke", "1.0.5"),
    "status_get": Api("/thing/status/get", "1.0.5"),
    # Not in seed 004; from the research notes (Living SDK call chain).
    "refresh_session": Api("/account/checkOrRefreshSession", "1.0.4"),
}

#: Seed 2. 错误码字典 (plus the field-reported codes of the research notes), by category.
ERROR_CATEGORY: Final[dict[int, ErrorCode]] = {
    400: "invalid",  # request error
    401: "auth",  # request auth error (signature, token, device not bound to the user)
    403: "auth",  # request forbidden (AppKey has no access)
    404: "vendor",  # service not found
    429: "throttled",  # too many requests
    460: "invalid",  # request parameter error
    500: "vendor",
    503: "vendor",
    2000: "invalid",  # param is invalid
    2062: "auth",  # identityId does not exist (iotToken expired or wrong)
    2063: "invalid",  # iotId not exist
    2065: "rejected",  # identityId and iotId not bound
    2066: "rejected",  # identityId is not manager
    2401: "auth",  # refreshToken invalid!! (research notes)
    20004: "invalid",  # gateway.backend service error (bad input)
    20017: "auth",  # illegal cloudToken or timeout
    20050: "invalid",  # xxx required
    20056: "timeout",  # gateway timeout (research notes)
    24063: "invalid",  # query device failed
    28504: "offline",  # device is offline
    28517: "invalid",  # invalid iot id
    28532: "auth",  # invalid user info
    28560: "invalid",  # device not exist
    28601: "rejected",  # user device not bind
    29003: "auth",  # identityId is null
    29004: "rejected",  # device is unbind
    6205: "offline",  # device offline (research notes)
    6221: "offline",  # 设备不在线 (配网错误码)
    6100: "invalid",  # device not found
    9112: "invalid",  # there is no device exist
}

#: Codes after which the iotToken must be refreshed or a human must look.
AUTH_CODES: Final = frozenset(code for code, cat in ERROR_CATEGORY.items() if cat == "auth")


def error_category(code: int) -> ErrorCode:
    return ERROR_CATEGORY.get(code, "vendor")


def build_request(
    api_ver: str,
    params: Mapping[str, Any] | None = None,
    iot_token: str | None = None,
    request_id: str | None = None,
    language: str | None = None,
) -> bytes:
    """The JSON body of one call (``id`` defaults to a UUID)."""
    request: dict[str, Any] = {"apiVer": api_ver}
    if iot_token is not None:
        request["iotToken"] = iot_token
    if language is not None:
        request["language"] = language
    body = {
        "id": request_id or str(uuid.uuid4()),
        "version": "1.0",
        "request": request,
        "params": dict(params or {}),
    }
    return orjson.dumps(body)


def _loads(body: bytes | str) -> Any:
    return json_value(body, "reply")


def parse_response(status: int, body: bytes, error_message: str | None = None) -> Any:
    """Return ``data`` of a successful reply; raise ``VendorError`` for an error reply.

    ``status`` is the HTTP status: the API gateway itself answers signature and throttling
    problems with an HTTP error (``error_message`` is its ``X-Ca-Error-Message`` header) and
    possibly no JSON body; the services answer HTTP 200 with ``code`` in the body.
    Garbage raises ``RemoteProtocolError``.
    """
    if status != 200:
        message = error_message or ""
        code: object = status
        if body:
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                doc = None
            if isinstance(doc, dict):
                code = doc.get("code", status)
                message = str(doc.get("message") or doc.get("localizedMsg") or message)
        category = error_category(code) if isinstance(code, int) else error_category(status)
        if status == 429:
            category = "throttled"
        return _raise(category, code, message or f"HTTP {status}")
    doc = _loads(body)
    if not isinstance(doc, dict):
        raise RemoteProtocolError("reply is not a JSON object")
    if "error_response" in doc and "code" not in doc:
        err = doc["error_response"]
        err = err if isinstance(err, dict) else {}
        raise VendorError("vendor", err.get("code"), str(err.get("sub_msg") or err.get("msg") or ""))
    code = doc.get("code")
    if not isinstance(code, int) or isinstance(code, bool):
        raise RemoteProtocolError(f"reply has no integer code: {code!r}")
    if code == 200:
        return doc.get("data")
    message = str(doc.get("message") or doc.get("localizedMsg") or "")
    return _raise(error_category(code), code, message)


def _raise(category: ErrorCode, code: object, message: str) -> Any:
    raise VendorError(category, code, message)


# --------------------------------------------------------------------------------------------
# Server half (the emulator).


@dataclass(frozen=True, slots=True)
class ApiRequest:
    id: str
    api_ver: str
    iot_token: str | None
    params: Mapping[str, Any]


def parse_request(body: bytes) -> ApiRequest:
    """Read a request body as the platform would; ``RemoteProtocolError`` when it is not one."""
    doc = _loads(body)
    if not isinstance(doc, dict):
        raise RemoteProtocolError("request is not a JSON object")
    request = doc.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("apiVer"), str):
        raise RemoteProtocolError("request.apiVer is required")
    params = doc.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RemoteProtocolError("params must be an object")
    token = request.get("iotToken")
    return ApiRequest(
        id=str(doc.get("id") or ""),
        api_ver=request["apiVer"],
        iot_token=token if isinstance(token, str) else None,
        params=params,
    )


def build_response(
    request_id: str, code: int = 200, data: Any = None, message: str | None = None
) -> bytes:
    return orjson.dumps(
        {
            "id": request_id,
            "code": code,
            "message": message if message is not None else ("success" if code == 200 else ""),
            "localizedMsg": None if code == 200 else (message or ""),
            "data": data,
        }
    )
