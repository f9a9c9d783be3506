"""Routing decoded sensor messages to Readings, and actuator refs to pins."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import codec
from engine.codec import SensorData, SensorValue
from engine.model import Actuator, Command, Deployment, Device, Reading, Sensor
from engine.routing import Router, Unmapped

NOW = 1795000010.0
ESP = "ESP_A1B2C3"

NORTH = Device(
    "north", ESP,
    sensors=(
        Sensor("north", "water_ph", 32, "ph", calibration={"slope": -3.6, "offset": 12.4}),
        Sensor("north", "air_temp", 27, "ds18b20"),
        Sensor("north", "soil_temp", 4, "ds18b20", onewire_address="28FF641E8516034A"),
        Sensor("north", "pipe_temp", 4, "ds18b20", onewire_address="28:FF:0B:2A:91:16:05:77"),
        Sensor("north", "climate", 21, "sht31", i2c_address=0x44, quantities=("temperature", "humidity")),
        Sensor("north", "weather", 21, "bmp280", i2c_address=0x76, quantities=("pressure", "temperature")),
        Sensor("north", "light", 21, "light", i2c_address=0x23),
        Sensor("north", "hum", 22, "sht31_humidity"),
        Sensor("north", "soil", 34, "moisture", calibration={"dry": 3000, "wet": 1000}),
        Sensor("north", "flow", 14, "flow", calibration={"window": 30}),
    ),
    actuators=(Actuator("north", "pump", 16, "pump"), Actuator("north", "vent", 25, "pwm")),
)
ROUTER = Router(Deployment(devices={"north": NORTH}))


def msg(gpio: int, body: dict, *, retained: bool = False, esp: str = ESP) -> SensorData:
    body = {"gpio": gpio, **body}
    m = codec.decode(f"kaiser/god/esp/{esp}/sensor/{gpio}/data", json.dumps(body).encode(),
                     retained=retained, received_at=NOW)
    assert isinstance(m, SensorData), m
    return m


def one(m: SensorData) -> Reading | Unmapped:
    r = ROUTER.route(m)
    (x,) = r.readings + r.unmapped  # type: ignore[operator]
    return x


def test_current_firmware_ds18b20_fixture_is_21_5_degrees():
    r = one(msg(27, {"esp_id": ESP, "seq": 812, "sensor_type": "ds18b20", "raw": 344, "value": 0,
                     "unit": "", "quality": "good", "ts": 1795000000, "time_valid": True, "raw_mode": True}))
    assert r == Reading("north.air_temp", 21.5, 1795000000.0, "good", "°C", False)


def test_legacy_ph_fixture_is_processed_with_the_device_map_calibration():
    r = one(msg(32, {"sensor_type": "ph", "raw_value": 2150, "processed_value": 6.19, "unit": "pH",
                     "quality": "fair", "timestamp": 1834567}, retained=True))
    assert isinstance(r, Reading)
    assert r.sensor == "north.water_ph"
    assert r.value == pytest.approx(-3.6 * 2150 / 4095 * 3.3 + 12.4, abs=1e-6)
    assert (r.unit, r.quality, r.ts, r.retained) == ("pH", "fair", NOW, True)  # uptime: receive time


def test_raw_mode_false_uses_the_firmware_value_graded_by_the_library():
    r = one(msg(27, {"sensor_type": "ds18b20", "raw": 344, "value": 22.0, "raw_mode": False}))
    assert (r.value, r.unit, r.quality) == (22.0, "°C", "good")
    r = one(msg(27, {"sensor_type": "temperature_ds18b20", "value": 300.0}))
    assert r.quality == "bad"  # outside the chip's range


def test_quality_is_the_worse_of_firmware_and_library():
    assert one(msg(27, {"sensor_type": "ds18b20", "raw": 344, "quality": "poor"})).quality == "poor"
    assert one(msg(27, {"sensor_type": "ds18b20", "raw": 344, "quality": "error"})).quality == "bad"
    assert one(msg(27, {"sensor_type": "ds18b20", "raw": 344})).quality == "excellent"
    assert one(msg(27, {"sensor_type": "ds18b20", "raw": -2032, "quality": "good"})).quality == "bad"


def test_multi_value_chips_on_one_bus_get_one_ref_per_quantity():
    cases = [
        ({"sensor_type": "sht31_temp", "raw": 26214}, "north.climate.temperature", 25.0),
        ({"sensor_type": "SHT31_HUMIDITY", "raw": 32768}, "north.climate.humidity", 50.000763),
        ({"sensor_type": "bmp280_pressure", "value": 1013.2}, "north.weather.pressure", 1013.2),
        ({"sensor_type": "temperature_bmp280", "value": 19.5}, "north.weather.temperature", 19.5),
        ({"sensor_type": "bh1750", "value": 5400}, "north.light", 5400.0),
        ({"sensor_type": "sht31_temp", "raw": 26214, "i2c_address": "0x44"}, "north.climate.temperature", 25.0),
    ]
    for body, ref, value in cases:
        r = one(msg(21, body))
        assert isinstance(r, Reading), r
        assert (r.sensor, r.value) == (ref, pytest.approx(value, abs=1e-4))


def test_batch_of_both_chips():
    m = codec.decode(f"kaiser/god/esp/{ESP}/sensor/batch", json.dumps({"ts": 1795000000, "sensors": [
        {"gpio": 21, "sensor_type": "sht31_temp", "raw": 26214},
        {"gpio": 21, "sensor_type": "sht31_humidity", "raw": 32768},
        {"gpio": 34, "sensor_type": "moisture", "raw": 2000},
        {"gpio": 33, "sensor_type": "ec", "raw": 100},
    ]}).encode(), received_at=NOW)
    r = ROUTER.route(m)
    assert [x.sensor for x in r.readings] == ["north.climate.temperature", "north.climate.humidity", "north.soil"]
    assert r.readings[2].value == 50.0 and r.readings[2].quality == "good"  # calibrated dry/wet
    assert [(u.gpio, u.why) for u in r.unmapped] == [(33, "sensor")]


def test_onewire_address_picks_the_probe():
    soil = one(msg(4, {"sensor_type": "ds18b20", "raw": 320, "onewire_address": "28ff641e8516034a"}))
    pipe = one(msg(4, {"sensor_type": "ds18b20", "raw": 160, "onewire_address": "28-FF-0B-2A-91-16-05-77"}))
    assert (soil.sensor, soil.value) == ("north.soil_temp", 20.0)
    assert (pipe.sensor, pipe.value) == ("north.pipe_temp", 10.0)
    u = one(msg(4, {"sensor_type": "ds18b20", "raw": 160}))
    assert isinstance(u, Unmapped) and u.why == "ambiguous" and u.device == "north"


def test_single_valued_declaration_of_a_chip_value():
    r = one(msg(22, {"sensor_type": "humidity_sht31", "raw": 65535}))
    assert (r.sensor, r.value, r.unit) == ("north.hum", 100.0, "%")
    u = one(msg(22, {"sensor_type": "sht31_temp", "raw": 1}))
    assert isinstance(u, Unmapped) and u.why == "type" and "sht31_humidity" in u.message


def test_params_from_the_device_map_reach_the_library():
    assert one(msg(14, {"sensor_type": "flow", "raw": 450})).value == 2.0  # 450 pulses in 30 s


def test_unknown_device_and_sensor_are_unmapped_not_errors():
    u = one(msg(27, {"sensor_type": "ds18b20", "raw": 344}, esp="ESP_FFFFFF"))
    assert isinstance(u, Unmapped) and (u.why, u.device, u.esp_id) == ("device", None, "ESP_FFFFFF")
    u = one(msg(5, {"sensor_type": "ds18b20", "raw": 344}))
    assert isinstance(u, Unmapped) and (u.why, u.device, u.gpio) == ("sensor", "north", 5)
    assert "gpio 5" in u.message
    u = one(msg(27, {"sensor_type": "ph", "raw": 344}))
    assert isinstance(u, Unmapped) and u.why == "type"


def test_unknown_wire_type_on_an_unambiguous_pin_trusts_the_device_map():
    r = one(msg(27, {"sensor_type": "temperature", "raw": 344}))
    assert (r.sensor, r.value) == ("north.air_temp", 21.5)


def test_actuator_refs_and_pins():
    assert ROUTER.actuator_target("north.pump") == (ESP, 16, "pump")
    assert ROUTER.actuator_ref(ESP, 25) == "north.vent"
    assert ROUTER.actuator_ref(ESP, 26) is None
    assert ROUTER.actuator_ref("ESP_FFFFFF", 16) is None
    with pytest.raises(KeyError, match=r"north\.nope"):
        ROUTER.actuator_target("north.nope")
    out = ROUTER.encode("god", Command("north.vent", 0.4, duration=12.5))
    assert out.topic == f"kaiser/god/esp/{ESP}/actuator/25/command"
    # current firmware arms its auto-off only for ON: a PWM's end is the server's OFF
    assert json.loads(out.payload) == {"command": "PWM", "value": 0.4, "duration": 0}
    out = ROUTER.encode("god", Command("north.pump", 1.0, duration=12.5))
    assert json.loads(out.payload) == {"command": "ON", "value": 1.0, "duration": 13}


def test_quantity_lookup_for_refs():
    assert ROUTER.quantity("north.climate.humidity").unit == "%"
    assert ROUTER.quantity("north.water_ph").max == 14.0
    assert ROUTER.quantity("north.nope") is None


def test_the_example_deployment_routes_its_boards():
    from engine.config import load_deployment

    rules = Path(__file__).resolve().parents[2] / "rules"
    if not (rules / "devices.yaml").exists():
        pytest.skip("no example deployment")
    d, diags = load_deployment(str(rules))
    assert not [x for x in diags if x.is_error]
    router = Router(d)
    dev = next(iter(d.devices.values()))
    s = dev.sensors[0]
    m = codec.decode(f"kaiser/god/esp/{dev.esp_id}/sensor/{s.gpio}/data",
                     json.dumps({"gpio": s.gpio, "sensor_type": s.type, "raw": 344, "ts": 1795000000,
                                 "onewire_address": s.onewire_address}).encode(),
                     received_at=NOW)
    r = router.route(m)
    assert [x.sensor for x in r.readings] == [s.refs()[0]]
    for a in dev.actuators:
        assert router.actuator_ref(dev.esp_id, a.gpio) == a.ref


@given(gpio=st.integers(0, 39), typ=st.sampled_from(["ds18b20", "ph", "sht31_temp", "sht31_humidity", "moisture",
                                                     "bmp280_pressure", "light", "flow", "ec", "unknown", "SHT31"]),
       raw=st.one_of(st.none(), st.floats(-1e300, 1e300)), value=st.one_of(st.none(), st.floats(-1e300, 1e300)),
       raw_mode=st.one_of(st.none(), st.booleans()), quality=st.sampled_from([None, "good", "bad", "error", "stale"]),
       i2c=st.one_of(st.none(), st.integers(0, 127)), retained=st.booleans())
def test_routing_never_raises_and_readings_are_finite(gpio, typ, raw, value, raw_mode, quality, i2c, retained):
    if raw is None and value is None:
        value = 1.0
    if raw_mode and raw is None:
        raw = 1.0
    v = SensorValue(gpio=gpio, sensor_type=typ, raw=raw, value=value, raw_mode=raw_mode, quality=quality,
                    ts=NOW, ts_kind="unix_s", i2c_address=i2c)
    m = SensorData(topic="t", kaiser_id="god", esp_id=ESP, received_at=NOW, retained=retained, values=(v,))
    r = ROUTER.route(m)
    for x in r.readings:
        assert math.isfinite(x.value) and "e" not in repr(x.value)
        assert x.retained == retained
        assert x.quality in ("excellent", "good", "fair", "poor", "bad", "stale")
    assert len(r.readings) + len(r.unmapped) == 1


def test_unknown_wire_type_on_a_multi_value_chip_is_not_guessed():
    router = Router(Deployment(devices={"d": Device("d", ESP, sensors=(
        Sensor("d", "climate", 21, "sht31", quantities=("temperature", "humidity")),))}))
    m = msg(21, {"sensor_type": "humidity", "raw": 100})
    (u,) = router.route(m).unmapped
    assert u.why == "type"
