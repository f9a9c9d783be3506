"""pH probe on a 12-bit ADC (e.g. DFRobot SEN0161 / Gravity pH).

Formula: V = raw / 4095 * 3.3; pH = slope * V + offset. Without calibration the
firmware's generic probe curve applies: 7 - 3.5 * (V - 1.5), i.e. slope -3.5,
offset 12.25. ``kaiser calibrate ph RAW1=REF1 RAW2=REF2`` computes both from two
buffer solutions.

Calibration: ``slope`` (pH per volt), ``offset`` (pH at 0 V), optional
``temperature`` (a fixed solution temperature, degC).
Params: ``temperature`` (degC of the solution): Nernst compensation
7 + (pH - 7) * 298.15 / (T + 273.15).
Quality: bad for a raw value outside 0..4095; poor when pinned at 0 or 4095 or
when the result had to be clamped to 0..14; fair while uncalibrated; else good.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from sensors.common import adc_volts, at_rail, bad, clamped, number
from sensors.registry import Processed, Quantity, SensorType, register

DEFAULT_SLOPE = -3.5
DEFAULT_OFFSET = 12.25  # 7 + 3.5 * 1.5

PH = Quantity("ph", "pH", 0.0, 14.0)


def temperature_compensate(ph: float, temperature: float) -> float:
    """Scale the deviation from neutral by the Nernst slope ratio (25 degC reference)."""
    return 7.0 + (ph - 7.0) * 298.15 / (temperature + 273.15)


def process(raw: float, calibration: Mapping[str, float], params: Mapping[str, float],
            quantity: str) -> Processed:
    v = adc_volts(raw)
    if v is None:
        return bad(PH)
    calibrated = "slope" in calibration and "offset" in calibration
    ph = number(calibration, "slope", DEFAULT_SLOPE) * v + number(calibration, "offset", DEFAULT_OFFSET)
    grade = "good" if calibrated else "fair"
    src = params if params.get("temperature") is not None else calibration
    if src.get("temperature") is not None:
        tf = number(src, "temperature", 25.0)
        if -10.0 <= tf <= 100.0 and math.isfinite(tf):
            ph = temperature_compensate(ph, tf)
        else:
            grade = "fair"
    if at_rail(raw):
        grade = "poor"
    return clamped(PH, ph, grade)


TYPE = register(SensorType(
    name="ph",
    description="pH probe on a 12-bit ADC; 0-14 pH",
    quantities=(PH,),
    process=process,
    aliases=("ph_sensor",),
    calibration={
        "slope": "pH per volt at the ADC pin (two-point calibration; default -3.5)",
        "offset": "pH at 0 V (two-point calibration; default 12.25)",
        "temperature": "fixed solution temperature in degC for compensation (a live value in params wins)",
    },
    params={"temperature": "solution temperature in degC for Nernst compensation"},
))
