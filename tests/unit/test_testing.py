"""`kaiser test`: exit codes, pass/fail lines and the diff people read."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from engine.testing import cmd_test

ROOT = Path(__file__).resolve().parents[2]
SCEN = ROOT / "tests" / "scenarios" / "engine"


def run(path: Path, select: str | None = None) -> int:
    return cmd_test(argparse.Namespace(path=str(path), select=select, config=None))


def test_the_example_deployment_passes_its_rule_tests(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(ROOT / "rules") == 0
    out = capsys.readouterr().out
    assert "0 failed" in out and "FAIL" not in out
    assert "PASS  heater thermostat with hysteresis" in out


def test_every_condition_and_action_type_scenario_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(SCEN / "greenhouse") == 0
    assert "6 passed, 0 failed" in capsys.readouterr().out


def test_failures_exit_1_with_a_readable_diff(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(SCEN / "failing") == 1
    out = capsys.readouterr().out
    assert "FAIL  wrong time" in out and "PASS  right time" in out
    assert "- at    60s  command  house.fan set on   <- expected, did not happen" in out
    assert "+ at   120s  command  house.fan set on  (rule vent-hot)   <- not expected (only_expected)" in out
    assert "nothing happened until 61s" in out
    assert "1 passed, 2 failed" in out


def test_select_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(SCEN / "failing", "right") == 0
    assert "1 passed, 0 failed" in capsys.readouterr().out


def test_config_errors_exit_2_with_positions(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(SCEN / "broken") == 2
    err = capsys.readouterr().err
    assert "broken.yaml:8:11" in err and "house.nope" in err


def test_issue_10_scenarios_pass(capsys: pytest.CaptureFixture[str]) -> None:
    # emergency_stop/reset steps, a step's readings landing together, unknown
    # readings, interlock correction, computed and clamped duties, count, fresh
    assert run(SCEN / "issue10") == 0
    assert "10 passed, 0 failed" in capsys.readouterr().out


def test_the_own_offs_of_an_emergency_stop_step_are_not_unexpected() -> None:
    from engine.model import Actuator, Deployment, Device, Expectation, RuleTest, TestStep
    from engine.testing import run_test

    dep = Deployment(devices={"h": Device("h", "ESP_H", actuators=(Actuator("h", "fan", 5, "relay"),))})
    test = RuleTest("stop", 0.0, (TestStep(10.0, emergency_stop="all"), TestStep(20.0, reset="h")),
                    (Expectation(20.0, "no_command", {"actuator": "h.fan"}),), only_expected=True)
    res = run_test(dep, test)
    assert res.passed, (res.missing, res.unexpected)
    assert [(h.t, h.kind, h.own) for h in res.happened] == [(10.0, "command", True)]
