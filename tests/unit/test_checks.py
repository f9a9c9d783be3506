"""The semantic lint checks on model objects built directly (no YAML involved).

The golden corpus (tests/golden) covers the same checks through the loader; these
tests pin down the reasoning behind them: when two conditions count as disjoint,
which board limits apply, which findings model-level misuse produces.
"""

from __future__ import annotations

from dataclasses import replace

from engine.config.boards import BOARDS, board
from engine.config.checks import did_you_mean, run_checks
from engine.diagnostics import Diagnostic
from engine.model import Actuator as A
from engine.model import (
    ActuatorIs,
    ActuatorLimits,
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
    Expectation,
    Interlock,
    Not,
    Notify,
    Position,
    Rule,
    RuleTest,
    Safety,
    SetActuator,
    TimeWindow,
)
from engine.model import Sensor as S
from engine.model import TestStep as Step


def P(line: int, col: int = 1) -> Position:
    return Position("t.yaml", line, col)


NORTH = Device(
    "north",
    "ESP_4A1B2C",
    board="esp32dev",
    sensors=(
        S("north", "air_temp", 4, "ds18b20", onewire_address="28FF641E8D3C0C79", pos=P(1)),
        S("north", "climate", 21, "sht31", i2c_address=0x44, quantities=("temperature", "humidity"), pos=P(2)),
        S("north", "soil", 34, "moisture", pos=P(3)),
    ),
    actuators=(
        A("north", "fan", 5, "relay", pos=P(4)),
        A("north", "heater", 18, "relay", pos=P(5)),
        A("north", "vent", 25, "pwm", pos=P(6)),
    ),
    pos=P(1),
)


def rule(name: str, cond: Condition, *actions: object, kind: str = "edge", priority: int = 0,
         line: int = 20, **kw: object) -> Rule:
    return Rule(name, kind, cond, tuple(actions), priority=priority, pos=P(line), **kw)  # type: ignore[arg-type]


def on(ref: str, line: int = 30, value: float = 1.0, for_: float | None = None) -> SetActuator:
    return SetActuator(ref, value, for_, P(line))


def off(ref: str, line: int = 31) -> SetActuator:
    return SetActuator(ref, 0.0, None, P(line))


def cmp(sensor: str, op: str, value: float | tuple[float, float], line: int = 10, h: float = 0.0) -> Comparison:
    return Comparison(sensor, op, value, hysteresis=h, pos=P(line))


USE_ALL = Safety(actuators={r: ActuatorLimits(r, max_runtime=3600) for r in ("north.fan", "north.heater", "north.vent")})


def check(*rules: Rule, devices: tuple[Device, ...] = (NORTH,), safety: Safety = USE_ALL,
          tests: tuple[RuleTest, ...] = (), partial: bool = False) -> list[Diagnostic]:
    dep = Deployment({d.name: d for d in devices}, safety, tuple(rules), tests)
    return run_checks(dep, partial=partial)


def codes(found: list[Diagnostic]) -> list[str]:
    return [d.code for d in found]


# --------------------------------------------------------------------------
# references


def test_clean_deployment_has_no_findings() -> None:
    assert check(rule("hot", cmp("north.air_temp", "above", 28), on("north.fan"))) == []


def test_unknown_refs_everywhere_with_did_you_mean() -> None:
    found = check(
        rule("a", All((cmp("north.air_tmp", "above", 28, 10), DeviceIs("nort", True, P(11)),
                       ActuatorIs("north.fna", True, P(12)), Change("north.soill", "rises", 5, 60, P(13)))),
             on("north.fen", 14), EmergencyStop("south", "x", P(15)), Notify("{north.soil.x} is", pos=P(16))),
    )
    by_line = {d.pos.line: d for d in found}
    assert by_line[10].code == "K401" and "north.air_temp" in by_line[10].hint
    assert by_line[11].code == "K403" and "north" in by_line[11].hint
    assert by_line[12].code == "K402" and "north.fan" in by_line[12].hint
    assert by_line[13].code == "K401"
    assert by_line[14].code == "K402"
    assert by_line[15].code == "K403"
    assert by_line[16].code == "K405" and "single value" in by_line[16].hint


def test_multi_value_chip_hint_names_its_quantities() -> None:
    [d] = check(rule("a", cmp("north.climate", "above", 28), on("north.fan")))
    assert d.code == "K401"
    assert "north.climate.temperature" in d.hint and "north.climate.humidity" in d.hint


def test_actuator_used_as_sensor_says_so() -> None:
    [d] = check(rule("a", cmp("north.fan", "above", 1), on("north.fan")))
    assert d.code == "K401" and "actuator" in d.hint


def test_difference_refs_checked_both_sides() -> None:
    found = check(rule("a", Difference("north.air_temp", "north.nope", "above", 3, pos=P(9)), on("north.fan")))
    assert codes(found) == ["K401"]


def test_test_refs_and_rule_names() -> None:
    t = RuleTest("t", 0.0, (Step(0, {"north.air_tmp": 1.0}, {"sout": True}, {"north.fann": 1.0}, P(41)),),
                 (Expectation(5, "command", {"actuator": "north.fan", "rule": "hott"}, P(42)),
                  Expectation(6, "blocked", {"actuator": "north.fan", "reason": "MIN_OF"}, P(43))),
                 rules=("hott",), pos=P(40))
    found = check(rule("hot", cmp("north.air_temp", "above", 28), on("north.fan")), tests=(t,))
    got = sorted((d.pos.line, d.code) for d in found)
    assert got == [(40, "K404"), (41, "K401"), (41, "K402"), (41, "K403"), (42, "K404"), (43, "K406")]
    assert "MIN_OFF" in next(d for d in found if d.code == "K406").hint


def test_did_you_mean() -> None:
    assert did_you_mean("north.fna", ["north.fan", "south.fan"]) == "did you mean north.fan?"
    assert did_you_mean("zzz", ["north.fan"]) == ""


# --------------------------------------------------------------------------
# devices and pins


def test_board_tables_match_protocol() -> None:
    esp = BOARDS["esp32dev"]
    # PROTOCOL.md's reserved pins, plus 6-11, which drive the SPI flash
    assert {0, 1, 2, 3, 12, 13} | esp.flash == esp.reserved and esp.flash == set(range(6, 12))
    assert set(range(34, 40)) == esp.input_only
    assert (esp.max_sensors, esp.max_actuators) == (20, 12)
    xiao = board("XIAO_ESP32C3")
    assert xiao is not None and xiao.i2c == (4, 5) and xiao.onewire == 6
    assert board(None) is None and board("uno") is None


def test_unknown_board_from_the_model() -> None:
    dev = replace(NORTH, board="esp8266")
    found = check(rule("a", cmp("north.air_temp", "above", 28), on("north.fan")), devices=(dev,))
    assert codes(found) == ["K417"]


def test_aux_gpio_conflicts_and_pins() -> None:
    dev = replace(NORTH, actuators=(*NORTH.actuators, A("north", "valve", 26, "valve", aux_gpio=5, pos=P(7))))
    found = check(rule("a", cmp("north.air_temp", "above", 28), on("north.fan"), on("north.valve")),
                  devices=(dev,), safety=Safety(actuators={"north.heater": ActuatorLimits("north.heater"),
                                                           "north.vent": ActuatorLimits("north.vent")}))
    assert codes(found) == ["K410"]
    assert found[0].related == P(4)


def test_gpio_is_per_device() -> None:
    south = Device("south", "ESP_7C3D9E", board="esp32dev",
                   sensors=(S("south", "air_temp", 4, "ds18b20", onewire_address="28EDBF88465F03F5", pos=P(50)),),
                   actuators=(A("south", "fan", 5, "relay", pos=P(51)),), pos=P(49))
    found = check(rule("a", cmp("north.air_temp", "above", 28), on("north.fan"), on("south.fan")),
                  devices=(NORTH, south))
    assert found == []


# --------------------------------------------------------------------------
# values


def test_value_outside_unit_range_from_model() -> None:
    found = check(rule("a", cmp("north.air_temp", "above", 28), on("north.vent", value=1.5)))
    assert codes(found) == ["K420"]


def test_off_is_always_allowed_under_a_pwm_range() -> None:
    safety = replace(USE_ALL, actuators={**USE_ALL.actuators, "north.vent": ActuatorLimits("north.vent", pwm=(0.2, 0.8))})
    assert check(rule("a", cmp("north.air_temp", "above", 28), off("north.vent")), safety=safety) == []


def test_bad_pwm_limit_from_model() -> None:
    safety = Safety(actuators={**USE_ALL.actuators, "north.vent": ActuatorLimits("north.vent", pwm=(0.9, 0.1))})
    found = check(rule("a", cmp("north.air_temp", "above", 28), on("north.fan")), safety=safety)
    assert codes(found) == ["K423"]


def test_fractional_valve_is_fine() -> None:
    dev = replace(NORTH, actuators=(*NORTH.actuators, A("north", "mist", 26, "valve", pos=P(7))))
    found = check(rule("a", cmp("north.air_temp", "above", 28), on("north.mist", value=0.5)), devices=(dev,))
    assert found == []


# --------------------------------------------------------------------------
# opposite states: what counts as disjoint


def _fight(c1: Condition, c2: Condition, *, kind1: str = "edge", kind2: str = "edge",
           p1: int = 0, p2: int = 0) -> list[str]:
    r1 = rule("one", c1, on("north.fan", 30), kind=kind1, priority=p1, line=20)
    r2 = rule("two", c2, off("north.fan", 31), kind=kind2, priority=p2, line=21)
    return codes(check(r1, r2))


def test_same_sensor_disjoint_ranges_do_not_fight() -> None:
    assert _fight(cmp("north.air_temp", "above", 28), cmp("north.air_temp", "below", 24)) == []
    assert _fight(cmp("north.air_temp", "above", 28), cmp("north.air_temp", "at_most", 28)) == []
    assert _fight(cmp("north.air_temp", "between", (10, 20)), cmp("north.air_temp", "between", (21, 30))) == []


def test_touching_closed_ranges_do_fight() -> None:
    assert _fight(cmp("north.air_temp", "at_least", 28), cmp("north.air_temp", "at_most", 28)) == ["K430"]


def test_hysteresis_widens_the_range() -> None:
    # above 28 with hysteresis 5 stays true down to 23, so it meets "below 24"
    assert _fight(cmp("north.air_temp", "above", 28, h=5), cmp("north.air_temp", "below", 24)) == ["K430"]


def test_different_sensors_fight() -> None:
    assert _fight(cmp("north.air_temp", "above", 28), cmp("north.soil", "below", 24)) == ["K430"]


def test_priority_settles_it() -> None:
    assert _fight(cmp("north.air_temp", "above", 28), cmp("north.soil", "below", 24), p1=5) == []


def test_time_windows_and_triggers() -> None:
    day = TimeWindow(8 * 60, 18 * 60, pos=P(12))
    night = TimeWindow(22 * 60, 6 * 60, pos=P(13))  # spans midnight
    assert _fight(day, night) == []
    assert _fight(At(7 * 60, P(12)), At(19 * 60, P(13))) == []
    assert _fight(At(7 * 60, P(12)), day) == []
    assert _fight(At(9 * 60, P(12)), day) == ["K430"]
    assert _fight(At(3 * 60, P(12)), night) == ["K430"]
    assert _fight(Every(60, P(12)), day) == ["K430"]


def test_weekdays_split_days() -> None:
    weekdays = TimeWindow(None, None, (0, 1, 2, 3, 4), P(12))
    weekend = TimeWindow(None, None, (5, 6), P(13))
    assert _fight(weekdays, weekend) == []
    # a window spanning midnight on friday reaches into saturday morning
    friday_night = TimeWindow(22 * 60, 4 * 60, (4,), P(12))
    saturday_early = TimeWindow(1 * 60, 2 * 60, (5,), P(13))
    assert _fight(friday_night, saturday_early) == ["K430"]


def test_device_and_actuator_state_split() -> None:
    assert _fight(DeviceIs("north", True, P(12)), DeviceIs("north", False, P(13))) == []
    assert _fight(ActuatorIs("north.heater", True, P(12)), Not(ActuatorIs("north.heater", True, P(13)), P(13))) == []


def test_not_of_a_threshold_complements_it() -> None:
    assert _fight(cmp("north.air_temp", "above", 28), Not(cmp("north.air_temp", "above", 28, 13), P(13))) == []


def test_any_is_disjoint_only_when_every_branch_is() -> None:
    both_cold = Any_((cmp("north.air_temp", "below", 10, 12), cmp("north.air_temp", "below", 5, 13)), P(12))
    one_warm = Any_((cmp("north.air_temp", "below", 10, 12), cmp("north.soil", "below", 5, 13)), P(12))
    hot = cmp("north.air_temp", "above", 28, 14)
    assert _fight(hot, both_cold) == []
    assert _fight(hot, one_warm) == ["K430"]


def test_holds_at_different_values_fight() -> None:
    r1 = rule("a", cmp("north.air_temp", "above", 24), on("north.vent", 30, 0.4), kind="level", line=20)
    r2 = rule("b", cmp("north.soil", "below", 40), on("north.vent", 31, 0.7), kind="level", line=21)
    found = check(r1, r2)
    assert codes(found) == ["K430"]
    assert found[0].pos == P(31) and found[0].related == P(30)


def test_edges_at_two_on_values_do_not_fight() -> None:
    r1 = rule("a", cmp("north.air_temp", "above", 24), on("north.vent", 30, 0.4), line=20)
    r2 = rule("b", cmp("north.soil", "below", 40), on("north.vent", 31, 0.7), line=21)
    assert check(r1, r2) == []


def test_one_warning_per_pair_of_rules() -> None:
    r1 = rule("a", cmp("north.air_temp", "above", 24), on("north.fan", 30), off("north.fan", 31), line=20)
    r2 = rule("b", cmp("north.soil", "below", 40), off("north.fan", 32), on("north.fan", 33), line=21)
    assert codes(check(r1, r2)) == ["K430"]


def test_a_pulse_inside_one_rule_is_fine() -> None:
    assert check(rule("a", At(360, P(10)), on("north.fan", 30), off("north.fan", 31))) == []


# --------------------------------------------------------------------------
# interlocks


def test_interlock_together_only_when_both_are_on_at_once() -> None:
    safety = replace(USE_ALL, interlocks=(Interlock("apart", ("north.heater", "north.fan"), pos=P(60)),))
    bad = rule("a", At(360, P(10)), on("north.heater", 30), on("north.fan", 31))
    sequenced = rule("b", At(400, P(11)), on("north.heater", 32), off("north.heater", 33), on("north.fan", 34))
    found = check(bad, sequenced, safety=safety)
    assert codes(found) == ["K431"]
    assert found[0].pos == P(31) and found[0].related == P(30)


def test_only_if_that_always_blocks() -> None:
    only = Interlock("warm", actuator="north.fan", only_if=cmp("north.air_temp", "above", 15, 61), pos=P(60))
    safety = replace(USE_ALL, interlocks=(only,))
    found = check(rule("cold", cmp("north.air_temp", "below", 10), on("north.fan")), safety=safety)
    assert codes(found) == ["K432"]
    assert check(rule("mild", cmp("north.air_temp", "below", 20), on("north.fan")), safety=safety) == []


# --------------------------------------------------------------------------
# conditions that never hold


def test_physical_ranges_come_from_the_sensor_library() -> None:
    assert codes(check(rule("a", cmp("north.soil", "above", 150), on("north.fan")))) == ["K441"]
    assert codes(check(rule("a", cmp("north.soil", "above", 99), on("north.fan")))) == []
    assert codes(check(rule("a", cmp("north.climate.humidity", "at_least", 101), on("north.fan")))) == ["K441"]
    assert codes(check(rule("a", cmp("north.climate.temperature", "equals", 200), on("north.fan")))) == ["K441"]
    assert codes(check(rule("a", cmp("north.soil", "outside", (-5, 105)), on("north.fan")))) == ["K441"]
    assert codes(check(rule("a", cmp("north.soil", "between", (120, 130)), on("north.fan")))) == ["K441"]
    assert codes(check(rule("a", cmp("north.soil", "at_least", 0), on("north.fan")))) == ["K442"]


def test_negative_hysteresis_from_model() -> None:
    assert codes(check(rule("a", cmp("north.air_temp", "above", 28, h=-1), on("north.fan")))) == ["K443"]


def test_contradiction_nested_and_reported_once() -> None:
    inner = All((cmp("north.air_temp", "above", 30, 11), cmp("north.air_temp", "below", 20, 12)), P(10))
    outer = All((inner, cmp("north.soil", "below", 40, 13)), P(9))
    found = check(rule("a", outer, on("north.fan")))
    assert codes(found) == ["K445"]
    assert found[0].pos == P(12) and found[0].related == P(11)


def test_contradiction_inside_any_branch_is_still_reported() -> None:
    dead = All((DeviceIs("north", True, P(11)), DeviceIs("north", False, P(12))), P(10))
    cond = Any_((dead, cmp("north.soil", "below", 40, 13)), P(9))
    assert codes(check(rule("a", cond, on("north.fan")))) == ["K445"]


def test_not_all_is_not_a_contradiction() -> None:
    cond = Not(All((cmp("north.air_temp", "above", 30, 11), cmp("north.air_temp", "below", 20, 12)), P(10)), P(9))
    assert check(rule("a", cond, on("north.fan"))) == []


# --------------------------------------------------------------------------
# triggers and time, from the model


def test_triggers_in_while_and_under_not() -> None:
    assert codes(check(rule("a", Every(60, P(10)), on("north.fan"), kind="level"))) == ["K452"]
    assert codes(check(rule("a", All((cmp("north.air_temp", "above", 1), Not(At(60, P(11)), P(11))), P(10)),
                            on("north.fan")))) == ["K453"]


def test_weekdays_none_means_an_empty_list() -> None:
    w = TimeWindow(60, 120, None, P(10))  # type: ignore[arg-type]
    assert "K451" in codes(check(rule("a", w, on("north.fan"))))


# --------------------------------------------------------------------------
# hygiene and robustness


def test_unused_actuator_and_partial_mode() -> None:
    r = rule("a", cmp("north.air_temp", "above", 28), on("north.fan"))
    assert codes(check(r, safety=Safety())) == ["K471", "K471"]
    assert check(r, safety=Safety(), partial=True) == []


def test_disabled_rule_is_a_warning_and_takes_no_part() -> None:
    r1 = rule("a", cmp("north.air_temp", "above", 28), on("north.fan"), enabled=False, line=20)
    r2 = rule("b", cmp("north.soil", "below", 28), off("north.fan"), line=21)
    found = check(r1, r2)
    assert codes(found) == ["K470"]
    assert all(d.severity == "warning" for d in found)


def test_a_broken_model_becomes_a_finding_not_an_exception() -> None:
    weird = Comparison("north.air_temp", "above", "hot", pos=P(10))  # type: ignore[arg-type]
    found = check(rule("a", weird, on("north.fan")))
    assert found and all(d.code == "K499" for d in found)
    assert run_checks(None)[0].code == "K499"  # type: ignore[arg-type]


def test_analog_probe_needs_adc1() -> None:
    dev = replace(NORTH, sensors=(*NORTH.sensors, S("north", "ph", 27, "ph", pos=P(8))))
    found = check(rule("a", cmp("north.air_temp", "above", 28), on("north.fan")), devices=(dev,))
    assert codes(found) == ["K419"] and "32-39" in found[0].hint
    unnamed = replace(dev, board=None)
    assert check(rule("a", cmp("north.air_temp", "above", 28), on("north.fan")), devices=(unnamed,)) == []


def test_a_crowded_actuator_gives_one_warning_per_rule_at_most() -> None:
    rules = [rule(f"r{i}", cmp("north.air_temp", "above", i), on("north.fan", 100 + i) if i % 2 else off("north.fan", 100 + i),
                  line=100 + i) for i in range(60)]
    found = check(*rules)
    assert codes(found) == ["K430"] * 59
    assert len({d.pos for d in found}) == 59


def test_every_code_is_documented_and_exercised() -> None:
    import re
    from pathlib import Path

    from engine.config import checks

    root = Path(__file__).resolve().parents[2]
    defined = {v for k, v in vars(checks).items() if k.isupper() and isinstance(v, str) and re.fullmatch(r"K4\d\d", v)}
    assert len(defined) >= 40
    docs = (root / "docs" / "lint.md").read_text(encoding="utf-8")
    assert not {c for c in defined if f"| {c} |" not in docs and f"## {c}" not in docs}, "undocumented codes"
    golden = " ".join(p.read_text(encoding="utf-8") for p in (root / "tests" / "golden").rglob("*.yaml"))
    here = Path(__file__).read_text(encoding="utf-8")
    unexercised = {c for c in defined - {"K499"} if f"expect: {c}" not in golden and f'"{c}"' not in here}
    assert not unexercised


def test_interlock_respects_for_and_wait() -> None:
    from engine.model import Wait

    safety = replace(USE_ALL, interlocks=(Interlock("apart", ("north.heater", "north.fan"), pos=P(60)),))
    after_it_ended = rule("a", At(360, P(10)), on("north.heater", 30, for_=300), Wait(600, P(31)), on("north.fan", 32))
    too_soon = rule("b", At(400, P(11)), on("north.heater", 33, for_=300), Wait(60, P(34)), on("north.fan", 35))
    found = check(after_it_ended, too_soon, safety=safety)
    assert [(d.code, d.pos) for d in found] == [("K431", P(35))]
