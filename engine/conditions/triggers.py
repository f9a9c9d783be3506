"""Triggers, instants rather than states: ``{at: "06:30"}`` and ``{every: 15m}``.
Only in a ``when``; true for one evaluation at the instant."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from engine.conditions.base import S_DURATION, S_TIME, Inputs, Kind, LeafState, Truth, obj
from engine.conditions.time_window import local_instants
from engine.model import At, Condition, Every

if TYPE_CHECKING:
    from engine.config.fields import Ctx
    from engine.config.source import YMap


def next_every(start: float, interval: float, now: float) -> float:
    """The first instant ``start + k * interval`` (k >= 1) at or after ``now``."""
    interval = max(interval, 1e-3)
    if now <= start + interval:
        return start + interval
    return start + math.ceil((now - start) / interval) * interval


def next_at(minute: int, now: float, tz: ZoneInfo) -> float:
    """The next instant strictly after ``now`` with local time ``minute`` after midnight."""
    later = [t for t in local_instants(now, tz, [minute]) if t > now + 1e-6]
    return min(later)


class AtKind(Kind):
    name = "at"
    selectors = ("at",)
    keys = ("at",)
    model = (At,)
    trigger = True
    schema = obj({"at": S_TIME}, ["at"])
    doc = "Trigger: an instant every day at this local time. Only in `when`."
    example = "at: \"06:30\""

    def build(self, m: YMap, ctx: Ctx) -> Condition | None:
        ctx.keys(m, ("at",), "an 'at' trigger")
        minute = ctx.time_of_day(m.values["at"], "'at'")
        return None if minute is None else At(minute, m.pos)

    def key(self, c: At) -> str:
        return f"at:{c.minute}"

    def evaluate(self, c: At, st: LeafState, inputs: Inputs, now: float,
                 reading: bool) -> tuple[Truth, float | None]:
        return st.value, st.nxt  # pulses are raised and lowered by the engine

    def first_pulse(self, c: At, start: float, now: float, tz: ZoneInfo) -> float:
        n = next_at(c.minute, start - 1e-3, tz)
        return n if n >= now else next_at(c.minute, now - 1e-3, tz)

    def next_pulse(self, c: At, fired: float, now: float, tz: ZoneInfo) -> float:
        return next_at(c.minute, now, tz)

    def describe(self, c: At) -> str:
        return f"at {c.minute // 60:02d}:{c.minute % 60:02d}"


class EveryKind(Kind):
    name = "every"
    selectors = ("every",)
    keys = ("every",)
    model = (Every,)
    trigger = True
    schema = obj({"every": S_DURATION}, ["every"])
    doc = "Trigger: an instant every DURATION. Only in `when`."
    example = "every: 15m"

    def build(self, m: YMap, ctx: Ctx) -> Condition | None:
        ctx.keys(m, ("every",), "an 'every' trigger")
        d = ctx.duration(m.values["every"], "'every'", positive=True)
        return None if d is None else Every(d, m.pos)

    def key(self, c: Every) -> str:
        return f"every:{c.interval:g}"

    def evaluate(self, c: Every, st: LeafState, inputs: Inputs, now: float,
                 reading: bool) -> tuple[Truth, float | None]:
        return st.value, st.nxt

    def first_pulse(self, c: Every, start: float, now: float, tz: ZoneInfo) -> float:
        return next_every(start, c.interval, now)

    def next_pulse(self, c: Every, fired: float, now: float, tz: ZoneInfo) -> float:
        n = fired
        while n <= now:
            n += max(c.interval, 1e-3)
        return n

    def describe(self, c: Every) -> str:
        return f"every {c.interval:g}s"


AT = AtKind()
EVERY = EveryKind()

