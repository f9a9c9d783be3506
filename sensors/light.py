"""Light sensor (TSL2561, BH1750): the firmware sends lux.

Calibration: ``scale`` (factor for a diffuser or cover glass, default 1).
Quality: bad outside 0..120000 lx (full sun is about 100000 lx); else good.
"""

from __future__ import annotations

from collections.abc import Mapping

from sensors.common import number, ranged
from sensors.registry import Processed, Quantity, SensorType, register

LIGHT = Quantity("light", "lx", 0.0, 120000.0)


def process(raw: float, calibration: Mapping[str, float], params: Mapping[str, float],
            quantity: str) -> Processed:
    if raw < 0.0:
        return ranged(LIGHT, raw, "good")
    return ranged(LIGHT, raw * number(calibration, "scale", 1.0), "good")


TYPE = register(SensorType(
    name="light",
    description="illuminance (TSL2561, BH1750); 0-120000 lx",
    quantities=(LIGHT,),
    process=process,
    aliases=("tsl2561", "bh1750"),
    calibration={"scale": "factor applied to the lux value (default 1)"},
))
