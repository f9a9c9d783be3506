"""``{time: {after: "06:00", before: "22:00", weekdays: [mon, fri]}}``, and the local
time helpers the triggers share."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from engine.conditions.base import FALSE, S_TIME, TRUE, Inputs, Kind, LeafState, Truth, obj
from engine.config.fields import did_you_mean
from engine.config.source import YScalar, type_name
from engine.model import Condition, TimeWindow
from engine.units import WEEKDAYS, parse_weekday

if TYPE_CHECKING:
    from engine.config.fields import Ctx
    from engine.config.source import YMap


def local(now: float, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(now, tz)


def in_window(w: TimeWindow, now: float, tz: ZoneInfo) -> bool:
    """Local time inside the window. A window with before < after spans midnight; its
    part after midnight belongs to the day it started on (for ``weekdays``)."""
    dt = local(now, tz)
    sec = dt.hour * 3600 + dt.minute * 60 + dt.second + dt.microsecond / 1e6
    a = 0 if w.after is None else w.after * 60
    b = 86400 if w.before is None else w.before * 60
    day = dt.weekday()
    if a <= b:
        inside = a <= sec < b
    elif sec >= a:
        inside = True
    elif sec < b:
        inside = True
        day = (day - 1) % 7
    else:
        inside = False
    return inside and (not w.weekdays or day in w.weekdays)


def local_instants(now: float, tz: ZoneInfo, minutes: Iterable[int]) -> list[float]:
    """Unix instants of the given local minutes-of-day, today and the next two days."""
    base = local(now, tz).replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    out: list[float] = []
    mins = list(minutes)
    for d in range(3):
        day = base + timedelta(days=d)
        for m in mins:
            naive = day + timedelta(minutes=m)
            out.append(naive.replace(tzinfo=tz).timestamp())
    return out


def next_window_change(w: TimeWindow, now: float, tz: ZoneInfo) -> float:
    """The next instant after ``now`` at which the window may open or close."""
    mins = [0, 1440] + [m for m in (w.after, w.before) if m is not None]
    later = [t for t in local_instants(now, tz, mins) if t > now + 1e-6]
    return min(later)


class TimeKind(Kind):
    name = "time"
    selectors = ("time",)
    keys = ("time",)
    model = (TimeWindow,)
    schema = obj({"time": obj({
        "after": S_TIME, "before": S_TIME,
        "weekdays": {"type": "array", "items": {"$ref": "#/$defs/weekday"}, "minItems": 1},
    }, [], {"minProperties": 1})}, ["time"])
    doc = ("True inside a daily time window (local time, `[kaiser] tz`). `after`/`before` are "
           "\"HH:MM\"; a window with before < after spans midnight; `weekdays` limits the days.")
    example = "time: {after: \"06:00\", before: \"22:00\", weekdays: [mon, tue, wed, thu, fri]}"

    def build(self, m: YMap, ctx: Ctx) -> Condition | None:
        ctx.keys(m, ("time",), "a time condition")
        w = ctx.map(m.values["time"], "'time'")
        if w is None:
            return None
        ctx.keys(w, ("after", "before", "weekdays"), "a time window")
        if not w.values:
            ctx.error("K203", "a time window needs 'after', 'before' or 'weekdays'", w.pos)
            return None
        after = ctx.time_of_day(w.values["after"], "'after'") if "after" in w.values else None
        before = ctx.time_of_day(w.values["before"], "'before'") if "before" in w.values else None
        days: list[int] = []
        if "weekdays" in w.values:
            q = ctx.seq(w.values["weekdays"], "'weekdays'")
            if q is not None and not q.items:
                ctx.error("K204", "'weekdays' is empty, so the window is never open", q.pos,
                          hint="list the days, or leave 'weekdays' out for every day")
            for item in q.items if q is not None else ():
                try:
                    d = parse_weekday(item.value if isinstance(item, YScalar) else None)
                except ValueError:
                    v = item.value if isinstance(item, YScalar) else None
                    ctx.error("K204", f"'weekdays' must list days ({', '.join(WEEKDAYS)}), not "
                              f"{type_name(item)}", item.pos,
                              hint=did_you_mean(str(v).lower(), WEEKDAYS) if isinstance(v, str) else "")
                    continue
                if d not in days:
                    days.append(d)
        # best effort: a bad part is reported and left out (the rule is then checked in part)
        return TimeWindow(after, before, tuple(sorted(days)), m.pos)

    def key(self, c: TimeWindow) -> str:
        return f"win:{c.after}:{c.before}:{','.join(map(str, c.weekdays))}"

    def evaluate(self, c: TimeWindow, st: LeafState, inputs: Inputs, now: float,
                 reading: bool) -> tuple[Truth, float | None]:
        tz = inputs.tzinfo
        return (TRUE if in_window(c, now, tz) else FALSE), next_window_change(c, now, tz)

    def describe(self, c: TimeWindow) -> str:
        parts = []
        if c.after is not None:
            parts.append(f"after {c.after // 60:02d}:{c.after % 60:02d}")
        if c.before is not None:
            parts.append(f"before {c.before // 60:02d}:{c.before % 60:02d}")
        if c.weekdays:
            parts.append("on " + ", ".join(WEEKDAYS[d] for d in c.weekdays))
        return "time " + " ".join(parts)


KIND = TimeKind()
