"""``{sensor: REF, above: x}`` and friends, with ``for``, ``hysteresis``,
``count`` and ``fresh``; and the comparison reader the other kinds share."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.conditions.base import (
    FALSE,
    RANGE_OPS,
    S_DURATION,
    S_NUMBER,
    S_PAIR,
    S_SENSOR,
    SINGLE_OPS,
    TRUE,
    UNKNOWN,
    Inputs,
    Kind,
    LeafState,
    Truth,
    compare_value,
    earliest,
    hold_value,
    norm_threshold,
    obj,
    op_text,
    threshold_text,
)
from engine.config.fields import did_you_mean
from engine.model import COMPARE_OPS, Comparison, Condition

if TYPE_CHECKING:
    from engine.config.fields import Ctx
    from engine.config.source import YMap

_KNOWN_KEYS = frozenset(("sensor", "difference", "for", "hysteresis", "count", "fresh", *COMPARE_OPS))
KEYS = ("sensor", *COMPARE_OPS, "for", "hysteresis", "count", "fresh")

# network tests of a native comparison (fact ``s:REF`` = {"ok": 1|0, "v": value})
_OPS = {"above": "$gt", "below": "$lt", "at_least": "$gte", "at_most": "$lte"}
_NEG = {"above": "$lte", "below": "$gte", "at_least": "$lt", "at_most": "$gt"}
_NEVER: dict[str, object] = {"ok": 2}  # no fact has ok == 2
_ALWAYS: dict[str, object] = {"$neq": {"ok": 2}}


def op_schema() -> dict[str, Any]:
    props: dict[str, Any] = {op: S_NUMBER for op in SINGLE_OPS}
    props.update({op: S_PAIR for op in RANGE_OPS})
    return props


def one_op_schema() -> list[dict[str, Any]]:
    return [{"required": [op]} for op in COMPARE_OPS]


def compare(m: YMap, ctx: Ctx, what: str) -> tuple[str, float | tuple[float, float]] | None:
    """The one comparison operator in ``m`` and its value (pairs for between/outside)."""
    ops = [k for k in COMPARE_OPS if k in m.values]
    if not ops:
        if any(did_you_mean(k, COMPARE_OPS) for k in m.keys if k not in _KNOWN_KEYS):
            return None  # a misspelt operator: already reported as an unknown key
        ctx.error("K203", f"{what} needs a comparison: one of {', '.join(COMPARE_OPS)}", m.pos)
        return None
    if len(ops) > 1:
        ctx.error("K205", f"{what} has several comparisons ({', '.join(ops)}); use one",
                  m.keys[ops[1]], hint="combine conditions with all: [...]")
        return None
    op = ops[0]
    value: float | tuple[float, float] | None
    if op in RANGE_OPS:
        value = ctx.pair(m.values[op], f"{op!r}")
    else:
        value = ctx.number(m.values[op], f"{op!r}")
    if value is None:
        return None
    return op, value


def options(m: YMap, ctx: Ctx) -> tuple[float, float]:
    """``for`` and ``hysteresis`` of a comparison; a bad one is reported and left out (0)."""
    for_ = ctx.duration(m.values["for"], "'for'") if "for" in m.values else 0.0
    hyst = ctx.number(m.values["hysteresis"], "'hysteresis'", lo=0) if "hysteresis" in m.values else 0.0
    return for_ or 0.0, hyst or 0.0


def _wire(t: float | tuple[float, float]) -> float | tuple[float, float]:
    """A normalised threshold as the ruleset JSON writes it: an integral value as an int
    (``number_json`` writes 25.0 as 25; so does the compiler's C encoder, given 25)."""
    if isinstance(t, tuple):
        return (_wire_number(t[0]), _wire_number(t[1]))
    return _wire_number(t)


def _wire_number(v: float) -> float:
    return int(v) if v == int(v) else v


def cmp_test(op: str, value: float | tuple[float, float], negated: bool) -> dict[str, object]:
    """The network test of ``v OP value`` (or its negation) on a fact's ``v``."""
    t = _wire(norm_threshold(value))
    ranged = op in ("between", "outside")
    if ranged != isinstance(t, tuple) or (not ranged and op not in _OPS and op != "equals"):
        return _ALWAYS if negated else _NEVER  # malformed (the loader refuses it)
    if isinstance(t, tuple):
        lo, hi = t
        inside: dict[str, object] = {"$and": [{"$gte": {"v": lo}}, {"$lte": {"v": hi}}]}
        outside: dict[str, object] = {"$or": [{"$lt": {"v": lo}}, {"$gt": {"v": hi}}]}
        if op == "between":
            return outside if negated else inside
        return inside if negated else outside
    if op == "equals":
        return {"$neq": {"v": t}} if negated else {"v": t}
    return {(_NEG if negated else _OPS)[op]: {"v": t}}


def judge(leaf: Any, stateful: bool, st: LeafState, v: float | None, now: float, reading: bool,
          lost: float | None) -> tuple[Truth, float | None]:
    """The truth of a comparison on the value ``v`` (None: unknown): plain when it
    keeps no state, else through :func:`timed`. Serves sensor comparisons and
    differences alike."""
    if not stateful:
        if v is None:
            return UNKNOWN, None
        return (TRUE if compare_value(leaf.op, v, norm_threshold(leaf.value)) else FALSE), lost
    return timed(leaf, st, v, now, reading, lost)


def timed(leaf: Any, st: LeafState, v: float | None, now: float, reading: bool,
          lost: float | None) -> tuple[Truth, float | None]:
    """A comparison with a latch (``hysteresis``), a ``count`` and a ``for:`` on the
    value ``v`` (None: unknown). Unknown keeps every piece of state: it neither
    counts nor resets, the latch stays as it was and a running ``for:`` goes on.
    ``lost``: when ``v`` turns unknown (a due time)."""
    if v is None:
        return UNKNOWN, None
    thr = norm_threshold(leaf.value)
    if st.latch:
        st.latch = hold_value(leaf.op, v, thr, leaf.hysteresis)
    else:
        st.latch = compare_value(leaf.op, v, thr)
    need = getattr(leaf, "count", 0)
    if need > 1:
        if reading:
            st.count = min(st.count + 1, need) if st.latch else 0
        ok = st.latch and st.count >= need
    else:
        ok = st.latch
    if not ok:
        st.since = None
        return FALSE, lost
    if st.since is None:
        st.since = now
    if now - st.since >= leaf.for_:
        return TRUE, lost
    return FALSE, earliest(st.since + leaf.for_, lost)


class ComparisonKind(Kind):
    name = "comparison"
    selectors = ("sensor",)
    keys = KEYS
    model = (Comparison,)
    schema = obj({"sensor": S_SENSOR, **op_schema(), "for": S_DURATION,
                  "hysteresis": {"type": "number", "minimum": 0},
                  "count": {"type": "integer", "minimum": 1},
                  "fresh": S_DURATION},
                 ["sensor"], {"oneOf": one_op_schema()})
    doc = ("Compares a sensor's latest fresh reading: `above`, `below`, `at_least`, `at_most`, "
           "`equals` (a number), `between`, `outside` ([low, high]). `for: DURATION`: held "
           "continuously that long. `hysteresis: h`: once true, stays true until the value is h back "
           "past the threshold. `count: N`: true once N readings in a row satisfy it. `fresh: "
           "DURATION`: readings older than that are unknown for this condition (instead of "
           "`stale_after`). A reading with quality bad/stale, or too old, is unknown: it makes the "
           "condition neither true nor false.")
    example = "{sensor: north.air_temp, above: 28, for: 2m, hysteresis: 1}"

    def build(self, m: YMap, ctx: Ctx) -> Condition | None:
        ctx.keys(m, KEYS, "a sensor comparison")
        sensor = ctx.ref(m.values.get("sensor"), "'sensor'", "sensor")
        cmp = compare(m, ctx, "a sensor condition")
        for_, hyst = options(m, ctx)
        count = ctx.integer(m.values["count"], "'count'", lo=1) if "count" in m.values else None
        fresh = ctx.duration(m.values["fresh"], "'fresh'", positive=True) if "fresh" in m.values else None
        if sensor is None or cmp is None:
            return None
        return Comparison(sensor, cmp[0], cmp[1], for_, hyst, m.pos, count or 0, fresh)

    # -- meaning -----------------------------------------------------------------
    def key(self, c: Comparison) -> str:
        k = f"cmp:{c.sensor}:{c.op}:{threshold_text(c.value)}:{c.for_:g}:{c.hysteresis:g}"
        if c.count > 1:
            k += f":n{c.count}"
        if c.fresh is not None:
            k += f":f{c.fresh:g}"
        return k

    def sensors(self, c: Comparison) -> tuple[str, ...]:
        return (c.sensor,)

    def watched(self, c: Comparison) -> tuple[tuple[str, float | None], ...]:
        return ((c.sensor, c.fresh),)

    def native(self, c: Comparison) -> bool:
        return c.for_ <= 0 and c.hysteresis <= 0 and c.count <= 1 and c.fresh is None

    def fact(self, c: Comparison) -> str:
        return f"s:{c.sensor}" if self.native(c) else f"b:{self.key(c)}"

    def test(self, c: Comparison, negated: bool) -> dict[str, object]:
        if not self.native(c):
            return {"st": 0 if negated else 1}
        return {"$and": [{"ok": 1}, cmp_test(c.op, c.value, negated)]}

    def stateful(self, c: Comparison) -> bool:
        return c.for_ > 0 or c.hysteresis > 0 or c.count > 1

    def evaluate(self, c: Comparison, st: LeafState, inputs: Inputs, now: float,
                 reading: bool) -> tuple[Truth, float | None]:
        v = inputs.usable(c.sensor, now, c.fresh)
        lost = inputs.lost_at(c.sensor, c.fresh) if v is not None else None
        return judge(c, self.stateful(c), st, v, now, reading, lost)

    def describe(self, c: Comparison) -> str:
        s = f"{c.sensor} {op_text(c.op, c.value)}"
        if c.hysteresis:
            s += f" (hysteresis {c.hysteresis:g})"
        if c.count > 1:
            s += f", {c.count} readings in a row"
        if c.for_:
            s += f" for {c.for_:g}s"
        if c.fresh is not None:
            s += f" (fresh within {c.fresh:g}s)"
        return s


KIND = ComparisonKind()
