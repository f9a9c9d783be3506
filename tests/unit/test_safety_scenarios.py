"""The safety scenarios (tests/scenarios/safety) through `kaiser test`: one rule
test per block code a rule can provoke, on the same pipeline as `kaiser run`."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli import main
from engine.model import Code
from engine.testing import TestResult, _load, run_all

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios" / "safety"


@pytest.fixture(scope="module")
def results() -> list[TestResult]:
    dep, diags = _load(str(SCENARIOS), "UTC")
    assert not [d for d in diags if d.is_error], [d.text() for d in diags]
    return run_all(dep)


def test_every_safety_scenario_passes(results: list[TestResult]) -> None:
    failed = {r.test.name: (r.error, r.missing, r.unexpected) for r in results if not r.passed}
    assert not failed
    assert len(results) >= 10


def test_each_code_a_rule_can_provoke_is_shown(results: list[TestResult]) -> None:
    shown = {str(e.fields.get("reason")) for r in results for e in r.test.expect if e.kind == "blocked"}
    by_lint = {Code.ACTUATOR_NOT_CONFIGURED, Code.PWM_OUT_OF_RANGE, Code.GPIO_CONFLICT}
    # MAX_RUNTIME shows as the server's OFF (the tick comes before any late ON)
    assert shown == {str(c) for c in Code} - {str(c) for c in by_lint} - {str(Code.MAX_RUNTIME)}


def test_kaiser_test_cli_passes_on_the_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test", str(SCENARIOS)]) == 0
    assert "10 passed, 0 failed" in capsys.readouterr().out


def test_kaiser_lint_is_clean_on_the_scenarios() -> None:
    assert main(["lint", str(SCENARIOS), "--strict"]) == 0
