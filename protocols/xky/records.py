"""XiakeCloud reply payloads → typed records → the normalized model, and change detection.

The seed documents requests only, so the *field names* of replies are a guess too. The guess is
that the cloud answers with the names it takes as arguments (``set_device`` takes ``sn``,
``name``, ``desc``, ``tags``; ``add_node`` takes ``serial`` and ``name``; nodes and sub-accounts
are addressed by ``id``), plus a few common aliases. That guess is ``ASSUMED_FIELDS``, in one
place beside the envelope assumption (``envelope.ASSUMED_ENVELOPE``); the parsers read only it.

The seed gives no online field at all: ``online`` (or an alias) is read when present — bool,
0/1 or "online"/"offline" — and a device whose listing carries none has unknown availability
(``None``), which publishes no availability rather than a guess.

Parsers are tolerant of missing and extra fields and of lists that come wrapped (``{"list": [..]}``)
or keyed by id (``{"7445ee3a": {...}}``); they raise ``RemoteProtocolError`` for a payload they
cannot read, so that the gateway counts it and skips the whole poll. A listing with one bad
record is rejected as a whole on purpose: dropping just that record would make its device look
removed and clear its topics.

A polling gateway publishes only what changed: ``diff(previous, current)`` compares two listings
and says which devices were added, changed (and which properties), changed availability, were
renamed, or were removed. It is pure, so the connector's only state is the last snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ..model import (
    Availability,
    DeviceInfo,
    Property,
    RemoteProtocolError,
    Schema,
    StateChange,
)

__all__ = [
    "ASSUMED_FIELDS",
    "SCHEMA",
    "WRITABLE",
    "Changes",
    "DeviceRecord",
    "FieldAssumption",
    "LoginResult",
    "NodeRecord",
    "SubaccountRecord",
    "availability",
    "device_info",
    "diff",
    "encode_device",
    "parse_device",
    "parse_device_list",
    "parse_login",
    "parse_multi_device",
    "parse_node_list",
    "parse_subaccount",
    "parse_subaccount_list",
    "parse_temp_session",
    "parse_user",
    "snapshot",
    "state_change",
]


@dataclass(frozen=True, slots=True)
class FieldAssumption:
    """Field names of reply records, first name preferred (the one the emulator writes)."""

    sn: tuple[str, ...] = ("sn", "serial")
    name: tuple[str, ...] = ("name",)
    desc: tuple[str, ...] = ("desc", "description", "remark")
    tags: tuple[str, ...] = ("tags",)
    node: tuple[str, ...] = ("node", "node_id", "nodeId")
    online: tuple[str, ...] = ("online", "is_online", "isOnline")
    session: tuple[str, ...] = ("session", "token")
    uid: tuple[str, ...] = ("id", "uid", "user_id")
    id: tuple[str, ...] = ("id",)
    account: tuple[str, ...] = ("account", "username")
    devices: tuple[str, ...] = ("devices", "sns")
    # A list may come wrapped in an object under one of these keys.
    list_keys: tuple[str, ...] = ("list", "devices", "rows", "items", "sns", "nodes", "data")


ASSUMED_FIELDS: Final = FieldAssumption()
_F: Final = ASSUMED_FIELDS

_ONLINE_WORDS: Final[Mapping[str, bool]] = {
    "1": True, "true": True, "online": True, "on": True,
    "0": False, "false": False, "offline": False, "off": False,
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Field readers


def _get(obj: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in obj:
            return obj[key]
    return None


def _keys_of(*groups: tuple[str, ...]) -> frozenset[str]:
    return frozenset(k for g in groups for k in g)


def _str(value: Any, what: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise RemoteProtocolError(f"{what} is not a string: {type(value).__name__}")


def _id(value: Any, what: str) -> str:
    text = _str(value, what).strip()
    if not text:
        raise RemoteProtocolError(f"{what} is missing")
    return text


def _str_list(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        # A comma-separated string is a plausible spelling of a tag list.
        return tuple(t.strip() for t in value.split(",") if t.strip())
    if not isinstance(value, list):
        raise RemoteProtocolError(f"{what} is not a list: {type(value).__name__}")
    return tuple(_str(v, what) for v in value)


def _online(value: Any, sn: str) -> bool | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, str)):
        word = _ONLINE_WORDS.get(str(value).strip().lower())
        if word is not None:
            return word
    raise RemoteProtocolError(f"device {sn}: online is not a state: {str(value)[:20]!r}")


def _node(value: Any, sn: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, Mapping):
        value = _get(value, _F.id + _F.sn + _F.name)
    return _str(value, f"device {sn}: node") or None


def _records(data: Any, id_keys: tuple[str, ...], what: str) -> list[tuple[str | None, Any]]:
    """A listing in any plausible shape, as ``(key-if-keyed-by-id, item)`` pairs."""
    if data is None:
        return []
    if isinstance(data, list):
        return [(None, item) for item in data]
    if not isinstance(data, Mapping):
        raise RemoteProtocolError(f"{what} is a {type(data).__name__}, not a list")
    if any(k in data for k in id_keys):
        return [(None, data)]  # a single record where a list was expected
    for key in _F.list_keys:
        inner = data.get(key)
        if isinstance(inner, list):
            return [(None, item) for item in inner]
    if all(isinstance(v, Mapping) for v in data.values()):
        return [(str(k), v) for k, v in data.items()]  # keyed by id
    raise RemoteProtocolError(f"{what}: cannot find the list in an object")


# --------------------------------------------------------------------------------------------
# Devices


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """One device as the cloud lists it. ``extra`` (not compared) keeps the fields we do not map."""

    sn: str
    name: str = ""
    desc: str = ""
    tags: tuple[str, ...] = ()
    node: str | None = None
    online: bool | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def props(self) -> dict[str, Any]:
        """The state snapshot: every mapped field, ``node``/``online`` only when reported."""
        out: dict[str, Any] = {"name": self.name, "desc": self.desc, "tags": list(self.tags)}
        if self.node is not None:
            out["node"] = self.node
        if self.online is not None:
            out["online"] = self.online
        return out


_DEVICE_KEYS: Final = _keys_of(_F.sn, _F.name, _F.desc, _F.tags, _F.node, _F.online)


def parse_device(data: Any, sn_hint: str | None = None) -> DeviceRecord:
    """One device record (``get_device`` payload, or one item of ``get_device_list``)."""
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, Mapping):
        raise RemoteProtocolError(f"device record is a {type(data).__name__}, not an object")
    raw_sn = _get(data, _F.sn)
    sn = _id(raw_sn if raw_sn is not None else sn_hint, "device sn")
    return DeviceRecord(
        sn=sn,
        name=_str(_get(data, _F.name), f"device {sn}: name"),
        desc=_str(_get(data, _F.desc), f"device {sn}: desc"),
        tags=_str_list(_get(data, _F.tags), f"device {sn}: tags"),
        node=_node(_get(data, _F.node), sn),
        online=_online(_get(data, _F.online), sn),
        extra={k: v for k, v in data.items() if k not in _DEVICE_KEYS},
    )


def parse_device_list(data: Any) -> list[DeviceRecord]:
    """``get_device_list`` payload → records (a later duplicate ``sn`` replaces an earlier one)."""
    by_sn: dict[str, DeviceRecord] = {}
    for key, item in _records(data, _F.sn, "device list"):
        record = parse_device(item, key)
        by_sn[record.sn] = record
    return list(by_sn.values())


def encode_device(record: DeviceRecord) -> dict[str, Any]:
    """A record in the assumed reply spelling (first field names), as the emulator sends it."""
    out: dict[str, Any] = dict(record.extra)
    out.update(
        {
            _F.sn[0]: record.sn,
            _F.name[0]: record.name,
            _F.desc[0]: record.desc,
            _F.tags[0]: list(record.tags),
            _F.node[0]: record.node,
            _F.online[0]: record.online,
        }
    )
    return out


#: What every XiakeCloud device has. Only what ``set_device`` takes is writable; the rest is
#: read-only so the gateway rejects a ``set`` of it as ``invalid`` before calling the cloud.
SCHEMA: Final = Schema(
    properties=(
        Property("name", "Name", "string", access="rw"),
        Property("desc", "Remarks", "string", access="rw"),
        Property("tags", "Tags", "array", item=Property("tag", "Tag", "string"), access="rw"),
        Property("node", "Node server", "string", access="r"),
        Property("online", "Online", "bool", access="r"),
    )
)
WRITABLE: Final = frozenset(p.id for p in SCHEMA.properties if p.access == "rw")


def device_info(record: DeviceRecord) -> DeviceInfo:
    """The device for ``bridge/devices``. ``extra`` carries the node only: ``get_device`` also
    returns connection information, which may hold credentials and must not be published."""
    return DeviceInfo(
        device=record.sn,
        name=record.name or record.sn,
        model="xky",
        schema=SCHEMA,
        online=record.online,
        extra={} if record.node is None else {"node": record.node},
    )


def state_change(
    record: DeviceRecord, ts_ms: int, props: Mapping[str, Any] | None = None
) -> StateChange:
    return StateChange(record.sn, dict(record.props() if props is None else props), ts_ms)


def availability(record: DeviceRecord, ts_ms: int) -> Availability | None:
    if record.online is None:
        return None
    return Availability(record.sn, record.online, ts_ms)


# --------------------------------------------------------------------------------------------
# Change detection


@dataclass(frozen=True, slots=True)
class Changes:
    """What one poll found, relative to the previous one."""

    added: tuple[DeviceRecord, ...] = ()
    #: each changed device with only its properties that changed (a vanished field is ``None``)
    changed: tuple[tuple[DeviceRecord, Mapping[str, Any]], ...] = ()
    #: devices whose reported online state changed (new devices are in ``added`` only)
    availability: tuple[DeviceRecord, ...] = ()
    #: devices whose ``DeviceInfo`` changed (name, node), to republish on ``bridge/devices``
    info: tuple[DeviceRecord, ...] = ()
    removed: tuple[str, ...] = ()
    snapshot: Mapping[str, DeviceRecord] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.availability or self.info or self.removed)


def snapshot(records: Iterable[DeviceRecord]) -> dict[str, DeviceRecord]:
    return {r.sn: r for r in records}


def diff(previous: Mapping[str, DeviceRecord], current: Iterable[DeviceRecord]) -> Changes:
    """Compare the last snapshot with a new listing; pure, order-preserving."""
    now = snapshot(current)
    added: list[DeviceRecord] = []
    changed: list[tuple[DeviceRecord, Mapping[str, Any]]] = []
    avail: list[DeviceRecord] = []
    info: list[DeviceRecord] = []
    for sn, new in now.items():
        old = previous.get(sn)
        if old is None:
            added.append(new)
            continue
        if old == new:
            continue
        before, after = old.props(), new.props()
        delta = {
            k: after.get(k) for k in before.keys() | after.keys() if before.get(k) != after.get(k)
        }
        if delta:
            changed.append((new, {k: delta[k] for k in sorted(delta)}))
        if new.online is not None and new.online != old.online:
            avail.append(new)
        if (new.name, new.node) != (old.name, old.node):
            info.append(new)
    removed = tuple(sn for sn in previous if sn not in now)
    return Changes(tuple(added), tuple(changed), tuple(avail), tuple(info), removed, now)


# --------------------------------------------------------------------------------------------
# Account, nodes, sub-accounts, group control


@dataclass(frozen=True, slots=True)
class LoginResult:
    session: str
    uid: str | None = None


def _session(data: Any, what: str) -> tuple[str, Mapping[str, Any]]:
    if isinstance(data, str):
        return _id(data, f"{what} session"), {}
    if not isinstance(data, Mapping):
        raise RemoteProtocolError(f"{what} reply is a {type(data).__name__}, not an object")
    return _id(_get(data, _F.session), f"{what} session"), data


def parse_login(data: Any) -> LoginResult:
    """``login`` payload: the session (a bare string, or ``{"session": …, "id": …}``)."""
    session, rest = _session(data, "login")
    uid = _get(rest, _F.uid)
    return LoginResult(session, None if uid is None else _str(uid, "login uid") or None)


def parse_temp_session(data: Any) -> str:
    """``get_temp_session`` payload: a session valid for 5 minutes (seed)."""
    return _session(data, "temp session")[0]


def parse_user(data: Any) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise RemoteProtocolError(f"user reply is a {type(data).__name__}, not an object")
    return dict(data)


@dataclass(frozen=True, slots=True)
class NodeRecord:
    id: str
    serial: str = ""
    name: str = ""


def parse_node_list(data: Any) -> list[NodeRecord]:
    out = []
    for key, item in _records(data, _F.id + _F.sn, "node list"):
        if not isinstance(item, Mapping):
            raise RemoteProtocolError(f"node record is a {type(item).__name__}")
        raw_id = _get(item, _F.id)
        node_id = _id(raw_id if raw_id is not None else key, "node id")
        serial = _str(_get(item, _F.sn), f"node {node_id}: serial")
        out.append(NodeRecord(node_id, serial, _str(_get(item, _F.name), f"node {node_id}: name")))
    return out


@dataclass(frozen=True, slots=True)
class SubaccountRecord:
    id: str
    account: str = ""
    description: str = ""
    devices: tuple[str, ...] = ()


def parse_subaccount(data: Any, id_hint: str | None = None) -> SubaccountRecord:
    if not isinstance(data, Mapping):
        raise RemoteProtocolError(f"sub-account record is a {type(data).__name__}")
    raw_id = _get(data, _F.id)
    sub_id = _id(raw_id if raw_id is not None else id_hint, "sub-account id")
    return SubaccountRecord(
        sub_id,
        _str(_get(data, _F.account), f"sub-account {sub_id}: account"),
        _str(_get(data, _F.desc), f"sub-account {sub_id}: description"),
        _str_list(_get(data, _F.devices), f"sub-account {sub_id}: devices"),
    )


def parse_subaccount_list(data: Any) -> list[SubaccountRecord]:
    return [parse_subaccount(item, key) for key, item in _records(data, _F.id, "sub-account list")]


def parse_multi_device(data: Any) -> list[str]:
    """``get_multi_device`` payload: serial numbers, bare or as device records."""
    out = []
    for key, item in _records(data, _F.sn, "group-control list"):
        out.append(parse_device(item, key).sn if isinstance(item, Mapping) else _id(item, "sn"))
    return out
