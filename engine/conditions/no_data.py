"""``{sensor: REF, no_data_for: 5m}``: silence. Never unknown: it is about silence."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.conditions.base import (
    FALSE,
    S_DURATION,
    S_SENSOR,
    TRUE,
    Inputs,
    Kind,
    LeafState,
    Truth,
    obj,
)
from engine.model import Condition, NoData

if TYPE_CHECKING:
    from engine.config.fields import Ctx
    from engine.config.source import YMap


class NoDataKind(Kind):
    name = "no_data"
    selectors = ("no_data_for",)
    keys = ("sensor", "no_data_for")
    model = (NoData,)
    schema = obj({"sensor": S_SENSOR, "no_data_for": S_DURATION}, ["sensor", "no_data_for"])
    doc = ("True when the sensor has sent no reading for the duration (a sensor that never reported "
           "counts as silent from the start).")
    example = "{sensor: north.air_temp, no_data_for: 5m}"

    def build(self, m: YMap, ctx: Ctx) -> Condition | None:
        ctx.keys(m, self.keys, "a no-data condition", required=("sensor",))
        sensor = ctx.ref(m.values.get("sensor"), "'sensor'", "sensor")
        d = ctx.duration(m.values["no_data_for"], "'no_data_for'", positive=True)
        if sensor is None or d is None:
            return None
        return NoData(sensor, d, m.pos)

    def key(self, c: NoData) -> str:
        return f"nodata:{c.sensor}:{c.duration:g}"

    def sensors(self, c: NoData) -> tuple[str, ...]:
        return (c.sensor,)

    def watched(self, c: NoData) -> tuple[tuple[str, float | None], ...]:
        return ()  # it *expects* silence: silence must not stop the rule it serves

    def evaluate(self, c: NoData, st: LeafState, inputs: Inputs, now: float,
                 reading: bool) -> tuple[Truth, float | None]:
        last = inputs.last_data(c.sensor)
        if last is None:
            last = inputs.start if inputs.start is not None else now
        if now - last >= c.duration:
            return TRUE, None
        return FALSE, last + c.duration

    def describe(self, c: NoData) -> str:
        return f"no data from {c.sensor} for {c.duration:g}s"


KIND = NoDataKind()
