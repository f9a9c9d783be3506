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
from engine.model import Actuator, Deployment, Device, Position, Sensor

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
# K485: a valve's second pin (valve_actuator.cpp ValveActuator::begin, both generations)


def board_dev(*items: Sensor | Actuator, firmware: str = "auto", board: str = "esp32dev") -> Device:
    return Device("north", "ESP_4A1B2C", board=board, pos=P(1), firmware=firmware,
                  sensors=tuple(i for i in items if isinstance(i, Sensor)),
                  actuators=tuple(i for i in items if isinstance(i, Actuator)))


def a(name: str, gpio: int, type_: str, line: int, **kw: object) -> Actuator:
    return Actuator("north", name, gpio, type_, pos=P(line), **kw)  # type: ignore[arg-type]


def fw_found(*devices: Device) -> list[tuple[str, str, int]]:
    """The K485-K487 findings only (K471 "no rule uses it" and the like aside)."""
    return [f for f in found(*devices) if f[0] in {"K485", "K486", "K487"}]


@pytest.mark.parametrize("firmware", fc.FIRMWARES)
def test_a_valve_whose_enable_pin_another_actuator_drives(firmware: str) -> None:
    items = (a("mist", 26, "valve", 2), a("drip", 27, "valve", 3, aux_gpio=23))
    [d] = [x for x in run_checks(Deployment(devices={"north": board_dev(*items, firmware=firmware)}))
           if x.code == "K485"]
    assert (d.severity, d.pos, d.related) == ("error", P(2), P(3))
    assert "GPIO 27" in d.message and "north.drip" in d.message and "aux_gpio" in d.hint


def test_the_enable_pin_collision_needs_no_board() -> None:
    dev_ = Device("north", "ESP_4A1B2C", pos=P(1), actuators=(a("mist", 26, "valve", 2), a("lamp", 27, "relay", 3)))
    assert fw_found(dev_) == [("K485", "error", 2)]


@pytest.mark.parametrize(("gpio", "why"), [
    (19, "esp32dev has no GPIO 20"),            # the example's fill valve
    (33, "GPIO 34 cannot drive an output"),      # input-only
    (27, "esp32dev has no GPIO 28"),
])
def test_a_valve_whose_enable_pin_is_no_output(gpio: int, why: str) -> None:
    for firmware in fc.FIRMWARES:
        [d] = [x for x in run_checks(Deployment(devices={"north": board_dev(a("v", gpio, "valve", 2),
                                                                              firmware=firmware)}))
               if x.code == "K485"]
        assert d.severity == "error" and why in d.message


def test_a_valve_with_aux_gpio_or_a_free_next_pin_is_fine() -> None:
    items = (a("mist", 26, "valve", 2, aux_gpio=19), a("drip", 27, "valve", 3, aux_gpio=23),
             a("feed", 16, "valve", 4), a("fan", 5, "relay", 5))
    for firmware in fc.FIRMWARES:
        assert fw_found(board_dev(*items, firmware=firmware)) == []


# --------------------------------------------------------------------------
# K486: the pin plan of each generation


@pytest.mark.parametrize(("item", "legacy", "current", "auto"), [
    # legacy takes its OneWire pin and the I2C pins at boot, for every kind of sensor
    (s("t", 4, "ds18b20", 2, onewire_address="28FF641E8516034A"), "error", None, None),
    (s("c", 21, "sht31_temp", 2, i2c_address=0x44), "error", None, None),
    (s("c", 22, "sht31", 2, i2c_address=0x44), "error", None, None),
    # ... and has no 34-39; current reads 34, 35, 36, 39, neither 37 or 38
    (s("soil", 34, "moisture", 2), "error", None, None),
    (s("soil", 39, "ph", 2), "error", None, None),
    (s("soil", 37, "moisture", 2), "error", "error", "error"),
    # current takes no pin for the chips its registry reads over I2C, but every other
    # type needs its own: light, co2, flow, analog probes and DS18B20s on the bus pins
    (s("l", 21, "light", 2, i2c_address=0x23), "error", "error", "error"),
    (s("l", 22, "co2", 2), "error", "error", "error"),
    (s("t", 21, "ds18b20", 2, onewire_address="28FF641E8516034A"), "error", "error", "error"),
    # fine on both
    (s("t", 14, "ds18b20", 2, onewire_address="28FF641E8516034A"), None, None, None),
    (s("soil", 32, "moisture", 2), None, None, None),
    (s("l", 23, "light", 2), None, None, None),
    # actuators: the I2C pins in both generations, legacy's OneWire pin
    (a("fan", 21, "relay", 2), "error", "error", "error"),
    (a("fan", 4, "relay", 2), "error", None, None),
    (a("v", 16, "valve", 2, aux_gpio=22), "error", "error", "error"),
    (a("fan", 5, "relay", 2), None, None, None),
])
def test_the_pin_plan_by_generation(item: Sensor | Actuator, legacy: str | None, current: str | None,
                                    auto: str | None) -> None:
    for firmware, want in (("legacy", legacy), ("current", current), ("auto", auto)):
        got = fw_found(board_dev(item, firmware=firmware))
        assert got == ([("K486", want, 2)] if want else []), firmware


def test_on_auto_what_only_current_refuses_is_a_warning() -> None:
    """auto: a warning when current firmware refuses an item (as for K481), nothing
    when only legacy does (the documented pin plan, DS18B20 on 4 and chips on 21, is
    current's), an error when both do."""
    probes = (s("air", 14, "ds18b20", 2, onewire_address="28FF641E8516034A"),
              s("soil", 27, "ds18b20", 3, onewire_address="28FF0B2A91160577"))
    [d] = [x for x in run_checks(Deployment(devices={"north": board_dev(*probes)})) if x.code == "K486"]
    assert (d.severity, d.pos, d.related) == ("warning", P(3), P(2))
    assert "single OneWire bus, on GPIO 14" in d.message and "firmware: legacy" in d.hint
    assert fw_found(board_dev(*probes, firmware="legacy")) == []
    assert fw_found(board_dev(*probes, firmware="current")) == [("K486", "error", 3)]


def test_the_hints_say_how_legacy_reads_its_buses() -> None:
    probe = s("t", 4, "ds18b20", 2, onewire_address="28FF641E8516034A")
    [d] = run_checks(Deployment(devices={"north": board_dev(probe, firmware="legacy")}))
    assert "OneWire bus" in d.message and "keep the probe wired to GPIO 4" in d.hint
    chip = s("c", 21, "sht31_temp", 2, i2c_address=0x44)
    [d] = run_checks(Deployment(devices={"north": board_dev(chip, firmware="legacy")}))
    assert "I2C chips included" in d.message and "without i2c_address" in d.hint
    light = s("l", 21, "light", 2)
    [d] = run_checks(Deployment(devices={"north": board_dev(light, firmware="current")}))
    assert "does not read 'light' over I2C" in d.message and d.hint.startswith("move it to a free pin: ")
    assert "21" not in d.hint.split(": ")[1].split(", ")


def test_no_board_no_pin_plan() -> None:
    items = (s("t", 4, "ds18b20", 2), s("l", 21, "light", 3), a("fan", 22, "relay", 4))
    for firmware in fc.FIRMWARES:
        dev_ = Device("north", "ESP_4A1B2C", pos=P(1), firmware=firmware, sensors=items[:2], actuators=items[2:])
        assert fw_found(dev_) == []


def test_a_pin_legacy_refuses_gets_no_shared_gpio_warning() -> None:
    """Two probes on GPIO 4 of a legacy esp32dev: neither is configured (K486), so
    "the board reads only the last one" (K484) would be wrong."""
    probes = (s("a", 4, "ds18b20", 2, onewire_address="28FF641E8516034A"),
              s("b", 4, "ds18b20", 3, onewire_address="28FF0B2A91160577"))
    assert found(board_dev(*probes, firmware="legacy")) == [("K486", "error", 2), ("K486", "error", 3)]


# --------------------------------------------------------------------------
# K487: current firmware on a XIAO ESP32-C3


@pytest.mark.parametrize(("firmware", "want"), [("current", "error"), ("auto", "warning"), ("legacy", None)])
def test_current_firmware_on_a_xiao_receives_no_config(firmware: str, want: str | None) -> None:
    dev_ = board_dev(a("fan", 7, "relay", 2), firmware=firmware, board="xiao_esp32c3")
    diags = [x for x in run_checks(Deployment(devices={"north": dev_})) if x.code == "K487"]
    assert [(x.severity, x.pos) for x in diags] == ([(want, P(1))] if want else [])
    for x in diags:
        assert "QoS 2" in x.message and "config" in x.message and "firmware: legacy" in x.hint


# --------------------------------------------------------------------------
# Lint and the firmware twins agree


def _twin_refusals(device: Device, generation: str) -> list[tuple[str, str]]:
    from engine.demo import provisioning_config
    from engine.firmware import new_board

    twin = new_board(generation, device.esp_id, board_kind=device.board or "esp32dev", now=1_796_000_000)
    twin.provision(provisioning_config(device, generation), 1_796_000_000)
    # legacy answers an error for an empty sensors/actuators half: not about an item
    return [r for r in twin.refusals if "MISSING_FIELD" not in r[1]]


PIN_CASES = sorted(p for p in (REPO / "tests" / "golden").glob("*.yaml")
                   if re.search(r"expect: K48[56] ", p.read_text(encoding="utf-8")))


@pytest.mark.parametrize("case", PIN_CASES, ids=lambda p: p.name)
def test_a_pin_lint_refuses_the_twin_refuses(case: Path) -> None:
    """Every K485/K486 golden case: a twin of the generation lint found refusing,
    provisioned with the device's config, refuses an item too."""
    deployment, diags = lint(case)
    for d in (x for x in diags if x.code in {"K485", "K486"}):
        dev_ = next(v for v in deployment.devices.values() if v.pos.file == d.pos.file and any(
            i.pos == d.pos for i in (*v.sensors, *v.actuators)))
        gens = [dev_.firmware] if dev_.firmware in fc.GENERATIONS else \
            (list(fc.GENERATIONS) if d.severity == "error" else ["current"])
        for gen in gens:
            assert _twin_refusals(dev_, gen), (case.name, gen)


@pytest.mark.parametrize("case", [REPO / "rules", *sorted((REPO / "tests" / "golden").glob("*.good.yaml"))],
                         ids=lambda p: p.name)
def test_what_lint_passes_the_twin_takes(case: Path) -> None:
    """A clean device map with a board and a generation: its twin refuses nothing
    (kaiser demo runs these twins)."""
    deployment, diags = lint(case, tz="Europe/Berlin")
    assert not [x for x in diags if x.is_error]
    for dev_ in deployment.devices.values():
        if dev_.board and dev_.firmware in fc.GENERATIONS:
            assert _twin_refusals(dev_, dev_.firmware) == [], dev_.name


def _pins(header: str, name: str) -> set[int]:
    body = header.split(f"{name}[] = {{", 1)[1].split("};", 1)[0]
    return {int(x) for x in re.findall(r"^\s*(\d+(?:\s*,\s*\d+)*)", re.sub(r"//[^\n]*", "", body), re.M)
            for x in re.findall(r"\d+", x)}


def _const(header: str, name: str) -> int:
    return int(re.search(rf"{name}\s*=\s*(\d+)", header).group(1))  # type: ignore[union-attr]


@pytest.mark.skipif(not FW.is_dir(), reason="firmware sources not on this machine")
@pytest.mark.parametrize("generation", ["legacy", "current"])
@pytest.mark.parametrize(("kind", "header"), [("esp32dev", "esp32_dev.h"), ("xiao_esp32c3", "xiao_esp32c3.h")])
def test_the_pin_tables_are_the_firmwares_own(generation: str, kind: str, header: str) -> None:
    from engine.firmware.hardware import spec

    text = (FW / generation / "El Trabajante/src/config/hardware" / header).read_text(encoding="utf-8")
    sp = spec(generation, kind)
    assert _pins(text, "SAFE_GPIO_PINS") == set(sp.safe)
    assert _pins(text, "RESERVED_GPIO_PINS") == set(sp.reserved)
    assert (_const(text, "I2C_SDA_PIN"), _const(text, "I2C_SCL_PIN")) == sp.i2c_pins
    assert _const(text, "DEFAULT_ONEWIRE_PIN") == sp.onewire_pin
    assert set(fc.boot_pins(generation, kind)) == {*sp.i2c_pins, *([sp.onewire_pin] if generation == "legacy" else [])}


@pytest.mark.skipif(not FW.is_dir(), reason="firmware sources not on this machine")
@pytest.mark.parametrize("generation", ["legacy", "current"])
def test_the_firmware_facts_behind_k485_to_k487(generation: str) -> None:
    src = FW / generation / "El Trabajante/src"
    valve = (src / "services/actuator/actuator_drivers/valve_actuator.cpp").read_text(encoding="utf-8")
    assert "(config_.aux_gpio != 255) ? config_.aux_gpio : static_cast<uint8_t>(config_.gpio + 1)" in valve
    assert valve.count("requestPin(") == 2
    gpio = (src / "drivers/gpio_manager.cpp").read_text(encoding="utf-8")
    assert 'requestPin(HardwareConfig::I2C_SDA_PIN, "system"' in gpio
    sensors = (src / "services/sensor/sensor_manager.cpp").read_text(encoding="utf-8")
    main_cpp = (src / "main.cpp").read_text(encoding="utf-8", errors="replace")
    if generation == "legacy":
        assert "oneWireBusManager.begin()" in main_cpp  # the OneWire pin, taken at boot
        assert "is_i2c_sensor" not in sensors  # every sensor asks for its pin
    else:
        assert "oneWireBusManager.begin()" not in main_cpp
        assert "// Add I2C sensor (NO GPIO reservation!)" in sensors
        assert "Single-Bus Check" in sensors
        subscribe = main_cpp.split("void subscribeToAllTopics() {", 1)[1].split("\n}", 1)[0]
        assert "buildConfigTopic(), 2" in subscribe and "buildBroadcastEmergencyTopic(), 2" in subscribe
        client = (src / "services/communication/mqtt_client.h").read_text(encoding="utf-8")
        assert "MQTT_USE_PUBSUBCLIENT=1" in client and "seeed" in client


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
    assert codes == {"K480", "K481", "K482", "K483", "K484", "K485", "K486", "K487"}
    docs = (REPO / "docs" / "lint.md").read_text(encoding="utf-8")
    golden = " ".join(p.read_text(encoding="utf-8") for p in (REPO / "tests" / "golden").rglob("*.yaml"))
    assert {c for c in codes if f"| {c} |" not in docs} == set()
    assert {c for c in codes if f"expect: {c}" not in golden} == set()


def test_the_example_runs_both_generations() -> None:
    deployment, diags = lint(REPO / "rules", tz="Europe/Berlin")
    assert diags == []
    devices = deployment.devices.values()
    assert {d.firmware for d in devices} == {"legacy", "current"}
    assert all(x.onewire_address for d in devices for x in d.sensors if x.type == "ds18b20")
    assert any(d.emergency_token_env for d in devices)
