"""Issue 10 through the whole pipeline (engine -> arbitration -> guard): holds resume
after a reset and after a lost sensor, interlocks correct what a board reports,
clamped duties, readings that land together, on_sensor_loss decided by the guard."""

from __future__ import annotations

import json

from engine.freshness import TICK
from engine.model import (
    Actuator,
    ActuatorLimits,
    Code,
    Comparison,
    Deployment,
    Device,
    Follow,
    Interlock,
    Reading,
    Rule,
    Safety,
    SafetyDefaults,
    Sensor,
    SetActuator,
)
from engine.pipeline import Kaiser

T0 = 1_780_000_000.0  # 2026-05-28 20:26:40 UTC


def dep(*rules: Rule, limits: tuple[ActuatorLimits, ...] = (), interlocks: tuple[Interlock, ...] = (),
        stale_after: float = 300.0) -> Deployment:
    devices = {
        "house": Device("house", "ESP_H",
                        sensors=(Sensor("house", "temp", 4, "ds18b20"), Sensor("house", "soil", 32, "moisture")),
                        actuators=(Actuator("house", "heater", 12, "relay"), Actuator("house", "fan", 13, "relay"),
                                   Actuator("house", "vent", 14, "pwm"))),
        "tank": Device("tank", "ESP_T", sensors=(Sensor("tank", "level", 33, "analog"),),
                       actuators=(Actuator("tank", "pump", 16, "pump"),)),
    }
    named = tuple(Rule(r.name, r.kind, r.condition, r.actions, r.release, r.description, r.priority, r.cooldown,
                       r.enabled, i) for i, r in enumerate(rules))
    return Deployment(devices=devices, rules=named, tz="Europe/Berlin",
                      safety=Safety(SafetyDefaults(stale_after=stale_after), {lim.actuator: lim for lim in limits},
                                    interlocks))


THERMOSTAT = Rule("heater-thermostat", "level", Comparison("house.temp", "below", 16.0),
                  (SetActuator("house.heater", 1.0),), description="keep the house warm")


def temp(v: float, t: float, **kw: object) -> Reading:
    return Reading("house.temp", v, T0 + t, **kw)  # type: ignore[arg-type]


def sent(out: object) -> list[tuple[str, float]]:
    return [(a.command.actuator, a.command.value) for a in out.sent]  # type: ignore[attr-defined]


# --------------------------------------------------------------------------
# holds after an emergency stop and a reset


def test_a_hold_is_taken_again_on_the_next_fresh_reading_after_a_reset_not_at_the_reset() -> None:
    k = Kaiser(dep(THERMOSTAT), assume_online=True)
    assert sent(k.receive(temp(12, 0), T0)) == [("house.heater", 1.0)]
    assert ("house.heater", 0.0) in sent(k.emergency_stop("all", "leak", "alice", T0 + 10))
    assert not k.receive(temp(12, 20), T0 + 20).sent  # latched: nothing is tried
    out = k.reset("all", "alice", "fixed", T0 + 30)
    assert not out.sent  # a reset switches nothing on by itself
    out = k.receive(temp(12, 40), T0 + 40)
    assert sent(out) == [("house.heater", 1.0)]
    cmd = out.sent[0].command
    assert cmd.hold and cmd.rule == "heater-thermostat"
    assert "held again after reset at 2026-05-28 22:27:10 CEST" in cmd.reason
    run = out.runs[-1]
    assert run.rule == "heater-thermostat" and run.trigger["held_again_after_reset_at"] == T0 + 30
    assert run.trigger["house.temp"] == 12.0 and "held again after reset" in run.actions[0]
    assert not k.receive(temp(12, 50), T0 + 50).sent  # held: once is enough


def test_after_a_reset_a_rule_that_is_no_longer_true_takes_nothing() -> None:
    k = Kaiser(dep(THERMOSTAT), assume_online=True)
    k.receive(temp(12, 0), T0)
    k.emergency_stop("house", "leak", "alice", T0 + 10)
    k.reset("house", "alice", "fixed", T0 + 20)
    out = k.receive(temp(20, 30), T0 + 30)
    assert not [a for a in out.sent if a.command.value > 0]  # released instead
    assert not k.receive(temp(20, 40), T0 + 40).sent


def test_a_reading_that_is_not_fresh_does_not_resume_a_hold() -> None:
    k = Kaiser(dep(THERMOSTAT), assume_online=True)
    k.receive(temp(12, 0), T0)
    k.emergency_stop("all", "leak", "alice", T0 + 10)
    k.reset("all", "alice", "fixed", T0 + 20)
    assert not k.receive(temp(12, 30, quality="bad"), T0 + 30).sent
    assert sent(k.receive(temp(12, 40), T0 + 40)) == [("house.heater", 1.0)]


def test_a_hold_refused_during_a_stop_is_taken_after_the_reset() -> None:
    k = Kaiser(dep(THERMOSTAT), assume_online=True)
    k.receive(temp(20, 0), T0)
    k.emergency_stop("all", "leak", "alice", T0 + 10)
    out = k.receive(temp(12, 20), T0 + 20)  # the rule turns true while latched
    assert [b.code for b in out.blocked] == [Code.EMERGENCY_STOP_ACTIVE]
    k.reset("all", "alice", "fixed", T0 + 30)
    assert sent(k.receive(temp(12, 40), T0 + 40)) == [("house.heater", 1.0)]


def test_the_wait_for_a_reset_survives_a_restart() -> None:
    k = Kaiser(dep(THERMOSTAT), assume_online=True)
    k.receive(temp(12, 0), T0)
    k.emergency_stop("all", "leak", "alice", T0 + 10)
    snap = json.loads(json.dumps(k.snapshot()))
    k2 = Kaiser(dep(THERMOSTAT), assume_online=True)
    k2.restore(snap)
    k2.reset("all", "alice", "fixed", T0 + 20)
    assert sent(k2.receive(temp(12, 30), T0 + 30)) == [("house.heater", 1.0)]


# --------------------------------------------------------------------------
# on_sensor_loss is the guard's; the hold comes back with the sensor


def test_sensor_loss_off_switches_off_and_the_hold_resumes_when_fresh() -> None:
    k = Kaiser(dep(THERMOSTAT, stale_after=60.0), assume_online=True)
    k.receive(temp(12, 0), T0)
    out = k.tick(T0 + 60)
    assert not [a for a in out.sent if a.command.value == 0.0]  # exactly 60 s old: fresh
    out = k.tick(T0 + 60 + TICK)
    assert sent(out) == [("house.heater", 0.0)]
    assert out.events[-1].data["code"] == "SENSOR_LOST"
    assert k.engine.holds() == {"heater-thermostat": ["house.heater"]}  # unknown: the rule still holds
    out = k.receive(temp(12, 90), T0 + 90)
    assert sent(out) == [("house.heater", 1.0)]
    assert "fresh again" in out.sent[0].command.reason


def test_sensor_loss_hold_keeps_the_actuator_and_the_rule_keeps_its_hold() -> None:
    k = Kaiser(dep(THERMOSTAT, limits=(ActuatorLimits("house.heater", on_sensor_loss="hold"),), stale_after=60.0),
               assume_online=True)
    k.receive(temp(12, 0), T0)
    for t in (30.0, 61.0, 90.0, 120.0):
        out = k.tick(T0 + t)
        assert all(a.command.value == 1.0 for a in out.sent), t  # renewals only
    assert k.guard.is_on("house.heater")


def test_a_fresh_limit_on_a_condition_is_what_the_guard_watches() -> None:
    rule = Rule("heat", "level", Comparison("house.temp", "below", 16.0, fresh=30.0), (SetActuator("house.heater", 1.0),))
    k = Kaiser(dep(rule), assume_online=True)
    assert k.guard.limits.entries["house.heater"].fresh == {"house.temp": 30.0}
    k.receive(temp(12, 0), T0)
    assert sent(k.tick(T0 + 30)) == [("house.heater", 1.0)]  # the lease renewal; exactly 30 s old is fresh
    assert k.next_due() == T0 + 30 + TICK
    assert sent(k.tick(T0 + 30 + TICK)) == [("house.heater", 0.0)]


# --------------------------------------------------------------------------
# interlocks correct what a board reports


HEAT_OR_VENT = Interlock("heat-or-vent", never_together=("house.heater", "house.fan"))


def test_a_board_reporting_a_forbidden_partner_on_gets_it_switched_off() -> None:
    k = Kaiser(dep(THERMOSTAT, interlocks=(HEAT_OR_VENT,)), assume_online=True)
    k.receive(temp(12, 0), T0)
    out = k.actuator_reported("house.fan", 1.0, T0 + 10)  # someone pressed the fan's button
    assert sent(out) == [("house.fan", 0.0)]
    assert out.sent[0].command.source == "safety"
    ev = [e for e in out.events if e.kind == "safety"]
    assert ev and ev[0].data["code"] == "INTERLOCK" and "house.heater is on" in ev[0].message
    assert not k.actuator_reported("house.fan", 0.0, T0 + 11).sent
    assert not k.actuator_reported("house.heater", 1.0, T0 + 12).sent  # our own: fine


def test_only_if_corrects_too() -> None:
    lock = Interlock("pump-needs-water", actuator="tank.pump", only_if=Comparison("tank.level", "above", 10.0))
    k = Kaiser(dep(interlocks=(lock,)), assume_online=True)
    k.receive(Reading("tank.level", 4.0, T0), T0)
    out = k.actuator_reported("tank.pump", 1.0, T0 + 1)
    assert sent(out) == [("tank.pump", 0.0)] and "tank.level is 4" in out.events[-1].message


# --------------------------------------------------------------------------
# clamp instead of block


def test_a_duty_outside_a_clamped_range_is_sent_as_the_nearest_bound() -> None:
    vent = Follow("house.temp", ((20.0, 0.0), (30.0, 1.0)))
    rule = Rule("vent", "level", Comparison("house.temp", "above", 20.0), (SetActuator("house.vent", vent),))
    k = Kaiser(dep(rule, limits=(ActuatorLimits("house.vent", pwm=(0.2, 0.8), out_of_range="clamp"),)),
               assume_online=True)
    out = k.receive(temp(29, 0), T0)  # 0.9 -> 0.8
    assert sent(out) == [("house.vent", 0.8)]
    assert "clamped 0.9 to 0.8" in out.sent[0].command.reason
    out = k.receive(temp(21, 1), T0 + 1)  # 0.1 -> 0.2
    assert sent(out) == [("house.vent", 0.2)]


def test_block_is_the_default() -> None:
    rule = Rule("vent", "edge", Comparison("house.temp", "above", 20.0), (SetActuator("house.vent", 0.9),))
    k = Kaiser(dep(rule, limits=(ActuatorLimits("house.vent", pwm=(0.2, 0.8)),)), assume_online=True)
    assert [b.code for b in k.receive(temp(29, 0), T0).blocked] == [Code.PWM_OUT_OF_RANGE]


# --------------------------------------------------------------------------
# readings that land together


def test_a_batch_lands_before_rules_and_guard_decide() -> None:
    lock = Interlock("pump-needs-water", actuator="tank.pump", only_if=Comparison("tank.level", "above", 10.0))
    water = Rule("irrigate", "edge", Comparison("house.soil", "below", 20.0), (SetActuator("tank.pump", 1.0, 60.0),))
    for order in (("house.soil", "tank.level"), ("tank.level", "house.soil")):
        k = Kaiser(dep(water, interlocks=(lock,)), assume_online=True)
        values = {"house.soil": 10.0, "tank.level": 50.0}
        out = k.receive_many([Reading(ref, values[ref], T0) for ref in order], T0)
        assert sent(out) == [("tank.pump", 1.0)], order
        assert not out.blocked


def test_a_hold_refused_by_min_off_is_tried_again_on_a_later_reading() -> None:
    k = Kaiser(dep(THERMOSTAT, limits=(ActuatorLimits("house.heater", min_off=180.0),)), assume_online=True)
    k.receive(temp(12, 0), T0)
    assert sent(k.receive(temp(17, 60), T0 + 60)) == [("house.heater", 0.0)]
    out = k.receive(temp(15, 100), T0 + 100)  # cold again at once: anti short-cycling refuses it
    assert [b.code for b in out.blocked] == [Code.MIN_OFF]
    assert [b.code for b in k.receive(temp(15, 200), T0 + 200).blocked] == [Code.MIN_OFF]
    out = k.receive(temp(15, 250), T0 + 250)
    assert sent(out) == [("house.heater", 1.0)] and "held again after MIN_OFF" in out.sent[0].command.reason


def test_a_hold_refused_by_an_interlock_waits_for_its_next_edge() -> None:
    fan_on = Rule("air", "edge", Comparison("house.soil", "below", 20.0), (SetActuator("house.fan", 1.0, 600.0),))
    k = Kaiser(dep(fan_on, THERMOSTAT, interlocks=(HEAT_OR_VENT,)), assume_online=True)
    k.receive(Reading("house.soil", 10.0, T0), T0)
    assert [b.code for b in k.receive(temp(12, 1), T0 + 1).blocked] == [Code.INTERLOCK]
    assert not k.receive(temp(12, 2), T0 + 2).blocked  # no block per reading
