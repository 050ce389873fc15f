"""XiakeCloud client API requests: builders for the client, and the matching parser for the server.

The seed marks each call ``:isget="true"`` or ``"false"``. A GET call sends its arguments as query
parameters (booleans spelled ``true``/``false``); a POST call sends them as a JSON object. Every
call carries ``source: true`` — the seed's "whether to decrypt the returned result" — so results
come back as plain JSON rather than the encrypted form. Every call except ``login`` carries the
``session`` returned by ``login``.

The module/material-library calls of the seed are not here: they manage scripts, not devices,
and the gateway has no use for them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from ..model import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_KEY",
    "ENDPOINTS",
    "BadRequest",
    "Endpoint",
    "Request",
    "add_node",
    "add_subaccount",
    "del_device",
    "del_node",
    "delete_subaccount",
    "get_device",
    "get_device_list",
    "get_multi_device",
    "get_node_list",
    "get_subaccount",
    "get_subaccount_list",
    "get_temp_session",
    "get_user",
    "login",
    "logout",
    "parse_request",
    "redact",
    "set_device",
    "set_multi_device",
    "set_node",
    "set_subaccount",
]

DEFAULT_BASE_URL: Final = "https://api.xky.com"
DEFAULT_KEY: Final = "xky"  # seed, login: "the default value is 'xky'"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One call of the seed: its API name, URL path and whether the seed marks it ``isget``."""

    name: str
    path: str
    get: bool

    @property
    def method(self) -> Literal["GET", "POST"]:
        return "GET" if self.get else "POST"


#: The seed's device-related client API, keyed by path (``isget`` copied from the seed).
ENDPOINTS: Final[Mapping[str, Endpoint]] = {
    ep.path: ep
    for ep in (
        Endpoint("login", "/login", False),
        Endpoint("logout", "/logout", False),
        Endpoint("addSubaccount", "/add_subaccount", False),
        Endpoint("getSubaccountList", "/get_subaccount_list", True),
        Endpoint("getSubaccount", "/get_subaccount", True),
        Endpoint("setSubaccount", "/set_subaccount", False),
        Endpoint("deleteSubaccount", "/delete_subaccount", True),
        Endpoint("getTempSession", "/get_temp_session", True),
        Endpoint("getUser", "/get_user", True),
        Endpoint("addNode", "/add_node", False),
        Endpoint("getNodeList", "/get_node_list", True),
        Endpoint("setNode", "/set_node", False),
        Endpoint("delNode", "/del_node", False),
        Endpoint("getDeviceList", "/get_device_list", True),
        Endpoint("getDevice", "/get_device", True),
        Endpoint("getDeviceDebug", "/get_device_debug", True),
        Endpoint("getDevDevice", "/get_dev_device", True),
        Endpoint("setDevice", "/set_device", False),
        Endpoint("delDevice", "/del_device", False),
        Endpoint("setDevDevice", "/set_dev_device", False),
        Endpoint("getMultiDevice", "/get_multi_device", True),
        Endpoint("setMultiDevice", "/set_multi_device", False),
    )
}


def _query_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise LocalProtocolError(
        f"argument {key!r} cannot travel in a GET query: {type(value).__name__}"
    )


@dataclass(frozen=True, slots=True)
class Request:
    """A call ready to send: ``method``, ``path``, and either ``query`` (GET) or ``body`` (POST)."""

    endpoint: Endpoint
    args: Mapping[str, Any]

    @property
    def method(self) -> Literal["GET", "POST"]:
        return self.endpoint.method

    @property
    def path(self) -> str:
        return self.endpoint.path

    def url(self, base_url: str) -> str:
        return base_url.rstrip("/") + self.endpoint.path

    @property
    def query(self) -> dict[str, str] | None:
        if not self.endpoint.get:
            return None
        return {k: _query_value(k, v) for k, v in self.args.items() if v is not None}

    @property
    def body(self) -> bytes | None:
        if self.endpoint.get:
            return None
        return orjson.dumps({k: v for k, v in self.args.items() if v is not None})

    def redacted(self) -> dict[str, Any]:
        return redact(self.args)


_SECRET_ARGS: Final = frozenset({"password", "session"})


def redact(args: Mapping[str, Any]) -> dict[str, Any]:
    """Call arguments with the password and session masked, for logs and call records."""
    return {k: ("***" if k in _SECRET_ARGS and v else v) for k, v in args.items()}


def _request(path: str, session: str | None, **args: Any) -> Request:
    endpoint = ENDPOINTS[path]
    if session is not None:
        if not isinstance(session, str) or not session:
            raise LocalProtocolError(f"{endpoint.name} needs a session from login")
        args["session"] = session
    args["source"] = True
    return Request(endpoint, args)


def _text(name: str, value: Any, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value):
        raise LocalProtocolError(f"{name} must be a{'' if empty else ' non-empty'} string")
    return value


def _texts(name: str, values: Sequence[Any]) -> list[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise LocalProtocolError(f"{name} must be an array of strings")
    return [_text(f"{name}[{i}]", v) for i, v in enumerate(values)]


# --------------------------------------------------------------------------------------------
# Account


def login(account: str, password: str, subaccount: str = "", key: str = DEFAULT_KEY) -> Request:
    """Seed ``login``: "subaccount — when empty, log in to the main account"."""
    return _request(
        "/login",
        None,
        key=_text("key", key),
        account=_text("account", account),
        subaccount=_text("subaccount", subaccount, empty=True),
        password=_text("password", password, empty=True),
    )


def logout(session: str) -> Request:
    return _request("/logout", session)


def get_temp_session(session: str) -> Request:
    """Seed ``getTempSession``: "a temporary session with a valid time of 5 minutes"."""
    return _request("/get_temp_session", session)


def get_user(session: str) -> Request:
    return _request("/get_user", session)


# --------------------------------------------------------------------------------------------
# Sub-control accounts


def add_subaccount(session: str, account: str, password: str, description: str = "") -> Request:
    return _request(
        "/add_subaccount",
        session,
        account=_text("account", account),
        password=_text("password", password),
        description=_text("description", description, empty=True),
    )


def get_subaccount_list(session: str) -> Request:
    return _request("/get_subaccount_list", session)


def get_subaccount(session: str, id: str) -> Request:
    return _request("/get_subaccount", session, id=_text("id", id))


def set_subaccount(
    session: str,
    id: str,
    *,
    password: str | None = None,
    description: str | None = None,
    devices: Sequence[str] | None = None,
) -> Request:
    """Seed ``setSubaccount``; ``devices`` is the sub-account's whole list of serial numbers."""
    return _request(
        "/set_subaccount",
        session,
        id=_text("id", id),
        password=None if password is None else _text("password", password),
        description=None if description is None else _text("description", description, empty=True),
        devices=None if devices is None else _texts("devices", devices),
    )


def delete_subaccount(session: str, id: str) -> Request:
    """Seed ``deleteSubaccount`` — a GET, as the seed marks it."""
    return _request("/delete_subaccount", session, id=_text("id", id))


# --------------------------------------------------------------------------------------------
# Node servers


def add_node(session: str, serial: str, name: str) -> Request:
    return _request("/add_node", session, serial=_text("serial", serial), name=_text("name", name))


def get_node_list(session: str) -> Request:
    return _request("/get_node_list", session)


def set_node(session: str, id: str, name: str) -> Request:
    return _request("/set_node", session, id=_text("id", id), name=_text("name", name))


def del_node(session: str, id: str) -> Request:
    return _request("/del_node", session, id=_text("id", id))


# --------------------------------------------------------------------------------------------
# Devices


def get_device_list(session: str) -> Request:
    return _request("/get_device_list", session)


def get_device(session: str, sn: str) -> Request:
    return _request("/get_device", session, sn=_text("sn", sn))


def set_device(
    session: str,
    sn: str,
    *,
    name: str | None = None,
    desc: str | None = None,
    tags: Sequence[str] | None = None,
) -> Request:
    """Seed ``setDevice``: name, desc (remarks) and tags are the only writable fields."""
    if name is None and desc is None and tags is None:
        raise LocalProtocolError("set_device needs at least one of name, desc, tags")
    return _request(
        "/set_device",
        session,
        sn=_text("sn", sn),
        name=None if name is None else _text("name", name, empty=True),
        desc=None if desc is None else _text("desc", desc, empty=True),
        tags=None if tags is None else _texts("tags", tags),
    )


def del_device(session: str, sn: str) -> Request:
    return _request("/del_device", session, sn=_text("sn", sn))


def get_multi_device(session: str) -> Request:
    return _request("/get_multi_device", session)


def set_multi_device(session: str, sns: Sequence[str]) -> Request:
    """Seed ``setMultiDevice``: replace the group-control list with ``sns``."""
    return _request("/set_multi_device", session, sns=_texts("sns", sns))


# --------------------------------------------------------------------------------------------
# The server side: what the emulator uses to read a request the way the cloud would.


class BadRequest(RemoteProtocolError):
    """A request the cloud refuses before looking at its arguments; ``code`` is the reply code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _query_arg(value: str) -> Any:
    return {"true": True, "false": False}.get(value, value)


def parse_request(
    method: str, path: str, query: Mapping[str, str], body: bytes
) -> tuple[Endpoint, dict[str, Any]]:
    """Read a call as the cloud would: the endpoint and its arguments, typed back.

    Raises ``BadRequest(404)`` for an unknown path, ``BadRequest(405)`` when the method is not the
    one the seed marks, ``BadRequest(400)`` for a POST body that is not a JSON object.
    """
    endpoint = ENDPOINTS.get(path)
    if endpoint is None:
        raise BadRequest(404, f"no such api {path!r}")
    if method.upper() != endpoint.method:
        raise BadRequest(405, f"{endpoint.name} is {endpoint.method}, not {method.upper()}")
    if endpoint.get:
        return endpoint, {k: _query_arg(v) for k, v in query.items()}
    try:
        args = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        raise BadRequest(400, "body is not JSON") from None
    if not isinstance(args, dict):
        raise BadRequest(400, "body is not a JSON object")
    return endpoint, args
