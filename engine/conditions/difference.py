"""``{difference: [A, B], above: x}``: compares A - B of two sensors."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.conditions.base import (
    S_DURATION,
    S_SENSOR,
    Inputs,
    Kind,
    LeafState,
    Truth,
    earliest,
    normalise,
    obj,
    op_text,
    threshold_text,
)
from engine.conditions.comparison import compare, judge, one_op_schema, op_schema, options
from engine.model import COMPARE_OPS, Condition, Difference

if TYPE_CHECKING:
    from engine.config.fields import Ctx
    from engine.config.source import YMap

KEYS = ("difference", *COMPARE_OPS, "for", "hysteresis")


class DifferenceKind(Kind):
    name = "difference"
    selectors = ("difference",)
    keys = KEYS
    model = (Difference,)
    schema = obj({"difference": {"type": "array", "items": S_SENSOR, "minItems": 2, "maxItems": 2},
                  **op_schema(), "for": S_DURATION, "hysteresis": {"type": "number", "minimum": 0}},
                 ["difference"], {"oneOf": one_op_schema()})
    doc = ("Compares A - B of two sensors, with the same operators and options as a sensor "
           "comparison. Unknown while either reading is unknown.")
    example = "{difference: [north.air_temp, outside.air_temp], above: 8}"

    def build(self, m: YMap, ctx: Ctx) -> Condition | None:
        ctx.keys(m, KEYS, "a difference condition")
        refs: list[str] = []
        q = ctx.seq(m.values["difference"], "'difference'")
        if q is not None:
            if len(q.items) != 2:
                ctx.error("K202", "'difference' must list two sensors [A, B] (compares A - B)", q.pos)
            else:
                for item in q.items:
                    r = ctx.ref(item, "a 'difference' sensor", "sensor")
                    if r is not None:
                        refs.append(r)
        cmp = compare(m, ctx, "a difference condition")
        for_, hyst = options(m, ctx)
        if len(refs) != 2 or cmp is None:
            return None
        return Difference(refs[0], refs[1], cmp[0], cmp[1], for_, hyst, m.pos)

    def key(self, c: Difference) -> str:
        return f"diff:{c.a}:{c.b}:{c.op}:{threshold_text(c.value)}:{c.for_:g}:{c.hysteresis:g}"

    def sensors(self, c: Difference) -> tuple[str, ...]:
        return (c.a, c.b)

    def stateful(self, c: Difference) -> bool:
        return c.for_ > 0 or c.hysteresis > 0

    def evaluate(self, c: Difference, st: LeafState, inputs: Inputs, now: float,
                 reading: bool) -> tuple[Truth, float | None]:
        a, b = inputs.usable(c.a, now), inputs.usable(c.b, now)
        v = None if a is None or b is None else normalise(a - b)
        lost = earliest(inputs.lost_at(c.a), inputs.lost_at(c.b)) if v is not None else None
        return judge(c, self.stateful(c), st, v, now, reading, lost)

    def describe(self, c: Difference) -> str:
        s = f"{c.a} - {c.b} {op_text(c.op, c.value)}"
        if c.hysteresis:
            s += f" (hysteresis {c.hysteresis:g})"
        if c.for_:
            s += f" for {c.for_:g}s"
        return s


KIND = DifferenceKind()
