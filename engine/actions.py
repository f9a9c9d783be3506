"""The registry of action types (SPEC section 2, "Actions").

One ``ActionType`` per kind of action binds its selecting YAML key, the keys it
allows, its JSON Schema fragment, its builder and its documentation. The loader
dispatches through ``build_action``; the schema is generated from ``REGISTRY``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from engine.config.fields import Ctx, did_you_mean
from engine.config.source import YMap, YNode, YScalar, type_name
from engine.model import Action, EmergencyStop, Notify, SetActuator, Wait

Builder = Callable[[YMap, Ctx], Action | None]

NOTIFY_LEVELS = ("info", "warning", "critical")


@dataclass(frozen=True)
class ActionType:
    name: str
    selector: str
    keys: tuple[str, ...]
    schema: dict[str, Any]
    build: Builder
    doc: str
    example: str


def actuator_state(node: YNode | None, ctx: Ctx, what: str = "'set'",
                   allow_toggle: bool = True) -> float | Literal["toggle"] | None:
    """``on`` -> 1.0, ``off`` -> 0.0, ``toggle``, or a duty 0.0-1.0."""
    if node is None:
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


def _set(m: YMap, ctx: Ctx) -> Action | None:
    ctx.keys(m, ("actuator", "set", "for"), "an actuator action", required=("set",))
    ref = ctx.ref(m.values["actuator"], "'actuator'", "actuator")
    state = actuator_state(m.values.get("set"), ctx)
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


REGISTRY: tuple[ActionType, ...] = (
    ActionType(
        "set", "actuator", ("actuator", "set", "for"),
        _obj({"actuator": {"$ref": "#/$defs/actuator_ref"}, "set": {"$ref": "#/$defs/actuator_state"},
              "for": {"$ref": "#/$defs/duration"}}, ["actuator", "set"]),
        _set, "Switch an actuator: `set: on|off|toggle` or a PWM duty 0.0-1.0. With `for:`, "
        "the command carries that duration and the server sends OFF at its end. Every command "
        "passes the safety guard.",
        "{actuator: north.fan, set: on, for: 10m}",
    ),
    ActionType(
        "notify", "notify", ("notify", "level"),
        _obj({"notify": {"type": "string", "minLength": 1},
              "level": {"enum": list(NOTIFY_LEVELS)}}, ["notify"]),
        _notify, "Send a notification (level info, warning or critical; default info). `{REF}` in "
        "the text is replaced by the latest value of that sensor.",
        "{notify: \"North is hot: {north.air_temp} °C\", level: warning}",
    ),
    ActionType(
        "wait", "wait", ("wait",),
        _obj({"wait": {"$ref": "#/$defs/duration"}}, ["wait"]),
        _wait, "Pause before the next action of this run.",
        "{wait: 30s}",
    ),
    ActionType(
        "emergency_stop", "emergency_stop", ("emergency_stop", "reason"),
        _obj({"emergency_stop": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
              "reason": {"type": "string"}}, ["emergency_stop"]),
        _estop, "Latch an emergency stop on every device (`all`) or one device: every actuator "
        "goes off and stays off until a person resets it.",
        "{emergency_stop: all, reason: tank empty}",
    ),
)

BY_NAME: dict[str, ActionType] = {a.name: a for a in REGISTRY}
SELECTORS: tuple[str, ...] = tuple(a.selector for a in REGISTRY)


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
    defs["action"] = {"anyOf": [{"$ref": f"#/$defs/action_{a.name}"} for a in REGISTRY]}
    return defs
