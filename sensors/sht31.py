"""SHT31 I2C temperature and humidity chip (two values on one pin).

Raw is the chip's 16-bit word (0..65535):
T = -45 + 175 * raw / 65535 degC, RH = 100 * raw / 65535 %.
The firmware names the values ``sht31_temp`` and ``sht31_humidity`` (also
``temperature_sht31``, ``humidity_sht31``); declare the chip once as ``sht31``
and refer to ``dev.name.temperature`` and ``dev.name.humidity``.

Calibration: ``temperature_offset`` (degC), ``humidity_offset`` (%RH); humidity
is clamped to 0..100 after the offset.
Quality: bad for a raw value that is not a 16-bit word; excellent for 0..90 degC
and 10..90 %RH (the chip's best-accuracy band); poor for a clamped humidity;
else good.
"""

from __future__ import annotations

from collections.abc import Mapping

from sensors.common import bad, clamped, number, ranged, word16
from sensors.registry import Processed, Quantity, SensorType, register

TEMPERATURE = Quantity("temperature", "°C", -45.0, 130.0, ("sht31_temp", "temperature_sht31"))
HUMIDITY = Quantity("humidity", "%", 0.0, 100.0, ("sht31_humidity", "humidity_sht31"))


def process(raw: float, calibration: Mapping[str, float], params: Mapping[str, float],
            quantity: str) -> Processed:
    q = HUMIDITY if quantity == "humidity" else TEMPERATURE
    w = word16(raw)
    if w is None:
        return bad(q)
    if q is HUMIDITY:
        rh = 100.0 * w / 65535.0 + number(calibration, "humidity_offset", 0.0)
        p = clamped(HUMIDITY, rh, "good")
        if p.quality == "good" and 10.0 <= p.value <= 90.0:
            return Processed(p.value, p.unit, "excellent")
        return p
    t = -45.0 + 175.0 * w / 65535.0 + number(calibration, "temperature_offset", 0.0)
    return ranged(TEMPERATURE, t, "good", best=(0.0, 90.0))


TYPE = register(SensorType(
    name="sht31",
    description="SHT31 I2C temperature (°C) and relative humidity (%) chip",
    quantities=(TEMPERATURE, HUMIDITY),
    process=process,
    aliases=("sht3x",),
    calibration={
        "temperature_offset": "degC added to the temperature (default 0)",
        "humidity_offset": "%RH added to the humidity (default 0)",
    },
))
