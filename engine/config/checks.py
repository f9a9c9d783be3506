"""Semantic lint checks over a loaded deployment (codes K4xx; docs/lint.md).

``run_checks(deployment)`` looks at the model only (the loader already reported
syntax, schema and duplicate names) and returns every finding, each at the
position of the model object it is about, with a second position in
``related`` when two places conflict.

Errors mean the server refuses to load the configuration; warnings mean it
loads but a person should look. The checks are linear in the size of the
deployment: references are indexed in dicts, and the opposite-state check only
compares rules that drive the same actuator at the same priority.
"""

from __future__ import annotations

import difflib
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from engine.config.boards import ANALOG_TYPES, BOARDS, Board, board, pin_ranges
from engine.config.firmware_checks import firmware
from engine.diagnostics import Diagnostic, Severity
from engine.model import (
    NOWHERE,
    Action,
    Actuator,
    ActuatorIs,
    ActuatorLimits,
    All,
    Any_,
    At,
    Change,
    Code,
    Comparison,
    Condition,
    Deployment,
    Device,
    DeviceIs,
    Difference,
    Every,
    Follow,
    Interlock,
    Not,
    Notify,
    Position,
    Rule,
    RuleTest,
    Sensor,
    SetActuator,
    TimeWindow,
    Wait,
)
from engine.units import format_duration

# --------------------------------------------------------------------------
# Codes (stable; every one is documented in docs/lint.md)

UNKNOWN_SENSOR = "K401"
UNKNOWN_ACTUATOR = "K402"
UNKNOWN_DEVICE = "K403"
UNKNOWN_RULE = "K404"
UNKNOWN_TEMPLATE_REF = "K405"
UNKNOWN_BLOCK_REASON = "K406"
BAD_TEMPLATE_FORMAT = "K407"

GPIO_CONFLICT = "K410"
BUS_ADDRESS_CONFLICT = "K411"
RESERVED_PIN = "K412"
INPUT_ONLY_PIN = "K413"
UNKNOWN_PIN = "K414"
TOO_MANY_SENSORS = "K415"
TOO_MANY_ACTUATORS = "K416"
UNKNOWN_BOARD = "K417"
I2C_PIN = "K418"
ADC_PIN = "K419"

VALUE_OUT_OF_RANGE = "K420"
VALUE_OUTSIDE_PWM = "K421"
FRACTIONAL_ON_OFF = "K422"
BAD_PWM_LIMIT = "K423"
FOR_OVER_MAX_RUNTIME = "K424"
FOR_ON_OFF = "K425"
DUTY_ON_SWITCH = "K426"
MAP_OUTSIDE_PWM = "K427"

OPPOSITE_STATES = "K430"
INTERLOCK_TOGETHER = "K431"
INTERLOCK_NEVER_ALLOWS = "K432"
INTERLOCK_DEGENERATE = "K433"

EMPTY_RANGE = "K440"
NEVER_IN_RANGE = "K441"
ALWAYS_IN_RANGE = "K442"
NEGATIVE_HYSTERESIS = "K443"
HUGE_HYSTERESIS = "K444"
CONTRADICTION = "K445"
IMPOSSIBLE_CHANGE = "K446"

EMPTY_WINDOW = "K450"
NO_WEEKDAYS = "K451"
TRIGGER_IN_WHILE = "K452"
TRIGGER_UNDER_NOT = "K453"
EVERY_TOO_SHORT = "K454"

EXPECT_UNREACHABLE = "K460"
TEST_EXPECTS_NOTHING = "K461"
TEST_STEPS_UNORDERED = "K462"

RULE_DISABLED = "K470"
ACTUATOR_UNUSED = "K471"
UNKNOWN_CALIBRATION = "K472"

INTERNAL = "K499"

_ON_OFF_TYPES = ("pump", "relay")
#: actuator types a computed duty may drive
_DUTY_TYPES = ("pwm", "valve")

# --------------------------------------------------------------------------
# Entry point


@dataclass(frozen=True)
class Gaps:
    """What the loader could build only in part; every missing part has its own
    error already. ``engine.config.loader.load`` fills it in for ``kaiser lint``,
    which checks everything that was built (``Loaded.checked``), so that a defect
    never hides another one, without the checks cascading from the missing parts.

    Items are named by their position (a rule's, test's or interlock's mapping).
    """

    #: rules, tests and interlocks with a part left out: the checks that need the
    #: whole item (opposite states, interlocks within a rule's actions, "never_together
    #: needs two", "expects nothing") skip them
    items: frozenset[Position] = frozenset()
    #: rules whose condition lost a part: no reasoning over the whole condition
    #: (contradictions, "only_if never allows")
    conditions: frozenset[Position] = frozenset()
    #: devices (``north``), sensors and actuators (``north.fan``) that are declared
    #: but could not be built: refs to them (and below them) are not "unknown"
    refs: frozenset[str] = frozenset()
    #: (kind, ref, position) of conditions and actions that could not be built:
    #: their refs are still looked up (kind: sensor, actuator or device)
    probes: tuple[tuple[str, str, Position], ...] = ()
    #: device bodies checked for pins, GPIO conflicts and calibration only (not as
    #: ref targets): a duplicate device, or a device with its duplicate sensors and
    #: actuators added
    devices: tuple[Device, ...] = ()
    #: names written in files the loader could not parse (YAML syntax errors): a test
    #: naming one of them gets no K404 (one mistake, one finding); None: a file could
    #: not even be read, so no rule name is known to be missing
    rules: frozenset[str] | None = frozenset()


NO_GAPS = Gaps()


def run_checks(deployment: Deployment, *, partial: bool = False, gaps: Gaps = NO_GAPS) -> list[Diagnostic]:
    """Every semantic finding about ``deployment`` (K4xx codes), in check order.

    ``partial``: the loader reported errors and skipped the items it could not
    build. Then the warnings that rest on something being *absent* (an actuator no
    rule uses, an expected command no rule sends) are left out: the skipped items
    may be exactly what uses it. Callers pass ``partial=any(d.is_error for d in
    loader_findings)``.

    ``gaps``: what the loader built only in part (see ``Gaps``); ``kaiser lint``
    passes the loader's ``Loaded.checked`` deployment with its ``Loaded.gaps``.

    Never raises: a check that fails unexpectedly becomes a K499 warning naming it.
    """
    out: list[Diagnostic] = []
    try:
        ctx = _Context(deployment, out, partial, gaps)
    except Exception as exc:
        return [_internal("index", exc)]
    for check in _CHECKS:
        try:
            check(ctx)
        except Exception as exc:
            out.append(_internal(check.__name__.lstrip("_"), exc))
        if check is _references and any(d.is_error for d in out):
            # an unknown ref is a use that went astray: "no rule uses this actuator"
            # would only repeat it
            ctx.partial = True
    return out


def _internal(name: str, exc: Exception) -> Diagnostic:
    return Diagnostic(
        INTERNAL,
        "warning",
        f"lint check {name!r} failed: {type(exc).__name__}: {exc}",
        hint="this is a bug in kaiser lint; the other checks ran",
    )


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``did you mean X?`` for the closest candidate, or "" when none is close."""
    best = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"did you mean {best[0]}?" if best else ""


# --------------------------------------------------------------------------
# The index every check shares


@dataclass
class _Quantity:
    """What lint knows about one reading ref: its sensor and physical range."""

    sensor: Sensor
    name: str | None
    lo: float | None = None
    hi: float | None = None
    unit: str = ""


class _Context:
    def __init__(self, dep: Deployment, out: list[Diagnostic], partial: bool = False,
                 gaps: Gaps = NO_GAPS) -> None:
        self.dep = dep
        self.out = out
        self.partial = partial
        self.gaps = gaps
        self.readings: dict[str, _Quantity] = {}
        self.multi: dict[str, Sensor] = {}  # base ref of a multi-value chip
        self.actuators: dict[str, Actuator] = {}
        self.devices = dict(dep.devices)
        self.rules = {r.name: r for r in dep.rules}
        for dev in dep.devices.values():
            for a in dev.actuators:
                self.actuators.setdefault(a.ref, a)
            for s in dev.sensors:
                if s.quantities:
                    self.multi.setdefault(s.ref, s)
                for ref in s.refs():
                    q = (s.quantities and ref.rsplit(".", 1)[1]) or None
                    self.readings.setdefault(ref, _quantity(s, q))
        self._facts: dict[int, _Facts] = {}
        # "did you mean" looks only among the refs of the device named (fast on
        # big deployments, and the right suggestion anyway); hints are cached
        self._by_device: dict[str, list[str]] = defaultdict(list)
        for ref in [*self.readings, *self.actuators]:
            self._by_device[ref.partition(".")[0]].append(ref)
        self._hints: dict[tuple[str, str], str] = {}
        self._quantities: frozenset[str] | None = None  # every sensor type's quantity names

    def suggest(self, ref: str, among: Mapping[str, object]) -> str:
        """The closest known ref of the same kind, preferring the same device."""
        key = (ref, "s" if among is self.readings else "a")
        hint = self._hints.get(key)
        if hint is None:
            dev = ref.partition(".")[0]
            if dev in self.devices:
                hint = did_you_mean(ref, [r for r in self._by_device.get(dev, ()) if r in among])
            else:
                hint = did_you_mean(dev, self.devices)
                hint = f"no device {dev!r}; {hint}" if hint else f"no device {dev!r}"
            self._hints[key] = hint
        return hint

    def emit(
        self,
        code: str,
        severity: Severity,
        message: str,
        pos: Position,
        hint: str = "",
        related: Position | None = None,
    ) -> None:
        self.out.append(Diagnostic(code, severity, message, pos, hint, related))

    def unbuilt(self, ref: str) -> bool:
        """``ref`` is (under) a declared device, sensor or actuator the loader could not
        build. A quantity under an unbuilt sensor counts only when some sensor type
        has a quantity of that name (``north.climate.temperaturex`` is a typo whatever
        the chip)."""
        if not self.gaps.refs:
            return False
        parts = ref.split(".")
        for n in range(1, len(parts) + 1):
            if ".".join(parts[:n]) in self.gaps.refs:
                return not (n == 2 and len(parts) == 3 and parts[2] not in self._quantity_names())
        return False

    def _quantity_names(self) -> frozenset[str]:
        if self._quantities is None:
            try:
                from sensors import registry

                self._quantities = frozenset(q.name for t in registry.types().values() for q in t.quantities)
            except Exception:  # an unusable sensor registry must not stop lint
                self._quantities = frozenset()
        return self._quantities

    def complete(self, item: Rule | Interlock | RuleTest) -> bool:
        return item.pos not in self.gaps.items

    # reference checks, shared by every place a ref appears ----------------
    def sensor(self, ref: str, pos: Position, what: str = "sensor") -> _Quantity | None:
        q = self.readings.get(ref)
        if q is not None or self.unbuilt(ref):
            return q
        self.emit(UNKNOWN_SENSOR, "error", f"unknown {what} {ref!r}", pos, self._sensor_hint(ref))
        return None

    def _sensor_hint(self, ref: str) -> str:
        chip = self.multi.get(ref)
        if chip is not None:
            refs = " or ".join(chip.refs())
            return f"{ref} is a {chip.type.upper()} chip with several values: write {refs}"
        if ref in self.actuators:
            return f"{ref} is an actuator: use {{actuator: {ref}, is: on}}"
        head, _, tail = ref.rpartition(".")
        if head in self.readings and tail:
            return f"{head} has a single value: write {head}"
        return self.suggest(ref, self.readings)

    def actuator(self, ref: str, pos: Position) -> Actuator | None:
        a = self.actuators.get(ref)
        if a is not None or self.unbuilt(ref):
            return a
        if ref in self.readings or ref in self.multi:
            hint = f"{ref} is a sensor, not an actuator"
        else:
            hint = self.suggest(ref, self.actuators)
        self.emit(UNKNOWN_ACTUATOR, "error", f"unknown actuator {ref!r}", pos, hint)
        return None

    def device(self, name: str, pos: Position) -> bool:
        if name in self.devices or self.unbuilt(name):
            return True
        self.emit(UNKNOWN_DEVICE, "error", f"unknown device {name!r}", pos, did_you_mean(name, self.devices))
        return False

    def facts(self, rule: Rule) -> _Facts:
        """What must hold while ``rule``'s condition is true (computed once per rule)."""
        f = self._facts.get(id(rule))
        if f is None:
            f = _facts_of(rule.condition, self)
            self._facts[id(rule)] = f
        return f


def _quantity(s: Sensor, q: str | None) -> _Quantity:
    """The physical range of one reading ref; unknown types give an open range."""
    try:
        from sensors import registry

        st, resolved = registry.resolve(s.type)
        qty = st.quantity(q or resolved)
    except Exception:
        return _Quantity(s, q)
    lo, hi = float(qty.min), float(qty.max)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
        return _Quantity(s, q, unit=qty.unit)
    return _Quantity(s, q, lo, hi, qty.unit)


# --------------------------------------------------------------------------
# Walking conditions and actions


#: tuples made once (``All | Any_`` in isinstance makes a union a call)
_GROUPS = (All, Any_)
_GROUPS_NOT = (All, Any_, Not)
_COMPARISONS = (Comparison, Difference)


def _walk(cond: Condition) -> Iterator[Condition]:
    stack = [cond]
    while stack:
        c = stack.pop()
        yield c
        if isinstance(c, _GROUPS):
            stack.extend(reversed(c.items))
        elif isinstance(c, Not):
            stack.append(c.item)


def _conditions(ctx: _Context) -> Iterator[tuple[Rule | None, Condition]]:
    """Every condition node of every rule, and the interlocks' ``only_if`` tests."""
    for rule in ctx.dep.rules:
        for c in _walk(rule.condition):
            yield rule, c
    for il in ctx.dep.safety.interlocks:
        if il.only_if is not None:
            yield None, il.only_if


def _actions(rule: Rule) -> Iterator[tuple[Action, bool]]:
    """(action, is_release) for then/hold and release."""
    for a in rule.actions:
        yield a, False
    for a in rule.release or ():
        yield a, True


def _fmt(x: float) -> str:
    return f"{x:g}"


def _span(lo: float, hi: float, unit: str) -> str:
    return f"{_fmt(lo)} to {_fmt(hi)} {unit}".rstrip()


# --------------------------------------------------------------------------
# 1. references


def _lookup(ctx: _Context, kind: str, ref: str, pos: Position) -> None:
    if kind == "sensor":
        ctx.sensor(ref, pos)
    elif kind == "actuator":
        ctx.actuator(ref, pos)
    elif kind == "device":
        ctx.device(ref, pos)


def _references(ctx: _Context) -> None:
    from engine.actions import type_of
    from engine.conditions import kind_of

    for _rule, c in _conditions(ctx):
        if isinstance(c, _GROUPS_NOT):
            continue
        for kind, ref in kind_of(c).refs(c):
            _lookup(ctx, kind, ref, c.pos)
    for rule in ctx.dep.rules:
        for a, _ in _actions(rule):
            for kind, ref in type_of(a).refs(a):
                _lookup(ctx, kind, ref, a.pos)
            if isinstance(a, Notify):
                _template(ctx, a)
    safety = ctx.dep.safety
    for ref, limits in safety.actuators.items():
        ctx.actuator(ref, limits.pos if limits.pos != NOWHERE else safety.defaults.pos)
    for il in safety.interlocks:
        for ref in il.never_together:
            ctx.actuator(ref, il.pos)
        if il.actuator is not None:
            ctx.actuator(il.actuator, il.pos)
    for kind, ref, pos in ctx.gaps.probes:
        if kind == "sensor":
            ctx.sensor(ref, pos)
        elif kind == "actuator":
            ctx.actuator(ref, pos)
        else:
            ctx.device(ref, pos)
    _test_references(ctx)


def _template(ctx: _Context, a: Notify) -> None:
    """Every ``{REF}`` of a notify text names a sensor or actuator; every
    ``{REF:FORMAT}`` has a format a reading can be written with."""
    from engine.actions import format_error, template_refs

    for ref, spec, written in template_refs(a.text):
        if ref not in ctx.readings and ref not in ctx.actuators and not ctx.unbuilt(ref):
            hint = ctx._sensor_hint(ref) or ctx.suggest(ref, ctx.actuators)
            ctx.emit(UNKNOWN_TEMPLATE_REF, "error", f"unknown ref {{{ref}}} in notify text: it would be sent "
                     "as written", a.pos, hint)
        if spec:
            why = format_error(spec)
            if why is not None:
                ctx.emit(BAD_TEMPLATE_FORMAT, "error", f"{written} in notify text: {spec!r} cannot format a "
                         f"reading ({why})", a.pos, "use a number format such as {north.air_temp:.1f} or :.0f")


def _test_references(ctx: _Context) -> None:
    codes = [c.value for c in Code]
    missing = ctx.gaps.rules
    for test in ctx.dep.tests:
        for name in test.rules:
            if name not in ctx.rules and missing is not None and name not in missing:
                ctx.emit(UNKNOWN_RULE, "error", f"test {test.name!r} names unknown rule {name!r}", test.pos,
                         did_you_mean(name, ctx.rules))
        for step in test.steps:
            for ref in step.readings:
                ctx.sensor(ref, step.pos)
            for name in step.devices:
                ctx.device(name, step.pos)
            for ref in step.actuators:
                ctx.actuator(ref, step.pos)
            for target in (step.emergency_stop, step.reset):
                if target is not None and target != "all":
                    ctx.device(target, step.pos)
        for exp in test.expect:
            act_ref = exp.fields.get("actuator")
            if isinstance(act_ref, str):
                ctx.actuator(act_ref, exp.pos)
            rule_name = exp.fields.get("rule")
            if isinstance(rule_name, str) and rule_name not in ctx.rules:
                ctx.emit(UNKNOWN_RULE, "error", f"expectation names unknown rule {rule_name!r}", exp.pos,
                         did_you_mean(rule_name, ctx.rules))
            reason = exp.fields.get("reason")
            if exp.kind == "blocked" and isinstance(reason, str) and reason.upper() not in codes:
                ctx.emit(UNKNOWN_BLOCK_REASON, "error", f"unknown block reason {reason!r}", exp.pos,
                         did_you_mean(reason.upper(), codes) or "one of " + ", ".join(codes))


# --------------------------------------------------------------------------
# 2. devices: GPIO conflicts and board pins


def _devices(ctx: _Context) -> None:
    for dev in (*ctx.dep.devices.values(), *ctx.gaps.devices):
        _gpio_conflicts(ctx, dev.sensors, dev.actuators)
        if dev.board is None:
            continue
        b = board(dev.board)
        if b is None:
            ctx.emit(UNKNOWN_BOARD, "error", f"unknown board {dev.board!r} on device {dev.name!r}", dev.pos,
                     did_you_mean(dev.board, BOARDS) or "known boards: " + ", ".join(BOARDS) +
                     "; leave `board` out to skip pin checks")
            continue
        used = {s.gpio for s in dev.sensors} | {a.gpio for a in dev.actuators} | {
            a.aux_gpio for a in dev.actuators if a.aux_gpio is not None}
        for s in dev.sensors:
            _pin(ctx, b, s.gpio, f"sensor {s.ref}", s.pos, actuator=False, used=used)
            if _analog(s) and b.adc and s.gpio not in b.adc and b.known(s.gpio) and s.gpio not in b.reserved:
                ctx.emit(ADC_PIN, "warning",
                         f"analog sensor {s.ref} ({s.type}) on GPIO {s.gpio}, which has no ADC1 channel on {b.name}: "
                         "it cannot read while Wi-Fi is on", s.pos, f"analog pins: {pin_ranges(sorted(b.adc))}")
            if s.i2c_address is not None and s.gpio not in b.i2c:
                ctx.emit(I2C_PIN, "warning",
                         f"I2C sensor {s.ref} on GPIO {s.gpio}, but the I2C bus of {b.name} is on "
                         f"{b.i2c[0]}/{b.i2c[1]}", s.pos, f"write gpio: {b.i2c[0]}")
        for a in dev.actuators:
            _pin(ctx, b, a.gpio, f"actuator {a.ref}", a.pos, actuator=True, used=used)
            if a.aux_gpio is not None:
                _pin(ctx, b, a.aux_gpio, f"actuator {a.ref} (aux_gpio)", a.pos, actuator=True, used=used)
        if len(dev.sensors) > b.max_sensors:
            extra = dev.sensors[b.max_sensors]
            ctx.emit(TOO_MANY_SENSORS, "error",
                     f"device {dev.name!r} declares {len(dev.sensors)} sensors; {b.name} takes at most {b.max_sensors}",
                     extra.pos, "split them over two boards", related=dev.pos)
        if len(dev.actuators) > b.max_actuators:
            extra_a = dev.actuators[b.max_actuators]
            ctx.emit(TOO_MANY_ACTUATORS, "error",
                     f"device {dev.name!r} declares {len(dev.actuators)} actuators; {b.name} takes at most "
                     f"{b.max_actuators}", extra_a.pos, "split them over two boards", related=dev.pos)


def _analog(s: Sensor) -> bool:
    try:
        from sensors import registry

        return registry.resolve(s.type)[0].name in ANALOG_TYPES
    except Exception:
        return False


def _pin(ctx: _Context, b: Board, gpio: int, what: str, pos: Position, *, actuator: bool,
         used: set[int]) -> None:
    free = set(b.usable) if actuator else set(b.usable | b.input_only)
    free -= used
    kind = "output pins" if actuator else "pins"
    hint = f"free {kind} on this board: {pin_ranges(sorted(free))}" if free else f"no free {kind} left on this board"
    if gpio in b.flash:
        ctx.emit(RESERVED_PIN, "error", f"{what}: GPIO {gpio} is reserved on {b.name}: it is wired to the SPI flash "
                 f"({pin_ranges(sorted(b.flash))}), and using it crashes the board", pos, hint)
    elif gpio in b.reserved:
        ctx.emit(RESERVED_PIN, "error", f"{what}: GPIO {gpio} is reserved on {b.name} (boot strapping, flash or serial)",
                 pos, hint)
    elif not b.known(gpio):
        ctx.emit(UNKNOWN_PIN, "error", f"{what}: {b.name} has no GPIO {gpio}", pos, hint)
    elif actuator and gpio in b.input_only:
        ctx.emit(INPUT_ONLY_PIN, "error", f"{what}: GPIO {gpio} is input-only on {b.name} and cannot drive an actuator",
                 pos, hint)


def _gpio_conflicts(ctx: _Context, sensors: Iterable[Sensor], actuators: Iterable[Actuator]) -> None:
    owners: dict[int, list[Sensor]] = defaultdict(list)
    for s in sensors:
        others = owners[s.gpio]
        if others:
            _shared_bus(ctx, s, others)
        others.append(s)
    driven: dict[int, Actuator] = {}
    for a in actuators:
        for gpio in (a.gpio, a.aux_gpio):
            if gpio is None:
                continue
            if gpio in owners:
                s = owners[gpio][0]
                ctx.emit(GPIO_CONFLICT, "error", f"actuator {a.ref} on GPIO {gpio}, which sensor {s.ref} reads", a.pos,
                         "a GPIO serves one sensor or one actuator", related=s.pos)
            elif gpio in driven and driven[gpio] is not a:
                other = driven[gpio]
                ctx.emit(GPIO_CONFLICT, "error", f"actuator {a.ref} on GPIO {gpio}, which actuator {other.ref} drives",
                         a.pos, "a GPIO serves one sensor or one actuator", related=other.pos)
            else:
                driven[gpio] = a


def _shared_bus(ctx: _Context, s: Sensor, others: list[Sensor]) -> None:
    """A second sensor on a GPIO: fine on a bus when every one says its address."""
    first = others[0]
    if s.i2c_address is not None and all(o.i2c_address is not None for o in others):
        clash = next((o for o in others if o.i2c_address == s.i2c_address), None)
        if clash is not None:
            ctx.emit(BUS_ADDRESS_CONFLICT, "error",
                     f"sensor {s.ref} and {clash.ref} share I2C address {s.i2c_address:#04x} on GPIO {s.gpio}",
                     s.pos, "give each chip on a bus its own i2c_address", related=clash.pos)
        return
    if s.onewire_address is not None and all(o.onewire_address is not None for o in others):
        clash = next((o for o in others if str(o.onewire_address).lower() == str(s.onewire_address).lower()), None)
        if clash is not None:
            ctx.emit(BUS_ADDRESS_CONFLICT, "error",
                     f"sensor {s.ref} and {clash.ref} share OneWire address {s.onewire_address} on GPIO {s.gpio}",
                     s.pos, "each DS18B20 has its own ROM code", related=clash.pos)
        return
    if s.i2c_address is not None or first.i2c_address is not None:
        hint = "sensors sharing an I2C bus each declare a distinct i2c_address"
    elif s.onewire_address is not None or first.onewire_address is not None:
        hint = "DS18B20 probes sharing a OneWire pin each declare onewire_address"
    else:
        hint = "a GPIO serves one sensor (I2C chips: declare i2c_address; DS18B20 on one pin: onewire_address)"
    ctx.emit(GPIO_CONFLICT, "error", f"sensor {s.ref} on GPIO {s.gpio}, which sensor {first.ref} already reads",
             s.pos, hint, related=first.pos)


# --------------------------------------------------------------------------
# 3. actuator values and limits


def _values(ctx: _Context) -> None:
    limits = ctx.dep.safety.actuators
    for ref, limit in limits.items():
        if limit.pwm is not None:
            lo, hi = limit.pwm
            if not (0.0 <= lo <= 1.0 and 0.0 <= hi <= 1.0) or lo > hi:
                ctx.emit(BAD_PWM_LIMIT, "error", f"pwm range [{_fmt(lo)}, {_fmt(hi)}] of {ref} is not a range in 0.0-1.0",
                         limit.pos, "write pwm: [lo, hi] with 0 <= lo <= hi <= 1")
    for rule in ctx.dep.rules:
        for a, _ in _actions(rule):
            if not isinstance(a, SetActuator):
                continue
            act = ctx.actuators.get(a.actuator)
            lim = limits.get(a.actuator)
            if isinstance(a.state, Follow):
                _computed_duty(ctx, a, a.state, act, lim)
                continue
            if a.state == "toggle":
                continue
            v = float(a.state)
            if not (0.0 <= v <= 1.0) or math.isnan(v):
                ctx.emit(VALUE_OUT_OF_RANGE, "error", f"set: {_fmt(v)} on {a.actuator} is outside 0.0-1.0", a.pos,
                         "actuator values are on, off, toggle or a duty 0.0-1.0 (0.6 = 60 %)")
                continue
            if lim is not None and lim.pwm is not None and v > 0.0:
                lo, hi = lim.pwm
                if not lo <= v <= hi and lim.out_of_range == "clamp":
                    ctx.emit(VALUE_OUTSIDE_PWM, "warning",
                             f"set: {_fmt(v)} on {a.actuator} is outside its pwm range [{_fmt(lo)}, {_fmt(hi)}]: "
                             f"the safety guard sends {_fmt(lo if v < lo else hi)} instead (out_of_range: clamp)",
                             a.pos, f"write set: {_fmt(lo if v < lo else hi)}", related=lim.pos)
                elif not lo <= v <= hi:
                    ctx.emit(VALUE_OUTSIDE_PWM, "error",
                             f"set: {_fmt(v)} on {a.actuator} is outside its pwm range [{_fmt(lo)}, {_fmt(hi)}]: "
                             "the safety guard blocks it every time", a.pos,
                             f"use a value between {_fmt(lo)} and {_fmt(hi)}, widen the range, or let the guard "
                             "clamp it (out_of_range: clamp)", related=lim.pos)
            if act is not None and act.type in _ON_OFF_TYPES and 0.0 < v < 1.0:
                state = "on" if v >= 0.5 else "off"
                ctx.emit(FRACTIONAL_ON_OFF, "warning",
                         f"set: {_fmt(v)} on {act.type} {a.actuator}: a {act.type} is on at >= 0.5, so this means {state}",
                         a.pos, f"write set: {state}")
            if a.for_ is not None and a.for_ > 0 and v == 0.0:
                ctx.emit(FOR_ON_OFF, "warning", f"`for:` on an off command to {a.actuator} does nothing", a.pos,
                         "`for:` keeps an actuator on for that long; remove it")
            elif (a.for_ is not None and lim is not None and lim.max_runtime is not None
                  and a.for_ > lim.max_runtime):
                ctx.emit(FOR_OVER_MAX_RUNTIME, "warning",
                         f"`for: {format_duration(a.for_)}` on {a.actuator} is longer than its max_runtime "
                         f"({format_duration(lim.max_runtime)}): the guard turns it off early", a.pos, related=lim.pos)


def _computed_duty(ctx: _Context, a: SetActuator, f: Follow, act: Actuator | None, lim: ActuatorLimits | None) -> None:
    """``set: {follow: ...}``: a pwm or valve actuator (a duty means nothing to a relay
    or pump), and map duties the guard does not block."""
    if act is not None and act.type not in _DUTY_TYPES:
        ctx.emit(DUTY_ON_SWITCH, "error", f"a computed duty on {act.type} {a.actuator}: only a pwm or valve "
                 "actuator takes a duty", f.pos, "switch it with set: on/off, or drive a pwm actuator", related=act.pos)
    if lim is None or lim.pwm is None or lim.out_of_range == "clamp":
        return
    lo, hi = lim.pwm
    outside = [d for _, d in f.points if d > 0.0 and not lo <= d <= hi]
    if outside:
        ctx.emit(MAP_OUTSIDE_PWM, "warning",
                 f"the map of {a.actuator} reaches {_fmt(outside[0])}, outside its pwm range [{_fmt(lo)}, {_fmt(hi)}]: "
                 "the guard blocks those duties", f.pos,
                 "keep the map's duties inside the range, or add out_of_range: clamp to its limits", related=lim.pos)


# --------------------------------------------------------------------------
# 4. conditions that can never hold, and time windows


def _condition_sanity(ctx: _Context) -> None:
    for _rule, c in _conditions(ctx):
        if isinstance(c, Comparison):
            q = ctx.readings.get(c.sensor)
            _comparison(ctx, c.op, c.value, c.hysteresis, c.pos, c.sensor, q.lo if q else None,
                        q.hi if q else None, q.unit if q else "")
        elif isinstance(c, Difference):
            qa, qb = ctx.readings.get(c.a), ctx.readings.get(c.b)
            lo = hi = None
            unit = ""
            if qa and qb and None not in (qa.lo, qa.hi, qb.lo, qb.hi):
                assert qa.lo is not None and qa.hi is not None and qb.lo is not None and qb.hi is not None
                lo, hi, unit = qa.lo - qb.hi, qa.hi - qb.lo, qa.unit
            _comparison(ctx, c.op, c.value, c.hysteresis, c.pos, f"{c.a} - {c.b}", lo, hi, unit)
        elif isinstance(c, Change):
            q = ctx.readings.get(c.sensor)
            if c.amount <= 0:
                ctx.emit(IMPOSSIBLE_CHANGE, "error", f"{c.direction[:-1]}s_by must be above 0, got {_fmt(c.amount)}",
                         c.pos)
            elif q and q.lo is not None and q.hi is not None and c.amount > q.hi - q.lo:
                ctx.emit(IMPOSSIBLE_CHANGE, "error",
                         f"{c.sensor} cannot {c.direction[:-1]} by {_fmt(c.amount)}: its whole range is "
                         f"{_span(q.lo, q.hi, q.unit)}", c.pos)
            if c.within <= 0:
                ctx.emit(IMPOSSIBLE_CHANGE, "error", "`within:` must be a duration above 0", c.pos)
        elif isinstance(c, TimeWindow):
            _window(ctx, c)
        elif isinstance(c, Every) and c.interval < 1.0:
            ctx.emit(EVERY_TOO_SHORT, "error", f"every: {_fmt(c.interval)}s is shorter than 1 s", c.pos,
                     "a rule cannot run more than once a second; use every: 1s or more")
    for rule in ctx.dep.rules:
        _trigger_placement(ctx, rule)
        if rule.pos not in ctx.gaps.conditions:
            ctx.facts(rule)  # K445: contradictions inside `all`, reported while computing facts
    for il in ctx.dep.safety.interlocks:
        if il.only_if is not None:
            _facts_of(il.only_if, ctx)


_NEVER = {
    # op -> (never holds when..., always holds when...) given (x, lo, hi)
    "above": (lambda x, lo, hi: x >= hi, lambda x, lo, hi: x < lo),
    "below": (lambda x, lo, hi: x <= lo, lambda x, lo, hi: x > hi),
    "at_least": (lambda x, lo, hi: x > hi, lambda x, lo, hi: x <= lo),
    "at_most": (lambda x, lo, hi: x < lo, lambda x, lo, hi: x >= hi),
    "equals": (lambda x, lo, hi: x < lo or x > hi, lambda x, lo, hi: False),
}


def _comparison(
    ctx: _Context, op: str, value: float | tuple[float, float], hysteresis: float, pos: Position,
    what: str, lo: float | None, hi: float | None, unit: str,
) -> None:
    if hysteresis < 0:
        ctx.emit(NEGATIVE_HYSTERESIS, "error", f"hysteresis must be 0 or more, got {_fmt(hysteresis)}", pos)
    elif hysteresis > 0 and lo is not None and hi is not None and hysteresis >= hi - lo:
        ctx.emit(HUGE_HYSTERESIS, "warning",
                 f"hysteresis {_fmt(hysteresis)} spans the whole range of {what} ({_span(lo, hi, unit)}): "
                 "once true, the condition never turns false".replace(" )", ")"), pos,
                 "hysteresis is a small margin, e.g. 1 degC or 5 % RH")
    if isinstance(value, tuple):
        a, b = value
        if a > b:
            ctx.emit(EMPTY_RANGE, "error", f"{op}: [{_fmt(a)}, {_fmt(b)}] has its bounds reversed", pos,
                     f"write {op}: [{_fmt(b)}, {_fmt(a)}]")
            return
        if lo is None or hi is None:
            return
        if op == "between" and (a > hi or b < lo):
            ctx.emit(NEVER_IN_RANGE, "error", f"{what} is never between {_fmt(a)} and {_fmt(b)}: it reads "
                     f"{_span(lo, hi, unit)}".rstrip(), pos)
        elif op == "outside" and a <= lo and b >= hi:
            ctx.emit(NEVER_IN_RANGE, "error", f"{what} is never outside [{_fmt(a)}, {_fmt(b)}]: it reads "
                     f"{_span(lo, hi, unit)}".rstrip(), pos)
        return
    if lo is None or hi is None or op not in _NEVER:
        return
    never, always = _NEVER[op]
    x = float(value)
    if never(x, lo, hi):
        ctx.emit(NEVER_IN_RANGE, "error", f"{what} is never {op.replace('_', ' ')} {_fmt(x)}: it reads "
                 f"{_span(lo, hi, unit)}".rstrip(), pos, "check the threshold and its unit")
    elif always(x, lo, hi):
        ctx.emit(ALWAYS_IN_RANGE, "warning", f"{what} is always {op.replace('_', ' ')} {_fmt(x)}: it reads "
                 f"{_span(lo, hi, unit)}".rstrip(), pos, "check the threshold and its unit")


def _window(ctx: _Context, w: TimeWindow) -> None:
    if w.after is not None and w.before is not None and w.after == w.before:
        hh = f"{w.after // 60:02d}:{w.after % 60:02d}"
        ctx.emit(EMPTY_WINDOW, "warning", f"time window with after == before ({hh}) is ambiguous: empty or all day",
                 w.pos, "leave out after/before for all day, or give a real window")
    if w.weekdays is None:  # the loader keeps `weekdays: []` as None (`()` means every day)
        ctx.emit(NO_WEEKDAYS, "error", "weekdays: [] never matches", w.pos, "leave weekdays out for every day")


def _trigger_placement(ctx: _Context, rule: Rule) -> None:
    def visit(c: Condition, under_not: bool) -> None:
        if isinstance(c, At | Every):
            key = "at" if isinstance(c, At) else "every"
            if rule.kind == "level":
                ctx.emit(TRIGGER_IN_WHILE, "error", f"`{key}` is a trigger and only works in `when`, not in `while`",
                         c.pos, "a trigger is an instant; a while rule needs a state, e.g. a time window",
                         related=rule.pos)
            elif under_not:
                ctx.emit(TRIGGER_UNDER_NOT, "error", f"`{key}` under `not` has no meaning: a trigger is an instant",
                         c.pos, "use a time window: {time: {after: ..., before: ...}}")
        elif isinstance(c, _GROUPS):
            for i in c.items:
                visit(i, under_not)
        elif isinstance(c, Not):
            visit(c.item, True)

    visit(rule.condition, False)


# --------------------------------------------------------------------------
# Facts: a conservative summary of what must be true while a condition holds.
# Used to prove two conditions disjoint (so two rules never fight) and to find
# `all` blocks that can never hold. Anything not understood adds no fact, which
# only ever makes two conditions look *overlapping* (we warn rather than miss).

_INF = math.inf
_WEEK = 7 * 1440


@dataclass(frozen=True, slots=True)
class _Interval:
    lo: float
    lo_closed: bool
    hi: float
    hi_closed: bool
    pos: Position

    def meet(self, o: _Interval) -> _Interval | None:
        if self.lo > o.lo or (self.lo == o.lo and not self.lo_closed):
            lo, lc = self.lo, self.lo_closed
        else:
            lo, lc = o.lo, o.lo_closed
        if self.hi < o.hi or (self.hi == o.hi and not self.hi_closed):
            hi, hc = self.hi, self.hi_closed
        else:
            hi, hc = o.hi, o.hi_closed
        if lo > hi or (lo == hi and not (lc and hc)):
            return None
        return _Interval(lo, lc, hi, hc, self.pos)

    def hull(self, o: _Interval) -> _Interval:
        if self.lo != o.lo:
            lo, lc = (self.lo, self.lo_closed) if self.lo < o.lo else (o.lo, o.lo_closed)
        else:
            lo, lc = self.lo, self.lo_closed or o.lo_closed
        if self.hi != o.hi:
            hi, hc = (self.hi, self.hi_closed) if self.hi > o.hi else (o.hi, o.hi_closed)
        else:
            hi, hc = self.hi, self.hi_closed or o.hi_closed
        return _Interval(lo, lc, hi, hc, self.pos)


@dataclass
class _Facts:
    values: dict[str, _Interval] = field(default_factory=dict)
    flags: dict[str, tuple[bool, Position]] = field(default_factory=dict)
    #: minute-of-week intervals [start, end) when the condition can be true; None = any time
    time: tuple[tuple[int, int], ...] | None = None
    time_pos: Position = NOWHERE
    #: the condition can never hold: (position of the clash, position of the other side)
    empty: tuple[Position, Position] | None = None

    def merged(self, o: _Facts) -> _Facts:
        """Facts of ``self and o``; ``empty`` says where they clash."""
        if self.empty is not None:
            return self
        if o.empty is not None:
            return o
        r = _Facts(dict(self.values), dict(self.flags), self.time, self.time_pos)
        for k, iv in o.values.items():
            mine = r.values.get(k)
            if mine is None:
                r.values[k] = iv
                continue
            m = mine.meet(iv)
            if m is None:
                r.empty = (iv.pos, mine.pos)
                return r
            r.values[k] = m
        for k, (b, pos) in o.flags.items():
            mine_f = r.flags.get(k)
            if mine_f is None:
                r.flags[k] = (b, pos)
            elif mine_f[0] != b:
                r.empty = (pos, mine_f[1])
                return r
        if o.time is not None:
            if r.time is None:
                r.time, r.time_pos = o.time, o.time_pos
            else:
                t = _meet_times(r.time, o.time)
                if not t:
                    r.empty = (o.time_pos, r.time_pos)
                    return r
                r.time = t
        return r

    def joined(self, o: _Facts) -> _Facts:
        """Facts of ``self or o``: only what both sides guarantee."""
        if self.empty is not None:
            return o
        if o.empty is not None:
            return self
        r = _Facts()
        for k, iv in self.values.items():
            if k in o.values:
                r.values[k] = iv.hull(o.values[k])
        for k, (b, pos) in self.flags.items():
            if k in o.flags and o.flags[k][0] == b:
                r.flags[k] = (b, pos)
        if self.time is not None and o.time is not None:
            r.time, r.time_pos = _join_times(self.time, o.time), self.time_pos
        return r


def _meet_times(a: tuple[tuple[int, int], ...], b: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo < hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def _join_times(a: tuple[tuple[int, int], ...], b: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    return _normalise(list(a) + list(b))


def _normalise(spans: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(s for s in spans if s[0] < s[1]):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


def _week_spans(after: int, before: int, weekdays: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """Minute-of-week spans of a daily window. A window spanning midnight counts
    for the evening of the day named and, to stay conservative, the early morning
    of both that day and the next."""
    days = sorted(set(weekdays)) or list(range(7))
    spans: list[tuple[int, int]] = []
    for d in days:
        base = d * 1440
        if after < before:
            spans.append((base + after, base + before))
        else:
            spans.append((base + after, base + 1440))
            spans.append((base, base + before))
            nxt = ((d + 1) % 7) * 1440
            spans.append((nxt, nxt + before))
    return _normalise(spans)


def _interval(op: str, value: float | tuple[float, float], h: float, pos: Position) -> _Interval | None:
    h = max(h, 0.0)
    if isinstance(value, tuple):
        if op == "between":
            return _Interval(value[0] - h, True, value[1] + h, True, pos)
        return None  # outside: a union of two half-lines
    x = float(value)
    if op == "above":
        return _Interval(x - h, h > 0, _INF, False, pos)
    if op == "at_least":
        return _Interval(x - h, True, _INF, False, pos)
    if op == "below":
        return _Interval(-_INF, False, x + h, h > 0, pos)
    if op == "at_most":
        return _Interval(-_INF, False, x + h, True, pos)
    if op == "equals":
        return _Interval(x - h, True, x + h, True, pos)
    return None


_NEGATE = {"above": "at_most", "at_most": "above", "below": "at_least", "at_least": "below"}


def _facts_of(c: Condition, ctx: _Context | None, negated: bool = False) -> _Facts:
    f = _Facts()
    if isinstance(c, _COMPARISONS):
        key = f"s:{c.sensor}" if isinstance(c, Comparison) else f"d:{c.a}|{c.b}"
        op = c.op
        if negated:
            if c.hysteresis or op not in _NEGATE:
                return f
            op = _NEGATE[op]
        iv = _interval(op, c.value, c.hysteresis, c.pos)
        if iv is not None:
            if iv.lo > iv.hi:
                f.empty = (c.pos, c.pos)  # reported as K440
            else:
                f.values[key] = iv
    elif isinstance(c, DeviceIs):
        f.flags[f"dev:{c.device}"] = (c.online != negated, c.pos)
    elif isinstance(c, ActuatorIs):
        f.flags[f"act:{c.actuator}"] = (c.on != negated, c.pos)
    elif isinstance(c, TimeWindow):
        if negated or (c.after is not None and c.after == c.before):
            return f
        spans = _week_spans(c.after if c.after is not None else 0,
                            c.before if c.before is not None else 1440, c.weekdays or ())
        f.time, f.time_pos = spans, c.pos
    elif isinstance(c, At) and not negated:
        f.time = _normalise([(d * 1440 + c.minute, d * 1440 + c.minute + 1) for d in range(7)])
        f.time_pos = c.pos
    elif isinstance(c, Not):
        return _facts_of(c.item, ctx, not negated)
    elif isinstance(c, _GROUPS):
        conj = isinstance(c, All) != negated
        if not c.items:
            return f
        parts = [_facts_of(i, ctx, negated) for i in c.items]
        acc = parts[0]
        for p in parts[1:]:
            was_empty = acc.empty is not None or p.empty is not None
            acc = acc.merged(p) if conj else acc.joined(p)
            if conj and acc.empty is not None and not was_empty and ctx is not None and not negated:
                here, other = acc.empty
                ctx.emit(CONTRADICTION, "error", "this condition contradicts another in the same `all`: "
                         "the rule can never run", here, "two conditions here can never be true together",
                         related=other)
        return acc
    return f


# --------------------------------------------------------------------------
# 5. rules against each other and against the interlocks


@dataclass(frozen=True, slots=True)
class _Drive:
    rule: Rule
    action: SetActuator
    value: float


def _interactions(ctx: _Context) -> None:
    groups: dict[tuple[str, int], list[_Drive]] = defaultdict(list)
    together = [il for il in ctx.dep.safety.interlocks if len(set(il.never_together)) >= 2]
    by_actuator: dict[str, list[Interlock]] = defaultdict(list)
    for il in together:
        for ref in set(il.never_together):
            by_actuator[ref].append(il)
    only_if: dict[str, list[Interlock]] = defaultdict(list)
    for il in ctx.dep.safety.interlocks:
        if il.actuator is not None and il.only_if is not None:
            only_if[il.actuator].append(il)
        if il.never_together and len(set(il.never_together)) < 2 and ctx.complete(il):
            ctx.emit(INTERLOCK_DEGENERATE, "error",
                     f"interlock {il.name!r}: never_together needs two different actuators", il.pos)
    for rule in ctx.dep.rules:
        if not rule.enabled:
            continue
        # a rule built in part takes no part in the checks across its actions or
        # against other rules: what is missing might be what makes it right
        whole = ctx.complete(rule)
        whole_condition = rule.pos not in ctx.gaps.conditions
        # what this rule has switched on, and until when (seconds after it ran):
        # `for:` ends an on, `wait` moves time on, `off` ends it at once
        on_here: dict[str, tuple[SetActuator, float]] = {}
        t = 0.0
        for a in rule.actions:
            if isinstance(a, Wait):
                t += a.duration
                continue
            if not isinstance(a, SetActuator) or a.state == "toggle":
                continue
            if isinstance(a.state, Follow):
                duties = [d for _, d in a.state.points]
                if min(duties) <= 0.0:
                    continue  # on or off depending on the reading: nothing to say statically
                v = max(duties)
            else:
                v = float(a.state)
            if whole:
                groups[(a.actuator, rule.priority)].append(_Drive(rule, a, v))
            if v > 0.0:
                if whole:
                    _interlock_on(ctx, rule, a, on_here, t, by_actuator)
                for il in only_if.get(a.actuator, ()):
                    assert il.only_if is not None
                    if whole_condition and ctx.facts(rule).merged(_facts_of(il.only_if, None)).empty is not None:
                        ctx.emit(INTERLOCK_NEVER_ALLOWS, "warning",
                                 f"rule {rule.name!r} switches {a.actuator} on only when interlock {il.name!r} "
                                 "forbids it: the guard blocks it every time", a.pos, related=il.pos)
            else:
                on_here.pop(a.actuator, None)
    for (ref, prio), drives in groups.items():
        if len(drives) > 1:
            _opposites(ctx, ref, prio, drives)


def _interlock_on(ctx: _Context, rule: Rule, a: SetActuator, on_here: dict[str, tuple[SetActuator, float]],
                  t: float, by_actuator: dict[str, list[Interlock]]) -> None:
    for il in by_actuator.get(a.actuator, ()):
        for other in il.never_together:
            first, until = on_here.get(other, (None, 0.0))
            if other != a.actuator and first is not None and until > t:
                ctx.emit(INTERLOCK_TOGETHER, "error",
                         f"rule {rule.name!r} switches on {first.actuator} and {a.actuator}, which interlock "
                         f"{il.name!r} keeps apart: the guard blocks the second", a.pos,
                         "switch the other one off first, or split the rule", related=first.pos)
    on_here[a.actuator] = (a, t + a.for_ if a.for_ else _INF)


def _opposites(ctx: _Context, ref: str, prio: int, drives: list[_Drive]) -> None:
    """Warn when rules drive ``ref`` apart at the same priority under conditions we
    cannot prove disjoint: at most once per rule (against the first earlier rule it
    fights), so a crowded actuator gives a readable list, not every pair."""
    ordered = sorted(drives, key=lambda d: (d.rule.index, d.rule.pos.file, d.rule.pos.line, d.action.pos.line))
    warned: set[int] = set()  # rules already reported as the later one
    for j, second in enumerate(ordered):
        if id(second.rule) in warned:
            continue
        for first in ordered[:j]:
            if first.rule is second.rule or not _fight(first, second):
                continue
            if ctx.facts(first.rule).merged(ctx.facts(second.rule)).empty is not None:
                continue
            ctx.emit(OPPOSITE_STATES, "warning",
                     f"rules {first.rule.name!r} and {second.rule.name!r} both have priority {prio} and drive "
                     f"{ref} to {_state(first.value)} and {_state(second.value)} under conditions that can hold "
                     "together", second.action.pos, "give one a higher priority, or make their conditions exclusive",
                     related=first.action.pos)
            warned.add(id(second.rule))
            break


def _fight(x: _Drive, y: _Drive) -> bool:
    """On against off; or two holds at different values (they fight as long as both hold)."""
    if (x.value > 0.0) != (y.value > 0.0):
        return True
    return x.rule.kind == "level" and y.rule.kind == "level" and x.value != y.value


def _state(v: float) -> str:
    return "off" if v == 0.0 else "on" if v == 1.0 else _fmt(v)


# --------------------------------------------------------------------------
# 6. rule tests


def _tests(ctx: _Context) -> None:
    driven = {a.actuator for r in ctx.dep.rules for a, _ in _actions(r) if isinstance(a, SetActuator)}
    # the guard itself switches these off: interlock partners (a board reporting one on
    # next to the other is corrected) and only_if actuators
    interlocked = {ref for il in ctx.dep.safety.interlocks for ref in (*il.never_together, il.actuator) if ref}
    for test in ctx.dep.tests:
        stops = any(step.emergency_stop is not None for step in test.steps)
        if not test.expect and not test.only_expected and ctx.complete(test):
            ctx.emit(TEST_EXPECTS_NOTHING, "warning", f"test {test.name!r} expects nothing and can never fail",
                     test.pos, "add expect: [...], or only_expected: true to assert that no command is sent")
        last = -_INF
        for step in test.steps:
            if step.at < last:
                ctx.emit(TEST_STEPS_UNORDERED, "warning",
                         f"step at {_fmt(step.at)}s comes after a step at {_fmt(last)}s", step.pos,
                         "write steps in time order")
            last = max(last, step.at)
        for exp in test.expect:
            ref = exp.fields.get("actuator")
            off = exp.fields.get("set") == 0.0
            if (exp.kind == "command" and isinstance(ref, str) and ref in ctx.actuators and ref not in driven
                    and not ctx.partial and not (off and (stops or ref in interlocked))):
                ctx.emit(EXPECT_UNREACHABLE, "warning",
                         f"no rule sets {ref}, so this expected command can never come", exp.pos)


# --------------------------------------------------------------------------
# 7. hygiene warnings


def _hygiene(ctx: _Context) -> None:
    for rule in ctx.dep.rules:
        if not rule.enabled:
            ctx.emit(RULE_DISABLED, "warning", f"rule {rule.name!r} is disabled (enabled: false)", rule.pos,
                     "delete it or switch it on; git keeps the history")
    used: set[str] = set()
    for rule in ctx.dep.rules:
        for a, _ in _actions(rule):
            if isinstance(a, SetActuator):
                used.add(a.actuator)
        for c in _walk(rule.condition):
            if isinstance(c, ActuatorIs):
                used.add(c.actuator)
    used.update(ctx.dep.safety.actuators)
    for il in ctx.dep.safety.interlocks:
        used.update(il.never_together)
        if il.actuator:
            used.add(il.actuator)
    for test in ctx.dep.tests:
        for step in test.steps:
            used.update(step.actuators)
    for ref, act in ctx.actuators.items():
        if ref not in used and not ctx.partial:
            ctx.emit(ACTUATOR_UNUSED, "warning", f"actuator {ref} is not used by any rule, limit or interlock",
                     act.pos, "remove it, or give it safety limits if people switch it by hand")
    for dev in (*ctx.dep.devices.values(), *ctx.gaps.devices):
        for s in dev.sensors:
            _calibration(ctx, s)


def _calibration(ctx: _Context, s: Sensor) -> None:
    if not s.calibration:
        return
    try:
        from sensors import registry

        st, _ = registry.resolve(s.type)
    except Exception:
        return
    known = list(st.calibration)
    for key in s.calibration:
        if key not in st.calibration:
            hint = did_you_mean(key, known)
            if not hint:
                hint = f"{st.name} knows: {', '.join(known)}" if known else f"{st.name} takes no calibration"
            ctx.emit(UNKNOWN_CALIBRATION, "warning", f"calibration key {key!r} is unknown to sensor type {st.name}",
                     s.pos, hint)


_CHECKS: tuple[Callable[[_Context], None], ...] = (
    _references,
    _devices,
    _values,
    _condition_sanity,
    _interactions,
    _tests,
    _hygiene,
    firmware,  # K48x, engine/config/firmware_checks.py
)
