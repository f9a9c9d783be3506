"""Flow meter (YF-S201 hall sensor): the firmware counts pulses per window.

Formula: litres = pulses / pulses_per_litre (default 450); the value is litres
per minute over the counting window: L/min = litres / (window / 60).

Calibration: ``pulses_per_litre`` (default 450), ``window`` (seconds the
firmware counts pulses over, default 60).
Params: ``window`` (overrides the calibration's).
Quality: bad for negative or fractional pulse counts, a window <= 0, or a flow
above 30 L/min (the meter's rated maximum); else good.
"""

from __future__ import annotations

from collections.abc import Mapping

from sensors.common import bad, number, ranged
from sensors.registry import Processed, Quantity, SensorType, register

DEFAULT_PULSES_PER_LITRE = 450.0
DEFAULT_WINDOW = 60.0

FLOW = Quantity("flow", "L/min", 0.0, 30.0)


def process(raw: float, calibration: Mapping[str, float], params: Mapping[str, float],
            quantity: str) -> Processed:
    ppl = number(calibration, "pulses_per_litre", DEFAULT_PULSES_PER_LITRE)
    window = number(params, "window", number(calibration, "window", DEFAULT_WINDOW))
    if raw < 0.0 or raw != int(raw) or ppl <= 0.0 or window <= 0.0:
        return bad(FLOW)
    return ranged(FLOW, raw / ppl / (window / 60.0), "good")


TYPE = register(SensorType(
    name="flow",
    description="water flow meter (YF-S201); 0-30 L/min",
    quantities=(FLOW,),
    process=process,
    aliases=("yfs201", "yf-s201"),
    calibration={
        "pulses_per_litre": "pulses the meter gives per litre (default 450)",
        "window": "seconds the firmware counts pulses over (default 60)",
    },
    params={"window": "seconds the pulses were counted over (default 60)"},
))
