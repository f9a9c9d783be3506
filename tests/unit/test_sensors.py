"""Sensor libraries: golden vectors, quality grades, aliases, calibration."""

from __future__ import annotations

import argparse
import math
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

import sensors
from engine.errors import UnknownSensorType
from sensors import registry
from sensors.calibration import cmd_calibrate, two_point


def V(raw: float) -> float:
    """PROTOCOL.md: the ADC pin voltage."""
    return raw / 4095 * 3.3


# (type, raw, calibration, params, expected value, unit, quality)
GOLDEN = [
    ("ds18b20", 344, None, None, 21.5, "°C", "excellent"),
    ("ds18b20", -162, None, None, -10.125, "°C", "good"),  # 0xFF5E as a signed register
    ("ds18b20", 0xFF5E, None, None, -10.125, "°C", "good"),  # the same as an unsigned 16-bit word
    ("ds18b20", 4294967134, None, None, -10.125, "°C", "good"),  # legacy unsigned 32-bit
    ("ds18b20", 0, None, None, 0.0, "°C", "excellent"),
    ("ds18b20", 1360, None, None, 85.0, "°C", "poor"),  # power-on value
    ("ds18b20", -2032, None, None, -127.0, "°C", "bad"),  # disconnected
    ("ds18b20", 344, {"offset": -0.5}, None, 21.0, "°C", "excellent"),
    ("ph", 2150, None, None, 6.185897, "pH", "fair"),  # PROTOCOL fixture: firmware said 6.19
    ("ph", 1861, None, None, 7 - 3.5 * (V(1861) - 1.5), "pH", "fair"),
    ("ph", 2048, {"slope": -5.0, "offset": 15.0}, None, -5 * V(2048) + 15, "pH", "good"),
    ("ph", 0, None, None, 12.25, "pH", "poor"),  # at the rail
    ("ph", 4095, {"slope": 10.0, "offset": 0.0}, None, 14.0, "pH", "poor"),  # clamped
    ("ph", 1240.9, None, {"temperature": 25.0}, 7 - 3.5 * (V(1240.9) - 1.5), "pH", "fair"),
    ("ph", 1000, None, {"temperature": 45.0}, 7 + (7 - 3.5 * (V(1000) - 1.5) - 7) * 298.15 / 318.15, "pH", "fair"),
    ("ec", 1000, None, None, 6060 * V(1000), "µS/cm", "fair"),
    ("ec", 1000, None, {"temperature": 30.0}, 6060 * V(1000) / 1.1, "µS/cm", "fair"),  # / (1 + 0.02 * 5)
    ("ec", 1000, {"slope": 5000.0, "offset": 10.0}, None, 5000 * V(1000) + 10, "µS/cm", "good"),
    ("ec", 4000, {"slope": 10000.0, "offset": 0.0}, None, 20000.0, "µS/cm", "poor"),
    ("moisture", 3200, None, None, 0.0, "%", "fair"),
    ("moisture", 1500, None, None, 100.0, "%", "fair"),
    ("moisture", 2350, None, None, 50.0, "%", "fair"),
    ("moisture", 2250, {"dry": 3000, "wet": 1500}, None, 50.0, "%", "good"),
    ("moisture", 1000, None, None, 100.0, "%", "poor"),  # wetter than wet: clamped
    ("sht31_temp", 0, None, None, -45.0, "°C", "good"),
    ("sht31_temp", 65535, None, None, 130.0, "°C", "good"),
    ("temperature_sht31", 26214, None, None, -45 + 175 * 26214 / 65535, "°C", "excellent"),
    ("sht31_humidity", 32768, None, None, 100 * 32768 / 65535, "%", "excellent"),
    ("humidity_sht31", 65535, None, None, 100.0, "%", "good"),
    ("sht31_humidity", 65535, {"humidity_offset": 5.0}, None, 100.0, "%", "poor"),
    ("bmp280_pressure", 1013.25, None, None, 1013.25, "hPa", "good"),
    ("pressure_bmp280", 200.0, None, None, 200.0, "hPa", "bad"),
    ("bmp280_temp", 21.3, None, None, 21.3, "°C", "good"),
    ("co2", 800, None, None, 800.0, "ppm", "good"),
    ("mhz19_co2", 300, None, None, 300.0, "ppm", "fair"),
    ("scd30_co2", 20000, None, None, 20000.0, "ppm", "bad"),
    ("light", 12345.5, None, None, 12345.5, "lx", "good"),
    ("bh1750", 1000, {"scale": 1.2}, None, 1200.0, "lx", "good"),
    ("tsl2561", -1, None, None, -1.0, "lx", "bad"),
    ("flow", 450, None, None, 1.0, "L/min", "good"),  # 450 pulses in 60 s = 1 L/min
    ("yfs201", 450, None, {"window": 30}, 2.0, "L/min", "good"),
    ("flow", 900, {"pulses_per_litre": 300}, {"window": 60}, 3.0, "L/min", "good"),
    ("flow", 450 * 31, None, None, 31.0, "L/min", "bad"),
]


@pytest.mark.parametrize(("typ", "raw", "cal", "params", "value", "unit", "quality"), GOLDEN)
def test_golden_vectors(typ, raw, cal, params, value, unit, quality):
    p = sensors.process(typ, raw, cal, params)
    assert p.value == pytest.approx(value, abs=1e-6)
    assert (p.unit, p.quality) == (unit, quality)


@pytest.mark.parametrize("raw", [float("nan"), float("inf"), -float("inf"), -1, 4096, 1e9,
                                  "2150", None, True, [1], {"raw": 1}, object()])
@pytest.mark.parametrize("typ", ["ph", "ec", "moisture"])
def test_absurd_raw_is_bad_never_an_exception(typ, raw):
    p = sensors.process(typ, raw)
    assert p.quality == "bad"
    assert math.isfinite(p.value)


@pytest.mark.parametrize("raw", [0.5, 65536, 2**40, -40000, float("nan"), "344"])
def test_ds18b20_undecodable_raw_is_bad(raw):
    assert sensors.process("ds18b20", raw).quality == "bad"


def test_junk_calibration_is_bad_not_a_crash():
    assert sensors.process("moisture", 2000, {"dry": 2000, "wet": 2000}).quality == "bad"
    assert sensors.process("ph", 2000, {"slope": "steep", "offset": 1}).quality == "bad"  # type: ignore[dict-item]
    assert sensors.process("flow", 10, None, {"window": 0}).quality == "bad"


def test_names_are_case_insensitive_and_aliases_resolve():
    assert registry.resolve("DS18B20")[0].name == "ds18b20"
    assert registry.resolve("Temperature_DS18B20") == registry.resolve("ds18b20")
    st_, q = registry.resolve("SHT31_Humidity")
    assert (st_.name, q) == ("sht31", "humidity")
    assert registry.resolve("temperature_bmp280")[1] == "temperature"
    for alias, name in [("ph_sensor", "ph"), ("EC_SENSOR", "ec"), ("tsl2561", "light"),
                        ("BH1750", "light"), ("yfs201", "flow"), ("mhz19_co2", "co2"),
                        ("scd30_co2", "co2"), ("moisture", "moisture")]:
        assert registry.resolve(alias)[0].name == name
    assert sensors.process("DS18B20", 344).value == 21.5


def test_unknown_type_raises_naming_it():
    with pytest.raises(UnknownSensorType, match="thermocouple"):
        sensors.process("thermocouple", 1)
    with pytest.raises(KeyError):
        registry.resolve("nope")


def test_every_type_documents_unit_range_and_calibration():
    names = set(registry.types())
    assert {"ph", "ec", "moisture", "ds18b20", "sht31", "bmp280", "co2", "light", "flow"} <= names
    for t in registry.types().values():
        assert t.description
        for q in t.quantities:
            assert q.unit and q.min < q.max
    assert set(registry.types()["moisture"].calibration) == {"dry", "wet"}
    assert {"slope", "offset"} <= set(registry.types()["ph"].calibration)
    assert {"slope", "offset"} <= set(registry.types()["ec"].calibration)
    assert "sht31_temp" in registry.all_names()


def test_multi_value_chip_defaults_to_its_first_quantity():
    assert sensors.process("sht31", 0).value == -45.0
    assert sensors.process("sht31", 65535, quantity="humidity").value == 100.0
    with pytest.raises(UnknownSensorType, match="co2"):
        sensors.process("sht31", 1, quantity="co2")


def test_grade_checks_firmware_values():
    assert sensors.grade("ds18b20", 21.5) == sensors.Processed(21.5, "°C", "good")
    assert sensors.grade("moisture", 150).quality == "bad"
    assert sensors.grade("ph", float("nan")).quality == "bad"


def test_worse_of_two_grades():
    assert sensors.worse("good", "fair") == "fair"
    assert sensors.worse("excellent", None) == "excellent"
    assert sensors.worse("error", "good") == "bad"
    assert sensors.worse("stale", "good") == "stale"


def test_third_party_library_registers_through_entry_point(monkeypatch):
    def proc(raw, cal, params, quantity):
        return sensors.Processed(raw * 2, "u", "good")

    plugin = sensors.SensorType("acme_probe", "test probe",
                                (sensors.Quantity("acme", "u", 0, 100),), proc, aliases=("ACME",))

    class EP:
        name = "acme"

        def load(self):
            return plugin

    class BrokenEP:
        name = "broken"

        def load(self):
            raise ImportError("no such module")

    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [EP(), BrokenEP()])
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "_TYPES", dict(registry._TYPES))
    monkeypatch.setattr(registry, "_NAMES", dict(registry._NAMES))
    monkeypatch.setattr(registry, "_BROKEN", {})
    assert sensors.process("acme", 21).value == 42.0
    assert "broken" in registry.broken_plugins()


def test_registering_a_taken_name_fails():
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.types()["ph"])


# calibration -------------------------------------------------------------


def test_two_point_calibration_reproduces_both_references():
    cal = two_point("ph", (2480, 4.0), (1650, 7.0))
    for raw, ref in [(2480, 4.0), (1650, 7.0)]:
        assert sensors.process("ph", raw, cal).value == pytest.approx(ref, abs=1e-5)
    cal = two_point("EC_sensor", (500, 1413.0), (3000, 12880.0))
    assert sensors.process("ec", 3000, cal).value == pytest.approx(12880.0, abs=1e-3)


def test_cmd_calibrate_prints_a_block_to_paste(capsys):
    rc = cmd_calibrate(argparse.Namespace(type="ph", points=["2480=4.0", "1650=7.0"]))
    out = capsys.readouterr().out
    assert rc == 0
    assert "calibration:\n  slope: " in out and "\n  offset: " in out
    assert "e-" not in out and "e+" not in out


@pytest.mark.parametrize(("typ", "points", "message"), [
    ("ph", ["2480=4.0"], "two"),
    ("ph", ["2480", "1650=7"], "RAW=REF"),
    ("ph", ["abc=4", "1650=7"], "numbers"),
    ("ph", ["5000=4", "1650=7"], "0..4095"),
    ("ph", ["1650=4", "1650=7"], "equal"),
    ("moisture", ["1=4", "2=7"], "no two-point"),
    ("thermocouple", ["1=4", "2=7"], "thermocouple"),
    ("ph", ["nan=4", "2=7"], "finite"),
])
def test_cmd_calibrate_bad_input_exits_2_with_a_message(capsys, typ, points, message):
    assert cmd_calibrate(SimpleNamespace(type=typ, points=points)) == 2  # type: ignore[arg-type]
    assert message in capsys.readouterr().err


def test_kaiser_calibrate_cli():
    from engine.cli import main

    assert main(["calibrate", "ec", "500=1413", "3000=12880"]) == 0
    assert main(["calibrate", "ec", "500=1413", "500=12880"]) == 2


# properties ----------------------------------------------------------------

ANY_RAW = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**70), 2**70),
                    st.text(max_size=5), st.none(), st.booleans(), st.lists(st.integers(), max_size=2))


@given(typ=st.sampled_from(sorted(registry.all_names())), raw=ANY_RAW,
       temp=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
       window=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)))
def test_process_never_raises_and_values_are_finite(typ, raw, temp, window):
    params = {k: v for k, v in (("temperature", temp), ("window", window)) if v is not None}
    p = sensors.process(typ, raw, None, params)
    assert math.isfinite(p.value)
    assert "e" not in repr(p.value).lower()
    assert p.quality in sensors.GRADES


def test_fixed_temperature_and_window_from_the_device_map():
    live = sensors.process("ec", 1000, None, {"temperature": 30.0}).value
    assert sensors.process("ec", 1000, {"temperature": 30.0}).value == live
    assert sensors.process("ec", 1000, {"temperature": 20.0}, {"temperature": 30.0}).value == live
    assert sensors.process("flow", 450, {"window": 30}).value == 2.0
