"""The registry of condition types (SPEC section 2, "Conditions").

One ``ConditionType`` per kind of condition binds: the YAML key(s) that select
it, the keys it allows, its JSON Schema fragment (``schemas/rules.schema.json``
is generated from these), its builder (positioned YAML mapping -> model object,
appending diagnostics) and its documentation. ``all``/``any``/``not`` are
entries like any other. The loader dispatches through ``build_condition``.

The registry is a tuple, built once at import: no mutable module state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.config.fields import Ctx, did_you_mean
from engine.config.source import YMap, YNode, YScalar, YSeq, type_name
from engine.model import (
    COMPARE_OPS,
    ActuatorIs,
    All,
    Any_,
    At,
    Change,
    Comparison,
    Condition,
    DeviceIs,
    Difference,
    Every,
    NoData,
    Not,
    TimeWindow,
)
from engine.units import WEEKDAYS, parse_weekday

Builder = Callable[[YMap, Ctx], Condition | None]

SINGLE_OPS = ("above", "below", "at_least", "at_most", "equals")
RANGE_OPS = ("between", "outside")

# JSON Schema building blocks (the $defs are written by engine.config.schema)
S_NUMBER: dict[str, Any] = {"type": "number"}
S_PAIR: dict[str, Any] = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
S_DURATION: dict[str, Any] = {"$ref": "#/$defs/duration"}
S_SENSOR: dict[str, Any] = {"$ref": "#/$defs/sensor_ref"}
S_ACTUATOR: dict[str, Any] = {"$ref": "#/$defs/actuator_ref"}
S_DEVICE: dict[str, Any] = {"$ref": "#/$defs/device_ref"}
S_TIME: dict[str, Any] = {"$ref": "#/$defs/time_of_day"}
S_CONDITION: dict[str, Any] = {"$ref": "#/$defs/condition"}


@dataclass(frozen=True)
class ConditionType:
    name: str
    #: the presence of any of these keys selects this type (checked in registry order)
    selectors: tuple[str, ...]
    #: every key this type accepts
    keys: tuple[str, ...]
    schema: dict[str, Any]
    build: Builder
    doc: str
    example: str
    #: ``at``/``every``: only allowed in a ``when``
    trigger: bool = False


def _op_schema() -> dict[str, Any]:
    props: dict[str, Any] = {op: S_NUMBER for op in SINGLE_OPS}
    props.update({op: S_PAIR for op in RANGE_OPS})
    return props


def _one_op_schema() -> list[dict[str, Any]]:
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


_KNOWN_KEYS = frozenset(("sensor", "difference", "for", "hysteresis", *COMPARE_OPS))


def _comparison(m: YMap, ctx: Ctx) -> Condition | None:
    ctx.keys(m, _COMPARISON_KEYS, "a sensor comparison")
    sensor = ctx.ref(m.values.get("sensor"), "'sensor'", "sensor")
    cmp = compare(m, ctx, "a sensor condition")
    for_, hyst = _options(m, ctx)
    if sensor is None or cmp is None:
        return None
    return Comparison(sensor, cmp[0], cmp[1], for_, hyst, m.pos)


def _options(m: YMap, ctx: Ctx) -> tuple[float, float]:
    """``for`` and ``hysteresis`` of a comparison; a bad one is reported and left out (0)."""
    for_ = ctx.duration(m.values["for"], "'for'") if "for" in m.values else 0.0
    hyst = ctx.number(m.values["hysteresis"], "'hysteresis'", lo=0) if "hysteresis" in m.values else 0.0
    return for_ or 0.0, hyst or 0.0


_COMPARISON_KEYS = ("sensor", *COMPARE_OPS, "for", "hysteresis")


def _difference(m: YMap, ctx: Ctx) -> Condition | None:
    ctx.keys(m, _DIFFERENCE_KEYS, "a difference condition")
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
    for_, hyst = _options(m, ctx)
    if len(refs) != 2 or cmp is None:
        return None
    return Difference(refs[0], refs[1], cmp[0], cmp[1], for_, hyst, m.pos)


_DIFFERENCE_KEYS = ("difference", *COMPARE_OPS, "for", "hysteresis")


def _change(m: YMap, ctx: Ctx) -> Condition | None:
    ctx.keys(m, ("sensor", "rises_by", "falls_by", "within"), "a change condition",
             required=("sensor", "within"))
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


def _no_data(m: YMap, ctx: Ctx) -> Condition | None:
    ctx.keys(m, ("sensor", "no_data_for"), "a no-data condition", required=("sensor",))
    sensor = ctx.ref(m.values.get("sensor"), "'sensor'", "sensor")
    d = ctx.duration(m.values["no_data_for"], "'no_data_for'", positive=True)
    if sensor is None or d is None:
        return None
    return NoData(sensor, d, m.pos)


def _device_is(m: YMap, ctx: Ctx) -> Condition | None:
    ctx.keys(m, ("device", "is"), "a device condition", required=("is",))
    device = ctx.ref(m.values["device"], "'device'", "device")
    state = ctx.choice(m.values.get("is"), "'is'", ("online", "offline"))
    if device is None or state is None:
        return None
    return DeviceIs(device, state == "online", m.pos)


def _actuator_is(m: YMap, ctx: Ctx) -> Condition | None:
    ctx.keys(m, ("actuator", "is"), "an actuator condition", required=("is",))
    act = ctx.ref(m.values["actuator"], "'actuator'", "actuator")
    state = ctx.choice(m.values.get("is"), "'is'", ("on", "off"))
    if act is None or state is None:
        return None
    return ActuatorIs(act, state == "on", m.pos)


def _time(m: YMap, ctx: Ctx) -> Condition | None:
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


def _at(m: YMap, ctx: Ctx) -> Condition | None:
    ctx.keys(m, ("at",), "an 'at' trigger")
    minute = ctx.time_of_day(m.values["at"], "'at'")
    return None if minute is None else At(minute, m.pos)


def _every(m: YMap, ctx: Ctx) -> Condition | None:
    ctx.keys(m, ("every",), "an 'every' trigger")
    d = ctx.duration(m.values["every"], "'every'", positive=True)
    return None if d is None else Every(d, m.pos)


def _items(m: YMap, ctx: Ctx, key: str) -> tuple[Condition, ...] | None:
    ctx.keys(m, (key,), f"an {key!r} condition")
    q = ctx.seq(m.values[key], f"{key!r}")
    if q is None:
        return None
    if not q.items:
        ctx.error("K204", f"{key!r} needs at least one condition", q.pos)
        return None
    items = tuple(c for c in (build_condition(i, ctx) for i in q.items) if c is not None)
    return items or None  # the bad items are reported and left out


def _all(m: YMap, ctx: Ctx) -> Condition | None:
    items = _items(m, ctx, "all")
    return None if items is None else All(items, m.pos)


def _any(m: YMap, ctx: Ctx) -> Condition | None:
    items = _items(m, ctx, "any")
    return None if items is None else Any_(items, m.pos)


def _not(m: YMap, ctx: Ctx) -> Condition | None:
    ctx.keys(m, ("not",), "a 'not' condition")
    saved = ctx.triggers_allowed
    ctx.triggers_allowed = False  # "not at 06:30" is not an instant
    try:
        item = build_condition(m.values["not"], ctx, under_not=True)
    finally:
        ctx.triggers_allowed = saved
    return None if item is None else Not(item, m.pos)


def _obj(props: dict[str, Any], required: list[str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    s: dict[str, Any] = {"type": "object", "properties": props, "required": required,
                         "additionalProperties": False}
    if extra:
        s.update(extra)
    return s


REGISTRY: tuple[ConditionType, ...] = (
    ConditionType(
        "all", ("all",), ("all",),
        _obj({"all": {"type": "array", "items": S_CONDITION, "minItems": 1}}, ["all"]),
        _all, "True when every listed condition is true. A bare list means `all`.",
        "all:\n  - {sensor: north.air_temp, above: 28}\n  - {sensor: north.humidity, below: 60}",
    ),
    ConditionType(
        "any", ("any",), ("any",),
        _obj({"any": {"type": "array", "items": S_CONDITION, "minItems": 1}}, ["any"]),
        _any, "True when at least one listed condition is true.",
        "any:\n  - {sensor: north.air_temp, above: 35}\n  - {device: north, is: offline}",
    ),
    ConditionType(
        "not", ("not",), ("not",),
        _obj({"not": S_CONDITION}, ["not"]),
        _not, "True when the inner condition is false (triggers are not allowed inside).",
        "not: {time: {after: \"22:00\", before: \"06:00\"}}",
    ),
    ConditionType(
        "time", ("time",), ("time",),
        _obj({"time": _obj({
            "after": S_TIME, "before": S_TIME,
            "weekdays": {"type": "array", "items": {"$ref": "#/$defs/weekday"}, "minItems": 1},
        }, [], {"minProperties": 1})}, ["time"]),
        _time, "True inside a daily time window (local time, `[kaiser] tz`). `after`/`before` are "
        "\"HH:MM\"; a window with before < after spans midnight; `weekdays` limits the days.",
        "time: {after: \"06:00\", before: \"22:00\", weekdays: [mon, tue, wed, thu, fri]}",
    ),
    ConditionType(
        "at", ("at",), ("at",),
        _obj({"at": S_TIME}, ["at"]),
        _at, "Trigger: an instant every day at this local time. Only in `when`.",
        "at: \"06:30\"", trigger=True,
    ),
    ConditionType(
        "every", ("every",), ("every",),
        _obj({"every": S_DURATION}, ["every"]),
        _every, "Trigger: an instant every DURATION. Only in `when`.",
        "every: 15m", trigger=True,
    ),
    ConditionType(
        "difference", ("difference",), _DIFFERENCE_KEYS,
        _obj({"difference": {"type": "array", "items": S_SENSOR, "minItems": 2, "maxItems": 2},
              **_op_schema(), "for": S_DURATION, "hysteresis": {"type": "number", "minimum": 0}},
             ["difference"], {"oneOf": _one_op_schema()}),
        _difference, "Compares A - B of two sensors, with the same operators and options as a "
        "sensor comparison.",
        "{difference: [north.air_temp, outside.air_temp], above: 8}",
    ),
    ConditionType(
        "device", ("device",), ("device", "is"),
        _obj({"device": S_DEVICE, "is": {"enum": ["online", "offline"]}}, ["device", "is"]),
        _device_is, "True while the device is online (heartbeat or data within "
        "`offline_after`) or offline.",
        "{device: north, is: offline}",
    ),
    ConditionType(
        "actuator", ("actuator",), ("actuator", "is"),
        _obj({"actuator": S_ACTUATOR, "is": {"enum": ["on", "off"]}}, ["actuator", "is"]),
        _actuator_is, "True while the actuator's state, as reported by the device, is on or off.",
        "{actuator: north.pump, is: on}",
    ),
    ConditionType(
        "change", ("rises_by", "falls_by"), ("sensor", "rises_by", "falls_by", "within"),
        _obj({"sensor": S_SENSOR, "rises_by": {"type": "number", "exclusiveMinimum": 0},
              "falls_by": {"type": "number", "exclusiveMinimum": 0}, "within": S_DURATION},
             ["sensor", "within"], {"oneOf": [{"required": ["rises_by"]}, {"required": ["falls_by"]}]}),
        _change, "True when the sensor's value rose (or fell) by at least the amount within the "
        "time span.",
        "{sensor: north.soil, falls_by: 10, within: 30m}",
    ),
    ConditionType(
        "no_data", ("no_data_for",), ("sensor", "no_data_for"),
        _obj({"sensor": S_SENSOR, "no_data_for": S_DURATION}, ["sensor", "no_data_for"]),
        _no_data, "True when the sensor has sent no reading for the duration (a sensor that "
        "never reported counts as silent from the start).",
        "{sensor: north.air_temp, no_data_for: 5m}",
    ),
    ConditionType(
        "comparison", ("sensor",), _COMPARISON_KEYS,
        _obj({"sensor": S_SENSOR, **_op_schema(), "for": S_DURATION,
              "hysteresis": {"type": "number", "minimum": 0}},
             ["sensor"], {"oneOf": _one_op_schema()}),
        _comparison, "Compares a sensor's latest fresh reading: `above`, `below`, `at_least`, "
        "`at_most`, `equals` (a number), `between`, `outside` ([low, high]). `for: DURATION`: "
        "held continuously that long. `hysteresis: h`: once true, stays true until the value is "
        "h back past the threshold. Readings with quality bad/stale, or older than `stale_after`, "
        "satisfy no comparison.",
        "{sensor: north.air_temp, above: 28, for: 2m, hysteresis: 1}",
    ),
)

BY_NAME: dict[str, ConditionType] = {c.name: c for c in REGISTRY}
SELECTORS: tuple[str, ...] = tuple(s for c in REGISTRY for s in c.selectors)


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
    for ct in REGISTRY:
        sel = next((s for s in ct.selectors if s in m.values), None)
        if sel is None:
            continue
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
    """``$defs`` entries: one per condition type, plus ``condition`` (any of them or a list)."""
    defs: dict[str, Any] = {f"condition_{c.name}": {"description": c.doc, **c.schema} for c in REGISTRY}
    defs["condition"] = {
        "anyOf": [{"$ref": f"#/$defs/condition_{c.name}"} for c in REGISTRY]
        + [{"type": "array", "items": {"$ref": "#/$defs/condition"}, "minItems": 1}],
    }
    return defs
