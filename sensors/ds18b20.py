"""DS18B20 OneWire temperature sensor.

Raw is the chip's signed 16-bit temperature register, 1/16 degC per step:
T = raw * 0.0625. Current firmware sends it signed (-162 = -10.125 degC); legacy
firmware sends the register as an unsigned 32-bit number, so anything above
32767 is negative (4294967134 = -10.125 degC; a bare 16-bit 0xFF5E = 65374
reads the same).

Calibration: ``offset`` (degC added to the result).
Quality: bad for a non-integral raw value, one that fits no encoding, or a
temperature outside the chip's -55..125 degC (-127 is the "disconnected" value);
poor for exactly 85.0 degC (the power-on value, usually a failed conversion);
excellent within -10..85 degC (the chip's +-0.5 degC band); else good.
"""

from __future__ import annotations

from collections.abc import Mapping

from sensors.common import bad, number, ranged
from sensors.registry import Processed, Quantity, SensorType, register

TEMPERATURE = Quantity("temperature", "°C", -55.0, 125.0)
POWER_ON_RAW = 1360  # 85.0 degC


def register_value(raw: float) -> int | None:
    """Any of the three encodings -> the signed 16-bit register, or None."""
    if raw != int(raw):
        return None
    r = int(raw)
    if r > 32767:
        if r <= 0xFFFF:
            r -= 0x10000  # unsigned 16-bit
        elif 0xFFFF8000 <= r <= 0xFFFFFFFF:
            r -= 0x100000000  # legacy: sign-extended into an unsigned 32-bit number
        else:
            return None
    if r < -32768:
        return None
    return r


def process(raw: float, calibration: Mapping[str, float], params: Mapping[str, float],
            quantity: str) -> Processed:
    r = register_value(raw)
    if r is None:
        return bad(TEMPERATURE)
    t = r * 0.0625
    if not -55.0 <= t <= 125.0:
        return bad(TEMPERATURE, t)
    t += number(calibration, "offset", 0.0)
    if r == POWER_ON_RAW:
        return ranged(TEMPERATURE, t, "poor")
    return ranged(TEMPERATURE, t, "good", best=(-10.0, 85.0))


TYPE = register(SensorType(
    name="ds18b20",
    description="DS18B20 OneWire temperature sensor; -55..125 °C",
    quantities=(TEMPERATURE,),
    process=process,
    aliases=("temperature_ds18b20",),
    calibration={"offset": "degC added to every reading (default 0)"},
))
