"""The registry of condition kinds (SPEC section 2, "Conditions").

One ``Kind`` per kind of condition (one module in this package) binds its YAML
(selecting key(s), allowed keys, JSON Schema fragment, builder, documentation,
example) and its meaning (stable key, sensors read, how the Rete network tests
it, three-valued ``evaluate`` with its next due instant, ``describe``); see
engine/conditions/base.py. ``all``/``any``/``not`` are entries like any other.

The loader dispatches through ``build_condition``; ``schemas/rules.schema.json``
is generated from ``REGISTRY`` (``kaiser schema``); the compiler, the engines,
the guard and lint ask :func:`kind_of` what a leaf means. Adding a condition
kind is a model dataclass, one module here and one line in ``REGISTRY``.

The registry is a tuple, built once at import: no mutable module state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from engine.conditions import (
    actuator,
    change,
    comparison,
    device,
    difference,
    logic,
    no_data,
    time_window,
    triggers,
)
from engine.conditions.base import (
    FALSE,
    RANGE_OPS,
    S_ACTUATOR,
    S_CONDITION,
    S_DEVICE,
    S_DURATION,
    S_NUMBER,
    S_PAIR,
    S_SENSOR,
    S_TIME,
    SINGLE_OPS,
    TRUE,
    UNKNOWN,
    Kind,
    LeafState,
    Truth,
    all_of,
    any_of,
    not_of,
)
from engine.conditions.comparison import compare
from engine.config.fields import Ctx, did_you_mean
from engine.config.source import YMap, YNode, YSeq
from engine.model import COMPARE_OPS, All, Any_, Condition, Not

__all__ = [
    "BY_NAME", "FALSE", "RANGE_OPS", "REGISTRY", "SELECTORS", "SINGLE_OPS", "S_ACTUATOR", "S_CONDITION",
    "S_DEVICE", "S_DURATION", "S_NUMBER", "S_PAIR", "S_SENSOR", "S_TIME", "TRUE", "UNKNOWN", "Kind",
    "LeafState", "Truth", "build_condition", "compare", "condition_schema_defs", "describe", "kind_of",
    "leaves", "sensors_of", "truth_of",
]

#: ConditionType is the registry entry's type (the name the loader and schema know)
ConditionType = Kind

#: in selection order: the first whose selector key is present builds the mapping
REGISTRY: tuple[Kind, ...] = (
    logic.ALL,
    logic.ANY,
    logic.NOT,
    time_window.KIND,
    triggers.AT,
    triggers.EVERY,
    difference.KIND,
    device.KIND,
    actuator.KIND,
    change.KIND,
    no_data.KIND,
    comparison.KIND,
)

BY_NAME: dict[str, Kind] = {c.name: c for c in REGISTRY}
SELECTORS: tuple[str, ...] = tuple(s for c in REGISTRY for s in c.selectors)
_BY_MODEL: dict[type, Kind] = {m: c for c in REGISTRY for m in c.model}
#: selector -> the position in REGISTRY of the first kind that takes it (reversed: the first one wins)
_FIRST_BY_SELECTOR: dict[str, int] = {s: i for i, c in reversed(list(enumerate(REGISTRY))) for s in c.selectors}


def kind_of(c: Condition) -> Kind:
    """The registry entry of a model condition."""
    return _BY_MODEL[type(c)]


def build_condition(node: YNode, ctx: Ctx, under_not: bool = False) -> Condition | None:
    """A condition from YAML (a mapping, or a bare list meaning ``all``), best effort:
    every defect is reported, a bad item of ``all``/``any`` or a bad ``for``/
    ``hysteresis`` is left out, and None means nothing usable was left (its
    well-formed refs are then kept in ``ctx.probes``). Callers tell a complete
    condition by ``ctx.errors`` not growing."""
    if isinstance(node, YSeq):
        if not node.items:
            ctx.error("K204", "an empty list of conditions", node.pos)
            return None
        items = tuple(c for c in (build_condition(i, ctx) for i in node.items) if c is not None)
        return All(items, node.pos) if items else None
    m = ctx.map(node, "a condition")
    if m is None:
        return None
    # the first kind in REGISTRY with a selector among the keys (one look-up a key, not a scan)
    at = min((i for i in map(_FIRST_BY_SELECTOR.get, m.values) if i is not None), default=None)
    if at is not None:
        ct = REGISTRY[at]
        sel = next(s for s in ct.selectors if s in m.values)
        if ct.trigger and not ctx.triggers_allowed:
            where = "inside 'not'" if under_not else "in a 'while'"
            ctx.error("K208", f"{sel!r} is a trigger (an instant); it is not allowed {where}",
                      m.keys[sel], hint="use a time window: {time: {after: ..., before: ...}}")
            return None
        built = ct.build(m, ctx)
        if built is None:
            _probe(m, ctx)
        return built
    if not m.keys:
        ctx.error("K203", "an empty condition", m.pos)
        return None
    first, kpos = next(iter(m.keys.items()))
    ctx.error("K206", f"unknown condition {first!r}", kpos,
              hint=did_you_mean(first, (*SELECTORS, *COMPARE_OPS))
              or "conditions start with one of: " + ", ".join(SELECTORS))
    return None


def _probe(m: YMap, ctx: Ctx) -> None:
    """The refs of a condition that could not be built, for the semantic checks."""
    for key, kind in (("sensor", "sensor"), ("device", "device"), ("actuator", "actuator")):
        if key in m.values:
            ctx.probe(m.values[key], kind, m.pos)
    diff = m.values.get("difference")
    if isinstance(diff, YSeq) and len(diff.items) == 2:
        for item in diff.items:
            ctx.probe(item, "sensor", m.pos)


def condition_schema_defs() -> dict[str, Any]:
    """``$defs`` entries: one per condition kind, plus ``condition`` (any of them or a list)."""
    defs: dict[str, Any] = {f"condition_{c.name}": {"description": c.doc, **c.schema} for c in REGISTRY}
    defs["condition"] = {
        "anyOf": [{"$ref": f"#/$defs/condition_{c.name}"} for c in REGISTRY]
        + [{"type": "array", "items": {"$ref": "#/$defs/condition"}, "minItems": 1}],
    }
    return defs


# --------------------------------------------------------------------------
# Walking conditions


_GROUPS = (All, Any_)  # a tuple made once (``All | Any_`` makes a union a call)


def leaves(c: Condition) -> Iterator[Condition]:
    """Every leaf of a condition tree, left to right."""
    if isinstance(c, _GROUPS):
        for i in c.items:
            yield from leaves(i)
    elif isinstance(c, Not):
        yield from leaves(c.item)
    else:
        yield c


def sensors_of(c: Condition) -> list[str]:
    """Sensor refs a condition reads (in order, unique)."""
    out: list[str] = []
    for leaf in leaves(c):
        for r in kind_of(leaf).sensors(leaf):
            if r not in out:
                out.append(r)
    return out


def truth_of(c: Condition, leaf: Callable[[Condition], Truth]) -> Truth:
    """Three-valued truth of a condition tree, given each leaf's truth."""
    if isinstance(c, All):
        return all_of([truth_of(i, leaf) for i in c.items])
    if isinstance(c, Any_):
        return any_of([truth_of(i, leaf) for i in c.items])
    if isinstance(c, Not):
        return not_of(truth_of(c.item, leaf))
    return leaf(c)


def describe(c: Condition) -> str:
    """A condition for people: ``north.air_temp above 28 for 120s``."""
    return kind_of(c).describe(c)
