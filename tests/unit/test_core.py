"""Engine (Rete) behaviour a user would notice: edges, levels, time, actions, arbitration."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from engine.core import BaseEngine, Engine
from engine.freshness import TICK
from engine.model import (
    Actuator,
    All,
    At,
    Blocked,
    Code,
    Comparison,
    Condition,
    Deployment,
    Device,
    DeviceIs,
    EmergencyStop,
    Every,
    NoData,
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

T0 = 1_780_000_000.0  # 2026-05-28T20:26:40Z, a Thursday


def dep(*rules: Rule, tz: str = "UTC", **defaults: float) -> Deployment:
    devices = {
        "north": Device("north", "ESP_N", sensors=(Sensor("north", "temp", 4, "ds18b20"),
                                                   Sensor("north", "hum", 5, "analog")),
                        actuators=(Actuator("north", "fan", 12, "relay"), Actuator("north", "vent", 13, "pwm"))),
        "south": Device("south", "ESP_S", sensors=(Sensor("south", "temp", 4, "ds18b20"),),
                        actuators=(Actuator("south", "fan", 12, "relay"),)),
    }
    named = tuple(r if r.index else Rule(r.name, r.kind, r.condition, r.actions, r.release, r.description,
                                          r.priority, r.cooldown, r.enabled, i, r.pos)
                  for i, r in enumerate(rules))
    return Deployment(devices=devices, safety=Safety(SafetyDefaults(**defaults)), rules=named, tz=tz)  # type: ignore[arg-type]


def edge(name: str, cond: Condition, *actions: object, **kw: object) -> Rule:
    return Rule(name, "edge", cond, tuple(actions), **kw)  # type: ignore[arg-type]


def level(name: str, cond: Condition, *actions: object, **kw: object) -> Rule:
    return Rule(name, "level", cond, tuple(actions), **kw)  # type: ignore[arg-type]


def hot(x: float = 28.0, for_: float = 0.0) -> Comparison:
    return Comparison("north.temp", "above", x, for_=for_)


def fan(v: float = 1.0, for_: float | None = None) -> SetActuator:
    return SetActuator("north.fan", v, for_)


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


def r(ref: str, v: float, t: float, **kw: object) -> Reading:
    return Reading(ref, v, T0 + t, **kw)  # type: ignore[arg-type]


def test_first_true_evaluation_is_an_edge_and_fires_once(make) -> None:
    e = make(dep(edge("hot", hot(), fan())))
    d = e.receive(r("north.temp", 30, 0), T0)
    assert [c.actuator for c in d.commands] == ["north.fan"]
    assert d.runs[0].outcome == "ran" and d.runs[0].trigger == {"north.temp": 30.0}
    assert not e.receive(r("north.temp", 31, 1), T0 + 1).commands  # still true: no edge
    assert not e.receive(r("north.temp", 20, 2), T0 + 2).commands
    assert e.receive(r("north.temp", 29, 3), T0 + 3).commands  # a new edge


def test_retained_reading_fills_state_but_fires_no_edge(make) -> None:
    e = make(dep(edge("hot", hot(), fan(), Notify("now {north.temp}"))))
    d = e.receive(Reading("north.temp", 30, T0 - 1, retained=True), T0)
    assert not d.commands and not d.runs
    assert e.render("t={north.temp}") == "t=30"


def test_bad_stale_and_old_readings_satisfy_no_comparison(make) -> None:
    e = make(dep(edge("hot", hot(), fan()), stale_after=60.0))
    assert not e.receive(r("north.temp", 30, 0, quality="bad"), T0).commands
    assert not e.receive(r("north.temp", 30, 1, quality="stale"), T0 + 1).commands
    assert not e.receive(Reading("north.temp", 30, T0 - 120), T0 + 2).commands  # older than stale_after
    assert not e.receive(r("north.temp", float("nan"), 3), T0 + 3).commands
    assert e.receive(r("north.temp", 30, 4), T0 + 4).commands


def test_for_fires_when_due_and_not_before(make) -> None:
    e = make(dep(edge("hot", hot(for_=120.0), fan())))
    assert not e.receive(r("north.temp", 30, 0), T0).commands
    assert e.next_due() == T0 + 120
    assert not e.tick(T0 + 119).commands
    assert e.tick(T0 + 120).commands


def test_for_restarts_when_the_value_dips(make) -> None:
    e = make(dep(edge("hot", hot(for_=60.0), fan())))
    e.receive(r("north.temp", 30, 0), T0)
    e.receive(r("north.temp", 20, 30), T0 + 30)
    e.receive(r("north.temp", 30, 40), T0 + 40)
    assert not e.tick(T0 + 60).commands
    assert e.tick(T0 + 100).commands


def test_hysteresis_latches_until_h_back(make) -> None:
    e = make(dep(level("heat", Comparison("north.temp", "below", 16.0, hysteresis=1.0), fan())))
    assert e.receive(r("north.temp", 15, 0), T0).commands[0].hold
    assert not e.receive(r("north.temp", 16.5, 1), T0 + 1).commands
    off = e.receive(r("north.temp", 17.5, 2), T0 + 2).commands
    assert [(c.actuator, c.value) for c in off] == [("north.fan", 0.0)]


def test_a_stale_reading_keeps_a_hold_it_is_unknown_not_false(make) -> None:
    e = make(dep(level("heat", Comparison("north.temp", "below", 16.0), fan()), stale_after=300.0))
    e.receive(r("north.temp", 10, 0), T0)
    assert e.next_due() == T0 + 300 + TICK  # exactly stale_after old is still fresh
    assert not e.tick(T0 + 300)
    assert not e.tick(T0 + 300 + TICK)  # unknown: the hold stays (the guard decides on_sensor_loss)
    assert e.holds() == {"heat": ["north.fan"]}
    d = e.receive(r("north.temp", 20, 400), T0 + 400)  # known again, and false: released
    assert [(c.actuator, c.value) for c in d.commands] == [("north.fan", 0.0)]
    assert d.runs[0].outcome == "released"


def test_release_actions_replace_the_default_off(make) -> None:
    rule = Rule("shade", "level", hot(), (SetActuator("north.vent", 0.7),),
                release=(SetActuator("north.vent", 0.2), Notify("back to 20 %")))
    e = make(dep(rule))
    e.receive(r("north.temp", 30, 0), T0)
    d = e.receive(r("north.temp", 20, 1), T0 + 1)
    assert [(c.actuator, c.value, c.hold) for c in d.commands] == [("north.vent", 0.2, False)]
    assert d.notifications[0].text == "back to 20 %"


def test_cooldown_drops_edges_and_records_them(make) -> None:
    e = make(dep(edge("hot", hot(), fan(), cooldown=300.0)))
    e.receive(r("north.temp", 30, 0), T0)
    e.receive(r("north.temp", 20, 10), T0 + 10)
    d = e.receive(r("north.temp", 30, 20), T0 + 20)
    assert not d.commands and d.runs[0].outcome == "skipped_cooldown"
    e.receive(r("north.temp", 20, 301), T0 + 301)
    assert e.receive(r("north.temp", 30, 302), T0 + 302).commands


def test_wait_schedules_the_rest_on_the_clock(make) -> None:
    e = make(dep(edge("seq", hot(), fan(1.0, 600.0), Wait(30.0), SetActuator("north.vent", 0.6),
                      Notify("hot: {north.temp} °C", "warning"))))
    d = e.receive(r("north.temp", 29.5, 0), T0)
    assert [c.actuator for c in d.commands] == ["north.fan"] and d.commands[0].duration == 600.0
    assert e.next_due() == T0 + 30
    later = e.tick(T0 + 30)
    assert [(c.actuator, c.value) for c in later.commands] == [("north.vent", 0.6)]
    assert later.notifications[0].text == "hot: 29.5 °C" and later.notifications[0].level == "warning"


def test_higher_priority_wins_and_the_loser_is_a_conflict(make) -> None:
    e = make(dep(edge("low", hot(), fan(1.0), priority=1), edge("high", hot(), fan(0.0), priority=5)))
    d = e.receive(r("north.temp", 30, 0), T0)
    assert [(c.rule, c.value) for c in d.commands] == [("high", 0.0)]
    assert [(b.command.rule, b.code) for b in d.blocked] == [("low", Code.CONFLICT)]
    assert d.events[0].kind == "conflict"


def test_equal_priority_goes_to_the_rule_declared_first(make) -> None:
    e = make(dep(edge("first", hot(), fan(1.0)), edge("second", hot(), fan(0.0))))
    d = e.receive(r("north.temp", 30, 0), T0)
    assert [c.rule for c in d.commands] == ["first"]
    assert [b.command.rule for b in d.blocked] == ["second"]


def test_a_hold_keeps_lower_priority_rules_off_its_actuator(make) -> None:
    e = make(dep(level("keep", Comparison("north.hum", "above", 80.0), fan(1.0), priority=5),
                 edge("cool", hot(), fan(0.0), priority=1)))
    e.receive(r("north.hum", 90, 0), T0)
    d = e.receive(r("north.temp", 30, 1), T0 + 1)
    assert not d.commands
    assert isinstance(d.blocked[0], Blocked) and d.blocked[0].code == Code.CONFLICT


def test_loop_guard_suspends_a_flapping_rule(make) -> None:
    e = make(dep(edge("flap", hot(), fan(1.0)), max_switches_per_minute=3))
    sent = 0
    events = []
    for i in range(10):
        d = e.receive(r("north.temp", 30 if i % 2 == 0 else 20, i), T0 + i)
        sent += len(d.commands)
        events += d.events
    assert sent == 3
    assert [ev.kind for ev in events] == ["suspended"] and events[0].severity == "critical"


def test_emergency_stop_action_is_handed_on(make) -> None:
    e = make(dep(edge("panic", hot(45.0), EmergencyStop("all", "too hot"))))
    d = e.receive(r("north.temp", 46, 0), T0)
    assert [(x.target, x.reason, x.rule) for x in d.emergencies] == [("all", "too hot", "panic")]


def test_no_data_for_counts_from_start(make) -> None:
    e = make(dep(edge("silent", NoData("north.hum", 900.0), Notify("silent"))))
    e.tick(T0)
    assert e.next_due() == T0 + 900
    assert e.tick(T0 + 900).notifications
    e.receive(r("north.hum", 50, 1000), T0 + 1000)
    assert not e.tick(T0 + 1899).notifications
    assert e.tick(T0 + 1900).notifications


def test_device_online_condition(make) -> None:
    e = make(dep(edge("gone", DeviceIs("south", False), Notify("south offline"))))
    assert not e.tick(T0).notifications  # unknown is neither online nor offline
    assert not e.device_state("south", True, T0 + 1).notifications
    assert e.device_state("south", False, T0 + 2).notifications


def test_time_window_wraps_midnight_in_the_configured_zone(make) -> None:
    # T0 is 22:26:40 in Berlin (summer time); window 22:30-05:30 opens 200 s later
    e = make(dep(level("night", TimeWindow(22 * 60 + 30, 5 * 60 + 30), fan(0.8)), tz="Europe/Berlin"))
    assert not e.tick(T0).commands
    assert e.next_due() == T0 + 200
    assert e.tick(T0 + 200).commands[0].value == 0.8
    assert e.tick(T0 + 200 + 7 * 3600).commands[0].value == 0.0  # 05:30 next morning


def test_weekdays_of_a_wrapping_window_belong_to_its_start_day(make) -> None:
    # Thursday 22:30 UTC .. Friday 05:30, weekdays [thu]: still inside on Friday 01:00
    e = make(dep(level("thu-night", TimeWindow(22 * 60, 6 * 60, (3,)), fan())))
    e.tick(T0)
    assert not e.is_true("thu-night")  # 20:26
    e.tick(T0 + 2 * 3600)
    assert e.is_true("thu-night")  # Thursday 22:26
    e.tick(T0 + 6 * 3600)
    assert e.is_true("thu-night")  # Friday 02:26: the night that began on Thursday
    e.tick(T0 + 26 * 3600)
    assert not e.is_true("thu-night")  # Friday 22:26


def test_at_and_every_triggers(make) -> None:
    e = make(dep(edge("daily", At(20 * 60 + 30), Notify("at")), edge("tick", Every(60.0), Notify("every"))))
    e.tick(T0)
    assert e.next_due() == T0 + 60
    assert [n.text for n in e.tick(T0 + 60).notifications] == ["every"]
    assert [n.text for n in e.tick(T0 + 200).notifications] == ["at", "every"]  # 20:30 UTC, and a late tick
    assert e.next_due() == T0 + 240


def test_at_combined_with_a_condition(make) -> None:
    e = make(dep(edge("if-hot", All((At(20 * 60 + 30), hot())), fan())))
    e.receive(r("north.temp", 20, 0), T0)
    assert not e.tick(T0 + 200).commands
    assert not e.receive(r("north.temp", 30, 300), T0 + 300).commands  # the trigger has passed
    e.receive(r("north.temp", 30, 86400 + 100), T0 + 86400 + 100)
    assert e.tick(T0 + 86400 + 200).commands  # next day at 20:30, hot


def test_snapshot_restore_keeps_a_pending_for_timer(make) -> None:
    d = dep(edge("hot", hot(for_=120.0), fan(), cooldown=600.0))
    a = make(d)
    a.receive(r("north.temp", 30, 0), T0)
    snap = json.loads(json.dumps(a.snapshot()))
    b = make(d)
    b.restore(snap)
    assert b.next_due() == T0 + 120
    assert b.tick(T0 + 120).commands


def test_reload_carries_state_and_evaluates_new_rules(make) -> None:
    e = make(dep(edge("hot", hot(for_=120.0), fan())))
    e.receive(r("north.temp", 30, 0), T0)
    d = e.reload(dep(edge("hot", hot(for_=120.0), fan()), edge("warm", hot(25.0), Notify("warm"))), T0 + 10)
    assert [n.text for n in d.notifications] == ["warm"]
    assert e.tick(T0 + 120).commands  # the for: timer survived


def test_reload_releases_holds_of_removed_rules(make) -> None:
    e = make(dep(level("keep", hot(), fan())))
    e.receive(r("north.temp", 30, 0), T0)
    d = e.reload(dep(), T0 + 1)
    assert [(c.actuator, c.value) for c in d.commands] == [("north.fan", 0.0)]


def test_bad_restore_data_is_an_engine_error(make) -> None:
    from engine.errors import EngineError

    e = make(dep(edge("hot", hot(), fan())))
    with pytest.raises(EngineError):
        e.restore({"readings": {"north.temp": "x"}})


def test_a_new_every_rule_after_a_reload_keeps_the_start_rhythm(make) -> None:
    e = make(dep())
    e.tick(T0)
    e.reload(dep(edge("tick", Every(60.0), Notify("every"))), T0 + 130)
    assert e.next_due() == T0 + 180
    assert [n.text for n in e.tick(T0 + 180).notifications] == ["every"]


def test_a_hold_ends_when_its_rule_becomes_a_when_rule(make) -> None:
    e = make(dep(level("keep", hot(), fan())))
    e.receive(r("north.temp", 30, 0), T0)
    d = e.reload(dep(edge("keep", hot(), Notify("now an edge"))), T0 + 1)
    assert [(c.actuator, c.value) for c in d.commands] == [("north.fan", 0.0)]
    assert [n.text for n in d.notifications] == ["now an edge"]  # true at once: a new edge
    assert e.holds() == {}
