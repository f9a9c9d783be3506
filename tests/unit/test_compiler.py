"""The compiler: values the network accepts, negation, expansion, partitions, time of day."""

from __future__ import annotations

import json
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import compiler as C
from engine.errors import EngineError
from engine.model import (
    ActuatorIs,
    All,
    Any_,
    Comparison,
    Deployment,
    DeviceIs,
    Not,
    Notify,
    Rule,
    TimeWindow,
)


def test_values_are_normalised_without_exponents() -> None:
    assert C.normalise(float("nan")) is None
    assert C.normalise(float("inf")) is None
    assert C.normalise(1e300) == C.VALUE_LIMIT
    assert C.normalise(1e-12) == 0.0
    assert C.number_json(C.normalise(1e-05) or 0.0) == "0.00001"
    text = C.dumps({"v": 1e-05, "w": -2.5e-7, "big": 1e20, "n": [3, 4.0]})
    assert "e" not in text.replace("true", "")
    assert json.loads(text) == {"v": 0.00001, "w": -0.00000025, "big": 1e15, "n": [3, 4]}


def _number_json_by_the_book(value: float) -> str:
    if value == int(value):
        return str(int(value))
    s = repr(value)
    return format(value, ".9f").rstrip("0").rstrip(".") if "e" in s or "E" in s else s


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-10**18, 10**18),
                 st.sampled_from([0.0, -0.0, 26.0, -3.0, 1e15, 1e16, 1e-4, 1e-5, 2.5, 0.1 + 0.2])))
def test_number_json_is_plain_json_of_the_number(value: float) -> None:
    """The fast path for floats gives what the plain rule gives, never an exponent."""
    text = C.number_json(value)
    assert text == _number_json_by_the_book(value)
    assert "e" not in text
    if C.normalise(value) == value:  # what facts carry
        assert json.loads(text) == value


def test_not_is_pushed_to_the_leaves() -> None:
    a = Comparison("n.t", "above", 5.0)
    b = DeviceIs("n", True)
    alts = C.dnf(Not(All((a, b))))
    assert alts == [[(a, True)], [(b, True)]]
    assert C.dnf(Not(Any_((a, b)))) == [[(a, True), (b, True)]]
    assert C.dnf(All(())) == [[]]  # always true
    assert C.dnf(Any_(())) == []  # never true


def test_negated_comparison_needs_data_too() -> None:
    # strict negation (three-valued logic): an unknown reading satisfies neither side
    assert C.leaf_test(Comparison("n.t", "above", 5.0), negated=True) == {"$and": [{"ok": 1}, {"$lte": {"v": 5.0}}]}
    assert C.leaf_test(Comparison("n.t", "above", 5.0), negated=False) == {"$and": [{"ok": 1}, {"$gt": {"v": 5.0}}]}
    assert C.leaf_test(Comparison("n.t", "above", 5.0, for_=10.0), negated=True) == {"st": 0}


def test_huge_expansions_are_refused_per_rule() -> None:
    big = All(tuple(Any_((Comparison(f"n.s{i}", "above", 1.0), Comparison(f"n.s{i}", "below", 0.0)))
                    for i in range(10)))
    prog = C.compile_program(Deployment(rules=(
        Rule("huge", "edge", big, (Notify("x"),)),
        Rule("fine", "edge", Comparison("n.t", "above", 1.0), (Notify("y"),), index=1),
    )))
    assert "huge" in prog.errors and "alternatives" in prog.errors["huge"]
    assert set(prog.terms) == {"fine"}
    with pytest.raises(EngineError):
        C.dnf(big)


def _many(n: int, sensors: int = 50) -> Deployment:
    return Deployment(rules=tuple(
        Rule(f"r{i}", "edge", All((Comparison(f"d{i % sensors}.t", "above", float(i)),
                                   ActuatorIs(f"d{(i * 7) % sensors}.fan", True))), (Notify("x"),), index=i)
        for i in range(n)
    ))


def test_partitions_stay_small_and_under_the_distinct_value_limit() -> None:
    prog = C.compile_program(_many(2000, sensors=3))
    assert len(prog.partitions) > 1
    for p in prog.partitions:
        assert len({t.rule for t in p.terms}) <= C.MAX_RULES_PER_PARTITION
        assert C._distinct_ok(list(p.terms))
    assert sum(len(p.terms) for p in prog.partitions) == 2000


def test_editing_one_rule_recompiles_only_its_neighbourhood() -> None:
    a = C.compile_program(_many(1000))
    rules = list(_many(1000).rules)
    rules[500] = Rule("r500", "edge", Comparison("d0.t", "below", -5.0), (Notify("x"),), index=500)
    b = C.compile_program(Deployment(rules=tuple(rules)))
    changed = {p.key for p in b.partitions} - {p.key for p in a.partitions}
    assert 1 <= len(changed) <= 4
    assert len(b.partitions) >= 20


@pytest.mark.parametrize("value", [25.0, 25.5, -3.0, 0.0, -0.0, 1e-05, 2.5e-07, 1e-12, 0.1 + 0.2, 1e15, 1.5e15 + 0.5,
                                   1e20, 123456789.123456789, float("nan"), float("inf"), (10.0, 20.5), (1e-05, 3.0)])
def test_ruleset_json_is_the_same_by_the_c_encoder_or_dumps(value: float | tuple[float, float]) -> None:
    """The C encoder writes a ruleset only when its text is dumps' (else dumps does)."""
    ops = ("between", "outside") if isinstance(value, tuple) else ("above", "below", "equals", "at_least")
    rules = tuple(Rule(f"r{i}-{op}", "edge", Not(Comparison("n.t", op, value)) if i % 2 else
                       Any_((Comparison("n.t", op, value), DeviceIs("n", True), ActuatorIs("n.fan", False))),
                       (Notify("x"),), index=i) for i, op in enumerate(ops))
    for part in C.compile_program(Deployment(rules=rules)).partitions:
        slow = "{" + ",".join([C._KEY(t.name) + ":" + C.dumps(C.term_definition(t)) for t in part.terms]) + "}"
        assert part.definition == slow
    assert C._encoded({"r#0": {"v": 25.0}}) is None  # a float dumps writes otherwise: not by the C encoder
    assert C._encoded({"r#0": {"v": 25, "id": "s:x"}}) == '{"r#0":{"v":25,"id":"s:x"}}'
    assert C._encoded({"r\u00e9#0": {"v": 1}}) is None  # dumps escapes non-ASCII in keys only


def test_time_windows_wrap_midnight_and_use_the_zone() -> None:
    tz = ZoneInfo("Europe/Berlin")
    w = TimeWindow(22 * 60, 6 * 60)
    at = lambda s: datetime.fromisoformat(s).timestamp()  # noqa: E731
    assert C.in_window(w, at("2026-06-01T23:00:00+02:00"), tz)
    assert C.in_window(w, at("2026-06-02T05:59:00+02:00"), tz)
    assert not C.in_window(w, at("2026-06-02T06:00:00+02:00"), tz)
    assert not C.in_window(w, at("2026-06-01T21:59:59+02:00"), tz)
    assert C.next_window_change(w, at("2026-06-01T12:00:00+02:00"), tz) == at("2026-06-01T22:00:00+02:00")


def test_at_across_a_daylight_saving_change() -> None:
    tz = ZoneInfo("Europe/Berlin")
    before = datetime.fromisoformat("2026-03-28T12:00:00+01:00").timestamp()
    nxt = C.next_at(6 * 60 + 30, before, tz)
    assert nxt == datetime.fromisoformat("2026-03-29T06:30:00+02:00").timestamp()
    # 02:30 does not exist on that day: still a valid instant after now
    assert C.next_at(2 * 60 + 30, before, tz) > before


def test_malformed_comparisons_are_never_true_instead_of_crashing() -> None:
    from engine.rete import Network

    bad = (Comparison("n.t", "between", 5.0), Comparison("n.t", "above", (1.0, 2.0)), Comparison("n.t", "near", 1.0))
    rules = [Rule(f"r{i}", "edge", c, (Notify("x"),), index=i) for i, c in enumerate(bad)]
    rules.append(Rule("neg", "edge", Not(bad[0]), (Notify("x"),), index=9))
    prog = C.compile_program(Deployment(rules=tuple(rules)))
    net = Network(prog)
    net.set_fact("s:n.t", {"ok": 1, "v": 5.0})
    assert not any(net.is_true(f"r{i}") for i in range(3))
    assert net.is_true("neg")
    net.close()
    assert not C.compare("between", 5.0, 5.0) and not C.compare("above", 5.0, (1.0, 2.0))
