"""Device profiles by ``extra.uiid`` → ``Schema``, and CoolKit params ↔ normalized properties.

The seeds do not describe params ("Please consult your salesperson for the protocol document"),
so the profiles follow what the well-used open-source clients (SonoffLAN, homebridge-ewelink)
have observed devices to send. CoolKit quirks that the mapping absorbs:

- switches are the strings ``"on"``/``"off"``: normalized to ``true``/``false`` (``tsl.coerce``)
  and spelled back ``"on"``/``"off"`` in commands;
- many readings are numeric strings (``"power": "12.34"``, ``"currentTemperature": "21.5"``,
  B1 ``"channel2": "255"``): normalized to numbers and, for writable ones, sent back as strings;
- multi-channel devices report ``"switches": [{"switch": "on", "outlet": 0}, …]``: flattened to
  properties ``switch_<outlet>`` (named from the ``ck_channel_name`` tags when present) and a
  command ``{"switch_1": true}`` becomes ``{"switches": [{"switch": "on", "outlet": 1}]}``.
  Firmware pads the array to four outlets whatever the channel count, so outlets beyond the
  profile's channels are not published;
- an unknown uiid gets ``Schema(passthrough=True)`` and its params pass through untouched, both
  ways.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ..model import Property, Schema
from ..tsl import normalize

__all__ = [
    "PROFILES",
    "Profile",
    "decode_params",
    "encode_params",
    "flatten",
    "profile_for",
    "query_names",
    "schema_for",
]

_ONOFF: Final = {False: "off", True: "on"}


def _switch(pid: str = "switch", name: str = "Switch") -> Property:
    return Property(pid, name, "bool", enum=_ONOFF)


_RSSI: Final = Property("rssi", "Wi-Fi signal", "int", unit="dBm", access="r")
_FW: Final = Property("fwVersion", "Firmware", "string", access="r")
_STARTUP: Final = Property("startup", "Power-on state", "enum", enum={"on": "on", "off": "off", "stay": "stay"})
_SLED: Final = Property("sledOnline", "Network LED", "bool", enum=_ONOFF)
_COMMON: Final = (_RSSI, _FW)


def _int(pid: str, name: str, lo: float, hi: float, unit: str | None = None, access: str = "rw") -> Property:
    return Property(pid, name, "int", unit=unit, min=lo, max=hi, step=1, access="r" if access == "r" else "rw")


def _reading(pid: str, name: str, unit: str) -> Property:
    return Property(pid, name, "float", unit=unit, access="r")


@dataclass(frozen=True, slots=True)
class Profile:
    """One device family. ``numstr`` lists writable props whose wire form is a numeric string."""

    name: str
    uiids: frozenset[int]
    props: tuple[Property, ...]
    channels: int = 0
    numstr: frozenset[str] = frozenset()

    def schema(self, tags: Mapping[str, Any] | None = None) -> Schema:
        props = list(self.props)
        if self.channels:
            names: Any = (tags or {}).get("ck_channel_name")
            names = names if isinstance(names, dict) else {}
            chans = [
                _switch(f"switch_{i}", str(names.get(str(i)) or f"Channel {i + 1}"))
                for i in range(self.channels)
            ]
            props = chans + props
        return Schema(tuple(props))


def _profiles() -> tuple[Profile, ...]:
    single = Profile(
        "single_switch",
        frozenset({1, 6, 14, 24, 27, 81, 107, 112, 138}),
        (_switch(), _STARTUP, _SLED, *_COMMON,
         Property("pulse", "Inching", "bool", enum=_ONOFF),
         _int("pulseWidth", "Inching time", 500, 3600000, "ms")),
    )
    multi = [
        Profile(f"multi_switch_{n}", frozenset(ids), (_SLED, *_COMMON), channels=n)
        for n, ids in ((1, {77}), (2, {2, 7, 29, 82, 113}), (3, {3, 8, 30, 83, 114}), (4, {4, 9, 31, 84}))
    ]
    dimmer_m4 = Profile("dimmer", frozenset({36}), (_switch(), _int("bright", "Brightness", 10, 100, "%"), *_COMMON))
    dimmer_d1 = Profile(
        "dimmer_d1", frozenset({44}),
        (_switch(), _int("brightness", "Brightness", 0, 100, "%"), _int("mode", "Mode", 0, 10), *_COMMON),
    )
    strip_l1 = Profile(
        "light_rgb_strip", frozenset({59}),
        (_switch(), _int("bright", "Brightness", 1, 100, "%"),
         _int("colorR", "Red", 0, 255), _int("colorG", "Green", 0, 255), _int("colorB", "Blue", 0, 255),
         _int("mode", "Effect", 1, 12), _int("speed", "Effect speed", 1, 100), *_COMMON),
    )
    bulb_b1 = Profile(
        "light_b1", frozenset({22}),
        (Property("state", "Power", "bool", enum=_ONOFF),
         *(_int(f"channel{i}", label, 0, 255) for i, label in enumerate(("Cold white", "Warm white", "Red", "Green", "Blue"))),
         _int("zyx_mode", "Mode", 1, 7), *_COMMON),
        numstr=frozenset(f"channel{i}" for i in range(5)),
    )
    white = Property("white", "White", "struct",
                     fields=(_int("br", "Brightness", 1, 100, "%"), _int("ct", "Colour temperature", 0, 255)))
    colour = Property("color", "Colour", "struct",
                      fields=(_int("r", "Red", 0, 255), _int("g", "Green", 0, 255), _int("b", "Blue", 0, 255),
                              _int("br", "Brightness", 1, 100, "%")))
    ltype = Property("ltype", "Light mode", "enum", enum={
        k: k for k in ("white", "color", "bright", "goodNight", "read", "nightLight", "party", "leisure", "soft", "colorful")})
    bulb_b02 = Profile("light_cct", frozenset({103}), (_switch(), ltype, white, *_COMMON))
    bulb_b05 = Profile("light_rgbcw", frozenset({104}), (_switch(), ltype, white, colour, *_COMMON))
    th = Profile(
        "temperature_humidity", frozenset({15, 181}),
        (_switch(), Property("mainSwitch", "Auto control", "bool", enum=_ONOFF),
         Property("deviceType", "Control mode", "enum",
                  enum={"normal": "manual", "temperature": "temperature", "humidity": "humidity"}),
         _reading("currentTemperature", "Temperature", "°C"),
         _reading("currentHumidity", "Humidity", "%"),
         Property("sensorType", "Sensor", "string", access="r"), *_COMMON),
    )
    pow1 = Profile("power_plug", frozenset({5}), (_switch(), _STARTUP, _reading("power", "Power", "W"), *_COMMON))
    pow2 = Profile(
        "power_plug_r2", frozenset({32}),
        (_switch(), _STARTUP, _reading("power", "Power", "W"), _reading("voltage", "Voltage", "V"),
         _reading("current", "Current", "A"), *_COMMON),
    )
    return (single, *multi, dimmer_m4, dimmer_d1, strip_l1, bulb_b1, bulb_b02, bulb_b05, th, pow1, pow2)


PROFILES: Final = _profiles()
_BY_UIID: Final[dict[int, Profile]] = {u: p for p in PROFILES for u in p.uiids}
PASSTHROUGH: Final = Schema(passthrough=True)


def profile_for(uiid: int | None) -> Profile | None:
    return _BY_UIID.get(uiid) if uiid is not None else None


def schema_for(uiid: int | None, tags: Mapping[str, Any] | None = None) -> Schema:
    profile = profile_for(uiid)
    return profile.schema(tags) if profile else PASSTHROUGH


def flatten(profile: Profile | None, params: Mapping[str, Any]) -> dict[str, Any]:
    """Vendor params → property ids (still vendor-typed). Unknown profiles: untouched copy."""
    if profile is None or not profile.channels or "switches" not in params:
        return dict(params)
    out = {k: v for k, v in params.items() if k != "switches"}
    switches = params["switches"]
    if not isinstance(switches, list):
        out["switches"] = switches  # kept as it came; the schema does not know it
        return out
    for entry in switches:
        if not isinstance(entry, dict):
            continue
        outlet = entry.get("outlet")
        if isinstance(outlet, int) and not isinstance(outlet, bool) and 0 <= outlet < profile.channels:
            out[f"switch_{outlet}"] = entry.get("switch")
    return out


def decode_params(
    profile: Profile | None, schema: Schema, params: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """Pushed/listed params → normalized values and the ids whose value did not fit."""
    if profile is None:
        return dict(params), []
    return normalize(schema, flatten(profile, params))


def _wire(prop: Property | None, value: Any, numstr: bool) -> Any:
    if prop is None:
        return value
    if prop.type == "bool" and isinstance(value, bool):
        return "on" if value else "off"
    if prop.type == "struct" and isinstance(value, dict):
        return {k: _wire(next((f for f in prop.fields if f.id == k), None), v, False) for k, v in value.items()}
    if numstr and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def encode_params(profile: Profile | None, schema: Schema, props: Mapping[str, Any]) -> dict[str, Any]:
    """Validated, normalized command values → CoolKit params (denormalized)."""
    if profile is None:
        return dict(props)
    out: dict[str, Any] = {}
    switches = []
    for key, value in props.items():
        if profile.channels and key.startswith("switch_") and key[7:].isdigit():
            switches.append({"switch": _wire(schema.prop(key), value, False), "outlet": int(key[7:])})
            continue
        out[key] = _wire(schema.prop(key), value, key in profile.numstr)
    if switches:
        out["switches"] = sorted(switches, key=lambda s: int(s["outlet"]))
    return out


def query_names(profile: Profile | None, props: Iterable[str]) -> list[str]:
    """Property ids → vendor param names for a WS ``query`` (``[]`` asks for everything)."""
    names: list[str] = []
    for pid in props:
        name = pid
        if profile is not None and profile.channels and pid.startswith("switch_") and pid[7:].isdigit():
            name = "switches"
        if name not in names:
            names.append(name)
    return names
