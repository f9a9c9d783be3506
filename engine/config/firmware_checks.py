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
- K484: on ``legacy``, two sensors on one GPIO (legacy keeps one sensor per GPIO);
- K485: a valve without ``aux_gpio`` whose second pin (gpio + 1, the valve driver's
  enable pin) is not a free output pin: both generations refuse the valve;
- K486: a sensor or actuator on a pin the generation's pin plan refuses: the pins it
  takes at boot (I2C in both, legacy's OneWire pin), pins outside its safe list
  (legacy esp32dev: 34-39), and current's single OneWire bus;
- K487: current firmware on a XIAO ESP32-C3: its QoS 2 subscriptions fail, so config,
  commands and the broadcast stop never arrive.

Severity: an error when every generation the board may run refuses the item (the
one it names, or both for ``auto``); on ``auto`` a warning when current firmware
refuses it, nothing when only legacy does (as for K481 and K483).

The firmware facts are read from the firmware source (``El Trabajante/src``,
``models/sensor_registry.cpp``, ``services/sensor/sensor_manager.cpp``,
``drivers/gpio_manager.cpp``, ``config/hardware/*.h``, ``valve_actuator.cpp`` of each
generation); the pin tables and the sensor registry are the firmware twin's
(``engine.firmware.hardware``), so lint and the twins share one reading of them.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from engine.config.boards import ANALOG_TYPES, Board, board, pin_ranges
from engine.diagnostics import Diagnostic, Severity
from engine.firmware.hardware import BOARD_KINDS, capability, spec
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
VALVE_ENABLE_PIN = "K485"
PIN_REFUSED = "K486"
NO_QOS2_SUBSCRIPTIONS = "K487"

# --------------------------------------------------------------------------
# Firmware facts

#: the values of a device's ``firmware`` key; ``auto`` is the default
FIRMWARES: tuple[str, ...] = ("auto", "current", "legacy")
#: the generations in the field; ``auto`` may be either
GENERATIONS: tuple[str, ...] = ("legacy", "current")

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
        b = board(dev.board)
        if fw == "legacy":
            _legacy_shared_gpio(emit, dev, b if b is not None and b.name in BOARD_KINDS else None)
        if b is not None and b.name in BOARD_KINDS:  # no board, no pin checks (an unknown one is K417)
            _pin_plan(emit, dev, fw, b)
            _xiao_subscriptions(emit, dev, fw, b)
        _valve_enable_pins(emit, dev, fw, b if b is not None and b.name in BOARD_KINDS else None)
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


def _legacy_shared_gpio(emit: _Emit, dev: Device, b: Board | None) -> None:
    """Legacy firmware keys its sensors by GPIO and reads no bus address: a second
    sensor on a pin replaces the first. (Without bus addresses sharing a pin is K410;
    on a pin legacy refuses altogether, none is configured: K486.)"""
    on_pin: dict[int, list[Sensor]] = defaultdict(list)
    for s in dev.sensors:
        on_pin[s.gpio].append(s)
    refused = set(boot_pins("legacy", b.name)) | (set(range(40)) - set(spec("legacy", b.name).safe)) \
        if b is not None else set()
    for gpio, sensors in on_pin.items():
        if len(sensors) < 2 or gpio in refused:
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


# --------------------------------------------------------------------------
# K485-K487: pins and transport (the firmware twin's hardware tables)
#
# A reason is (why, fix): why a generation refuses the item, a clause in which WHO
# stands for the generation ("legacy firmware"; "each firmware generation" when both
# refuse it for the same reason), and what to write instead.

_Reason = tuple[str, str]
WHO = "\x00who\x00"


def _generations(fw: str) -> tuple[str, ...]:
    return (fw,) if fw in GENERATIONS else GENERATIONS


def boot_pins(generation: str, kind: str) -> dict[int, str]:
    """Pins the firmware takes at boot, before any config arrives -> what for.

    Both generations: the I2C pins (``drivers/gpio_manager.cpp``
    ``GPIOManager::initializeAllPinsToSafeMode`` requests SDA and SCL as "system").
    Legacy also its OneWire pin (``main.cpp`` ``setup()`` runs
    ``OneWireBusManager::begin()``, which requests ``DEFAULT_ONEWIRE_PIN``); current
    starts its OneWire bus only for its first DS18B20
    (``SensorManager::configureSensor``, "OneWire bus will reserve it")."""
    sp = spec(generation, kind)
    taken = {sp.i2c_pins[0]: "I2C bus", sp.i2c_pins[1]: "I2C bus"}
    if generation == "legacy":
        taken[sp.onewire_pin] = "OneWire bus"
    return taken


def _used(dev: Device) -> dict[int, tuple[str, Position]]:
    """gpio -> (who has it, where), in device map order: sensors, actuators, aux pins."""
    used: dict[int, tuple[str, Position]] = {}
    for s in dev.sensors:
        used.setdefault(s.gpio, (f"sensor {s.ref} reads it", s.pos))
    for a in dev.actuators:
        used.setdefault(a.gpio, (f"actuator {a.ref} drives it", a.pos))
    for a in dev.actuators:
        if a.aux_gpio is not None:
            used.setdefault(a.aux_gpio, (f"actuator {a.ref} uses it as its aux_gpio", a.pos))
    return used


def _taken_pins(dev: Device) -> set[int]:
    """Every pin an item of ``dev`` holds, valves' implicit enable pins included."""
    pins = set(_used(dev))
    pins.update(a.gpio + 1 for a in dev.actuators if a.type == "valve" and a.aux_gpio is None)
    return pins


def _free(generation: str, b: Board, dev: Device, *, output: bool, adc: bool = False) -> str:
    """The pins still free for a new item on this board, as people write them."""
    sp = spec(generation, b.name)
    free = set(sp.safe) - set(boot_pins(generation, b.name)) - _taken_pins(dev)
    if output:
        free -= set(sp.input_only)
    if adc and b.adc:
        free &= b.adc
    return pin_ranges(sorted(free)) if free else "none left"


def _judge(emit: _Emit, code: str, dev: Device, fw: str, subject: str, pos: Position,
           reasons: dict[str, _Reason | None], related: Position | None = None) -> None:
    """One finding from what each generation the board may run makes of an item:
    an error when all of them refuse it; on ``auto``, a warning when current
    firmware refuses it and nothing when only legacy does (lint's ``auto`` policy,
    as for K481 and K483: the documented pin plan, a DS18B20 on the OneWire pin and
    chips on the I2C pins, is current's; say ``firmware: legacy`` for legacy's)."""
    gens = _generations(fw)
    refused = {g: r for g, r in reasons.items() if g in gens and r is not None}
    if not refused:
        return

    def who(why: str, gen: str) -> str:
        return why.replace(WHO, f"{gen} firmware")

    if len(refused) == len(gens):
        whys = {why for why, _ in refused.values()}
        fixes = {fix for _, fix in refused.values()}
        if len(whys) == 1:
            generation = f"{gens[0]} firmware" if len(gens) == 1 else "each firmware generation"
            message = f"{subject}: {next(iter(whys)).replace(WHO, generation)}"
        else:
            message = f"{subject}: neither firmware generation takes it " \
                      f"({'; '.join(who(w, g) for g, (w, _) in refused.items())})"
        hint = next(iter(fixes)) if len(fixes) == 1 else "; ".join(f"on {g}: {f}" for g, (_, f) in refused.items())
        emit(code, "error", message, pos, hint, related=related)
        return
    if "current" not in refused:
        return
    [(gen, (why, fix))] = refused.items()
    other = next(g for g in gens if g != gen)
    emit(code, "warning", f"{subject}: a board with {gen} firmware refuses it ({who(why, gen)})", pos,
         f"{fix}; or say firmware: {other} on device {dev.name!r} if it runs {other} firmware",
         related=related)


def _pin_plan(emit: _Emit, dev: Device, fw: str, b: Board) -> None:
    """K486: sensors and actuators on pins a generation's pin plan refuses."""
    for s in dev.sensors:
        if not s.type or s.gpio in b.reserved or not b.known(s.gpio):
            continue  # K305 / K412 / K414
        reasons = {g: _sensor_pin(g, b, dev, s) for g in GENERATIONS}
        _judge(emit, PIN_REFUSED, dev, fw, f"sensor {s.ref} on GPIO {s.gpio}", s.pos, reasons)
    _current_onewire_bus(emit, dev, fw, b)
    for a in dev.actuators:
        for gpio, what in ((a.gpio, f"actuator {a.ref}"), (a.aux_gpio, f"actuator {a.ref} (aux_gpio)")):
            if gpio is None or gpio in b.reserved or not b.known(gpio) or gpio in b.input_only:
                continue  # K412 / K413 / K414
            reasons = {g: _output_pin(g, b, dev, gpio) for g in GENERATIONS}
            _judge(emit, PIN_REFUSED, dev, fw, f"{what} on GPIO {gpio}", a.pos, reasons)


def _is_chip(s: Sensor) -> bool:
    """An I2C chip (current's registry has every one legacy knows, and the whole chips)."""
    cap = capability("current", s.type)
    return cap is not None and cap.i2c


def _sensor_pin(gen: str, b: Board, dev: Device, s: Sensor) -> _Reason | None:
    """Does ``gen`` configure sensor ``s`` on its pin? Sources: legacy
    ``SensorManager::configureSensor`` asks ``GPIOManager::isPinAvailable`` and
    ``requestPin`` for every sensor, whatever its kind; current
    ``SensorManager::configureSensor`` takes no pin for a type its registry reads
    over I2C, starts its OneWire bus on a DS18B20's pin, and asks for the pin of
    every other type (analog probes and the generic co2, light, flow)."""
    sp = spec(gen, b.name)
    if gen == "current" and _is_chip(s):
        return None
    taken = boot_pins(gen, b.name).get(s.gpio)
    free = _free(gen, b, dev, output=False)
    move = f"move it to a free pin: {free}"
    if taken is not None:
        why = f"{WHO} takes GPIO {s.gpio} for its {taken} at boot"
        if gen == "legacy" and s.type == "ds18b20" and taken == "OneWire bus":
            return (f"{why} and refuses a sensor item there", "legacy firmware reads every DS18B20 over that bus, "
                    f"whatever gpio the item names: keep the probe wired to GPIO {s.gpio} and give the item a free "
                    f"pin as its key ({free})")
        if gen == "legacy" and _is_chip(s) and taken == "I2C bus":
            drop = ", without i2c_address (legacy reads none)" if s.i2c_address is not None else ""
            return (f"{why} and refuses a sensor item there, I2C chips included",
                    "legacy firmware reads its I2C chips over the bus, whatever gpio the item names: keep the chip "
                    f"on the bus and give the item a free pin as its key ({free}){drop}")
        if gen == "current" and s.type == "ds18b20":
            return f"{why}, and a DS18B20 needs its pin for the OneWire bus", move
        if gen == "current":
            return (f"{why}; its sensor registry does not read {s.type!r} over I2C, so a {s.type} sensor needs "
                    "a pin of its own", move)
        return f"{why} and refuses a sensor item there", move
    if s.gpio not in sp.safe:
        why = f"{WHO} configures no sensor on GPIO {s.gpio} of {b.name} (its pins: " \
              f"{pin_ranges(sorted(sp.safe))})"
        fix = f"move it to a free ADC1 pin: {_free(gen, b, dev, output=False, adc=True)}" \
            if s.type in ANALOG_TYPES and b.adc else move
        if gen == "legacy" and b.name == "esp32dev":
            fix += " (current firmware also reads 34, 35, 36 and 39)"
        return why, fix
    return None


def _output_pin(gen: str, b: Board, dev: Device, gpio: int) -> _Reason | None:
    """Does ``gen`` drive an output on ``gpio``? The actuator drivers' ``begin``
    (``pump_actuator.cpp``, ``valve_actuator.cpp``, ``pwm_controller.cpp``) call
    ``GPIOManager::requestPin``, which refuses a pin with an owner: the pins taken at
    boot included."""
    taken = boot_pins(gen, b.name).get(gpio)
    if taken is None:
        return None
    return (f"{WHO} takes GPIO {gpio} for its {taken} at boot and refuses an actuator there",
            f"move it to a free output pin: {_free(gen, b, dev, output=True)}")


def _current_onewire_bus(emit: _Emit, dev: Device, fw: str, b: Board) -> None:
    """Current firmware runs one OneWire bus, on the pin of the first DS18B20 it
    configures (``SensorManager::configureSensor``, "Single-Bus Check"): a DS18B20 on
    another pin is refused. Legacy reads every DS18B20 over its bus on the default pin."""
    probes = [s for s in dev.sensors if s.type == "ds18b20" and b.known(s.gpio) and s.gpio not in b.reserved]
    usable = [s for s in probes if _sensor_pin("current", b, dev, s) is None]
    if not usable:
        return
    first = usable[0]
    for s in usable[1:]:
        if s.gpio == first.gpio:
            continue
        reason = (f"current firmware runs a single OneWire bus, on GPIO {first.gpio} for sensor {first.ref}, and "
                  "refuses a DS18B20 on any other pin",
                  f"put every DS18B20 of this board on GPIO {first.gpio}, each with its onewire_address")
        _judge(emit, PIN_REFUSED, dev, fw, f"sensor {s.ref} on GPIO {s.gpio}", s.pos,
               {"current": reason, "legacy": None}, related=first.pos)


def _valve_enable_pins(emit: _Emit, dev: Device, fw: str, b: Board | None) -> None:
    """K485: ``valve_actuator.cpp`` ``ValveActuator::begin`` (identical in both
    generations) drives two pins: the direction pin ``gpio`` and the enable pin
    ``aux_gpio``, or ``gpio + 1`` when the item has none. It requests both from the
    ``GPIOManager`` and sets both to OUTPUT; if either fails, the valve is not
    configured. A declared ``aux_gpio`` gets the pin checks of any pin (K410, K412-K414,
    K486); the implicit gpio + 1 is checked here."""
    used = _used(dev)
    for a in dev.actuators:
        if a.type != "valve" or a.aux_gpio is not None:
            continue
        pin = a.gpio + 1
        subject = f"valve {a.ref} on GPIO {a.gpio} also drives GPIO {pin}, its enable pin (gpio + 1, as it has " \
                  "no aux_gpio)"
        owner = used.get(pin)
        if owner is not None:
            who, where = owner
            # legacy's output pins are the ones both generations can drive
            fix = "give the valve an aux_gpio: a free output pin" + \
                (f" ({_free(fw if fw in GENERATIONS else 'legacy', b, dev, output=True)})" if b else "")
            emit(VALVE_ENABLE_PIN, "error", f"{subject}, but {who}: the firmware configures only one of the two",
                 a.pos, fix, related=where)
            continue
        if b is None:
            continue  # no board, no pin table
        reasons = {g: _enable_pin(g, b, dev, pin) for g in GENERATIONS}
        _judge(emit, VALVE_ENABLE_PIN, dev, fw, subject, a.pos, reasons)


def _enable_pin(gen: str, b: Board, dev: Device, pin: int) -> _Reason | None:
    sp = spec(gen, b.name)
    fix = f"give the valve an aux_gpio: a free output pin ({_free(gen, b, dev, output=True)})"
    if not b.known(pin):
        return f"{b.name} has no GPIO {pin}, so the firmware refuses the valve", fix
    if pin in sp.reserved or pin in b.reserved:
        return f"GPIO {pin} is reserved on {b.name}, so the firmware refuses the valve", fix
    if pin not in sp.safe or pin in sp.input_only:
        return f"GPIO {pin} cannot drive an output on {b.name}, so the firmware refuses the valve", fix
    taken = boot_pins(gen, b.name).get(pin)
    if taken is not None:
        return f"{WHO} takes GPIO {pin} for its {taken} at boot and refuses the valve", fix
    return None


def _xiao_subscriptions(emit: _Emit, dev: Device, fw: str, b: Board) -> None:
    """K487: current firmware on a XIAO ESP32-C3 is built with PubSubClient
    (``services/communication/mqtt_client.h``: "MQTT_USE_PUBSUBCLIENT=1 -> PubSubClient
    ... seeed/wokwi only"), whose ``subscribe(topic, qos)`` returns false for QoS 2.
    ``main.cpp`` ``subscribeToAllTopics`` subscribes config, system/command, the
    broadcast emergency, actuator/+/command and sensor/+/command with QoS 2
    (``MQTTClient::queueSubscribe`` -> ``MQTTClient::subscribe``): none of them ever
    arrives. The QoS 1 topics do: heartbeat/ack, actuator/emergency, zone, server/status.
    Legacy firmware subscribes with QoS 0 and is not affected."""
    if b.name != "xiao_esp32c3" or fw == "legacy":
        return
    lost = ("never receives its config (so the sensors and actuators declared here are never configured), "
            "actuator commands (rules and manual commands switch nothing) or system commands, and does not "
            "subscribe to the broadcast emergency stop; only heartbeat acks, the per-board emergency stop and "
            "server status reach it")
    why = ("current firmware on a XIAO ESP32-C3 is built with PubSubClient, which refuses the QoS 2 "
           f"subscriptions the firmware makes: the board {lost}")
    fix = "run legacy firmware on XIAO boards (it subscribes with QoS 0) and say firmware: legacy, or use an " \
          "esp32dev board for current firmware"
    if fw == "current":
        emit(NO_QOS2_SUBSCRIPTIONS, "error", f"device {dev.name!r}: {why}", dev.pos, fix)
    else:
        emit(NO_QOS2_SUBSCRIPTIONS, "warning", f"device {dev.name!r} on a XIAO ESP32-C3: if it runs current "
             f"firmware, it is built with PubSubClient, which refuses the QoS 2 subscriptions the firmware "
             f"makes: the board {lost}", dev.pos, f"{fix}; say firmware: legacy if it runs legacy firmware")
