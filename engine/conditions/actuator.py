"""``{actuator: REF, is: on|off}``: the state the device reports."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.conditions.base import FALSE, S_ACTUATOR, TRUE, Inputs, Kind, LeafState, Truth, obj
from engine.model import ActuatorIs, Condition

if TYPE_CHECKING:
    from engine.config.fields import Ctx
    from engine.config.source import YMap


class ActuatorKind(Kind):
    name = "actuator"
    selectors = ("actuator",)
    keys = ("actuator", "is")
    model = (ActuatorIs,)
    schema = obj({"actuator": S_ACTUATOR, "is": {"enum": ["on", "off"]}}, ["actuator", "is"])
    doc = "True while the actuator's state, as reported by the device, is on or off."
    example = "{actuator: north.pump, is: on}"

    def build(self, m: YMap, ctx: Ctx) -> Condition | None:
        ctx.keys(m, self.keys, "an actuator condition", required=("is",))
        act = ctx.ref(m.values["actuator"], "'actuator'", "actuator")
        state = ctx.choice(m.values.get("is"), "'is'", ("on", "off"))
        if act is None or state is None:
            return None
        return ActuatorIs(act, state == "on", m.pos)

    def key(self, c: ActuatorIs) -> str:
        return f"act:{c.actuator}:{int(c.on)}"

    def refs(self, c: ActuatorIs) -> tuple[tuple[str, str], ...]:
        return (("actuator", c.actuator),)

    def native(self, c: ActuatorIs) -> bool:
        return True

    def fact(self, c: ActuatorIs) -> str:
        return f"a:{c.actuator}"

    def test(self, c: ActuatorIs, negated: bool) -> dict[str, object]:
        # two-valued: never reported counts as "not on" and "not off"
        return {"$neq": {"st": int(c.on)}} if negated else {"st": int(c.on)}

    def evaluate(self, c: ActuatorIs, st: LeafState, inputs: Inputs, now: float,
                 reading: bool) -> tuple[Truth, float | None]:
        v = inputs.actuator_value(c.actuator)
        return (TRUE if v is not None and (v > 0) == c.on else FALSE), None

    def describe(self, c: ActuatorIs) -> str:
        return f"{c.actuator} is {'on' if c.on else 'off'}"


KIND = ActuatorKind()
