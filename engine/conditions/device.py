"""``{device: north, is: online|offline}``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.conditions.base import FALSE, S_DEVICE, TRUE, Inputs, Kind, LeafState, Truth, obj
from engine.model import Condition, DeviceIs

if TYPE_CHECKING:
    from engine.config.fields import Ctx
    from engine.config.source import YMap


class DeviceKind(Kind):
    name = "device"
    selectors = ("device",)
    keys = ("device", "is")
    model = (DeviceIs,)
    schema = obj({"device": S_DEVICE, "is": {"enum": ["online", "offline"]}}, ["device", "is"])
    doc = ("True while the device is online (heartbeat or data within `offline_after`) or offline. "
           "A device not known yet to be either is neither.")
    example = "{device: north, is: offline}"

    def build(self, m: YMap, ctx: Ctx) -> Condition | None:
        ctx.keys(m, self.keys, "a device condition", required=("is",))
        device = ctx.ref(m.values["device"], "'device'", "device")
        state = ctx.choice(m.values.get("is"), "'is'", ("online", "offline"))
        if device is None or state is None:
            return None
        return DeviceIs(device, state == "online", m.pos)

    def key(self, c: DeviceIs) -> str:
        return f"dev:{c.device}:{int(c.online)}"

    def refs(self, c: DeviceIs) -> tuple[tuple[str, str], ...]:
        return (("device", c.device),)

    def native(self, c: DeviceIs) -> bool:
        return True

    def fact(self, c: DeviceIs) -> str:
        return f"d:{c.device}"

    def test(self, c: DeviceIs, negated: bool) -> dict[str, object]:
        # two-valued: a device not known yet is "not online" and "not offline"
        return {"$neq": {"st": int(c.online)}} if negated else {"st": int(c.online)}

    def evaluate(self, c: DeviceIs, st: LeafState, inputs: Inputs, now: float,
                 reading: bool) -> tuple[Truth, float | None]:
        return (TRUE if inputs.device_status(c.device) == int(c.online) else FALSE), None

    def describe(self, c: DeviceIs) -> str:
        return f"device {c.device} is {'online' if c.online else 'offline'}"


KIND = DeviceKind()
