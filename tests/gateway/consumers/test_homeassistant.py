"""Home Assistant discovery mapping over plain values (no broker, no Home Assistant).

What Home Assistant makes of these configs is proven by tests/consumers/ (a real Home
Assistant); here: which component each schema shape becomes, ids, topics, availability, lights,
and the consumer's lifecycle decisions (what it publishes, retained, when)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.consumers.homeassistant import (
    MAPPING,
    HomeAssistantDiscovery,
    HomeAssistantSettings,
    device_config,
    entity_configs,
    map_device,
    unique_id,
)
from gateway.events import DeviceAdded, DeviceRemoved, EventBus
from gateway.records import DeviceRecord
from gateway.topics import Topics
from protocols.model import ActionSpec, DeviceInfo, EventSpec, Property, Schema

BRIDGE = "cloud2mqtt/bridge/state"
ORIGIN = {"name": "cloud2mqtt", "sw": "test"}
TOPICS = Topics()


def record(vendor: str, device: str, schema: Schema, account: str = "home", name: str = "Dev") -> DeviceRecord:
    topic = TOPICS.device(vendor, device)
    return DeviceRecord(vendor, account, DeviceInfo(device, name, "M1", schema), topic, topic.encode())


def desc(vendor: str, device: str, schema: Schema, **kw: Any) -> dict[str, Any]:
    return record(vendor, device, schema, **kw).describe()


def components(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return map_device(d, bridge_state_topic=BRIDGE, origin=ORIGIN).components


# ---- ids ------------------------------------------------------------------------------------


def test_unique_id_is_topic_safe_and_never_collides() -> None:
    triples = [
        ("tencent", "home", "ABC/light1"),
        ("tencent", "home", "ABC%2Flight1"),
        ("tencent", "home_x", "y"),
        ("tencent", "home", "x_y"),
        ("tencent", "home-x", "y"),
        ("tencent", "home", "x-y"),
        ("coolkit", "a", "group:g-lights"),
        ("aliyun", "a", "设备"),
        ("aliyun", "a", "-e8-ae-be-e5-a4-87"),
    ]
    ids = [unique_id(*t) for t in triples]
    assert len(set(ids)) == len(ids), ids
    for uid in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]+", uid), uid


def test_unique_ids_come_from_vendor_account_and_id_never_the_name() -> None:
    schema = Schema((Property("on", type="bool"),))
    a = device_config(desc("tencent", "P/d1", schema, name="Kitchen"), prefix="homeassistant",
                      bridge_state_topic=BRIDGE, origin=ORIGIN)
    b = device_config(desc("tencent", "P/d1", schema, name="Renamed"), prefix="homeassistant",
                      bridge_state_topic=BRIDGE, origin=ORIGIN)
    assert a[0] == b[0] == f"homeassistant/device/{unique_id('tencent', 'home', 'P/d1')}/config"
    assert a[1]["cmps"].keys() == b[1]["cmps"].keys()
    assert [c["unique_id"] for c in a[1]["cmps"].values()] == [c["unique_id"] for c in b[1]["cmps"].values()]
    assert a[1]["dev"]["name"] == "Kitchen" and b[1]["dev"]["name"] == "Renamed"
    # The same device id in another account is another device.
    c = device_config(desc("tencent", "P/d1", schema, account="office"), prefix="homeassistant",
                      bridge_state_topic=BRIDGE, origin=ORIGIN)
    assert c[0] != a[0]


# ---- the mapping table ----------------------------------------------------------------------


def _prop_for(ptype: str, writable: bool) -> Property:
    kw: dict[str, Any] = {"access": "rw" if writable else "r"}
    if ptype == "enum":
        kw["enum"] = {0: "Low", 1: "High"}
    if ptype == "struct":
        kw["fields"] = (Property("x", type="int"),)
    if ptype == "array":
        kw["item"] = Property("i", type="int")
    return Property("p", name="P", type=ptype, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("shape", "component"), sorted(MAPPING.items()))
def test_every_row_of_the_mapping_table(shape: tuple[str, bool], component: str) -> None:
    ptype, writable = shape
    cmps = components(desc("xky", "d", Schema((_prop_for(ptype, writable),))))
    (cmp,) = cmps.values()
    assert cmp["p"] == component
    assert cmp["state_topic"] == "cloud2mqtt/xky/d"
    assert '"p" in value_json' in cmp["value_template"]
    if component in ("switch", "number", "select", "text"):
        assert cmp["command_topic"] == "cloud2mqtt/xky/d/set"
        assert cmp["command_template"].startswith('{"p": ')
    else:
        assert "command_topic" not in cmp
    if ptype == "enum" and not writable:
        assert cmp["device_class"] == "enum" and cmp["options"] == ["Low", "High"]
    if ptype == "timestamp":
        assert cmp["device_class"] == "timestamp"
    if ptype in ("struct", "array"):
        assert cmp["json_attributes_topic"] == "cloud2mqtt/xky/d"


@pytest.mark.parametrize(
    ("pid", "unit", "expected"),
    [
        ("temperature", "℃", ("°C", "temperature", "measurement")),
        ("CurrentTemperature", "°C", ("°C", "temperature", "measurement")),
        ("humidity", "%", ("%", "humidity", "measurement")),
        ("BatteryPercentage", "%", ("%", "battery", "measurement")),
        ("level", "%", ("%", None, "measurement")),
        ("power", "W", ("W", "power", "measurement")),
        ("energy", "kWh", ("kWh", "energy", "total_increasing")),
        ("voltage", "V", ("V", "voltage", "measurement")),
        ("current", "A", ("A", "current", "measurement")),
        ("lux", "lx", ("lx", "illuminance", "measurement")),
        ("co2", "ppm", ("ppm", "carbon_dioxide", "measurement")),
        ("rssi", "dBm", ("dBm", "signal_strength", "measurement")),
    ],
)
def test_read_only_numbers_get_unit_device_and_state_class(pid: str, unit: str, expected: tuple[Any, ...]) -> None:
    (cmp,) = components(desc("xky", "d", Schema((Property(pid, type="float", unit=unit, access="r"),)))).values()
    assert cmp["p"] == "sensor"
    assert (cmp.get("unit_of_measurement"), cmp.get("device_class"), cmp.get("state_class")) == expected


def test_number_select_text_options_from_the_schema() -> None:
    schema = Schema((
        Property("level", type="int", min=1, max=10, step=1, unit="s"),
        Property("mode", type="enum", enum={"0": "Manual", "1": "Read"}),
        Property("label", type="string", length=32),
    ))
    cmps = components(desc("aliyun", "d", schema))
    number, select, text = (cmps[f"p-{k}"] for k in ("level", "mode", "label"))
    assert (number["min"], number["max"], number["step"], number["unit_of_measurement"]) == (1, 10, 1, "s")
    assert select["options"] == ["Manual", "Read"]  # labels shown …
    assert '{"Manual": "0", "Read": "1"}[value]' in select["command_template"]  # … values sent
    assert text["max"] == 32


def test_actions_and_events() -> None:
    schema = Schema(
        (Property("on", type="bool"),),
        events=(EventSpec("LowBattery"), EventSpec("Error")),
        actions=(ActionSpec("Toggle", "Toggle it"), ActionSpec("Blink", input=(Property("times", type="int"),))),
    )
    m = map_device(desc("aliyun", "d", schema), bridge_state_topic=BRIDGE, origin=ORIGIN)
    button = m.components["a-Toggle"]
    assert button["p"] == "button" and button["command_topic"] == "cloud2mqtt/aliyun/d/action"
    assert orjson.loads(button["payload_press"]) == {"action": "Toggle"}
    event = m.components["events"]
    assert event["p"] == "event" and event["event_types"] == ["LowBattery", "Error"]
    assert event["state_topic"] == "cloud2mqtt/aliyun/d/event"
    # An action with parameters has no Home Assistant counterpart: reported, not dropped silently.
    assert m.unmapped == ["action Blink (has input parameters)"]
    assert not any("Blink" in k for k in m.components)


# ---- lights ---------------------------------------------------------------------------------

TENCENT_LIGHT = Schema((
    Property("power_switch", type="bool", enum={False: "关", True: "开"}),
    Property("brightness", type="int", unit="%", min=0, max=100, step=1),
    Property("color", type="enum", enum={0: "Red", 1: "Green", 2: "Blue"}),
))
ALIYUN_LIGHT = Schema((
    Property("LightSwitch", type="bool"),
    Property("Brightness", type="int", unit="%", min=0, max=100, step=1),
    Property("ColorTemperature", type="int", unit="K", min=2700, max=6500, step=100),
    Property("HSVColor", type="struct", fields=(
        Property("Hue", type="float", min=0, max=360),
        Property("Saturation", type="float", min=0, max=100),
        Property("Value", type="float", min=0, max=100),
    )),
))


def test_tencent_light_is_one_light_and_its_enum_colour_stays_a_select() -> None:
    cmps = components(desc("tencent", "P/l1", TENCENT_LIGHT))
    assert sorted(cmps) == ["light", "p-color"]
    light = cmps["light"]
    assert light["p"] == "light" and light["schema"] == "template"
    assert light["command_topic"] == "cloud2mqtt/tencent/P%2Fl1/set"
    assert light["command_off_template"] == '{"power_switch": false}'
    assert '"brightness": {{' in light["command_on_template"] and "/ 255 * 100" in light["command_on_template"]
    assert "/ 100 * 255" in light["brightness_template"]
    assert "color_temp_template" not in light and "red_template" not in light
    assert cmps["p-color"]["p"] == "select"


def test_aliyun_light_has_kelvin_colour_temperature_and_hs() -> None:
    cmps = components(desc("aliyun", "a1", ALIYUN_LIGHT))
    assert list(cmps) == ["light"]
    light = cmps["light"]
    assert (light["color_temp_kelvin"], light["min_kelvin"], light["max_kelvin"]) == (True, 2700, 6500)
    assert '"ColorTemperature": {{' in light["command_on_template"]
    assert '"HSVColor": {"Hue": {{ hue' in light["command_on_template"]
    assert all(f"{c}_template" in light for c in ("red", "green", "blue"))


def test_light_detected_by_type_for_unknown_names() -> None:
    schema = Schema((Property("relay", type="bool"), Property("bright_level", type="int", min=1, max=255)))
    assert list(components(desc("xky", "d", schema))) == ["light"]
    # Two switches and no brightness: switches, not a light.
    schema = Schema((Property("a", type="bool"), Property("b", type="bool")))
    assert [c["p"] for c in components(desc("xky", "d", schema)).values()] == ["switch", "switch"]


# ---- device vs entity discovery -------------------------------------------------------------


def test_device_config_shape() -> None:
    topic, payload, unmapped = device_config(
        desc("tencent", "P/l1", TENCENT_LIGHT, name="light 1"),
        prefix="ha", bridge_state_topic=BRIDGE, origin=ORIGIN,
    )
    uid = unique_id("tencent", "home", "P/l1")
    assert topic == f"ha/device/{uid}/config"
    assert payload["dev"] == {"ids": [uid], "name": "light 1", "mf": "Tencent IoT Explorer", "mdl": "M1", "sn": "P/l1"}
    assert payload["o"] == ORIGIN
    assert payload["availability_mode"] == "all"
    assert [a["topic"] for a in payload["availability"]] == [BRIDGE, "cloud2mqtt/tencent/P%2Fl1/availability"]
    assert all(c["unique_id"].startswith(uid + "_") for c in payload["cmps"].values())
    assert unmapped == []
    orjson.dumps(payload)  # serialisable as it is


def test_entity_configs_one_topic_per_entity() -> None:
    pairs, _ = entity_configs(desc("tencent", "P/l1", TENCENT_LIGHT), prefix="ha",
                              bridge_state_topic=BRIDGE, origin=ORIGIN)
    uid = unique_id("tencent", "home", "P/l1")
    assert sorted(t for t, _ in pairs) == [f"ha/light/{uid}/light/config", f"ha/select/{uid}/p-color/config"]
    for _, cfg in pairs:
        assert "p" not in cfg and cfg["dev"]["ids"] == [uid] and cfg["availability_mode"] == "all"


# ---- the consumer's decisions ----------------------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bool, int]] = []

    def __call__(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> None:
        self.sent.append((topic, payload, retain, qos))


def consumer(sink: Sink, tmp_path: Path | None = None, **kw: Any) -> HomeAssistantDiscovery:
    settings = HomeAssistantSettings(enabled=True, **kw)
    return HomeAssistantDiscovery(
        None, settings, bridge_state_topic=BRIDGE, publish=sink, subscribe=lambda t, cb: None,
        state_file=(tmp_path / "homeassistant.json") if tmp_path else None, origin=ORIGIN,
    )


def test_added_device_published_retained_once_schema_change_republished_removal_cleared() -> None:
    sink = Sink()
    c = consumer(sink)
    rec = record("tencent", "P/l1", TENCENT_LIGHT)
    c.device_changed(rec)
    ((topic, payload, retain, qos),) = sink.sent
    assert topic.startswith("homeassistant/device/") and retain and qos == 1
    assert "light" in orjson.loads(payload)["cmps"]
    c.device_changed(rec)  # same schema: nothing new to say
    assert len(sink.sent) == 1
    rec.info = DeviceInfo(rec.device, "light 1", "M1", Schema(TENCENT_LIGHT.properties[:1]))
    c.device_changed(rec)
    assert len(sink.sent) == 2 and "light" not in orjson.loads(sink.sent[-1][1])["cmps"]
    c.device_removed(rec)
    assert sink.sent[-1] == (topic, b"", True, 1)


def test_entity_mode_schema_change_clears_entities_that_went_away() -> None:
    sink = Sink()
    c = consumer(sink, discovery="entity")
    rec = record("tencent", "P/l1", TENCENT_LIGHT)
    c.device_changed(rec)
    select_topic = next(t for t, *_ in sink.sent if "/select/" in t)
    rec.info = DeviceInfo(rec.device, "light 1", "M1", Schema(TENCENT_LIGHT.properties[:2]))
    c.device_changed(rec)
    assert (select_topic, b"", True, 1) in sink.sent


async def test_birth_republishes_every_config_in_batches() -> None:
    sink = Sink()
    c = consumer(sink, batch=3, interval=0.01)
    for i in range(7):
        c.device_changed(record("xky", f"d{i}", Schema((Property("on", type="bool", access="r"),))))
    mark = len(sink.sent)
    c.on_status("homeassistant/status", b"offline")
    assert len(sink.sent) == mark
    c.on_status("homeassistant/status", b"online")
    assert len(sink.sent) == mark + 3  # the first batch at once, the rest spread out
    for _ in range(200):
        if c.republished == 7:
            break
        await asyncio.sleep(0.01)
    assert sorted(t for t, *_ in sink.sent[mark:]) == sorted(t for t, *_ in sink.sent[:mark])


def test_unmapped_logged_once_per_device(caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink()
    c = consumer(sink)
    schema = Schema(actions=(ActionSpec("Blink", input=(Property("times", type="int"),)),))
    rec = record("aliyun", "a1", schema)
    with caplog.at_level("INFO", logger="cloud2mqtt.homeassistant"):
        c.device_changed(rec)
        c.device_changed(rec)
    lines = [r.getMessage() for r in caplog.records if "not mapped" in r.getMessage()]
    assert lines == ["homeassistant: aliyun account home device a1: not mapped: action Blink (has input parameters)"]


def test_disabled_clears_what_an_earlier_run_published(tmp_path: Path) -> None:
    sink = Sink()
    first = consumer(sink, tmp_path)
    first.device_changed(record("tencent", "P/l1", TENCENT_LIGHT))
    first.stop()  # writes the state file
    topics = [t for t, *_ in sink.sent]
    sink.sent.clear()
    off = HomeAssistantDiscovery(
        None, HomeAssistantSettings(enabled=False), bridge_state_topic=BRIDGE, publish=sink,
        subscribe=lambda t, cb: None, state_file=tmp_path / "homeassistant.json", origin=ORIGIN,
    )
    off.start()
    assert sink.sent == [(t, b"", True, 1) for t in topics]
    sink.sent.clear()
    off.start()  # nothing left to clear
    assert sink.sent == []


def test_start_follows_the_bus_and_stop_leaves_it(tmp_path: Path) -> None:
    bus = EventBus()
    sink = Sink()
    subscribed: list[str] = []
    c = HomeAssistantDiscovery(
        bus, HomeAssistantSettings(enabled=True), bridge_state_topic=BRIDGE, publish=sink,
        subscribe=lambda t, cb: subscribed.append(t), origin=ORIGIN,
    )
    rec = record("tencent", "P/l1", TENCENT_LIGHT)
    c.start()
    assert subscribed == ["homeassistant/status"]
    bus.emit(DeviceAdded(rec))
    ((topic, _, _, _),) = sink.sent
    bus.emit(DeviceRemoved(rec))
    assert sink.sent[-1] == (topic, b"", True, 1)
    c.stop()
    bus.emit(DeviceAdded(rec))
    assert len(sink.sent) == 2


def test_mode_switch_clears_the_old_form_on_start(tmp_path: Path) -> None:
    bus = EventBus()
    sink = Sink()
    rec = record("tencent", "P/l1", TENCENT_LIGHT)
    entity = HomeAssistantDiscovery(
        bus, HomeAssistantSettings(enabled=True, discovery="entity"), bridge_state_topic=BRIDGE,
        publish=sink, subscribe=lambda t, cb: None, state_file=tmp_path / "ha.json",
        devices=lambda: [rec], origin=ORIGIN,
    )
    entity.start()
    entity.stop()
    old = {t for t, p, *_ in sink.sent if p}
    assert len(old) == 2
    sink.sent.clear()
    device = HomeAssistantDiscovery(
        bus, HomeAssistantSettings(enabled=True, discovery="device"), bridge_state_topic=BRIDGE,
        publish=sink, subscribe=lambda t, cb: None, state_file=tmp_path / "ha.json",
        devices=lambda: [rec], origin=ORIGIN,
    )
    device.start()
    cleared = {t for t, p, *_ in sink.sent if not p}
    published = {t for t, p, *_ in sink.sent if p}
    assert cleared == old and len(published) == 1 and "/device/" in next(iter(published))
    device.stop()
