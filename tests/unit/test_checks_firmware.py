"""The device map's firmware generation (``firmware: legacy | current | auto``), the
per-board emergency token's variable, and the K48x checks of
``engine.config.firmware_checks`` (docs/lint.md, "K48x: the board's firmware")."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from engine.config import firmware_checks as fc
from engine.config.checks import run_checks
from engine.config.lint import lint
from engine.diagnostics import Diagnostic
from engine.model import Deployment, Device, Position, Sensor

REPO = Path(__file__).resolve().parents[2]
FW = Path("/work/fw")


def P(line: int, col: int = 1) -> Position:
    return Position("t.yaml", line, col)


def dev(*sensors: Sensor, firmware: str = "auto", esp_id: str = "ESP_4A1B2C") -> Device:
    return Device("north", esp_id, sensors=sensors, pos=P(1), firmware=firmware)


def s(name: str, gpio: int, type_: str, line: int, **kw: object) -> Sensor:
    return Sensor("north", name, gpio, type_, pos=P(line), **kw)  # type: ignore[arg-type]


def found(*devices: Device) -> list[tuple[str, str, int]]:
    diags = run_checks(Deployment(devices={d.name: d for d in devices}))
    return [(d.code, d.severity, d.pos.line) for d in diags]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "devices.yaml"
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


# --------------------------------------------------------------------------
# K480: esp_id


@pytest.mark.parametrize(("esp_id", "hint"), [
    ("ESP_a1b2c3", "upper-case hex: ESP_A1B2C3"),
    ("esp_a1b2c3d4", "upper-case hex: ESP_A1B2C3D4"),
    ("A1B2C3", "write ESP_A1B2C3"),
    ("ESP-A1B2C3", "write ESP_A1B2C3"),
    ("ESP_0001", "the board's id has 6 to 8 hex digits after ESP_, this one has 4"),
    ("ESP_A1B2C3D4E", "the board's id has 6 to 8 hex digits after ESP_, this one has 9"),
    ("north-board", "the board's id as in its MQTT topics, e.g. ESP_A1B2C3"),
])
def test_esp_id_spelling_is_an_error_with_the_fix(esp_id: str, hint: str) -> None:
    [d] = run_checks(Deployment(devices={"north": dev(esp_id=esp_id)}))
    assert (d.code, d.severity, d.pos) == ("K480", "error", P(1))
    assert hint in d.hint and esp_id in d.message


@pytest.mark.parametrize("esp_id", ["ESP_A1B2C3", "ESP_00A1B2C3", "ESP_12AB34C"])
def test_six_to_eight_upper_case_hex_digits_are_fine(esp_id: str) -> None:
    assert found(dev(esp_id=esp_id)) == []


def test_a_missing_esp_id_is_the_loaders_finding_only() -> None:
    assert found(dev(esp_id="")) == []


# --------------------------------------------------------------------------
# K481 / K482: DS18B20 ROM codes


@pytest.mark.parametrize(("firmware", "expected"), [
    ("current", [("K481", "error", 2)]),
    ("auto", [("K481", "warning", 2)]),
    ("legacy", []),
])
def test_ds18b20_without_rom_code_by_generation(firmware: str, expected: list[tuple[str, str, int]]) -> None:
    assert found(dev(s("t", 4, "ds18b20", 2), firmware=firmware)) == expected


def test_other_sensors_need_no_rom_code() -> None:
    assert found(dev(s("soil", 34, "moisture", 2), firmware="current")) == []


@pytest.mark.parametrize(("addr", "hint"), [
    ("28:FF:64:1E:8D:3C:0C:79", 'without separators: "28FF641E8D3C0C79"'),
    ("28-ff-64-1e-8d-3c-0c-79", 'without separators: "28FF641E8D3C0C79"'),
    ("0x28FF641E8D3C0C79", 'without separators: "28FF641E8D3C0C79"'),
    ("28FF641E8D3C0C", "a ROM code has 16 hex digits, this one has 14"),
    ("28FF641E8D3C0C79AA", "this one has 18"),
    ("north probe", "16 hex digits 0-9 and A-F"),
])
def test_malformed_rom_code_is_an_error_everywhere(addr: str, hint: str) -> None:
    for firmware in fc.FIRMWARES:
        [d] = run_checks(Deployment(devices={"north": dev(s("t", 4, "ds18b20", 2, onewire_address=addr),
                                                          firmware=firmware)}))
        assert (d.code, d.severity) == ("K482", "error")
        assert hint in d.hint


def test_rom_codes_in_the_yaml_are_sent_in_upper_case(tmp_path: Path) -> None:
    p = write(tmp_path, """\
        devices:
          north:
            esp_id: ESP_4A1B2C
            firmware: current
            sensors:
              t: {gpio: 4, type: DS18B20, onewire_address: "28ff641e8d3c0c79"}
              u: {gpio: 4, type: DS18B20, onewire_address: 2800000012345678}
        """)
    deployment, diags = lint(p)
    assert diags == []
    assert [x.onewire_address for x in deployment.devices["north"].sensors] == [
        "28FF641E8D3C0C79", "2800000012345678"]


# --------------------------------------------------------------------------
# K483: sensor types per generation


@pytest.mark.parametrize(("firmware", "type_", "warned"), [
    ("legacy", "sht31", True),        # legacy's registry knows the values, not the chip
    ("legacy", "bmp280", True),
    ("legacy", "sht31_humidity", False),
    ("legacy", "bmp280_pressure", False),
    ("legacy", "ds18b20", False),
    ("legacy", "moisture", False),
    ("legacy", "co2", False),         # read generically by both generations
    ("legacy", "light", False),
    ("legacy", "flow", False),
    ("current", "sht31", False),
    ("current", "bmp280", False),
    ("current", "co2", False),
    ("auto", "sht31", False),         # auto: only what neither generation knows
    ("auto", "scd41", True),          # a third-party library's type
    ("current", "scd41", True),
    ("legacy", "scd41", True),
])
def test_sensor_types_the_generation_does_not_know(firmware: str, type_: str, warned: bool) -> None:
    got = found(dev(s("x", 21, type_, 2, i2c_address=0x44), firmware=firmware))
    assert got == ([("K483", "warning", 2)] if warned else [])


def test_whole_chip_hint_names_the_values_legacy_knows() -> None:
    [d] = run_checks(Deployment(devices={"north": dev(s("climate", 21, "sht31", 2, i2c_address=0x44),
                                                      firmware="legacy")}))
    assert "'sht31'" in d.message and "sht31_humidity, sht31_temp" in d.hint


def test_no_builtin_type_is_unknown_to_current_firmware() -> None:
    """Every name Kaiser can send for a built-in library (config_payload sends the
    model's canonical type in lower case) is one current firmware takes."""
    from sensors import registry

    sent = set()
    for st in registry.types().values():
        sent.add(st.name)
        for q in st.quantities:
            sent.update(w.lower() for w in q.wire_types[:1])
    assert sent and {t for t in sent if not fc.known_to("current", t)} == set()
    assert {t for t in sent if not fc.known_to("legacy", t)} == {"sht31", "bmp280"}


def _registry(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    table = text.split("SENSOR_TYPE_MAP[] = {", 1)[1].split("};", 1)[0]
    return set(re.findall(r'\{\s*"([a-z0-9_]+)"\s*,', table))


@pytest.mark.skipif(not FW.is_dir(), reason="firmware sources not on this machine")
def test_registries_are_the_firmwares_own() -> None:
    legacy = _registry(FW / "legacy/El Trabajante/src/models/sensor_registry.cpp")
    current = _registry(FW / "current/El Trabajante/src/models/sensor_registry.cpp")
    assert legacy == fc.LEGACY_SENSOR_TYPES
    assert current == fc.CURRENT_SENSOR_TYPES
    assert not fc.GENERIC_SENSOR_TYPES & (legacy | current)


# --------------------------------------------------------------------------
# K484: legacy keeps one sensor per GPIO


def test_legacy_warns_on_a_shared_bus_pin() -> None:
    probes = (s("a", 4, "ds18b20", 2, onewire_address="28FF641E8516034A"),
              s("b", 4, "ds18b20", 3, onewire_address="28FF0B2A91160577"))
    chips = (s("c", 21, "sht31_temp", 4, i2c_address=0x44), s("d", 21, "bmp280_pressure", 5, i2c_address=0x76))
    assert found(dev(*probes, *chips, firmware="legacy")) == [("K484", "warning", 3), ("K484", "warning", 5)]
    assert found(dev(*probes, *chips, firmware="current")) == []


def test_a_shared_pin_without_bus_addresses_is_k410_only() -> None:
    got = found(dev(s("a", 4, "ds18b20", 2), s("b", 4, "ds18b20", 3), firmware="legacy"))
    assert got == [("K410", "error", 3)]


# --------------------------------------------------------------------------
# The loader: firmware, emergency_token_env, no secrets in the YAML


def test_firmware_and_token_env_reach_the_model(tmp_path: Path) -> None:
    p = write(tmp_path, """\
        devices:
          north: {esp_id: ESP_4A1B2C, firmware: legacy, emergency_token_env: KAISER_NORTH_TOKEN}
          south: {esp_id: ESP_7C3D9E, firmware: Current}
          east:  {esp_id: ESP_0A0B0C}
        """)
    deployment, diags = lint(p)
    assert diags == []
    d = deployment.devices
    assert (d["north"].firmware, d["north"].emergency_token_env) == ("legacy", "KAISER_NORTH_TOKEN")
    assert (d["south"].firmware, d["east"].firmware, d["east"].emergency_token_env) == ("current", "auto", None)


def one(diags: list[Diagnostic]) -> Diagnostic:
    assert len(diags) == 1, [x.text() for x in diags]
    return diags[0]


def test_firmware_typo_says_did_you_mean(tmp_path: Path) -> None:
    d = one(lint(write(tmp_path, "devices:\n  n: {esp_id: ESP_4A1B2C, firmware: curent}\n"))[1])
    assert (d.code, d.hint) == ("K204", "did you mean 'current'?")


@pytest.mark.parametrize("key", ["emergency_token", "token", "auth_token", "Token", "esp_token", "password",
                                 "api_key", "secret"])
def test_a_token_in_the_yaml_is_an_error_that_never_repeats_it(tmp_path: Path, key: str) -> None:
    d = one(lint(write(tmp_path, f"devices:\n  north: {{esp_id: ESP_4A1B2C, {key}: s3cr3t-9f2c}}\n"))[1])
    assert (d.code, d.pos.line, d.severity) == ("K209", 2, "error")
    assert "emergency_token_env: KAISER_NORTH_TOKEN" in d.hint
    assert "s3cr3t" not in d.text()


def test_a_misspelt_token_env_key_is_an_unknown_key_not_a_secret(tmp_path: Path) -> None:
    d = one(lint(write(tmp_path, "devices:\n  n: {esp_id: ESP_4A1B2C, emergency_token_evn: X}\n"))[1])
    assert (d.code, d.hint) == ("K201", "did you mean 'emergency_token_env'?")


@pytest.mark.parametrize(("value", "hint"), [
    ("kaiser_north_token", "write the name in upper case"),
    ("9f2c4e71d0aa", "upper-case letters, digits and '_'"),
    ("KAISER-NORTH", "upper-case letters, digits and '_'"),
    ("''", "upper-case letters, digits and '_'"),
])
def test_token_env_must_name_a_variable_and_is_not_repeated(tmp_path: Path, value: str, hint: str) -> None:
    d = one(lint(write(tmp_path, f"devices:\n  n: {{esp_id: ESP_4A1B2C, emergency_token_env: {value}}}\n"))[1])
    assert d.code == "K204" and hint in d.hint
    assert value.strip("'") not in d.text() or not value.strip("'")


# --------------------------------------------------------------------------
# Docs and goldens


def test_every_firmware_code_is_documented_and_has_a_golden_case() -> None:
    codes = {v for k, v in vars(fc).items() if k.isupper() and isinstance(v, str) and re.fullmatch(r"K4\d\d", v)}
    assert codes == {"K480", "K481", "K482", "K483", "K484"}
    docs = (REPO / "docs" / "lint.md").read_text(encoding="utf-8")
    golden = " ".join(p.read_text(encoding="utf-8") for p in (REPO / "tests" / "golden").rglob("*.yaml"))
    assert {c for c in codes if f"| {c} |" not in docs} == set()
    assert {c for c in codes if f"expect: {c}" not in golden} == set()


def test_the_example_runs_both_generations() -> None:
    deployment, diags = lint(REPO / "rules", tz="Europe/Berlin")
    assert diags == []
    devices = deployment.devices.values()
    assert {d.firmware for d in devices} == {"legacy", "current", "auto"}
    assert all(x.onewire_address for d in devices for x in d.sensors if x.type == "ds18b20")
    assert any(d.emergency_token_env for d in devices)
