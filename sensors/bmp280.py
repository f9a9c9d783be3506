"""BMP280 I2C pressure and temperature chip (two values on one pin).

The firmware sends values already converted: pressure in hPa, temperature in
degC (wire names ``bmp280_pressure`` / ``pressure_bmp280`` and ``bmp280_temp`` /
``temperature_bmp280``). Declare the chip once as ``bmp280`` and refer to
``dev.name.pressure`` and ``dev.name.temperature``.

Calibration: ``pressure_offset`` (hPa), ``temperature_offset`` (degC).
Quality: bad outside the chip's range (300..1100 hPa, -40..85 degC); else good.
"""

from __future__ import annotations

from collections.abc import Mapping

from sensors.common import number, ranged
from sensors.registry import Processed, Quantity, SensorType, register

PRESSURE = Quantity("pressure", "hPa", 300.0, 1100.0, ("bmp280_pressure", "pressure_bmp280"))
TEMPERATURE = Quantity("temperature", "°C", -40.0, 85.0, ("bmp280_temp", "temperature_bmp280"))


def process(raw: float, calibration: Mapping[str, float], params: Mapping[str, float],
            quantity: str) -> Processed:
    if quantity == "temperature":
        return ranged(TEMPERATURE, raw + number(calibration, "temperature_offset", 0.0), "good")
    return ranged(PRESSURE, raw + number(calibration, "pressure_offset", 0.0), "good")


TYPE = register(SensorType(
    name="bmp280",
    description="BMP280 I2C barometric pressure (hPa) and temperature (°C) chip",
    quantities=(PRESSURE, TEMPERATURE),
    process=process,
    aliases=(),
    calibration={
        "pressure_offset": "hPa added to the pressure (default 0)",
        "temperature_offset": "degC added to the temperature (default 0)",
    },
))
