"""Capacitive soil moisture probe on a 12-bit ADC.

Formula: (raw - dry) / (wet - dry) * 100 %, clamped to 0..100. Capacitive
probes read high when dry, so by default dry = 3200 and wet = 1500.

Calibration: ``dry`` (raw ADC count in dry air or dry soil), ``wet`` (raw ADC
count in water or saturated soil).
Quality: bad for a raw value outside 0..4095 or dry == wet; poor when pinned at
0 or 4095 or clamped; fair with the default dry/wet; else good.
"""

from __future__ import annotations

from collections.abc import Mapping

from sensors.common import at_rail, bad, clamped, number
from sensors.registry import Processed, Quantity, SensorType, register

DEFAULT_DRY = 3200.0
DEFAULT_WET = 1500.0

MOISTURE = Quantity("moisture", "%", 0.0, 100.0)


def process(raw: float, calibration: Mapping[str, float], params: Mapping[str, float],
            quantity: str) -> Processed:
    if raw < 0.0 or raw > 4095.0:
        return bad(MOISTURE)
    dry = number(calibration, "dry", DEFAULT_DRY)
    wet = number(calibration, "wet", DEFAULT_WET)
    if dry == wet:
        return bad(MOISTURE)
    grade = "good" if "dry" in calibration and "wet" in calibration else "fair"
    if at_rail(raw):
        grade = "poor"
    return clamped(MOISTURE, (raw - dry) / (wet - dry) * 100.0, grade)


TYPE = register(SensorType(
    name="moisture",
    description="capacitive soil moisture probe on a 12-bit ADC; 0-100 %",
    quantities=(MOISTURE,),
    process=process,
    aliases=("soil_moisture",),
    calibration={
        "dry": "raw ADC count when dry (default 3200)",
        "wet": "raw ADC count when soaked (default 1500)",
    },
))
