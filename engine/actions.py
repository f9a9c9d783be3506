"""The registry of action types (SPEC section 2, "Actions").

One ``ActionType`` per kind of action binds its selecting YAML key, the keys it
allows, its JSON Schema fragment, its builder, its documentation and its
meaning: ``describe`` (RuleRun.actions, for people), the ``sensors`` it reads (a
computed duty's ``follow``; the guard watches them) and the ``refs`` lint looks
up. The loader dispatches through ``build_action``; the schema is generated from
``REGISTRY``. Running actions is the engine's business (engine/core.py).

Also here, because both the engine and lint need them: computed duties
(:func:`duty`) and notification templates (:func:`template_refs`, :func:`render`).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from engine.config.fields import Ctx, did_you_mean
from engine.config.source import YMap, YNode, YScalar, type_name
from engine.model import Action, EmergencyStop, Follow, Notify, SetActuator, Wait

Builder = Callable[[YMap, Ctx], Action | None]

NOTIFY_LEVELS = ("info", "warning", "critical")
#: the default of a computed duty's ``step``: re-sent when it moved this much
FOLLOW_STEP = 0.05


def _type_name(a: Any) -> str:
    return type(a).__name__


def _no_sensors(a: Any) -> tuple[str, ...]:
    return ()


def _no_refs(a: Any) -> tuple[tuple[str, str], ...]:
    return ()


@dataclass(frozen=True)
class ActionType:
    name: str
    selector: str
    keys: tuple[str, ...]
    schema: dict[str, Any]
    build: Builder
    doc: str
    example: str
    #: meaning: a short summary for people (RuleRun.actions)
    describe: Callable[[Any], str] = _type_name
    #: sensor refs the action reads (a computed duty's ``follow``)
    sensors: Callable[[Any], tuple[str, ...]] = _no_sensors
    #: (kind, ref) pairs lint looks up
    refs: Callable[[Any], tuple[tuple[str, str], ...]] = _no_refs


def actuator_state(node: YNode | None, ctx: Ctx, what: str = "'set'",
                   allow_toggle: bool = True) -> float | Literal["toggle"] | None:
    """``on`` -> 1.0, ``off`` -> 0.0, ``toggle``, or a duty 0.0-1.0."""
    if node is None:
        return None
    if isinstance(node, YMap) and "follow" in node.values:
        ctx.error("K202", f"{what} here must be on, off or a number 0.0-1.0; a computed duty "
                  "({follow: ...}) belongs in a rule's actions", node.pos)
        return None
    if not isinstance(node, YScalar):
        ctx.error("K202", f"{what} must be on, off, toggle or a number 0.0-1.0, not {type_name(node)}",
                  node.pos)
        return None
    v = node.value
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if isinstance(v, str):
        s = v.strip().lower()
        if s == "on":
            return 1.0
        if s == "off":
            return 0.0
        if s == "toggle" and allow_toggle:
            return "toggle"
        choices = ("on", "off", "toggle") if allow_toggle else ("on", "off")
        hint = did_you_mean(s, choices)
        if s.endswith("%") and s[:-1].strip().replace(".", "", 1).isdigit():
            pct = float(s[:-1])
            hint = f"a duty is a fraction: if you meant {pct:g} %, write {pct / 100:g}"
        ctx.error("K204", f"{what} must be {', '.join(choices)} or a number 0.0-1.0, not "
                  f"{type_name(node)}", node.pos, hint=hint)
        return None
    if isinstance(v, int | float) and not 0.0 <= v <= 1.0:
        ctx.error("K204", f"{what} must be a duty 0.0-1.0, got {v}", node.pos, hint=duty_hint(v))
        return None
    return ctx.number(node, what, lo=0.0, hi=1.0)


def duty_hint(v: float) -> str:
    """The hint for a number outside 0.0-1.0: the percent reading only for a value
    that looks like a percent (a whole number 2-100), else the allowed values."""
    if float(v).is_integer() and 1 < v <= 100:
        return f"a duty is a fraction: if you meant {v:g} %, write {v / 100:g}"
    return "a duty is 0.0-1.0, or on/off"


def follow_state(m: YMap, ctx: Ctx) -> Follow | None:
    """``{follow: REF, map: [[x0, d0], [x1, d1], ...], step: 0.05}``: points with x
    increasing and duties 0.0-1.0 (at least two)."""
    ctx.keys(m, ("follow", "map", "step"), "a computed duty", required=("follow", "map"))
    sensor = ctx.ref(m.values.get("follow"), "'follow'", "sensor")
    points: list[tuple[float, float]] = []
    ok = True
    q = ctx.seq(m.values.get("map"), "'map'")
    if q is not None:
        if len(q.items) < 2:
            ctx.error("K204", "'map' needs at least two points [[x0, duty0], [x1, duty1]]", q.pos,
                      hint="for one fixed duty write set: 0.6")
            ok = False
        for item in q.items:
            pair = ctx.pair(item, "a 'map' point [x, duty]")
            if pair is None:
                ok = False
                continue
            x, d = pair
            if not 0.0 <= d <= 1.0:
                ctx.error("K204", f"a 'map' duty must be 0.0-1.0, got {d:g}", item.pos, hint=duty_hint(d))
                ok = False
                continue
            if points and x <= points[-1][0]:
                ctx.error("K204", f"'map' points must be sorted by x: {x:g} comes after {points[-1][0]:g}",
                          item.pos, hint="list the points from the lowest reading to the highest")
                ok = False
                continue
            points.append((x, d))
    elif "map" in m.values:
        ok = False
    step = FOLLOW_STEP
    if "step" in m.values:
        st = ctx.number(m.values["step"], "'step'", lo=0.0, hi=1.0)
        if st is not None and st <= 0:
            ctx.error("K204", "'step' must be more than 0", m.values["step"].pos)
            st = None
        step = st if st is not None else FOLLOW_STEP
    if sensor is None or not ok or len(points) < 2:
        return None
    return Follow(sensor, tuple(points), step, m.pos)


def duty(f: Follow, x: float) -> float:
    """The duty for reading ``x``: linear between the points, flat beyond the ends,
    rounded to 3 decimals."""
    pts = f.points
    if x <= pts[0][0]:
        d = pts[0][1]
    elif x >= pts[-1][0]:
        d = pts[-1][1]
    else:
        d = pts[-1][1]
        for (x0, d0), (x1, d1) in itertools.pairwise(pts):
            if x0 <= x <= x1:
                d = d0 + (d1 - d0) * (x - x0) / (x1 - x0)
                break
    return round(min(1.0, max(0.0, d)), 3)


def _set(m: YMap, ctx: Ctx) -> Action | None:
    ctx.keys(m, ("actuator", "set", "for"), "an actuator action", required=("set",))
    ref = ctx.ref(m.values["actuator"], "'actuator'", "actuator")
    node = m.values.get("set")
    state: float | Literal["toggle"] | Follow | None
    if isinstance(node, YMap) and ("follow" in node.values or "map" in node.values):
        state = follow_state(node, ctx)
    else:
        state = actuator_state(node, ctx)
    for_ = ctx.duration(m.values["for"], "'for'", positive=True) if "for" in m.values else None
    if ref is None or state is None:
        return None
    return SetActuator(ref, state, for_, m.pos)  # a bad 'for' is left out (and reported)


def _notify(m: YMap, ctx: Ctx) -> Action | None:
    ctx.keys(m, ("notify", "level"), "a notify action")
    text = ctx.text(m.values["notify"], "'notify'")
    level = ctx.choice(m.values["level"], "'level'", NOTIFY_LEVELS) if "level" in m.values else "info"
    if text is None:
        return None
    return Notify(text, level or "info", m.pos)


def _wait(m: YMap, ctx: Ctx) -> Action | None:
    ctx.keys(m, ("wait",), "a wait action")
    d = ctx.duration(m.values["wait"], "'wait'", positive=True)
    return None if d is None else Wait(d, m.pos)


def _estop(m: YMap, ctx: Ctx) -> Action | None:
    ctx.keys(m, ("emergency_stop", "reason"), "an emergency_stop action")
    target = ctx.ref(m.values["emergency_stop"], "'emergency_stop'", "device")
    reason = ctx.text(m.values["reason"], "'reason'") if "reason" in m.values else ""
    if target is None:
        return None
    return EmergencyStop(target, reason or "", m.pos)


def _obj(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


# --------------------------------------------------------------------------
# Notification templates: {REF} and {REF:FORMAT}

#: ``{north.air_temp}`` or ``{north.air_temp:.1f}``: a ref (it has a dot) and a format spec
TEMPLATE = re.compile(r"\{([A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)+)(?::([^{}]*))?\}")


def template_refs(text: str) -> list[tuple[str, str | None, str]]:
    """(ref, format spec or None, the placeholder as written) of every placeholder."""
    return [(m.group(1), m.group(2), m.group(0)) for m in TEMPLATE.finditer(text)]


def format_error(spec: str) -> str | None:
    """Why a format spec cannot format a reading (a float), or None when it can."""
    try:
        format(1.5, spec)
    except (ValueError, TypeError) as e:
        return str(e)
    return None


def render(text: str, lookup: Callable[[str], float | str | None]) -> str:
    """Replace each ``{REF}`` / ``{REF:FORMAT}`` by ``lookup(ref)``: a number is
    written with FORMAT (``%g`` without one, or when FORMAT does not fit), text as
    it is; None leaves the placeholder as written."""
    def sub(m: re.Match[str]) -> str:
        v = lookup(m.group(1))
        if v is None:
            return m.group(0)
        if isinstance(v, str):
            return v
        spec = m.group(2)
        if spec and math.isfinite(v):
            try:
                return format(v, spec)
            except (ValueError, TypeError):
                pass
        return f"{v:g}"

    return TEMPLATE.sub(sub, text)


# --------------------------------------------------------------------------
# Meaning


def state_text(state: float | str | Follow) -> str:
    if isinstance(state, Follow):
        pts = ", ".join(f"[{x:g}, {d:g}]" for x, d in state.points)
        return f"following {state.sensor} (map {pts})"
    if state == "toggle" or isinstance(state, str):
        return str(state)
    return "on" if state == 1.0 else "off" if state == 0.0 else f"{state:g}"


def _describe_set(a: SetActuator) -> str:
    return f"set {a.actuator} {state_text(a.state)}" + (f" for {a.for_:g}s" if a.for_ else "")


def _set_sensors(a: SetActuator) -> tuple[str, ...]:
    return (a.state.sensor,) if isinstance(a.state, Follow) else ()


def _set_refs(a: SetActuator) -> tuple[tuple[str, str], ...]:
    return (("actuator", a.actuator), *(("sensor", s) for s in _set_sensors(a)))


def _notify_refs(a: Notify) -> tuple[tuple[str, str], ...]:
    return tuple(("template", ref) for ref, _, _ in template_refs(a.text))


def _estop_refs(a: EmergencyStop) -> tuple[tuple[str, str], ...]:
    return () if a.target == "all" else (("device", a.target),)


REGISTRY: tuple[ActionType, ...] = (
    ActionType(
        "set", "actuator", ("actuator", "set", "for"),
        _obj({"actuator": {"$ref": "#/$defs/actuator_ref"},
              "set": {"anyOf": [{"$ref": "#/$defs/actuator_state"}, {"$ref": "#/$defs/computed_duty"}]},
              "for": {"$ref": "#/$defs/duration"}}, ["actuator", "set"]),
        _set, "Switch an actuator: `set: on|off|toggle`, a PWM duty 0.0-1.0, or a duty computed from a "
        "sensor: `set: {follow: REF, map: [[x0, d0], [x1, d1]], step: 0.05}` (piecewise linear, flat "
        "beyond the ends, 3 decimals; in a `hold` it tracks the sensor and is re-sent when it moves by "
        "`step`). With `for:`, the command carries that duration and the server sends OFF at its end. "
        "Every command passes the safety guard.",
        "{actuator: north.fan, set: on, for: 10m}",
        _describe_set, _set_sensors, _set_refs,
    ),
    ActionType(
        "notify", "notify", ("notify", "level"),
        _obj({"notify": {"type": "string", "minLength": 1},
              "level": {"enum": list(NOTIFY_LEVELS)}}, ["notify"]),
        _notify, "Send a notification (level info, warning or critical; default info). `{REF}` in "
        "the text is replaced by the latest value of that sensor (`{REF:.1f}`: with a format).",
        "{notify: \"North is hot: {north.air_temp:.1f} °C\", level: warning}",
        lambda a: f"notify {a.level}: {a.text}", _no_sensors, _notify_refs,
    ),
    ActionType(
        "wait", "wait", ("wait",),
        _obj({"wait": {"$ref": "#/$defs/duration"}}, ["wait"]),
        _wait, "Pause before the next action of this run.",
        "{wait: 30s}",
        lambda a: f"wait {a.duration:g}s",
    ),
    ActionType(
        "emergency_stop", "emergency_stop", ("emergency_stop", "reason"),
        _obj({"emergency_stop": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
              "reason": {"type": "string"}}, ["emergency_stop"]),
        _estop, "Latch an emergency stop on every device (`all`) or one device: every actuator "
        "goes off and stays off until a person resets it.",
        "{emergency_stop: all, reason: tank empty}",
        lambda a: f"emergency_stop {a.target}: {a.reason}", _no_sensors, _estop_refs,
    ),
)

BY_NAME: dict[str, ActionType] = {a.name: a for a in REGISTRY}
SELECTORS: tuple[str, ...] = tuple(a.selector for a in REGISTRY)
_BY_MODEL: dict[type, ActionType] = {SetActuator: BY_NAME["set"], Notify: BY_NAME["notify"],
                                     Wait: BY_NAME["wait"], EmergencyStop: BY_NAME["emergency_stop"]}


def type_of(a: Action) -> ActionType:
    """The registry entry of a model action."""
    return _BY_MODEL[type(a)]


def describe(a: Action) -> str:
    """A short summary for people: ``set north.fan on for 600s``."""
    return type_of(a).describe(a)


def action_sensors(a: Action) -> tuple[str, ...]:
    """Sensor refs an action reads (a computed duty's ``follow``)."""
    return type_of(a).sensors(a)


def build_action(node: YNode, ctx: Ctx) -> Action | None:
    """One action from its YAML mapping, best effort: every defect is reported; a bad
    optional part (``for``, ``level``, ``reason``) is left out, and None means nothing
    usable was left (its well-formed refs are then kept in ``ctx.probes``). Callers
    tell a complete action by ``ctx.errors`` not growing."""
    m = ctx.map(node, "an action")
    if m is None:
        return None
    for at in REGISTRY:
        if at.selector in m.values:
            built = at.build(m, ctx)
            if built is None:
                if "actuator" in m.values:
                    ctx.probe(m.values["actuator"], "actuator", m.pos)
                target = m.values.get("emergency_stop")
                if not (isinstance(target, YScalar) and target.value == "all"):
                    ctx.probe(target, "device", m.pos)
            return built
    if not m.keys:
        ctx.error("K203", "an empty action", m.pos)
        return None
    first, kpos = next(iter(m.keys.items()))
    hint = did_you_mean(first, SELECTORS)
    if not hint and first == "set":
        hint = "name the actuator: {actuator: north.fan, set: on}"
    ctx.error("K207", f"unknown action {first!r}", kpos,
              hint=hint or "actions start with one of: " + ", ".join(SELECTORS))
    return None


def action_schema_defs() -> dict[str, Any]:
    defs: dict[str, Any] = {f"action_{a.name}": {"description": a.doc, **a.schema} for a in REGISTRY}
    defs["computed_duty"] = {
        "description": "a duty computed from a sensor: piecewise linear through the map's [reading, duty] "
                       "points (x increasing), flat beyond the ends; in a hold re-sent when it moves by step",
        **_obj({"follow": {"$ref": "#/$defs/sensor_ref"},
                "map": {"type": "array", "minItems": 2,
                        "items": {"type": "array", "minItems": 2, "maxItems": 2,
                                  "prefixItems": [{"type": "number"},
                                                  {"type": "number", "minimum": 0, "maximum": 1}]}},
                "step": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": FOLLOW_STEP}},
               ["follow", "map"]),
    }
    defs["action"] = {"anyOf": [{"$ref": f"#/$defs/action_{a.name}"} for a in REGISTRY]}
    return defs
