"""CO2 sensor (MH-Z19, SCD30): the firmware sends ppm.

Calibration: ``offset`` (ppm added).
Quality: bad outside 0..10000 ppm; fair below 350 ppm (less than outdoor air:
the sensor's baseline has drifted); else good.
"""

from __future__ import annotations

from collections.abc import Mapping

from sensors.common import number, ranged
from sensors.registry import Processed, Quantity, SensorType, register

CO2 = Quantity("co2", "ppm", 0.0, 10000.0)


def process(raw: float, calibration: Mapping[str, float], params: Mapping[str, float],
            quantity: str) -> Processed:
    ppm = raw + number(calibration, "offset", 0.0)
    return ranged(CO2, ppm, "fair" if ppm < 350.0 else "good")


TYPE = register(SensorType(
    name="co2",
    description="CO2 concentration (MH-Z19, SCD30); 0-10000 ppm",
    quantities=(CO2,),
    process=process,
    aliases=("mhz19_co2", "scd30_co2", "mhz19", "scd30"),
    calibration={"offset": "ppm added to every reading (default 0)"},
))
