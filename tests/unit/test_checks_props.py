"""Hypothesis: the lint's reasoning about conditions is sound.

Lint stays quiet about two rules that drive one actuator apart (K430) only when it
has *proved* their conditions disjoint, and reports an `all` as contradictory
(K445) only when it can never hold. A small direct evaluator of conditions
searches for a state (sensor values, device and actuator states, time of the
week) that makes lint wrong.
"""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from engine.config.checks import _facts_of, run_checks
from engine.model import (
    Actuator,
    ActuatorIs,
    ActuatorLimits,
    All,
    Any_,
    At,
    Comparison,
    Condition,
    Deployment,
    Device,
    DeviceIs,
    Not,
    Position,
    Rule,
    Safety,
    Sensor,
    SetActuator,
    TimeWindow,
)

P = Position("p.yaml", 1, 1)
SENSORS = ("north.air_temp", "north.soil")
THRESHOLDS = (10.0, 20.0, 30.0)
MINUTES = (0, 360, 1080, 1320)
DEVICE = Device(
    "north", "ESP_4A1B2C",
    sensors=(Sensor("north", "air_temp", 4, "ds18b20", onewire_address="28FF641E8D3C0C79", pos=P), Sensor("north", "soil", 34, "moisture", pos=P)),
    actuators=(Actuator("north", "fan", 5, "relay", pos=P), Actuator("north", "heater", 18, "relay", pos=P)),
    pos=P,
)
SAFETY = Safety(actuators={"north.fan": ActuatorLimits("north.fan"), "north.heater": ActuatorLimits("north.heater")})


def comparisons() -> st.SearchStrategy[Condition]:
    single = st.builds(lambda s, op, x, h: Comparison(s, op, x, hysteresis=h, pos=P),
                       st.sampled_from(SENSORS), st.sampled_from(["above", "below", "at_least", "at_most", "equals"]),
                       st.sampled_from(THRESHOLDS), st.sampled_from([0.0, 0.0, 2.0]))
    pair = st.builds(lambda s, op, a, b: Comparison(s, op, (min(a, b), max(a, b)), pos=P),
                     st.sampled_from(SENSORS), st.sampled_from(["between", "outside"]),
                     st.sampled_from(THRESHOLDS), st.sampled_from(THRESHOLDS))
    return st.one_of(single, pair)


leaves = st.one_of(
    comparisons(),
    st.builds(lambda b: DeviceIs("north", b, P), st.booleans()),
    st.builds(lambda b: ActuatorIs("north.heater", b, P), st.booleans()),
    st.builds(lambda a, b, days: TimeWindow(a, b, tuple(sorted(set(days))), P),
              st.sampled_from(MINUTES), st.sampled_from(MINUTES), st.lists(st.integers(0, 6), max_size=3)),
    st.builds(lambda m: At(m, P), st.sampled_from(MINUTES)),
)

conditions = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.builds(lambda xs: All(tuple(xs), P), st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda xs: Any_(tuple(xs), P), st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda x: Not(x, P), inner),
    ),
    max_leaves=5,
)


class State:
    """Everything a condition can look at, at one instant."""

    def __init__(self, values: dict[str, float], online: bool, heater: bool, day: int, minute: int,
                 latched: bool) -> None:
        self.values, self.online, self.heater = values, online, heater
        self.day, self.minute, self.latched = day, minute, latched


def holds(c: Condition, s: State) -> bool:
    if isinstance(c, Comparison):
        v = s.values[c.sensor]
        x = c.value
        # a latched hysteresis condition stays true until h back past the threshold
        h = c.hysteresis if s.latched else 0.0
        if isinstance(x, tuple):
            lo, hi = x
            return lo <= v <= hi if c.op == "between" else (v < lo or v > hi)
        return {"above": v > x - h, "below": v < x + h, "at_least": v >= x - h, "at_most": v <= x + h,
                "equals": abs(v - x) <= h}[c.op]
    if isinstance(c, DeviceIs):
        return s.online == c.online
    if isinstance(c, ActuatorIs):
        return s.heater == c.on
    if isinstance(c, TimeWindow):
        if c.weekdays and s.day not in c.weekdays:
            return False
        a = c.after if c.after is not None else 0
        b = c.before if c.before is not None else 1440
        if a == b:
            return True  # ambiguous (K450): lint assumes it may hold
        return a <= s.minute < b if a < b else (s.minute >= a or s.minute < b)
    if isinstance(c, At):
        return s.minute == c.minute
    if isinstance(c, All):
        return all(holds(i, s) for i in c.items)
    if isinstance(c, Any_):
        return any(holds(i, s) for i in c.items)
    if isinstance(c, Not):
        return not holds(c.item, s)
    raise AssertionError(c)


VALUES = sorted({t + d for t in THRESHOLDS for d in (-2.5, -1.0, 0.0, 1.0, 2.5)} | {0.0, 50.0})
values = st.sampled_from(VALUES)
states = st.builds(
    lambda a, b, online, heater, day, minute, latched: State({SENSORS[0]: a, SENSORS[1]: b}, online, heater, day,
                                                             minute, latched),
    values, values, st.booleans(), st.booleans(), st.integers(0, 6),
    st.sampled_from([m + d for m in MINUTES for d in (-1, 0, 1)] + [1439]).map(lambda m: m % 1440), st.booleans(),
)


def _codes(*rules: Rule) -> list[str]:
    dep = Deployment({"north": DEVICE}, SAFETY, tuple(rules))
    return [d.code for d in run_checks(dep)]


@given(conditions, conditions, st.lists(states, min_size=40, max_size=40))
def test_quiet_about_opposite_rules_only_when_disjoint(c1: Condition, c2: Condition, sample: list[State]) -> None:
    r1 = Rule("one", "edge", c1, (SetActuator("north.fan", 1.0, None, P),), pos=P)
    r2 = Rule("two", "edge", c2, (SetActuator("north.fan", 0.0, None, P),), pos=Position("p.yaml", 2, 1))
    found = _codes(r1, r2)
    assert "K499" not in found
    if "K430" not in found:
        both = [s for s in sample if holds(c1, s) and holds(c2, s)]
        assert not both, f"lint called these disjoint, but both hold at {vars(both[0])}"


@given(st.lists(leaves, min_size=2, max_size=4), st.lists(states, min_size=40, max_size=40))
def test_contradiction_only_when_it_can_never_hold(items: list[Condition], sample: list[State]) -> None:
    cond = All(tuple(items), P)
    found = _codes(Rule("one", "edge", cond, (SetActuator("north.fan", 1.0, None, P),), pos=P))
    assert "K499" not in found
    if "K445" in found:
        assert not any(holds(cond, s) for s in sample)


# Exhaustive: every pair of single comparisons, at every value that matters.


def _all_comparisons() -> list[Condition]:
    out: list[Condition] = []
    for op in ("above", "below", "at_least", "at_most", "equals"):
        for x in THRESHOLDS:
            for h in (0.0, 2.0):
                out.append(Comparison(SENSORS[0], op, x, hysteresis=h, pos=P))
    for op in ("between", "outside"):
        for a, b in itertools.combinations_with_replacement(THRESHOLDS, 2):
            out.append(Comparison(SENSORS[0], op, (a, b), pos=P))
    return [*out, *(Not(c, P) for c in out)]


def test_interval_reasoning_exhaustively() -> None:
    leaves_ = _all_comparisons()
    grid = [State({SENSORS[0]: v, SENSORS[1]: 0.0}, True, False, 0, 0, latched)
            for v in VALUES for latched in (False, True)]
    truth = {id(c): [holds(c, s) for s in grid] for c in leaves_}
    facts = {id(c): _facts_of(c, None) for c in leaves_}
    for c1, c2 in itertools.combinations(leaves_, 2):
        if facts[id(c1)].merged(facts[id(c2)]).empty is not None:
            both = [s for s, t1, t2 in zip(grid, truth[id(c1)], truth[id(c2)], strict=True) if t1 and t2]
            assert not both, f"{c1} and {c2} called disjoint, both hold at {vars(both[0])}"
