"""``{sensor: REF, rises_by: x, within: 10m}`` (or ``falls_by``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.conditions.base import (
    FALSE,
    S_DURATION,
    S_SENSOR,
    TRUE,
    UNKNOWN,
    Inputs,
    Kind,
    LeafState,
    Truth,
    earliest,
    normalise,
    obj,
)
from engine.model import Change, Condition

if TYPE_CHECKING:
    from engine.config.fields import Ctx
    from engine.config.source import YMap


class ChangeKind(Kind):
    name = "change"
    selectors = ("rises_by", "falls_by")
    keys = ("sensor", "rises_by", "falls_by", "within")
    model = (Change,)
    schema = obj({"sensor": S_SENSOR, "rises_by": {"type": "number", "exclusiveMinimum": 0},
                  "falls_by": {"type": "number", "exclusiveMinimum": 0}, "within": S_DURATION},
                 ["sensor", "within"], {"oneOf": [{"required": ["rises_by"]}, {"required": ["falls_by"]}]})
    doc = ("True when the sensor's value rose (or fell) by at least the amount within the time span. "
           "Unknown while its latest reading is unknown.")
    example = "{sensor: north.soil, falls_by: 10, within: 30m}"

    def build(self, m: YMap, ctx: Ctx) -> Condition | None:
        ctx.keys(m, self.keys, "a change condition", required=("sensor", "within"))
        if "rises_by" in m.values and "falls_by" in m.values:
            ctx.error("K205", "use either 'rises_by' or 'falls_by', not both", m.keys["falls_by"])
            return None
        direction = "rises" if "rises_by" in m.values else "falls"
        sensor = ctx.ref(m.values.get("sensor"), "'sensor'", "sensor")
        amount = ctx.number(m.values[f"{direction}_by"], f"'{direction}_by'", lo=0)
        within = ctx.duration(m.values.get("within"), "'within'", positive=True)
        if amount is not None and amount == 0:
            ctx.error("K204", f"'{direction}_by' must be more than 0", m.values[f"{direction}_by"].pos)
            return None
        if sensor is None or amount is None or within is None:
            return None
        return Change(sensor, "rises" if direction == "rises" else "falls", amount, within, m.pos)

    def key(self, c: Change) -> str:
        return f"chg:{c.sensor}:{c.direction}:{c.amount:g}:{c.within:g}"

    def sensors(self, c: Change) -> tuple[str, ...]:
        return (c.sensor,)

    def history(self, c: Change) -> tuple[str, float] | None:
        return (c.sensor, c.within)

    def evaluate(self, c: Change, st: LeafState, inputs: Inputs, now: float,
                 reading: bool) -> tuple[Truth, float | None]:
        hist = [(t, v) for t, v in inputs.recent(c.sensor) if now - t < c.within]
        cur = inputs.usable(c.sensor, now)
        due = min(t for t, _ in hist) + c.within if hist else None
        if cur is None:
            return UNKNOWN, due
        due = earliest(due, inputs.lost_at(c.sensor))
        if not hist:
            return FALSE, due
        vals = [v for _, v in hist]
        d = normalise(cur - min(vals) if c.direction == "rises" else max(vals) - cur)
        return (TRUE if d is not None and d >= c.amount else FALSE), due

    def describe(self, c: Change) -> str:
        return f"{c.sensor} {c.direction} by {c.amount:g} within {c.within:g}s"


KIND = ChangeKind()
