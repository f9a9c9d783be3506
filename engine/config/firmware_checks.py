"""Lint checks that depend on the El Trabajante firmware a board runs (codes K48x;
docs/lint.md).

Two firmware generations are in the field (PROTOCOL.md): ``legacy`` (late 2025) and
``current`` (2026). A device says which one it runs with ``firmware: legacy |
current | auto`` (default ``auto``: told apart at run time). These checks look at
what Kaiser will send the board (``engine.codec.config_payload``) and report what
that generation would refuse, ignore or read differently:

- K480: ``esp_id`` is not ``ESP_`` + 6 to 8 upper-case hex digits (the board's id in
  its MQTT topics: any other spelling never matches a board);
- K481: a DS18B20 without its ``onewire_address``: current firmware does not
  configure it (an error on ``current``, a warning on ``auto``, fine on ``legacy``);
- K482: an ``onewire_address`` that is not a ROM code (16 hex digits);
- K483: a sensor type the board's generation does not know (for ``auto``: one that
  neither generation knows);
- K484: on ``legacy``, two sensors on one GPIO (legacy keeps one sensor per GPIO).

The firmware facts are read from the firmware source (``El Trabajante/src``,
``models/sensor_registry.cpp`` and ``services/sensor/sensor_manager.cpp`` of each
generation), as PROTOCOL.md records them.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from engine.diagnostics import Diagnostic, Severity
from engine.model import Device, Position, Sensor

if TYPE_CHECKING:
    from engine.config.checks import _Context


class _Emit(Protocol):
    def __call__(self, code: str, severity: Severity, message: str, pos: Position, hint: str = "",
                 related: Position | None = None) -> None: ...

# --------------------------------------------------------------------------
# Codes (stable; every one is documented in docs/lint.md)

BAD_ESP_ID = "K480"
ONEWIRE_MISSING = "K481"
ONEWIRE_MALFORMED = "K482"
SENSOR_TYPE_UNKNOWN_TO_FIRMWARE = "K483"
LEGACY_SHARED_GPIO = "K484"

# --------------------------------------------------------------------------
# Firmware facts

#: the values of a device's ``firmware`` key; ``auto`` is the default
FIRMWARES: tuple[str, ...] = ("auto", "current", "legacy")

#: ``ESP_`` + 6 upper-case hex digits (the board's MAC tail; some tools use 8)
ESP_ID_RE = re.compile(r"^ESP_[0-9A-F]{6,8}$")
#: a OneWire ROM code: family code, 6-byte serial, CRC, as 16 hex digits
ROM_RE = re.compile(r"^[0-9A-Fa-f]{16}$")
#: the example the firmware's own documentation gives (onewire_utils.h)
ROM_EXAMPLE = "28FF641E8D3C0C79"

#: ``sensor_type`` names in legacy's registry (SENSOR_TYPE_MAP, legacy
#: src/models/sensor_registry.cpp at a464a94b): no whole-chip ``sht31`` / ``bmp280``,
#: no bme280, no ``soil_moisture``
LEGACY_SENSOR_TYPES = frozenset({
    "temperature_sht31", "humidity_sht31", "sht31_temp", "sht31_humidity",
    "temperature_ds18b20", "ds18b20",
    "pressure_bmp280", "temperature_bmp280", "bmp280_pressure", "bmp280_temp",
    "ph_sensor", "ph", "ec_sensor", "ec",
    "moisture",
})
#: ``sensor_type`` names in current's registry (current src/models/sensor_registry.cpp
#: at 0a9b54ff): legacy's, the whole chips sht31 / bmp280 / bme280, the bme280 values
#: and ``soil_moisture``
CURRENT_SENSOR_TYPES = LEGACY_SENSOR_TYPES | frozenset({
    "sht31", "bmp280",
    "pressure_bme280", "temperature_bme280", "humidity_bme280",
    "bme280_pressure", "bme280_temp", "bme280_humidity", "bme280",
    "soil_moisture",
})
#: types in neither registry that Kaiser's libraries expect the board to read
#: generically (PROTOCOL.md: "co2, light, flow are read generically"). Both
#: generations run the same fallback for a name their registry lacks
#: (sensor_manager.cpp, performMeasurement: "Unknown sensor type - try to infer from
#: sensor_type string"), so these are fine on either.
GENERIC_SENSOR_TYPES = frozenset({"co2", "light", "flow"})

KNOWN_SENSOR_TYPES: dict[str, frozenset[str]] = {
    "legacy": LEGACY_SENSOR_TYPES | GENERIC_SENSOR_TYPES,
    "current": CURRENT_SENSOR_TYPES | GENERIC_SENSOR_TYPES,
}


def known_to(firmware: str, sensor_type: str) -> bool:
    """Does a board of this generation know ``sensor_type`` (as Kaiser sends it)?
    ``auto``: does either generation know it."""
    wire = sensor_type.lower()
    if firmware in KNOWN_SENSOR_TYPES:
        return wire in KNOWN_SENSOR_TYPES[firmware]
    return any(wire in names for names in KNOWN_SENSOR_TYPES.values())


# --------------------------------------------------------------------------
# The check (one entry of engine.config.checks._CHECKS)


def firmware(ctx: _Context) -> None:
    """K48x over every device the loader could build (also duplicates' bodies)."""
    ctx.out.extend(device_findings((*ctx.dep.devices.values(), *ctx.gaps.devices)))


def device_findings(devices: Iterable[Device]) -> list[Diagnostic]:
    """Every K48x finding about ``devices``, each reported once."""
    out: list[Diagnostic] = []
    seen: set[tuple[str, Position, str]] = set()

    def emit(code: str, severity: Severity, message: str, pos: Position, hint: str = "",
             related: Position | None = None) -> None:
        if (code, pos, message) not in seen:
            seen.add((code, pos, message))
            out.append(Diagnostic(code, severity, message, pos, hint, related))

    for dev in devices:
        fw = dev.firmware if dev.firmware in FIRMWARES else "auto"
        if dev.esp_id and not ESP_ID_RE.match(dev.esp_id):
            emit(BAD_ESP_ID, "error",
                 f"esp_id {dev.esp_id!r} of device {dev.name!r} is not ESP_ followed by 6 to 8 "
                 "upper-case hex digits: no board would match it", dev.pos, esp_id_hint(dev.esp_id))
        for s in dev.sensors:
            _onewire(emit, dev, fw, s)
            _sensor_type(emit, fw, s)
        if fw == "legacy":
            _legacy_shared_gpio(emit, dev)
    return out


def esp_id_hint(esp_id: str) -> str:
    """``ESP_a1b2c3`` -> "upper-case hex: ESP_A1B2C3"."""
    m = re.fullmatch(r"\s*(esp)?[_\- ]?([0-9A-Fa-f]{6,8})\s*", esp_id, re.IGNORECASE)
    if m:
        fixed = f"ESP_{m.group(2).upper()}"
        if esp_id.upper() == fixed:
            return f"upper-case hex: {fixed}"
        return f"write {fixed}"
    m = re.fullmatch(r"\s*esp[_\- ]?([0-9A-Fa-f]+)\s*", esp_id, re.IGNORECASE)
    if m:
        return (f"the board's id has 6 to 8 hex digits after ESP_, this one has {len(m.group(1))}: "
                "copy it from the board's MQTT topics or its boot log")
    return "the board's id as in its MQTT topics, e.g. ESP_A1B2C3 (copy it from the boot log)"


def _onewire(emit: _Emit, dev: Device, fw: str, s: Sensor) -> None:
    addr = s.onewire_address
    if addr is not None:
        if not ROM_RE.match(addr):
            emit(ONEWIRE_MALFORMED, "error",
                 f"sensor {s.ref}: onewire_address {addr!r} is not a OneWire ROM code (16 hex digits)",
                 s.pos, rom_hint(addr))
        return
    if s.type != "ds18b20" or fw == "legacy":
        return
    add = (f"add its ROM code, 16 hex digits: onewire_address: \"{ROM_EXAMPLE}\"; current firmware "
           "lists the probes on a pin with the system command onewire/scan")
    if fw == "current":
        emit(ONEWIRE_MISSING, "error",
             f"DS18B20 sensor {s.ref} has no onewire_address: current firmware does not configure a "
             "DS18B20 without its ROM code", s.pos, add)
    else:
        emit(ONEWIRE_MISSING, "warning",
             f"DS18B20 sensor {s.ref} has no onewire_address: a board with current firmware does not "
             "configure it", s.pos, f"{add}; or say firmware: legacy on device {dev.name!r} if it runs "
             "legacy firmware")


def rom_hint(addr: str) -> str:
    """The fix for a malformed ROM code: without separators, or how long it must be."""
    bare = re.sub(r"[\s:\-.]", "", addr)
    if bare[:2].lower() == "0x":
        bare = bare[2:]
    if ROM_RE.match(bare):
        return f"write it as 16 hex digits without separators: \"{bare.upper()}\""
    if bare and re.fullmatch(r"[0-9A-Fa-f]+", bare):
        return f"a ROM code has 16 hex digits, this one has {len(bare)}"
    return f"16 hex digits 0-9 and A-F, e.g. \"{ROM_EXAMPLE}\" (a DS18B20's start with 28)"


def _sensor_type(emit: _Emit, fw: str, s: Sensor) -> None:
    if not s.type:  # unknown to Kaiser: the loader's K305
        return
    wire = s.type.lower()  # what config_payload sends as sensor_type
    if known_to(fw, wire):
        return
    if fw == "auto":
        emit(SENSOR_TYPE_UNKNOWN_TO_FIRMWARE, "warning",
             f"sensor {s.ref}: neither firmware generation knows sensor type {wire!r}", s.pos,
             "the board guesses how to read it from the name (an analog read of the pin unless the "
             "name says i2c, sht, bmp, ds18b20 or onewire)")
        return
    values = sorted(n for n in KNOWN_SENSOR_TYPES[fw] if n.startswith(f"{wire}_"))
    if values:  # a whole chip (sht31, bmp280) the legacy registry knows only by its values
        emit(SENSOR_TYPE_UNKNOWN_TO_FIRMWARE, "warning",
             f"sensor {s.ref}: {fw} firmware does not know the whole-chip sensor type {wire!r}: it "
             "reads one raw value and sends none of the chip's quantities", s.pos,
             f"{fw} firmware knows {', '.join(values)}: declare the value you need with that type, "
             f"or update the board and say firmware: current")
        return
    emit(SENSOR_TYPE_UNKNOWN_TO_FIRMWARE, "warning",
         f"sensor {s.ref}: {fw} firmware does not know sensor type {wire!r}", s.pos,
         "the board guesses how to read it from the name (an analog read of the pin unless the "
         "name says i2c, sht, bmp, ds18b20 or onewire)")


def _legacy_shared_gpio(emit: _Emit, dev: Device) -> None:
    """Legacy firmware keys its sensors by GPIO and reads no bus address: a second
    sensor on a pin replaces the first. (Without bus addresses sharing a pin is K410.)"""
    on_pin: dict[int, list[Sensor]] = defaultdict(list)
    for s in dev.sensors:
        on_pin[s.gpio].append(s)
    for gpio, sensors in on_pin.items():
        if len(sensors) < 2:
            continue
        on_bus = all(s.i2c_address is not None for s in sensors) or \
            all(s.onewire_address is not None for s in sensors)
        if not on_bus:
            continue
        first = sensors[0]
        for s in sensors[1:]:
            emit(LEGACY_SHARED_GPIO, "warning",
                 f"sensor {s.ref} shares GPIO {gpio} with {first.ref}: legacy firmware keeps one "
                 "sensor per GPIO, so the board reads only the last one configured", s.pos,
                 "give each sensor its own pin on a legacy board, or update the board and say "
                 "firmware: current", related=first.pos)
