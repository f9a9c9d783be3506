"""Electrical conductivity probe on a 12-bit ADC (e.g. DFRobot DFR0300).

Formula: V = raw / 4095 * 3.3; EC = slope * V + offset in uS/cm (uncalibrated:
slope 6060, offset 0), then divided by 1 + 0.02 * (T - 25) when a temperature
is given, and clamped to 0..20000 uS/cm.

Calibration: ``slope`` (uS/cm per volt), ``offset`` (uS/cm at 0 V), optional
``temperature`` (a fixed solution temperature, degC).
Params: ``temperature`` (degC of the solution).
Quality: bad for a raw value outside 0..4095; poor when pinned at 0 or 4095 or
clamped; fair while uncalibrated; else good.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from sensors.common import adc_volts, at_rail, bad, clamped, number
from sensors.registry import Processed, Quantity, SensorType, register

DEFAULT_SLOPE = 6060.0
DEFAULT_OFFSET = 0.0

EC = Quantity("ec", "µS/cm", 0.0, 20000.0)


def process(raw: float, calibration: Mapping[str, float], params: Mapping[str, float],
            quantity: str) -> Processed:
    v = adc_volts(raw)
    if v is None:
        return bad(EC)
    calibrated = "slope" in calibration and "offset" in calibration
    ec = number(calibration, "slope", DEFAULT_SLOPE) * v + number(calibration, "offset", DEFAULT_OFFSET)
    grade = "good" if calibrated else "fair"
    src = params if params.get("temperature") is not None else calibration
    if src.get("temperature") is not None:
        t = number(src, "temperature", 25.0)
        factor = 1.0 + 0.02 * (t - 25.0)
        if -10.0 <= t <= 100.0 and math.isfinite(t) and factor > 0.0:
            ec = ec / factor
        else:
            grade = "fair"
    if at_rail(raw):
        grade = "poor"
    return clamped(EC, ec, grade)


TYPE = register(SensorType(
    name="ec",
    description="conductivity probe on a 12-bit ADC; 0-20000 µS/cm",
    quantities=(EC,),
    process=process,
    aliases=("ec_sensor",),
    calibration={
        "slope": "µS/cm per volt at the ADC pin (two-point calibration; default 6060)",
        "offset": "µS/cm at 0 V (two-point calibration; default 0)",
        "temperature": "fixed solution temperature in degC for compensation (a live value in params wins)",
    },
    params={"temperature": "solution temperature in degC; divides by 1 + 0.02 * (T - 25)"},
))
