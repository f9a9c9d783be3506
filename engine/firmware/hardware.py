"""What a board is built with: pins, limits, MQTT transport and sensor registry.

Sources (both generations unless noted):

- ``config/hardware/esp32_dev.h`` and ``config/hardware/xiao_esp32c3.h``:
  ``RESERVED_GPIO_PINS``, ``SAFE_GPIO_PINS`` (the only pins ``GPIOManager`` tracks;
  ``GPIOManager::requestPin`` refuses any other), ``INPUT_ONLY_PINS``, I2C and
  OneWire pins, PWM channels. Current firmware added the input-only ADC1 pins
  34-39 to esp32dev's safe pins; legacy firmware cannot configure anything on them.
- ``platformio.ini`` at a464a94b / 0a9b54ff: ``MAX_SENSORS`` 20/10,
  ``MAX_ACTUATORS`` 12/6, ``MQTT_MAX_PACKET_SIZE`` 2048 (esp32dev) / 1024 (XIAO),
  and current XIAO builds with ``MQTT_USE_PUBSUBCLIENT=1`` (esp32dev uses ESP-IDF MQTT).
- ``models/sensor_registry.cpp``: the sensor types a generation knows.
"""

from __future__ import annotations

from dataclasses import dataclass

BOARD_KINDS = ("esp32dev", "xiao_esp32c3")


@dataclass(frozen=True)
class BoardSpec:
    kind: str
    reserved: frozenset[int]
    safe: tuple[int, ...]
    input_only: frozenset[int]
    i2c_pins: tuple[int, int]
    onewire_pin: int
    pwm_channels: int
    max_sensors: int
    max_actuators: int
    #: PubSubClient buffer (MQTT_MAX_PACKET_SIZE): a whole packet larger than this is dropped
    packet_limit: int


_ESP32_RESERVED = frozenset({0, 1, 2, 3, 12, 13})
_ESP32_SAFE_LEGACY = (4, 5, 14, 15, 16, 17, 18, 19, 21, 22, 23, 25, 26, 27, 32, 33)
_XIAO_SAFE = (2, 4, 5, 6, 7, 8, 9, 10, 21)


def spec(generation: str, kind: str) -> BoardSpec:
    """The hardware of one board kind as one firmware generation configures it."""
    if kind == "esp32dev":
        safe = _ESP32_SAFE_LEGACY if generation == "legacy" else (*_ESP32_SAFE_LEGACY, 34, 35, 36, 39)
        return BoardSpec(kind, _ESP32_RESERVED, safe, frozenset({34, 35, 36, 39}), (21, 22), 4, 16,
                         20, 12, 2048)
    if kind == "xiao_esp32c3":
        return BoardSpec(kind, frozenset({0, 1, 3}), _XIAO_SAFE, frozenset(), (4, 5), 6, 6, 10, 6, 1024)
    raise ValueError(f"unknown board kind {kind!r} (one of {', '.join(BOARD_KINDS)})")


class Pins:
    """``drivers/gpio_manager.cpp``: who owns which pin.

    ``request`` refuses a reserved pin, a pin outside the safe list and a pin with
    an owner (current firmware lets two users of the same bus share a pin whose
    owner is ``bus/<type>/<gpio>``). ``output`` (``configurePinMode(OUTPUT)``)
    refuses reserved and, on esp32dev, input-only pins.
    """

    def __init__(self, board: BoardSpec, *, bus_sharing: bool) -> None:
        self.board = board
        self.bus_sharing = bus_sharing
        self.owner: dict[int, str] = {}

    def available(self, gpio: int) -> bool:
        """``GPIOManager::isPinAvailable``."""
        return gpio not in self.board.reserved and gpio in self.board.safe and gpio not in self.owner

    def request(self, gpio: int, owner: str) -> bool:
        """``GPIOManager::requestPin``."""
        if gpio in self.board.reserved:
            return False
        held = self.owner.get(gpio)
        if held:
            return bool(self.bus_sharing and held.startswith("bus/") and owner.startswith("bus/")
                        and held.split("/")[1] == owner.split("/")[1])
        if gpio not in self.board.safe:
            return False
        self.owner[gpio] = owner
        return True

    def output(self, gpio: int) -> bool:
        """``GPIOManager::configurePinMode(gpio, OUTPUT)``."""
        if gpio in self.board.reserved:
            return False
        return not (self.board.kind == "esp32dev" and gpio in self.board.input_only)

    def release(self, gpio: int) -> None:
        self.owner.pop(gpio, None)


# --------------------------------------------------------------------------
# sensor registry (models/sensor_registry.cpp)


@dataclass(frozen=True)
class Capability:
    server_type: str
    device_type: str
    i2c_address: int
    multi_value: bool
    i2c: bool


def _cap(server: str, device: str, addr: int = 0, multi: bool = False) -> Capability:
    return Capability(server, device, addr, multi, addr != 0)


_SHT_T = _cap("sht31_temp", "sht31", 0x44, True)
_SHT_H = _cap("sht31_humidity", "sht31", 0x44, True)
_DS = _cap("ds18b20", "ds18b20")
_BMP_P = _cap("bmp280_pressure", "bmp280", 0x76, True)
_BMP_T = _cap("bmp280_temp", "bmp280", 0x76, True)
_PH = _cap("ph", "ph_sensor")
_EC = _cap("ec", "ec_sensor")
_MOIST = _cap("moisture", "moisture")

_LEGACY_TYPES: dict[str, Capability] = {
    "temperature_sht31": _SHT_T, "humidity_sht31": _SHT_H, "sht31_temp": _SHT_T, "sht31_humidity": _SHT_H,
    "temperature_ds18b20": _DS, "ds18b20": _DS,
    "pressure_bmp280": _BMP_P, "temperature_bmp280": _BMP_T, "bmp280_pressure": _BMP_P, "bmp280_temp": _BMP_T,
    "ph_sensor": _PH, "ph": _PH, "ec_sensor": _EC, "ec": _EC, "moisture": _MOIST,
}

_BME_P = _cap("bme280_pressure", "bme280", 0x76, True)
_BME_T = _cap("bme280_temp", "bme280", 0x76, True)
_BME_H = _cap("bme280_humidity", "bme280", 0x76, True)

_CURRENT_TYPES: dict[str, Capability] = {
    **_LEGACY_TYPES,
    "sht31": _cap("sht31", "sht31", 0x44, True), "bmp280": _cap("bmp280", "bmp280", 0x76, True),
    "pressure_bme280": _BME_P, "temperature_bme280": _BME_T, "humidity_bme280": _BME_H,
    "bme280_pressure": _BME_P, "bme280_temp": _BME_T, "bme280_humidity": _BME_H,
    "bme280": _cap("bme280", "bme280", 0x76, True), "soil_moisture": _MOIST,
}

MULTI_VALUE: dict[str, tuple[str, ...]] = {
    "sht31": ("sht31_temp", "sht31_humidity"),
    "bmp280": ("bmp280_pressure", "bmp280_temp"),
    "bme280": ("bme280_pressure", "bme280_temp", "bme280_humidity"),
}


def capability(generation: str, sensor_type: str) -> Capability | None:
    """``findSensorCapability``: a case-insensitive lookup in both generations."""
    table = _LEGACY_TYPES if generation == "legacy" else _CURRENT_TYPES
    return table.get(sensor_type.lower())


def server_type(generation: str, sensor_type: str) -> str:
    """``getServerSensorType``: the registry's wire name, or the type unchanged
    (case kept) when the registry does not know it."""
    cap = capability(generation, sensor_type)
    return cap.server_type if cap else sensor_type


def known_types(generation: str) -> frozenset[str]:
    """Every sensor type name the generation's registry knows (lower case)."""
    return frozenset(_LEGACY_TYPES if generation == "legacy" else _CURRENT_TYPES)
