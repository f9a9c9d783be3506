"""When a reading may be used: the one definition the rule engine and the guard share.

A *sample* is the newest reading of one sensor ref as ``(value, ts, quality)``:
value in the sensor's unit (None or NaN: no value), ``ts`` Unix seconds.

A sample is *usable* at ``now`` when it has a value, its quality is one of
``excellent``, ``good``, ``fair``, ``poor``, and it is not older than its
freshness limit (``safety.defaults.stale_after``, or a condition's own
``fresh:``). "Older than" is strict: a reading exactly ``stale_after`` old is
still fresh. Kaiser's clock resolution for this is one millisecond
(:data:`TICK`): a reading becomes unknown ``limit + 1 ms`` after its ``ts``, so a
timer can be set for that instant.

Anything else is *unknown*, not false (docs/rules.md): a condition on it is
neither true nor false, and for the guard the sensor is *lost*. A sensor that
never reported counts as lost from ``start + limit`` on (silent since the
server, or the test, started).

Nothing here reads a clock or keeps state.
"""

from __future__ import annotations

import math

from engine.model import USABLE_QUALITY
from engine.units import format_duration

#: a reading turns unknown this long after it is exactly ``limit`` old (seconds)
TICK = 0.001

Sample = tuple[float | None, float, str]  # (value, ts, quality)


def lost_at(ts: float, limit: float) -> float:
    """The first instant (Unix seconds) at which a reading taken at ``ts`` is too old
    for a freshness limit of ``limit`` seconds."""
    return ts + limit + TICK


def has_value(sample: Sample) -> bool:
    """A value of usable quality (age not considered)."""
    v = sample[0]
    return v is not None and not math.isnan(v) and sample[2] in USABLE_QUALITY


def value(sample: Sample | None, now: float, limit: float) -> float | None:
    """The sample's value when it is usable at ``now``, else None (unknown)."""
    if sample is None:
        return None
    v = sample[0]
    if v is None or v != v or sample[2] not in USABLE_QUALITY:  # v != v: NaN
        return None
    if now >= sample[1] + limit + TICK:
        return None
    return v


def lost_since(sample: Sample | None, start: float | None, limit: float) -> float | None:
    """When the sensor is (or will be) lost: the sample's ts for a bad one, its
    ``lost_at`` for a good one, ``start`` + limit when it never reported. None when
    that cannot be known yet (never reported and no start)."""
    if sample is None:
        return None if start is None else start + limit + TICK
    v = sample[0]
    if v is None or v != v or sample[2] not in USABLE_QUALITY:  # no usable value: lost since it came
        return sample[1]
    return sample[1] + limit + TICK


def why_lost(ref: str, sample: Sample | None, start: float | None, now: float, limit: float,
             setting: str = "stale_after") -> str | None:
    """A sentence part when the sensor is lost at ``now`` ("sensor x is stale (...)"),
    else None. ``setting`` names where the limit comes from (``stale_after`` or
    ``fresh``)."""
    if sample is None:
        if start is not None and now >= lost_at(start, limit):
            return f"sensor {ref} has not reported since start ({span(now - start)} ago)"
        return None
    if not has_value(sample):
        q = sample[2]
        return f"sensor {ref} reports quality {q}" if q not in USABLE_QUALITY else f"sensor {ref} sent no value"
    if now >= lost_at(sample[1], limit):
        return (f"sensor {ref} is stale (last reading {span(now - sample[1])} ago; "
                f"{setting} is {format_duration(limit)})")
    return None


def span(seconds: float, up: bool = False) -> str:
    """``40 s``, ``6m 10s``, ``2h 5m`` for people; ``up`` rounds up (time to go)."""
    s = math.ceil(seconds - 1e-9) if up else math.floor(seconds + 1e-9)
    s = max(0, int(s))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        m, r = divmod(s, 60)
        return f"{m}m {r}s" if r else f"{m}m"
    h, r = divmod(s, 3600)
    m = r // 60
    return f"{h}h {m}m" if m else f"{h}h"
