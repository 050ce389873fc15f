"""CoolKit REST: request builders and response parsers for API v2 (seed 001) and v1 (seed 003).

Sans-I/O: a builder returns an ``HttpRequest`` (method, full URL, headers, exact body bytes) and a
parser takes the status and body bytes back. The connector sends, the emulator receives, and both
use the same functions, so a signature the connector makes is checked by the emulator with the
same rules.

v2 (seed 001, *General parameters*): ``X-CK-Appid`` (user endpoints), ``X-CK-Nonce`` (8
alphanumerics), ``Authorization: Sign <sig>`` before login or ``Bearer <at>`` after it, JSON
envelope ``{"error", "msg", "data"}``. v1 (seed 003, 接口说明): ``appid``, ``nonce``, ``ts``,
``version: 8`` travel in the body (POST) or the query (GET), on ``https://{region}-api.coolkit.cc:8080``
(``https://cn-api.coolkit.cn:8080`` for ``cn``), and a reply is the bare object, with ``error``
present only on failure.

Hosts are templates with ``{region}`` and ``{tld}`` so the emulator can stand in for every region.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import quote

import orjson

from ..model import ErrorCode, RemoteProtocolError, VendorError, json_value
from .sign import Signer, canonical_query

__all__ = [
    "DEFAULT_HOSTS",
    "ERROR_TEXT",
    "RATE_LIMITED",
    "App",
    "Dispatch",
    "Family",
    "Hosts",
    "HttpRequest",
    "LoginResult",
    "RegionRedirect",
    "Thing",
    "ThingPager",
    "dispatch_request",
    "error_code",
    "family_request",
    "group_status_request",
    "login_request",
    "parse_dispatch",
    "parse_envelope",
    "parse_family",
    "parse_login",
    "parse_refresh",
    "parse_thing",
    "parse_v1_devices",
    "refresh_request",
    "thing_page_request",
    "v1_devices_request",
]

Version = Literal[1, 2]

# The seed names no error for breaking the per-IP rate rules (it only says the IP gets
# blocked). Our emulator answers ``429`` (HTTP's "Too Many Requests", unused by both seeds) in
# the JSON ``error`` field, and the connector treats it as ``throttled``.
RATE_LIMITED: Final = 429

ERROR_TEXT: Final[Mapping[int, str]] = {
    400: "parameter error",
    401: "access token rejected (the account was probably logged in elsewhere)",
    402: "access token expired",
    403: "interface not found",
    405: "resource not found",
    406: "access denied (wrong APPID, signature or incomplete parameters)",
    407: "the APPID has no permission for this interface",
    412: "APPID call quota exceeded",
    RATE_LIMITED: "per-IP rate limit exceeded",
    500: "internal server error",
    503: "device offline",
    504: "device did not answer",
    4002: "device control failure",
    10001: "incorrect login password",
    10003: "user does not exist",
    10004: "user is in another region",
    30022: "device is offline",
}

_CATEGORY: Final[Mapping[int, ErrorCode]] = {
    400: "invalid",
    401: "auth",
    402: "auth",
    406: "auth",
    407: "auth",
    412: "throttled",
    RATE_LIMITED: "throttled",
    503: "offline",
    504: "offline",
    4002: "rejected",
    10001: "auth",
    10003: "auth",
    30022: "offline",
}


def error_code(vendor_code: int) -> ErrorCode:
    """The reply-contract category of a CoolKit error code."""
    return _CATEGORY.get(vendor_code, "vendor")


class RegionRedirect(VendorError):
    """The account lives in another region (v2 ``10004`` + ``data.region``, v1 ``301`` + ``region``)."""

    def __init__(self, vendor_code: int, region: str) -> None:
        super().__init__("auth", vendor_code, f"account is in region {region!r}")
        self.region = region


# --------------------------------------------------------------------------------------------
# Hosts


def tld(region: str) -> str:
    """"The domain name for China (mainland) is .cn, the other regions .cc" (and ``test``)."""
    return "cn" if region in ("cn", "test") else "cc"


@dataclass(frozen=True, slots=True)
class Hosts:
    """Base URL templates; ``{region}`` and ``{tld}`` are filled in per call."""

    api: str = "https://{region}-apia.coolkit.{tld}"
    dispatch: str = "https://{region}-dispa.coolkit.{tld}"
    v1_api: str = "https://{region}-api.coolkit.{tld}:8080"

    def base(self, version: Version, region: str) -> str:
        template = self.api if version == 2 else self.v1_api
        return template.format(region=region, tld=tld(region)).rstrip("/")

    def dispatch_base(self, version: Version, region: str) -> str:
        # v1 dispatches on the API host itself (seed 003, HTTP: 分配服务).
        template = self.dispatch if version == 2 else self.v1_api
        return template.format(region=region, tld=tld(region)).rstrip("/")

    def ws_scheme(self) -> str:
        """``wss`` against the real cloud; plain ``ws`` when the API is plain HTTP (emulator)."""
        return "ws" if self.api.startswith("http://") else "wss"


DEFAULT_HOSTS: Final = Hosts()


@dataclass(frozen=True, slots=True)
class App:
    """The developer app the signed calls are made as: its APPID, the signer of its APP SECRET
    (seed 001, *Signature Rules*) and the hosts. One per account configuration."""

    appid: str
    signer: Signer
    hosts: Hosts = DEFAULT_HOSTS


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request, ready to send. ``endpoint`` names the interface for the per-IP rate rules."""

    method: Literal["GET", "POST"]
    url: str
    endpoint: str
    headers: Mapping[str, str]
    body: bytes | None = None


def _dumps(body: Mapping[str, Any]) -> bytes:
    return orjson.dumps(body)


def _query(params: Mapping[str, object]) -> str:
    """The URL query (URL-encoded, unlike the signed canonical string)."""
    pairs = []
    for key, value in params.items():
        if value is None:
            continue
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        pairs.append(f"{quote(key, safe='')}={quote(text, safe='')}")
    return "&".join(pairs)


def _signed_v2(app: App, nonce: str, raw: bytes) -> dict[str, str]:
    """The headers of a v2 call signed with the APP SECRET (seed 001: `Authorization: Sign {sign}`,
    *Signature Rules*)."""
    return {
        "X-CK-Appid": app.appid,
        "X-CK-Nonce": nonce,
        "Authorization": f"Sign {app.signer(raw)}",
        "Content-Type": "application/json",
    }


def _v1_common(appid: str, nonce: str, ts: int) -> dict[str, Any]:
    return {"appid": appid, "nonce": nonce, "ts": ts, "version": 8}


def login_request(
    app: App,
    version: Version,
    region: str,
    *,
    nonce: str,
    password: str,
    country_code: str,
    email: str | None = None,
    phone_number: str | None = None,
    ts: int = 0,
) -> HttpRequest:
    """``POST /v2/user/login`` (seed 001, *Login*) or ``POST /api/user/login`` (seed 003, 账号登录)."""
    if not (email or phone_number):
        raise ValueError("login needs an email or a phone number")
    body: dict[str, Any] = {"countryCode": country_code}
    if phone_number:
        body["phoneNumber"] = phone_number
    else:
        body["email"] = email
    body["password"] = password
    base = app.hosts.base(version, region)
    if version == 1:
        body.update(_v1_common(app.appid, nonce, ts))
        raw = _dumps(body)
        headers = {"Authorization": f"Sign {app.signer(raw)}", "Content-Type": "application/json"}
        return HttpRequest("POST", f"{base}/api/user/login", "/api/user/login", headers, raw)
    raw = _dumps(body)
    headers = _signed_v2(app, nonce, raw)
    return HttpRequest("POST", f"{base}/v2/user/login", "/v2/user/login", headers, raw)


def refresh_request(
    app: App, version: Version, region: str, *, nonce: str, rt: str, ts: int = 0
) -> HttpRequest:
    """v2 ``POST /v2/user/refresh {"rt"}`` signed; v1 ``GET /api/user/refresh?grantType=refresh…`` signed.

    The v2 seed allows "Token or Sign"; Sign works even when the ``at`` is already expired.
    """
    base = app.hosts.base(version, region)
    if version == 1:
        params: dict[str, object] = {"grantType": "refresh", "rt": rt, **_v1_common(app.appid, nonce, ts)}
        headers = {
            "Authorization": f"Sign {app.signer(canonical_query(params).encode())}",
            "Content-Type": "application/json",
        }
        url = f"{base}/api/user/refresh?{_query(params)}"
        return HttpRequest("GET", url, "/api/user/refresh", headers)
    raw = _dumps({"rt": rt})
    headers = _signed_v2(app, nonce, raw)
    return HttpRequest("POST", f"{base}/v2/user/refresh", "/v2/user/refresh", headers, raw)


def _bearer(at: str, nonce: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {at}", "X-CK-Nonce": nonce}


def family_request(hosts: Hosts, region: str, *, at: str, nonce: str) -> HttpRequest:
    """``GET /v2/family``: the homes, and the user ``apikey`` an OAuth account needs for ``userOnline``."""
    base = hosts.base(2, region)
    return HttpRequest("GET", f"{base}/v2/family?lang=en", "/v2/family", _bearer(at, nonce))


def thing_page_request(
    hosts: Hosts,
    region: str,
    *,
    at: str,
    nonce: str,
    begin_index: int,
    num: int,
    familyid: str | None = None,
) -> HttpRequest:
    """``GET /v2/device/thing`` with ``num`` and ``beginIndex`` (seed 001, *Get Thing List*)."""
    params: dict[str, object] = {"lang": "en", "num": num, "beginIndex": begin_index}
    if familyid:
        params["familyid"] = familyid
    url = f"{hosts.base(2, region)}/v2/device/thing?{_query(params)}"
    return HttpRequest("GET", url, "/v2/device/thing", _bearer(at, nonce))


def group_status_request(
    hosts: Hosts, region: str, *, at: str, nonce: str, group_id: str, params: Mapping[str, Any]
) -> HttpRequest:
    """``POST /v2/device/thing/status`` with ``type: 2``: groups cannot be driven over the WebSocket."""
    raw = _dumps({"type": 2, "id": group_id, "params": dict(params)})
    headers = {**_bearer(at, nonce), "Content-Type": "application/json"}
    url = f"{hosts.base(2, region)}/v2/device/thing/status"
    return HttpRequest("POST", url, "/v2/device/thing/status", headers, raw)


def v1_devices_request(app: App, region: str, *, at: str, nonce: str, ts: int) -> HttpRequest:
    """``GET /api/user/device`` (seed 003, 获取设备列表); v1 has no paging and no thing list."""
    params: dict[str, object] = {"lang": "en", **_v1_common(app.appid, nonce, ts)}
    url = f"{app.hosts.base(1, region)}/api/user/device?{_query(params)}"
    headers = {"Authorization": f"Bearer {at}", "Content-Type": "application/json"}
    return HttpRequest("GET", url, "/api/user/device", headers)


def dispatch_request(
    app: App, version: Version, region: str, *, at: str, nonce: str, ts: int
) -> HttpRequest:
    """Where to open the WebSocket: v2 ``GET /dispatch/app``, v1 ``POST /dispatch/app {"accept":"ws",…}``."""
    base = app.hosts.dispatch_base(version, region)
    if version == 1:
        raw = _dumps({"accept": "ws", **_v1_common(app.appid, nonce, ts)})
        headers = {"Authorization": f"Bearer {at}", "Content-Type": "application/json"}
        return HttpRequest("POST", f"{base}/dispatch/app", "/dispatch/app", headers, raw)
    return HttpRequest("GET", f"{base}/dispatch/app", "/dispatch/app", _bearer(at, nonce))


# --------------------------------------------------------------------------------------------
# Parsers


def _load(body: bytes) -> Any:
    return json_value(body, "response")


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def parse_envelope(status: int, body: bytes, version: Version = 2) -> Any:
    """Unwrap a reply: v2 ``data`` of ``{"error":0,"msg":"","data":{…}}``; v1 the whole object.

    Raises ``RegionRedirect`` for a region redirect, ``VendorError`` for a vendor error code
    (HTTP 4xx/5xx with a JSON error body too), ``RemoteProtocolError`` for anything unreadable.
    """
    if not body and status >= 400:
        raise VendorError(error_code(status), status, f"HTTP {status}")
    doc = _load(body)
    if version == 1 and isinstance(doc, list):
        return doc  # the v1 device list example is a bare array
    if not isinstance(doc, dict):
        raise RemoteProtocolError("response is not a JSON object")
    err = doc.get("error", 0 if version == 1 else None)
    code = _int(err)
    if code is None:
        raise RemoteProtocolError(f"response has no integer error field: {err!r}")
    if code == 0:
        if status >= 400:
            raise VendorError(error_code(status), status, f"HTTP {status}")
        if version == 1:
            return doc
        data = doc.get("data", {})
        return data if data is not None else {}
    if version == 2 and code == 10004:
        data = doc.get("data")
        region = data.get("region") if isinstance(data, dict) else None
        if isinstance(region, str) and region:
            raise RegionRedirect(code, region)
    if version == 1 and code == 301:
        region = doc.get("region")
        if isinstance(region, str) and region:
            raise RegionRedirect(code, region)
    message = doc.get("msg") or doc.get("errmsg") or doc.get("reason") or ERROR_TEXT.get(code, "")
    raise VendorError(error_code(code), code, str(message) or f"error {code}")


@dataclass(frozen=True, slots=True)
class LoginResult:
    at: str
    rt: str
    apikey: str
    region: str | None


def _str(doc: Mapping[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise RemoteProtocolError(f"reply lacks {key!r}")
    return value


def parse_login(data: Any) -> LoginResult:
    """``{user:{apikey}, at, rt, region}`` (v2 ``data``, v1 top level)."""
    if not isinstance(data, dict):
        raise RemoteProtocolError("login reply is not an object")
    user = data.get("user")
    if not isinstance(user, dict):
        raise RemoteProtocolError("login reply lacks 'user'")
    region = data.get("region")
    return LoginResult(
        _str(data, "at"),
        _str(data, "rt"),
        _str(user, "apikey"),
        region if isinstance(region, str) and region else None,
    )


def parse_refresh(data: Any) -> tuple[str, str]:
    """The new ``(at, rt)``: the refresh token rotates, so both must be stored."""
    if not isinstance(data, dict):
        raise RemoteProtocolError("refresh reply is not an object")
    return _str(data, "at"), _str(data, "rt")


@dataclass(frozen=True, slots=True)
class Family:
    apikey: str | None
    family_ids: tuple[str, ...]
    current: str | None


def parse_family(data: Any) -> Family:
    if not isinstance(data, dict) or not isinstance(data.get("familyList"), list):
        raise RemoteProtocolError("family reply lacks 'familyList'")
    apikey = None
    ids = []
    for item in data["familyList"]:
        if not isinstance(item, dict):
            continue
        if apikey is None and isinstance(item.get("apikey"), str):
            apikey = item["apikey"]
        if isinstance(item.get("id"), str):
            ids.append(item["id"])
    current = data.get("currentFamilyId")
    return Family(apikey, tuple(ids), current if isinstance(current, str) else None)


@dataclass(frozen=True, slots=True)
class Dispatch:
    domain: str
    port: int

    def url(self, scheme: str = "wss") -> str:
        """``wss://{domain}:{port}/api/ws``: the domain, because TLS checks fail on the bare IP."""
        return f"{scheme}://{self.domain}:{self.port}/api/ws"


def parse_dispatch(status: int, body: bytes) -> Dispatch:
    """``{"port":8080,"IP":…,"reason":"ok","domain":…,"error":0}`` -- the same for v1 and v2."""
    doc = parse_envelope(status, body, 1)
    if not isinstance(doc, dict):
        raise RemoteProtocolError("dispatch reply is not an object")
    if str(doc.get("reason", "ok")).lower() != "ok":
        raise RemoteProtocolError(f"dispatch refused: {doc.get('reason')!r}")
    host = doc.get("domain") or doc.get("IP")
    port = _int(doc.get("port"))
    if not isinstance(host, str) or not host or port is None:
        raise RemoteProtocolError("dispatch reply lacks domain/port")
    return Dispatch(host, port)


# --------------------------------------------------------------------------------------------
# Things


@dataclass(frozen=True, slots=True)
class Thing:
    """A device (own or shared) or a group, as the thing list describes it.

    ``owner_apikey`` is the apikey WS commands must carry (the owner's, for shared devices, plus
    our own as ``selfApikey``). Groups get the id ``group:<id>`` so they can never collide with a
    10-hex-digit deviceid.
    """

    id: str
    kind: Literal["device", "group"]
    name: str
    owner_apikey: str | None
    shared: bool
    uiid: int | None
    online: bool | None
    params: Mapping[str, Any]
    model: str = ""
    index: int | None = None
    tags: Mapping[str, Any] = field(default_factory=dict)
    brand: str = ""


GROUP_PREFIX: Final = "group:"


def parse_thing(item: Any, self_apikey: str | None = None) -> Thing:
    """One ``thingList`` entry ``{itemType, itemData, index}``; raises ``RemoteProtocolError``."""
    if not isinstance(item, dict):
        raise RemoteProtocolError("thing is not an object")
    item_type = _int(item.get("itemType"))
    data = item.get("itemData")
    if not isinstance(data, dict):
        raise RemoteProtocolError("thing lacks 'itemData'")
    index = _int(item.get("index"))
    params = data.get("params")
    params = params if isinstance(params, dict) else {}
    name = data.get("name")
    name = name if isinstance(name, str) else ""
    if item_type == 3:
        gid = data.get("id")
        if not isinstance(gid, str) or not gid:
            raise RemoteProtocolError("group lacks 'id'")
        return Thing(GROUP_PREFIX + gid, "group", name, None, False, None, None, params, "group", index)
    if item_type not in (1, 2):
        raise RemoteProtocolError(f"unknown itemType {item.get('itemType')!r}")
    return _device(data, item_type == 2, index, self_apikey)


def _device(data: Mapping[str, Any], shared: bool, index: int | None, self_apikey: str | None) -> Thing:
    deviceid = data.get("deviceid")
    if not isinstance(deviceid, str) or not deviceid:
        raise RemoteProtocolError("device lacks 'deviceid'")
    extra = data.get("extra")
    extra = extra if isinstance(extra, dict) else {}
    if isinstance(extra.get("extra"), dict):  # v1 nests factory data one level deeper
        extra = extra["extra"]
    uiid = _int(extra.get("uiid"))
    if uiid is None:
        uiid = _int(data.get("uiid"))
    apikey = data.get("apikey")
    apikey = apikey if isinstance(apikey, str) and apikey else None
    if not shared and self_apikey and apikey and apikey != self_apikey:
        shared = True  # v1 lists shared devices among one's own; the owner apikey tells them apart
    online = data.get("online")
    params = data.get("params")
    tags = data.get("tags")
    model = data.get("productModel") or extra.get("model") or ""
    name = data.get("name")
    return Thing(
        deviceid,
        "device",
        name if isinstance(name, str) else "",
        apikey,
        shared,
        uiid,
        online if isinstance(online, bool) else None,
        params if isinstance(params, dict) else {},
        str(model),
        index,
        tags if isinstance(tags, dict) else {},
        str(data.get("brandName") or ""),
    )


def parse_v1_devices(doc: Any, self_apikey: str | None) -> tuple[list[Thing], list[str]]:
    """v1 device list: a bare array (the seed's example) or ``{"devicelist": [...]}`` (its table).

    Returns the things and one reason per entry that could not be read.
    """
    items: Any = doc
    if isinstance(doc, dict):
        items = doc.get("devicelist", doc.get("devices"))
    if not isinstance(items, list):
        raise RemoteProtocolError("v1 device list is not an array")
    things: list[Thing] = []
    bad: list[str] = []
    for item in items:
        try:
            if not isinstance(item, dict):
                raise RemoteProtocolError("device is not an object")
            things.append(_device(item, False, None, self_apikey))
        except RemoteProtocolError as exc:
            bad.append(str(exc))
    return things, bad


class ThingPager:
    """Pages through ``GET /v2/device/thing`` (seed 001: over 30 things "you need to set the
    beginIndex parameter to get it in pages, otherwise … the server will return timeout errors").

    ``beginIndex`` is "the index of the item to begin to get" (default -9999999) and indexes may
    be negative, so the next page starts one past the largest index seen. The reported ``total``
    may exceed what is ever returned (unauthorized brands), so a short page -- not ``total`` --
    ends the walk. A page that does not advance is a protocol error, never an endless loop.
    """

    FIRST_INDEX: Final = -9999999

    def __init__(self, page_size: int = 30, self_apikey: str | None = None) -> None:
        if page_size <= 0:
            raise ValueError("page size must be positive")
        self.page_size = page_size
        self.self_apikey = self_apikey
        self.begin_index: int | None = self.FIRST_INDEX
        self.things: list[Thing] = []
        self.bad: list[str] = []
        self.total: int | None = None
        self._seen: set[str] = set()

    @property
    def done(self) -> bool:
        return self.begin_index is None

    def feed(self, data: Any) -> int | None:
        """Take one page's ``data``; return the next ``beginIndex`` or ``None`` when complete."""
        if self.begin_index is None:
            raise RuntimeError("pager already complete")
        if not isinstance(data, dict) or not isinstance(data.get("thingList"), list):
            raise RemoteProtocolError("thing list reply lacks 'thingList'")
        total = _int(data.get("total"))
        if total is not None:
            self.total = total
        items: Sequence[Any] = data["thingList"]
        highest: int | None = None
        for item in items:
            idx = _int(item.get("index")) if isinstance(item, dict) else None
            if idx is not None:
                highest = idx if highest is None else max(highest, idx)
            try:
                thing = parse_thing(item, self.self_apikey)
            except RemoteProtocolError as exc:
                self.bad.append(str(exc))
                continue
            if thing.id not in self._seen:
                self._seen.add(thing.id)
                self.things.append(thing)
        if len(items) < self.page_size:
            self.begin_index = None
        elif highest is None or highest + 1 <= self.begin_index:
            self.begin_index = None
            raise RemoteProtocolError("thing list page did not advance; stopping")
        else:
            self.begin_index = highest + 1
        return self.begin_index
