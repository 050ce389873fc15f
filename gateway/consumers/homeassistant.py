"""Home Assistant MQTT discovery: our device schemas as Home Assistant entities.

Two layers, as in ``protocols/``:

* **Mapping** (pure functions, no I/O): a device description — what ``bridge/devices``
  publishes per device (``DeviceRecord.describe()``: vendor, account, id, topic, name, model,
  schema) — becomes one device-based discovery config (``<prefix>/device/<uid>/config``, Home
  Assistant ≥ 2024.11) or one config per entity (``<prefix>/<component>/<uid>/<object>/config``).
  Every property maps through :data:`MAPPING`, one table; a device with an on/off and a
  brightness property becomes one ``light`` (:data:`LIGHT_NAMES` names the known properties per
  vendor). Whatever cannot be mapped is returned in ``unmapped`` for the caller to log once.
* **Lifecycle** (:class:`HomeAssistantDiscovery`): a consumer of the gateway's event bus that
  publishes those configs, republishes them all when Home Assistant announces itself on its
  status topic (its birth message), clears a vanished device's config, and on start clears
  the configs of a previous form (other mode, other prefix, discovery turned off).

Topics Home Assistant reads are our own: the device's merged JSON state topic (one
``value_template`` per property), ``…/set`` (a ``command_template`` writing ``{"<prop>":
value}``), ``…/action`` and ``…/event``; availability is ``bridge/state`` *and* the device's
availability topic, ``availability_mode: all``.

Unique ids come from vendor, account and device id only (never a name), escaped so that two
different triples can never give the same id: see :func:`unique_id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import orjson

from ..events import DeviceAdded, DeviceRemoved, EventBus, MqttConnected, SchemaChanged
from ..records import DeviceRecord

__all__ = [
    "LIGHT_NAMES",
    "MAPPING",
    "UNIT_CLASSES",
    "VENDOR_TITLES",
    "Discovery",
    "HomeAssistantDiscovery",
    "HomeAssistantSettings",
    "device_config",
    "entity_configs",
    "map_device",
    "unique_id",
]

log = logging.getLogger("cloud2mqtt.homeassistant")

Mode = Literal["device", "entity"]

#: Manufacturer shown in Home Assistant per vendor id.
VENDOR_TITLES: Final = {
    "tencent": "Tencent IoT Explorer",
    "aliyun": "Aliyun Living IoT",
    "coolkit": "CoolKit / eWeLink",
    "xky": "XiakeCloud",
}

#: THE mapping table: (schema type, writable) → Home Assistant component. The README shows it.
#: Numbers, enums and strings get their options from the schema (min/max/step/unit, labels,
#: length); read-only numbers get ``device_class``/``state_class`` from :data:`UNIT_CLASSES`.
MAPPING: Final[Mapping[tuple[str, bool], str]] = {
    ("bool", True): "switch",
    ("bool", False): "binary_sensor",
    ("int", True): "number",
    ("int", False): "sensor",
    ("float", True): "number",
    ("float", False): "sensor",
    ("enum", True): "select",
    ("enum", False): "sensor",  # device_class enum
    ("string", True): "text",
    ("string", False): "sensor",
    ("timestamp", True): "sensor",  # device_class timestamp
    ("timestamp", False): "sensor",
    ("struct", True): "sensor",  # JSON attributes
    ("struct", False): "sensor",
    ("array", True): "sensor",  # JSON attributes, state = length
    ("array", False): "sensor",
}
#: Actions without input parameters become a ``button``; every event type of a device goes
#: into one ``event`` entity.
ACTION_COMPONENT: Final = "button"
EVENT_COMPONENT: Final = "event"

#: device_class (None: none fits) → (state_class, the units Home Assistant knows for it)
_CLASS_UNITS: Final[Mapping[str | None, tuple[str, tuple[str, ...]]]] = {
    "temperature": ("measurement", ("°C", "°F")),
    "power": ("measurement", ("W", "kW")),
    "energy": ("total_increasing", ("Wh", "kWh")),
    "voltage": ("measurement", ("V", "mV")),
    "current": ("measurement", ("A", "mA")),
    "illuminance": ("measurement", ("lx",)),
    "pressure": ("measurement", ("hPa", "Pa", "kPa")),
    "signal_strength": ("measurement", ("dBm",)),
    "sound_pressure": ("measurement", ("dB",)),
    "duration": ("measurement", ("s", "ms", "min", "h")),
    None: ("measurement", ("ppm", "µg/m³", "%")),
}
#: vendor spellings of those units
_UNIT_ALIASES: Final = {"℃": "°C", "C": "°C", "℉": "°F", "lux": "lx", "ug/m3": "µg/m³"}
#: unit → (Home Assistant unit, device_class or None, state_class). ``%`` and ``ppm`` depend
#: on the property: see :func:`_unit_class`.
UNIT_CLASSES: Final[Mapping[str, tuple[str, str | None, str]]] = {
    spelling: (unit, device_class, state_class)
    for device_class, (state_class, units) in _CLASS_UNITS.items()
    for unit in units
    for spelling in (unit, *(a for a, u in _UNIT_ALIASES.items() if u == unit))
}


@dataclass(frozen=True)
class LightNames:
    """The properties of a vendor's light: on/off, brightness, colour temperature, HSV colour."""

    switch: str
    brightness: str
    color_temp: str | None = None
    hsv: str | None = None


#: Known light properties per vendor (a device must have the switch and brightness ones, with
#: the right types, to become a light). Devices of other vendors, or with other names, are
#: detected by type: one writable bool plus one writable int whose id mentions "bright".
LIGHT_NAMES: Final[Mapping[str, tuple[LightNames, ...]]] = {
    "tencent": (LightNames("power_switch", "brightness", "color_temp"),),
    "aliyun": (LightNames("LightSwitch", "Brightness", "ColorTemperature", "HSVColor"),),
    "coolkit": (LightNames("switch", "brightness", "colorTemp"),),
}

#: Properties shown as diagnostics rather than primary entities.
DIAGNOSTIC_IDS: Final = frozenset({"rssi", "fwversion", "firmware", "signal", "wifi_rssi"})


# --------------------------------------------------------------------------------------------
# Ids


def _escape(part: str) -> str:
    """Keep ``[A-Za-z0-9]``; every other character becomes ``-xx``/``-uxxxx``/``-Uxxxxxx``.

    No escaped part contains ``_``, so parts joined by ``_`` stay apart, and the escape is
    reversible: two different inputs never give the same output.
    """
    out = []
    for ch in part:
        if ch.isascii() and ch.isalnum():
            out.append(ch)
            continue
        cp = ord(ch)
        if cp < 0x100:
            out.append(f"-{cp:02x}")
        elif cp < 0x10000:
            out.append(f"-u{cp:04x}")
        else:
            out.append(f"-U{cp:06x}")
    return "".join(out)


def unique_id(vendor: str, account: str, device: str) -> str:
    """``c2m_<vendor>_<account>_<device>``, each part escaped (only ``[A-Za-z0-9_-]``, valid
    in a discovery topic and as a node id)."""
    return f"c2m_{_escape(vendor)}_{_escape(account)}_{_escape(device)}"


# --------------------------------------------------------------------------------------------
# Templates


def _key(prop_id: str) -> str:
    """``value_json["<id>"]`` for any property id (JSON string syntax is a Jinja literal)."""
    return f"value_json[{json.dumps(prop_id)}]"


def _guard(prop_id: str, body: str, absent: str = "") -> str:
    """Render ``body`` only when the state holds the property. The state topic carries what is
    known so far; an empty render is what Home Assistant ignores (no warning, no false OFF)."""
    return f"{{% if {json.dumps(prop_id)} in value_json %}}{body}{{% else %}}{absent}{{% endif %}}"


def _set_template(prop_id: str, value_expr: str) -> str:
    return "{" + json.dumps(prop_id) + ": {{ " + value_expr + " }}}"


def _num(value: Any) -> float | int:
    f = float(value)
    return int(f) if f.is_integer() else f


def _unit_class(prop: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    unit = prop.get("unit")
    if not unit:
        return None, None, "measurement"
    ha_unit, device_class, state_class = UNIT_CLASSES.get(unit, (unit, None, "measurement"))
    ident = f"{prop['id']} {prop.get('name', '')}".lower()
    if unit == "%":
        if "humid" in ident:
            device_class = "humidity"
        elif "batt" in ident:
            device_class = "battery"
    elif unit == "ppm" and "co2" in ident:
        device_class = "carbon_dioxide"
    elif unit in ("µg/m³", "ug/m3") and ("pm25" in ident or "pm2.5" in ident or "pm2_5" in ident):
        device_class = "pm25"
    return ha_unit, device_class, state_class


def _enum_labels(prop: Mapping[str, Any]) -> dict[str, str]:
    """value (as a string) → label shown; labels made unique (the value is appended)."""
    enum: Mapping[str, str] = prop.get("enum") or {}
    labels: dict[str, str] = {}
    seen: set[str] = set()
    for value, label in enum.items():
        shown = str(label) or str(value)
        if shown in seen:
            shown = f"{shown} ({value})"
        seen.add(shown)
        labels[str(value)] = shown
    return labels


# --------------------------------------------------------------------------------------------
# One property → one component


def _property_component(prop: Mapping[str, Any]) -> dict[str, Any] | None:
    """The component config for one property (without ids and topics), or None if unmappable."""
    ptype = prop.get("type")
    writable = prop.get("access") == "rw"
    component = MAPPING.get((str(ptype), writable))
    if component is None:
        return None
    pid = prop["id"]
    v = _key(pid)
    cfg: dict[str, Any] = {"p": component, "name": prop.get("name") or pid}
    if pid.lower() in DIAGNOSTIC_IDS:
        cfg["entity_category"] = "diagnostic"
    if component == "switch":
        cfg["value_template"] = f"{{{{ 'ON' if {v} else 'OFF' }}}}"
        cfg["command_template"] = _set_template(pid, "'true' if value == 'ON' else 'false'")
    elif component == "binary_sensor":
        cfg["value_template"] = f"{{{{ 'ON' if {v} else 'OFF' }}}}"
    elif component == "number":
        cfg["value_template"] = f"{{{{ {v} }}}}"
        cfg["command_template"] = _set_template(pid, "value")
        lo, hi = prop.get("min"), prop.get("max")
        if lo is not None and hi is not None:
            cfg["min"], cfg["max"] = _num(lo), _num(hi)
        else:
            cfg["min"] = _num(lo) if lo is not None else -1e9
            cfg["max"] = _num(hi) if hi is not None else 1e9
            cfg["mode"] = "box"
        step = prop.get("step")
        if step:
            cfg["step"] = _num(step)
        elif ptype == "float":
            cfg["step"] = 0.01
        unit, _, _ = _unit_class(prop)
        if unit:
            cfg["unit_of_measurement"] = unit
    elif component == "select":
        labels = _enum_labels(prop)
        back = {label: value for value, label in labels.items()}
        cfg["options"] = list(labels.values())
        cfg["value_template"] = (
            f"{{{{ {json.dumps(labels)}.get({v} | string, {v} | string) }}}}"
        )
        cfg["command_template"] = _set_template(pid, f"{json.dumps(back)}[value] | tojson")
    elif component == "text":
        cfg["value_template"] = f"{{{{ {v} }}}}"
        cfg["command_template"] = _set_template(pid, "value | tojson")
        length = prop.get("length")
        cfg["max"] = min(int(length), 255) if length else 255
    elif ptype == "enum":
        labels = _enum_labels(prop)
        cfg["device_class"] = "enum"
        cfg["options"] = list(labels.values())
        cfg["value_template"] = (
            f"{{{{ {json.dumps(labels)}.get({v} | string, {v} | string) }}}}"
        )
    elif ptype in ("int", "float"):
        unit, device_class, state_class = _unit_class(prop)
        cfg["value_template"] = f"{{{{ {v} }}}}"
        if unit:
            cfg["unit_of_measurement"] = unit
        if device_class:
            cfg["device_class"] = device_class
        if state_class:
            cfg["state_class"] = state_class
    elif ptype == "timestamp":
        cfg["device_class"] = "timestamp"
        cfg["value_template"] = (
            f"{{{{ ({v} / 1000) | timestamp_custom('%Y-%m-%dT%H:%M:%S+00:00', false) }}}}"
        )
    elif ptype == "struct":
        cfg["value_template"] = f"{{{{ ({v} | tojson)[:255] }}}}"
        cfg["json_attributes_template"] = f"{{{{ {v} | tojson }}}}"
    elif ptype == "array":
        cfg["value_template"] = f"{{{{ {v} | length }}}}"
        cfg["json_attributes_template"] = f"{{{{ {{'items': {v}}} | tojson }}}}"
    else:  # string, read-only
        cfg["value_template"] = f"{{{{ ({v} | string)[:255] }}}}"
    cfg["value_template"] = _guard(pid, cfg["value_template"])
    if "json_attributes_template" in cfg:
        cfg["json_attributes_template"] = _guard(pid, cfg["json_attributes_template"], "{}")
    return cfg


# --------------------------------------------------------------------------------------------
# Lights


def _find_light(vendor: str, props: Mapping[str, Mapping[str, Any]]) -> LightNames | None:
    def ok(pid: str | None, types: tuple[str, ...]) -> bool:
        p = props.get(pid) if pid else None
        return p is not None and p.get("type") in types and p.get("access") == "rw"

    for names in LIGHT_NAMES.get(vendor, ()):
        if ok(names.switch, ("bool",)) and ok(names.brightness, ("int", "float")):
            return LightNames(
                names.switch,
                names.brightness,
                names.color_temp if ok(names.color_temp, ("int", "float")) else None,
                names.hsv if ok(names.hsv, ("struct",)) else None,
            )
    switches = [p for p in props.values() if p.get("type") == "bool" and p.get("access") == "rw"]
    dims = [
        p for p in props.values()
        if p.get("type") in ("int", "float") and p.get("access") == "rw"
        and "bright" in p["id"].lower()
    ]
    if len(switches) == 1 and len(dims) == 1:
        return LightNames(switches[0]["id"], dims[0]["id"])
    return None


def _hsv_fields(prop: Mapping[str, Any]) -> tuple[str, str, str | None] | None:
    hue = sat = val = None
    for f in prop.get("fields", ()):
        name = str(f.get("id", "")).lower()
        if name in ("hue", "h"):
            hue = f["id"]
        elif name in ("saturation", "sat", "s"):
            sat = f["id"]
        elif name in ("value", "v", "brightness"):
            val = f["id"]
    return (hue, sat, val) if hue and sat else None


def _light_component(names: LightNames, props: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One template-schema light: on/off, brightness scaled to 0–255, colour temperature in
    kelvin, HSV struct ↔ ``hs`` (state through red/green/blue at full value)."""
    bright = props[names.brightness]
    lo = float(bright.get("min") or 0)
    hi = float(bright.get("max") or 100)
    if hi <= lo:
        hi = lo + 100
    sw, b = _key(names.switch), _key(names.brightness)
    on_parts = [f'{json.dumps(names.switch)}: true']
    on_parts.append(
        "{% if brightness is defined %}, " + json.dumps(names.brightness) + ": {{ [[("
        f"brightness / 255 * {hi:g}) | round(0) | int, {lo:g} | int] | max, {hi:g} | int] | min"
        " }}{% endif %}"
    )
    cfg: dict[str, Any] = {
        "p": "light",
        "name": None,  # the device's own name: the light is the device's main feature
        "schema": "template",
        "state_template": _guard(names.switch, f"{{{{ 'on' if {sw} else 'off' }}}}"),
        "brightness_template": _guard(
            names.brightness, f"{{{{ (({b} | float(0)) / {hi:g} * 255) | round(0) | int }}}}"
        ),
        "command_off_template": "{" + json.dumps(names.switch) + ": false}",
    }
    if names.color_temp:
        ct = props[names.color_temp]
        unit = (ct.get("unit") or "K").lower()
        ct_lo, ct_hi = ct.get("min"), ct.get("max")
        if unit in ("k", "kelvin") and ct_lo and ct_hi:
            step = float(ct.get("step") or 1)
            cfg["color_temp_kelvin"] = True
            cfg["min_kelvin"], cfg["max_kelvin"] = int(ct_lo), int(ct_hi)
            cfg["color_temp_template"] = _guard(names.color_temp, f"{{{{ {_key(names.color_temp)} }}}}")
            on_parts.append(
                "{% if color_temp is defined %}, " + json.dumps(names.color_temp)
                + f": {{{{ ((color_temp / {step:g}) | round(0) * {step:g}) | int }}}}{{% endif %}}"
            )
    if names.hsv:
        fields = _hsv_fields(props[names.hsv])
        if fields:
            hue, sat, val = fields
            h = f"{_key(names.hsv)}[{json.dumps(hue)}]"
            s = f"{_key(names.hsv)}[{json.dumps(sat)}]"
            # HSV → RGB at full value (brightness is its own property), for red/green/blue.
            prelude = (
                f"{{% set h = ({h} | float(0)) % 360 / 60 %}}{{% set s = ({s} | float(0)) / 100 %}}"
                "{% set i = h | int %}{% set f = h - i %}"
                "{% set p = 1 - s %}{% set q = 1 - f * s %}{% set t = 1 - (1 - f) * s %}"
                "{% set rgb = [[1, t, p], [q, 1, p], [p, 1, t], [p, q, 1], [t, p, 1], [1, p, q]][i] %}"
            )
            for n, color in enumerate(("red", "green", "blue")):
                cfg[f"{color}_template"] = _guard(
                    names.hsv, prelude + f"{{{{ (rgb[{n}] * 255) | round(0) | int }}}}"
                )
            value_part = f", {json.dumps(val)}: 100" if val else ""
            on_parts.append(
                "{% if hue is defined %}, " + json.dumps(names.hsv) + ": {"
                + json.dumps(hue) + ": {{ hue | round(1) }}, "
                + json.dumps(sat) + ": {{ sat | round(1) }}" + value_part + "}{% endif %}"
            )
    cfg["command_on_template"] = "{" + "".join(on_parts) + "}"
    return cfg


# --------------------------------------------------------------------------------------------
# A device


@dataclass
class Discovery:
    """What one device maps to: ``components`` by object id, and what could not be mapped."""

    uid: str
    device: dict[str, Any]
    shared: dict[str, Any]
    components: dict[str, dict[str, Any]]
    unmapped: list[str] = field(default_factory=list)


def map_device(
    desc: Mapping[str, Any],
    *,
    bridge_state_topic: str,
    origin: Mapping[str, Any],
) -> Discovery:
    """Map one device description (``DeviceRecord.describe()``) to Home Assistant components."""
    vendor, account, dev_id = str(desc["vendor"]), str(desc["account"]), str(desc["id"])
    topic: str = desc["topic"]
    uid = unique_id(vendor, account, dev_id)
    schema: Mapping[str, Any] = desc.get("schema") or {}
    props = {p["id"]: p for p in schema.get("properties", ())}
    components: dict[str, dict[str, Any]] = {}
    unmapped: list[str] = []
    state_topic, command_topic = topic, f"{topic}/set"

    used: set[str] = set()
    light = _find_light(vendor, props)
    if light is not None:
        cfg = _light_component(light, props)
        cfg.update(state_topic=state_topic, command_topic=command_topic, unique_id=f"{uid}_light")
        components["light"] = cfg
        used.update(n for n in (light.switch, light.brightness) if n)
        if "color_temp_template" in cfg and light.color_temp:
            used.add(light.color_temp)
        if "red_template" in cfg and light.hsv:
            used.add(light.hsv)

    for pid, prop in props.items():
        if pid in used:
            continue
        cfg_or_none = _property_component(prop)
        if cfg_or_none is None:
            unmapped.append(f"property {pid} ({prop.get('type')})")
            continue
        cfg = cfg_or_none
        cfg["state_topic"] = state_topic
        if "command_template" in cfg:
            cfg["command_topic"] = command_topic
        if "json_attributes_template" in cfg:
            cfg["json_attributes_topic"] = state_topic
        obj = f"p-{_escape(pid)}"
        cfg["unique_id"] = f"{uid}_{obj}"
        components[obj] = cfg

    for action in schema.get("actions", ()):
        aid = action["id"]
        if action.get("input"):
            unmapped.append(f"action {aid} (has input parameters)")
            continue
        obj = f"a-{_escape(aid)}"
        components[obj] = {
            "p": ACTION_COMPONENT,
            "name": action.get("name") or aid,
            "command_topic": f"{topic}/action",
            "payload_press": orjson.dumps({"action": aid}).decode(),
            "unique_id": f"{uid}_{obj}",
        }

    events = [e["id"] for e in schema.get("events", ())]
    if events:
        components["events"] = {
            "p": EVENT_COMPONENT,
            "name": "Event",
            "state_topic": f"{topic}/event",
            "event_types": events,
            # Only the schema's event types: anything else on the event topic renders empty,
            # which Home Assistant ignores instead of warning about an invalid type.
            "value_template": (
                f"{{% if value_json.event in {json.dumps(events)} %}}"
                "{{ {'event_type': value_json.event, 'level': value_json.level,"
                " 'params': value_json.params} | tojson }}{% endif %}"
            ),
            "unique_id": f"{uid}_events",
        }

    device = {
        "ids": [uid],
        "name": desc.get("name") or dev_id,
        "mf": VENDOR_TITLES.get(vendor, vendor),
        "mdl": desc.get("model") or vendor,
        "sn": dev_id,
    }
    shared = {
        "availability": [
            {"topic": bridge_state_topic, "value_template": "{{ value_json.state }}"},
            {"topic": f"{topic}/availability", "value_template": "{{ value_json.state }}"},
        ],
        "availability_mode": "all",
    }
    return Discovery(uid, device, shared, components, unmapped)


def device_config(
    desc: Mapping[str, Any],
    *,
    prefix: str,
    bridge_state_topic: str,
    origin: Mapping[str, Any],
) -> tuple[str, dict[str, Any], list[str]]:
    """Device-based discovery: ``(<prefix>/device/<uid>/config, payload, unmapped)``."""
    d = map_device(desc, bridge_state_topic=bridge_state_topic, origin=origin)
    payload = {"dev": d.device, "o": dict(origin), **d.shared, "cmps": d.components}
    return f"{prefix}/device/{d.uid}/config", payload, d.unmapped


def entity_configs(
    desc: Mapping[str, Any],
    *,
    prefix: str,
    bridge_state_topic: str,
    origin: Mapping[str, Any],
) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """Entity discovery: one ``<prefix>/<component>/<uid>/<object>/config`` per component."""
    d = map_device(desc, bridge_state_topic=bridge_state_topic, origin=origin)
    out = []
    for obj, cmp in d.components.items():
        cfg = dict(cmp)
        component = cfg.pop("p")
        cfg.update(d.shared)
        cfg["dev"] = d.device
        cfg["o"] = dict(origin)
        out.append((f"{prefix}/{component}/{d.uid}/{obj}/config", cfg))
    return out, d.unmapped


# --------------------------------------------------------------------------------------------
# Lifecycle


@dataclass(frozen=True)
class HomeAssistantSettings:
    """The ``[homeassistant]`` table (issue 13): off by default."""

    enabled: bool = False
    discovery: Mode = "device"
    prefix: str = "homeassistant"
    status_topic: str = ""  # default: <prefix>/status
    #: birth republish: this many configs per tick …
    batch: int = 200
    #: … one tick every this many seconds (5000 devices ≈ 2.5 s)
    interval: float = 0.1

    @property
    def status(self) -> str:
        return self.status_topic or f"{self.prefix}/status"


def _origin() -> dict[str, Any]:
    try:
        from importlib.metadata import version

        sw = version("cloud2mqtt")
    except Exception:  # not installed as a distribution (a bare checkout)
        sw = "0"
    return {"name": "cloud2mqtt", "sw": sw}


class Publish(Protocol):
    """``MqttClient.publish`` fits: called as ``publish(topic, payload, qos=1, retain=True)``."""

    def __call__(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> Any: ...


#: ``subscribe(topic, callback)``; the callback gets ``(topic, payload)`` on the event loop.
Subscribe = Callable[[str, Callable[[str, bytes], None]], Any]


@dataclass(eq=False)
class HomeAssistantDiscovery:
    """Publishes discovery configs from registry events (an extension, zigbee2mqtt style).

    Construct it with the bus, the settings, the bridge state topic, ``publish(topic, payload,
    retain, qos)`` and ``subscribe(topic, callback(topic, payload))``; the constructor does
    nothing. ``start()`` clears configs of a previous form (from ``state_file``), subscribes
    to the bus and to Home Assistant's status topic; ``stop()`` unsubscribes.

    The configs currently published are remembered per device, so a removal clears exactly
    them, and in ``state_file`` (JSON: prefix, mode, topics), so the next start can clear the
    ones a new mode, prefix or ``enabled = false`` no longer produces.
    """

    bus: EventBus | None
    settings: HomeAssistantSettings
    _: KW_ONLY
    bridge_state_topic: str
    publish: Publish
    subscribe: Subscribe
    state_file: Path | None = None
    devices: Callable[[], Iterable[DeviceRecord]] = tuple
    #: the discovery payloads' ``origin`` (default: cloud2mqtt and its version)
    origin: Mapping[str, Any] = field(default_factory=lambda: _origin())
    #: (vendor, device id) → [(config topic, payload)]
    configs: dict[tuple[str, str], list[tuple[str, bytes]]] = field(
        default_factory=dict, init=False
    )
    republished: int = field(default=0, init=False)
    _unsubscribe: list[Callable[[], None]] = field(default_factory=list, init=False)
    _logged_unmapped: set[tuple[str, str]] = field(default_factory=set, init=False)
    _republish: asyncio.TimerHandle | None = field(default=None, init=False)
    _save: asyncio.TimerHandle | None = field(default=None, init=False)

    # ---- start / stop ------------------------------------------------------------------------
    def start(self) -> None:
        previous = self._load_previous()
        if not self.settings.enabled:
            # Turned off: clear what an earlier run published, then stay silent.
            self._clear(previous)
            if previous:
                self._write_state([])
            return
        if self.bus is not None:
            self._unsubscribe = [
                self.bus.subscribe(DeviceAdded, lambda e: self.device_changed(e.record)),
                self.bus.subscribe(SchemaChanged, lambda e: self.device_changed(e.record)),
                self.bus.subscribe(DeviceRemoved, lambda e: self.device_removed(e.record)),
                self.bus.subscribe(MqttConnected, lambda e: self.republish_all()),
            ]
        self.subscribe(self.settings.status, self.on_status)
        for rec in self.devices():
            self.device_changed(rec, save=False)
        wanted = {t for cfgs in self.configs.values() for t, _ in cfgs}
        self._clear([t for t in previous if t not in wanted])
        self._schedule_save()

    def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        for handle in (self._republish, self._save):
            if handle is not None:
                handle.cancel()
        self._republish = self._save = None
        if self.settings.enabled:
            self._write_state(self._topics())

    # ---- events ------------------------------------------------------------------------------
    def build(self, rec: DeviceRecord) -> list[tuple[str, bytes]]:
        desc = rec.describe()
        s = self.settings
        if s.discovery == "entity":
            pairs, unmapped = entity_configs(
                desc, prefix=s.prefix, bridge_state_topic=self.bridge_state_topic, origin=self.origin
            )
        else:
            topic, payload, unmapped = device_config(
                desc, prefix=s.prefix, bridge_state_topic=self.bridge_state_topic, origin=self.origin
            )
            pairs = [(topic, payload)]
        key = (rec.vendor, rec.device)
        if unmapped and key not in self._logged_unmapped:
            self._logged_unmapped.add(key)
            log.info(
                "homeassistant: %s account %s device %s: not mapped: %s",
                rec.vendor, rec.account, rec.device, "; ".join(unmapped),
            )
        return [(t, orjson.dumps(p)) for t, p in pairs]

    def device_changed(self, rec: DeviceRecord, save: bool = True) -> None:
        """A device appeared or its schema changed: publish its configs (only what changed),
        clear configs it no longer has."""
        key = (rec.vendor, rec.device)
        try:
            new = self.build(rec)
        except Exception:
            log.exception(
                "homeassistant: %s account %s device %s: cannot build discovery config",
                rec.vendor, rec.account, rec.device,
            )
            return
        old = dict(self.configs.get(key, ()))
        self.configs[key] = new
        new_topics = {t for t, _ in new}
        for topic in old:
            if topic not in new_topics:
                self.publish(topic, b"", qos=1, retain=True)
        for topic, payload in new:
            if old.get(topic) != payload:
                self.publish(topic, payload, qos=1, retain=True)
        if save:
            self._schedule_save()

    def device_removed(self, rec: DeviceRecord) -> None:
        """Empty retained configs: Home Assistant removes the device and its entities."""
        for topic, _ in self.configs.pop((rec.vendor, rec.device), ()):
            self.publish(topic, b"", qos=1, retain=True)
        self._logged_unmapped.discard((rec.vendor, rec.device))
        self._schedule_save()

    def on_status(self, topic: str, payload: bytes) -> None:
        """Home Assistant's birth (``online``) on its status topic: publish every config again."""
        if payload.strip().lower() == b"online":
            self.republish_all()

    def republish_all(self) -> None:
        """Publish every config again, ``batch`` per ``interval`` so thousands of devices do not
        arrive at Home Assistant in one burst; a new call restarts the round."""
        if self._republish is not None:
            self._republish.cancel()
        pending = [pair for cfgs in self.configs.values() for pair in cfgs]
        self._republish_step(pending, 0)

    def _republish_step(self, pending: list[tuple[str, bytes]], start: int) -> None:
        self._republish = None
        end = min(start + max(1, self.settings.batch), len(pending))
        for topic, payload in pending[start:end]:
            self.publish(topic, payload, qos=1, retain=True)
            self.republished += 1
        if end < len(pending):
            loop = asyncio.get_running_loop()
            self._republish = loop.call_later(
                self.settings.interval, self._republish_step, pending, end
            )

    # ---- previous form -----------------------------------------------------------------------
    def _topics(self) -> list[str]:
        return sorted(t for cfgs in self.configs.values() for t, _ in cfgs)

    def _load_previous(self) -> list[str]:
        if self.state_file is None:
            return []
        try:
            data = orjson.loads(self.state_file.read_bytes())
            return [str(t) for t in data.get("topics", ())]
        except FileNotFoundError:
            return []
        except (OSError, orjson.JSONDecodeError, AttributeError) as exc:
            log.warning("homeassistant: ignoring unreadable %s: %s", self.state_file, exc)
            return []

    def withdraw(self) -> None:
        """Clear every config this consumer published (a gateway that leaves no trace)."""
        self._clear(t for cfgs in self.configs.values() for t, _ in cfgs)
        self.configs.clear()

    def _clear(self, topics: Iterable[str]) -> None:
        for topic in topics:
            self.publish(topic, b"", qos=1, retain=True)

    def _schedule_save(self) -> None:
        if self.state_file is None or self._save is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write_state(self._topics())
            return
        self._save = loop.call_later(1.0, self._save_now)

    def _save_now(self) -> None:
        self._save = None
        self._write_state(self._topics())

    def _write_state(self, topics: list[str]) -> None:
        if self.state_file is None:
            return
        s = self.settings
        data = {"prefix": s.prefix, "discovery": s.discovery, "enabled": s.enabled, "topics": topics}
        tmp = self.state_file.with_suffix(".tmp")
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(orjson.dumps(data))
            tmp.replace(self.state_file)
        except OSError as exc:
            log.warning("homeassistant: cannot write %s: %s", self.state_file, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()
