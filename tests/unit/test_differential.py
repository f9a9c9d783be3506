"""Rete and the reference evaluator decide the same, for random rules and inputs.

The inputs include what makes a condition *unknown* (bad and stale qualities, NaN,
readings going stale, never-reported sensors), so the three-valued logic is
compared too; comparisons carry ``count`` and ``fresh``; actions include computed
duties; readings also arrive in batches (``receive_many``).

Default profile: a few hundred examples; KAISER_HYPOTHESIS_PROFILE=thorough runs thousands.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from typing import Literal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.core import BaseEngine, Decisions, Engine
from engine.model import (
    Actuator,
    ActuatorIs,
    All,
    Any_,
    At,
    Change,
    Comparison,
    Condition,
    Deployment,
    Device,
    DeviceIs,
    Difference,
    EmergencyStop,
    Every,
    Follow,
    NoData,
    Not,
    Notify,
    Reading,
    Rule,
    Safety,
    SafetyDefaults,
    Sensor,
    SetActuator,
    TimeWindow,
    Wait,
)
from engine.reference import ReferenceEngine

THOROUGH = os.environ.get("KAISER_HYPOTHESIS_PROFILE") == "thorough"
EXAMPLES = 3000 if THOROUGH else 250

DEVICES = ("d0", "d1")
SENSORS = tuple(f"{d}.s{i}" for d in DEVICES for i in range(3))
ACTUATORS = tuple(f"{d}.a{i}" for d in DEVICES for i in range(2))
VALUES = (-1.0, 0.0, 4.5, 5.0, 5.5, 9.0, 10.0, 10.5, 1e-05, 20.0, float("nan"))
T0 = 1_780_000_000.0  # a Unix time (2026-05-28), UTC

thresholds = st.sampled_from((0.0, 5.0, 10.0))
ops = st.sampled_from(("above", "below", "at_least", "at_most", "equals", "between", "outside"))


@st.composite
def comparison_value(draw: st.DrawFn, op: str) -> float | tuple[float, float]:
    if op in ("between", "outside"):
        lo = draw(thresholds)
        return (lo, lo + draw(st.sampled_from((0.0, 5.0))))
    return draw(thresholds)


@st.composite
def comparison(draw: st.DrawFn) -> Condition:
    op = draw(ops)
    return Comparison(draw(st.sampled_from(SENSORS)), op, draw(comparison_value(op)),
                      for_=draw(st.sampled_from((0.0, 0.0, 5.0, 30.0))),
                      hysteresis=draw(st.sampled_from((0.0, 0.0, 1.0))),
                      count=draw(st.sampled_from((0, 0, 0, 2, 3))),
                      fresh=draw(st.sampled_from((None, None, None, 15.0, 80.0))))


@st.composite
def difference(draw: st.DrawFn) -> Condition:
    op = draw(ops)
    a, b = draw(st.sampled_from(SENSORS)), draw(st.sampled_from(SENSORS))
    return Difference(a, b, op, draw(comparison_value(op)), for_=draw(st.sampled_from((0.0, 5.0))),
                      hysteresis=draw(st.sampled_from((0.0, 1.0))))


leaf = st.one_of(
    comparison(),
    comparison(),
    difference(),
    st.builds(Change, st.sampled_from(SENSORS), st.sampled_from(("rises", "falls")),
              st.sampled_from((1.0, 5.0)), st.sampled_from((20.0, 60.0))),
    st.builds(NoData, st.sampled_from(SENSORS), st.sampled_from((15.0, 40.0))),
    st.builds(DeviceIs, st.sampled_from(DEVICES), st.booleans()),
    st.builds(ActuatorIs, st.sampled_from(ACTUATORS), st.booleans()),
    st.builds(TimeWindow, st.sampled_from((None, 1, 3)), st.sampled_from((None, 2, 4, 0)),
              st.sampled_from(((), (3,), (3, 4)))),
    st.builds(At, st.sampled_from((1, 2, 5))),
    st.builds(Every, st.sampled_from((25.0, 45.0))),
)

conditions = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.builds(All, st.lists(inner, min_size=0, max_size=3).map(tuple)),
        st.builds(Any_, st.lists(inner, min_size=0, max_size=3).map(tuple)),
        st.builds(Not, inner),
    ),
    max_leaves=5,
)

follow = st.builds(Follow, st.sampled_from(SENSORS),
                   st.sampled_from((((0.0, 0.1), (10.0, 0.9)), ((4.5, 0.0), (5.5, 0.5), (20.0, 1.0)))),
                   st.sampled_from((0.05, 0.3)))
set_actions = st.builds(SetActuator, st.sampled_from(ACTUATORS),
                        st.one_of(st.sampled_from((0.0, 1.0, 0.5, "toggle")), follow), st.sampled_from((None, 10.0)))
actions = st.lists(
    st.one_of(
        set_actions, set_actions,
        st.builds(Notify, st.sampled_from(("hot {d0.s0}", "x {d1.s2} {nope}", "plain")),
                  st.sampled_from(("info", "warning"))),
        st.builds(Wait, st.sampled_from((3.0, 12.0))),
        st.builds(EmergencyStop, st.sampled_from(("all", "d0")), st.just("test")),
    ),
    min_size=1, max_size=4,
).map(tuple)


@st.composite
def rules(draw: st.DrawFn) -> tuple[Rule, ...]:
    n = draw(st.integers(1, 5))
    out = []
    for i in range(n):
        kind: Literal["edge", "level"] = draw(st.sampled_from(("edge", "level")))
        acts = draw(actions)
        release = None
        if kind == "level":
            acts = tuple(a for a in acts if not isinstance(a, Wait)) or (SetActuator(ACTUATORS[0], 1.0),)
            release = draw(st.one_of(st.none(), actions))
        out.append(Rule(f"r{i}", kind, draw(conditions), acts, release,
                        priority=draw(st.integers(0, 2)), cooldown=draw(st.sampled_from((0.0, 0.0, 10.0))),
                        index=i))
    return tuple(out)


def deployment(rs: tuple[Rule, ...]) -> Deployment:
    devices = {
        d: Device(d, f"ESP_{d.upper()}",
                  sensors=tuple(Sensor(d, f"s{i}", 30 + i, "analog") for i in range(3)),
                  actuators=tuple(Actuator(d, f"a{i}", 10 + i, "relay") for i in range(2)))
        for d in DEVICES
    }
    return Deployment(devices=devices, safety=Safety(SafetyDefaults(stale_after=50.0, max_switches_per_minute=3)),
                      rules=rs, tz="UTC")


@dataclass(frozen=True)
class Step:
    dt: float
    kind: str  # reading | retained | batch | device | actuator | tick
    ref: str
    value: float
    quality: str = "good"
    more: tuple[tuple[str, float, str], ...] = ()  # batch: the other readings


batch = st.builds(Step, st.sampled_from((0.0, 1.0, 7.0)), st.just("batch"), st.sampled_from(SENSORS),
                  st.sampled_from(VALUES), st.sampled_from(("good", "good", "bad")),
                  st.lists(st.tuples(st.sampled_from(SENSORS), st.sampled_from(VALUES),
                                     st.sampled_from(("good", "good", "stale"))), min_size=1, max_size=3)
                  .map(tuple))


steps = st.lists(
    st.one_of(
        st.builds(Step, st.sampled_from((0.0, 1.0, 2.5, 7.0, 20.0)), st.just("reading"), st.sampled_from(SENSORS),
                  st.sampled_from(VALUES), st.sampled_from(("good", "good", "good", "bad", "stale"))),
        st.builds(Step, st.sampled_from((0.0, 3.0)), st.just("retained"), st.sampled_from(SENSORS),
                  st.sampled_from(VALUES)),
        batch,
        st.builds(Step, st.sampled_from((0.0, 5.0, 30.0)), st.just("device"), st.sampled_from(DEVICES),
                  st.sampled_from((0.0, 1.0))),
        st.builds(Step, st.sampled_from((0.0, 5.0)), st.just("actuator"), st.sampled_from(ACTUATORS),
                  st.sampled_from((0.0, 1.0, 0.5))),
        st.builds(Step, st.sampled_from((10.0, 45.0, 100.0)), st.just("tick"), st.just(""), st.just(0.0)),
        st.builds(Step, st.sampled_from((0.0, 4.0)), st.sampled_from(("reload", "restore")), st.just(""),
                  st.just(0.0)),
    ),
    min_size=1, max_size=25,
)


def _apply(e: BaseEngine, s: Step, now: float) -> Decisions:
    if s.kind == "reading":
        return e.receive(Reading(s.ref, s.value, now, s.quality), now)
    if s.kind == "retained":
        return e.receive(Reading(s.ref, s.value, now - 5.0, retained=True), now)
    if s.kind == "batch":
        readings = [Reading(s.ref, s.value, now, s.quality), *(Reading(r, v, now, q) for r, v, q in s.more)]
        return e.receive_many(readings, now)
    if s.kind == "device":
        return e.device_state(s.ref, s.value > 0, now)
    if s.kind == "actuator":
        return e.actuator_reported(s.ref, s.value, now)
    return e.tick(now)


def _same(a: Decisions, b: Decisions, where: str) -> None:
    assert a.commands == b.commands, where
    assert a.blocked == b.blocked, where
    assert a.runs == b.runs, where
    assert a.notifications == b.notifications, where
    assert a.events == b.events, where
    assert a.emergencies == b.emergencies, where


def run_both(rs: tuple[Rule, ...], seq: list[Step], offset: float = 0.0,
             other: tuple[Rule, ...] | None = None) -> int:
    """Drive both engines through ``seq`` (ticking at every due instant) and compare
    every decision. ``reload`` steps switch between ``rs`` and ``other``; ``restore``
    steps replace both engines by fresh ones restored from a JSON snapshot."""
    dep = deployment(rs)
    alt = deployment(other if other is not None else rs)
    start = T0 + offset
    rete = Engine(dep, start=start, version="v")
    ref: BaseEngine = ReferenceEngine(dep, start=start, version="v")
    now = start
    fired = 0
    try:
        _same(rete.tick(now), ref.tick(now), "start")
        for i, s in enumerate(seq):
            target = now + s.dt
            while True:
                dues = [t for t in (rete.next_due(), ref.next_due()) if t is not None and now < t <= target]
                if not dues:
                    break
                now = min(dues)
                a, b = rete.tick(now), ref.tick(now)
                _same(a, b, f"tick at +{now - start:g}s before step {i}")
                fired += len(a.runs)
            now = target
            if s.kind == "reload":
                dep, alt = alt, dep
                a, b = rete.reload(dep, now), ref.reload(dep, now)
                rete.version = ref.version = "v"
                for d in (a, b):
                    d.runs[:] = [replace(r, config_version="v") for r in d.runs]
            elif s.kind == "restore":
                snap_a = json.loads(json.dumps(rete.snapshot()))
                snap_b = json.loads(json.dumps(ref.snapshot()))
                rete.close()
                rete = Engine(dep, start=start, version="v")
                ref = ReferenceEngine(dep, start=start, version="v")
                rete.restore(snap_a)
                ref.restore(snap_b)
                continue
            else:
                a, b = _apply(rete, s, now), _apply(ref, s, now)
            _same(a, b, f"step {i} {s} at +{now - start:g}s")
            fired += len(a.runs)
    finally:
        rete.close()
    return fired


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules(), steps, st.sampled_from((0.0, 59.0, 3599.0)), st.one_of(st.none(), rules()))
def test_rete_and_reference_decide_the_same(rs: tuple[Rule, ...], seq: list[Step], offset: float,
                                            other: tuple[Rule, ...] | None) -> None:
    run_both(rs, seq, offset, other)


def test_a_known_sequence_fires_and_agrees() -> None:
    rs = (
        Rule("hot", "edge", Comparison("d0.s0", "above", 5.0, for_=5.0), (SetActuator("d0.a0", 1.0, 10.0),),
             priority=1, index=0),
        Rule("hold", "level", All((Comparison("d0.s1", "below", 5.0, hysteresis=1.0), DeviceIs("d0", True))),
             (SetActuator("d0.a0", 0.5),), index=1),
        Rule("tick", "edge", Every(25.0), (Notify("s0 is {d0.s0}"),), index=2),
    )
    seq = [Step(0, "device", "d0", 1.0), Step(1, "reading", "d0.s0", 9.0), Step(1, "reading", "d0.s1", 4.0),
           Step(10, "reading", "d0.s1", 5.5), Step(10, "reading", "d0.s1", 6.5), Step(30, "tick", "", 0.0)]
    assert run_both(rs, seq) >= 4


def test_the_example_deployment_decides_the_same_on_its_rule_tests() -> None:
    from pathlib import Path

    from engine.config import load_deployment

    root = Path(__file__).resolve().parents[2]
    dep, diags = load_deployment(root / "rules", "Europe/Berlin")
    assert not [d for d in diags if d.is_error]
    assert dep.tests
    for test in dep.tests:
        rete = Engine(dep, start=test.start, version="v")
        ref = ReferenceEngine(dep, start=test.start, version="v")
        try:
            now = test.start
            _same(rete.tick(now), ref.tick(now), f"{test.name}: start")
            for step in sorted(test.steps, key=lambda s: s.at):
                target = test.start + step.at
                while True:
                    dues = [t for t in (rete.next_due(), ref.next_due()) if t is not None and now < t <= target]
                    if not dues:
                        break
                    now = min(dues)
                    _same(rete.tick(now), ref.tick(now), f"{test.name}: tick +{now - test.start:g}s")
                now = target
                for dev, online in step.devices.items():
                    _same(rete.device_state(dev, online, now), ref.device_state(dev, online, now), test.name)
                for act, v in step.actuators.items():
                    _same(rete.actuator_reported(act, v, now), ref.actuator_reported(act, v, now), test.name)
                for sensor, value in step.readings.items():
                    reading = Reading(sensor, float("nan") if value is None else value, now)
                    _same(rete.receive(reading, now), ref.receive(reading, now), f"{test.name}: {sensor}")
            end = now + 7200
            while True:
                dues = [t for t in (rete.next_due(), ref.next_due()) if t is not None and now < t <= end]
                if not dues:
                    break
                now = min(dues)
                _same(rete.tick(now), ref.tick(now), f"{test.name}: tail +{now - test.start:g}s")
        finally:
            rete.close()
