"""Issue 10 in the rule engine, on both engines (Rete and the reference):
unknown is not false (three-valued logic), ``count``, ``fresh``, computed duties,
readings that land together, notification formats."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytest

from engine.conditions import FALSE, TRUE, UNKNOWN, all_of, any_of, not_of
from engine.core import BaseEngine, Engine
from engine.freshness import TICK
from engine.model import (
    Actuator,
    All,
    Any_,
    Comparison,
    Condition,
    Deployment,
    Device,
    Follow,
    Not,
    Notify,
    Reading,
    Rule,
    Safety,
    SafetyDefaults,
    Sensor,
    SetActuator,
)
from engine.reference import ReferenceEngine

T0 = 1_780_000_000.0


def dep(*rules: Rule, stale_after: float = 300.0) -> Deployment:
    devices = {
        "north": Device("north", "ESP_N",
                        sensors=(Sensor("north", "temp", 4, "ds18b20"), Sensor("north", "hum", 5, "analog"),
                                 Sensor("north", "flow", 6, "flow")),
                        actuators=(Actuator("north", "fan", 12, "relay"), Actuator("north", "vent", 13, "pwm"),
                                   Actuator("north", "heater", 14, "relay"))),
    }
    named = tuple(Rule(r.name, r.kind, r.condition, r.actions, r.release, r.description, r.priority, r.cooldown,
                       r.enabled, i) for i, r in enumerate(rules))
    return Deployment(devices=devices, safety=Safety(SafetyDefaults(stale_after=stale_after)), rules=named)


def edge(name: str, cond: Condition, *actions: object) -> Rule:
    return Rule(name, "edge", cond, tuple(actions))  # type: ignore[arg-type]


def level(name: str, cond: Condition, *actions: object) -> Rule:
    return Rule(name, "level", cond, tuple(actions))  # type: ignore[arg-type]


def cmp(sensor: str, op: str, x: float, **kw: object) -> Comparison:
    return Comparison(f"north.{sensor}", op, x, **kw)  # type: ignore[arg-type]


def r(ref: str, v: float, t: float, **kw: object) -> Reading:
    return Reading(f"north.{ref}", v, T0 + t, **kw)  # type: ignore[arg-type]


FAN = SetActuator("north.fan", 1.0)


@pytest.fixture(params=[Engine, ReferenceEngine], ids=["rete", "reference"])
def make(request: pytest.FixtureRequest) -> Iterator[Callable[[Deployment], BaseEngine]]:
    made: list[BaseEngine] = []

    def build(d: Deployment) -> BaseEngine:
        e = request.param(d, start=T0)
        made.append(e)
        return e

    yield build
    for e in made:
        if isinstance(e, Engine):
            e.close()


# --------------------------------------------------------------------------
# three-valued logic


def test_kleene_tables() -> None:
    assert any_of([TRUE, UNKNOWN]) == TRUE and any_of([FALSE, UNKNOWN]) == UNKNOWN and any_of([]) == FALSE
    assert all_of([FALSE, UNKNOWN]) == FALSE and all_of([TRUE, UNKNOWN]) == UNKNOWN and all_of([]) == TRUE
    assert not_of(UNKNOWN) == UNKNOWN and not_of(TRUE) == FALSE and not_of(FALSE) == TRUE


@pytest.mark.parametrize("bad", [dict(quality="bad"), dict(quality="stale"), dict(v=math.nan)])
def test_a_bad_reading_keeps_a_hold_and_fires_no_edge(make, bad: dict[str, object]) -> None:
    e = make(dep(level("heat", cmp("temp", "below", 16.0), SetActuator("north.heater", 1.0)),
                 edge("cold", cmp("temp", "below", 10.0), Notify("cold"))))
    assert e.receive(r("temp", 12, 0), T0).commands  # heat holds
    kw = dict(bad)
    v = kw.pop("v", 5.0)
    d = e.receive(r("temp", v, 1, **kw), T0 + 1)  # type: ignore[arg-type]
    assert not d.commands and not d.notifications and not d.runs  # unknown: nothing released, nothing fired
    assert e.holds() == {"heat": ["north.heater"]}
    # known again: still true keeps the hold; "cold" fires only now, on a real edge
    d = e.receive(r("temp", 9, 2), T0 + 2)
    assert not d.commands and [n.text for n in d.notifications] == ["cold"]
    d = e.receive(r("temp", 20, 3), T0 + 3)
    assert [(c.actuator, c.value) for c in d.commands] == [("north.heater", 0.0)]


def test_a_released_level_rule_stays_released_while_unknown(make) -> None:
    e = make(dep(level("heat", Not(cmp("temp", "above", 16.0)), SetActuator("north.heater", 1.0))))
    assert not e.receive(r("temp", 20, 0), T0).commands
    assert not e.receive(r("temp", 5, 1, quality="bad"), T0 + 1).commands  # "not above" of unknown: unknown
    assert e.receive(r("temp", 5, 2), T0 + 2).commands


def test_an_edge_held_through_unknown_is_no_new_edge(make) -> None:
    e = make(dep(edge("hot", cmp("temp", "above", 28.0), FAN)))
    assert e.receive(r("temp", 30, 0), T0).commands
    assert not e.receive(r("temp", 30, 1, quality="bad"), T0 + 1).commands
    assert not e.receive(r("temp", 30, 2), T0 + 2).commands  # true -> unknown -> true: no edge
    assert not e.receive(r("temp", 20, 3), T0 + 3).commands
    assert e.receive(r("temp", 30, 4), T0 + 4).commands


def test_any_is_true_when_one_part_is_true_and_another_unknown(make) -> None:
    e = make(dep(edge("either", Any_((cmp("temp", "above", 28.0), cmp("hum", "above", 80.0))), FAN),
                 level("both", All((cmp("temp", "above", 20.0), cmp("hum", "below", 90.0))),
                       SetActuator("north.heater", 1.0))))
    d = e.receive(r("temp", 30, 0), T0)  # hum never reported: unknown
    assert [c.actuator for c in d.commands] == ["north.fan"]  # any: true; all: unknown (no hold)
    d = e.receive(r("hum", 50, 1), T0 + 1)
    assert [c.actuator for c in d.commands] == ["north.heater"]
    d = e.receive(r("hum", 95, 2, quality="bad"), T0 + 2)  # all [true, unknown]: unknown, the hold stays
    assert not d.commands
    d = e.receive(r("temp", 10, 3), T0 + 3)  # all [false, unknown]: false
    assert [(c.actuator, c.value) for c in d.commands] == [("north.heater", 0.0)]


def test_a_reading_exactly_stale_after_old_is_still_fresh(make) -> None:
    e = make(dep(edge("hot", cmp("temp", "above", 28.0), FAN), stale_after=60.0))
    assert e.receive(Reading("north.temp", 30, T0 - 60), T0).commands
    e2 = make(dep(edge("hot", cmp("temp", "above", 28.0), FAN), stale_after=60.0))
    assert not e2.receive(Reading("north.temp", 30, T0 - 60 - TICK), T0).commands


def test_the_first_evaluation_of_an_unknown_condition_is_no_edge(make) -> None:
    e = make(dep(edge("cold", Not(cmp("temp", "above", 5.0)), Notify("cold"))))
    assert not e.tick(T0).notifications  # never reported: unknown, not "not above"
    assert [n.text for n in e.receive(r("temp", 3, 1), T0 + 1).notifications] == ["cold"]


# --------------------------------------------------------------------------
# count and fresh


def test_count_needs_n_readings_in_a_row_and_unknown_ones_neither_count_nor_reset(make) -> None:
    e = make(dep(edge("leak", cmp("flow", "above", 0.5, count=3), Notify("leak"))))
    assert not e.receive(r("flow", 1.0, 0), T0).notifications
    assert not e.receive(r("flow", 1.0, 10), T0 + 10).notifications
    assert not e.receive(r("flow", 0.2, 20), T0 + 20).notifications  # resets
    assert not e.receive(r("flow", 1.0, 30), T0 + 30).notifications
    assert not e.receive(r("flow", 1.0, 40), T0 + 40).notifications
    assert not e.receive(r("flow", 9.0, 45, quality="bad"), T0 + 45).notifications  # neither counts nor resets
    assert [n.text for n in e.receive(r("flow", 1.0, 50), T0 + 50).notifications] == ["leak"]


def test_count_with_for(make) -> None:
    e = make(dep(edge("leak", cmp("flow", "above", 0.5, count=2, for_=30.0), Notify("leak"))))
    e.receive(r("flow", 1.0, 0), T0)
    e.receive(r("flow", 1.0, 10), T0 + 10)  # counted: the for: starts here
    assert e.next_due() == T0 + 40
    assert [n.text for n in e.tick(T0 + 40).notifications] == ["leak"]


def test_fresh_makes_older_readings_unknown_for_that_condition_only(make) -> None:
    e = make(dep(level("vent", cmp("temp", "above", 28.0, fresh=60.0), SetActuator("north.vent", 0.5)),
                 level("fan", cmp("temp", "above", 28.0), FAN)))
    d = e.receive(r("temp", 30, 0), T0)
    assert sorted(c.actuator for c in d.commands) == ["north.fan", "north.vent"]
    assert e.next_due() == T0 + 60 + TICK
    assert not e.tick(T0 + 60 + TICK).commands  # unknown now for "vent": it keeps its hold
    d = e.receive(Reading("north.temp", 20, T0 - 10), T0 + 70)  # a late reading, already too old for vent
    assert [(c.actuator, c.value) for c in d.commands] == [("north.fan", 0.0)]
    assert e.holds() == {"vent": ["north.vent"]}


# --------------------------------------------------------------------------
# computed duties


VENT_MAP = Follow("north.temp", ((24.0, 0.2), (30.0, 1.0)), 0.05)


def test_a_computed_duty_in_then_is_computed_when_the_rule_runs(make) -> None:
    e = make(dep(edge("vent", cmp("temp", "above", 24.0), SetActuator("north.vent", VENT_MAP))))
    d = e.receive(r("temp", 27, 0), T0)
    assert [(c.actuator, c.value) for c in d.commands] == [("north.vent", 0.6)]
    assert "north.temp 27 -> duty 0.6" in d.commands[0].reason
    assert not e.receive(r("temp", 29, 1), T0 + 1).commands  # no new edge: not recomputed


def test_a_computed_duty_in_a_hold_tracks_its_sensor_by_step(make) -> None:
    e = make(dep(level("vent", cmp("temp", "above", 20.0), SetActuator("north.vent", VENT_MAP))))
    d = e.receive(r("temp", 22, 0), T0)
    assert [(c.value, c.hold) for c in d.commands] == [(0.2, True)]  # flat below the first point
    assert not e.receive(r("temp", 24.3, 1), T0 + 1).commands  # 0.24: moved by less than 0.05
    d = e.receive(r("temp", 25, 2), T0 + 2)
    assert [(c.value, c.hold) for c in d.commands] == [(0.333, True)]  # 3 decimals
    assert not e.receive(r("temp", 25, 3, quality="bad"), T0 + 3).commands  # unknown: keeps its duty
    assert [c.value for c in e.receive(r("temp", 40, 4), T0 + 4).commands] == [1.0]  # flat beyond the end
    d = e.receive(r("temp", 15, 5), T0 + 5)
    assert [(c.value, c.hold) for c in d.commands] == [(0.0, False)]  # released


def test_a_computed_duty_without_a_reading_sends_nothing_and_says_why(make) -> None:
    e = make(dep(edge("vent", cmp("hum", "above", 80.0), SetActuator("north.vent", VENT_MAP))))
    d = e.receive(r("hum", 90, 0), T0)
    assert not d.commands
    assert [ev.kind for ev in d.events] == ["rule"] and "north.temp has no fresh reading" in d.events[0].message


def test_hold_command_is_the_top_holders_at_the_current_duty(make) -> None:
    e = make(dep(level("vent", cmp("temp", "above", 20.0), SetActuator("north.vent", VENT_MAP))))
    e.receive(r("temp", 27, 0), T0)
    cmd = e.hold_command("north.vent")
    assert cmd is not None and cmd.rule == "vent" and cmd.hold and cmd.value == 0.6
    assert e.hold_command("north.fan") is None


# --------------------------------------------------------------------------
# readings that land together


def test_readings_given_together_are_all_stored_before_the_rules_run(make) -> None:
    e = make(dep(edge("both", All((cmp("temp", "above", 28.0), cmp("hum", "below", 60.0))), FAN),
                 edge("temp-first", All((cmp("temp", "above", 28.0), Not(cmp("hum", "below", 60.0)))),
                      Notify("seen half"))))
    d = e.receive_many([r("hum", 50, 0), r("temp", 30, 0)], T0)
    assert [c.actuator for c in d.commands] == ["north.fan"] and not d.notifications
    assert len(d.runs) == 1


def test_retained_readings_in_a_batch_fire_nothing(make) -> None:
    e = make(dep(edge("hot", cmp("temp", "above", 28.0), FAN)))
    assert not e.receive_many([Reading("north.temp", 30, T0 - 1, retained=True)], T0).commands


# --------------------------------------------------------------------------
# notifications


def test_notify_formats_readings(make) -> None:
    e = make(dep(edge("hot", cmp("temp", "above", 28.0), Notify("{north.temp:.1f} °C, {north.hum} %, {north.fan}"))))
    d = e.receive(r("temp", 28.456, 0), T0)
    assert [n.text for n in d.notifications] == ["28.5 °C, ? %, {north.fan}"]
