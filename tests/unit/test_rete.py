"""The durable-rules network: facts, joins across boards, negation, reloads, limits."""

from __future__ import annotations

import gc

import pytest

from engine import compiler as C
from engine.conditions.base import RANGE_OPS, SINGLE_OPS
from engine.model import ActuatorIs, All, Comparison, Deployment, DeviceIs, Not, Notify, Rule
from engine.rete import Network, cut_points


def prog(*conds: object) -> C.Program:
    return C.compile_program(Deployment(rules=tuple(
        Rule(f"r{i}", "edge", c, (Notify("x"),), index=i) for i, c in enumerate(conds)  # type: ignore[arg-type]
    )))


def test_a_join_across_two_boards() -> None:
    net = Network(prog(All((Comparison("north.t", "above", 28.0), Comparison("south.h", "below", 60.0)))))
    assert not net.is_true("r0")
    assert net.set_fact("s:north.t", {"ok": 1, "v": 29.0}) == {"r0"}
    assert not net.is_true("r0")
    net.set_fact("s:south.h", {"ok": 1, "v": 50.0})
    assert net.is_true("r0")
    net.set_fact("s:north.t", {"ok": 1, "v": 27.5})
    assert not net.is_true("r0")
    net.close()


def test_unchanged_facts_touch_nothing_and_unknown_facts_are_ignored() -> None:
    net = Network(prog(Comparison("n.t", "above", 1.0)))
    assert net.set_fact("s:n.t", {"ok": 1, "v": 2.0}) == {"r0"}
    assert net.set_fact("s:n.t", {"ok": 1, "v": 2.0}) == set()
    assert net.set_fact("s:other", {"ok": 1, "v": 2.0}) == set()
    net.close()


def test_negation_of_a_missing_reading_is_not_true_but_of_a_device_or_actuator_is() -> None:
    # unknown is not false: "not above 5" needs a reading that is at most 5; devices
    # and actuators not known yet are "not online" / "not on"
    net = Network(prog(Not(Comparison("n.t", "above", 5.0)), Not(DeviceIs("n", True)),
                       Not(ActuatorIs("n.fan", True))))
    assert not net.is_true("r0") and net.is_true("r1") and net.is_true("r2")
    net.set_fact("s:n.t", {"ok": 1, "v": 4.0})
    assert net.is_true("r0")
    net.set_fact("s:n.t", {"ok": 1, "v": 6.0})
    net.set_fact("d:n", {"st": 1})
    net.set_fact("a:n.fan", {"st": 1})
    assert not net.is_true("r0") and not net.is_true("r1") and not net.is_true("r2")
    net.set_fact("s:n.t", {"ok": 0, "v": 0})
    assert not net.is_true("r0")


def test_values_with_exponents_and_ranges_are_accepted() -> None:
    net = Network(prog(Comparison("n.t", "between", (1e-06, 2e-05)), Comparison("n.t", "outside", (0.0, 1.0))))
    net.set_fact("s:n.t", {"ok": 1, "v": C.normalise(1e-05)})
    assert net.is_true("r0") and not net.is_true("r1")
    net.set_fact("s:n.t", {"ok": 1, "v": 1e15})
    assert net.is_true("r1")


@pytest.mark.timeout(120)
def test_more_than_512_distinct_thresholds_on_one_field_compile() -> None:
    # one ruleset comparing a field with > 512 distinct values hangs durable forever:
    # the compiler splits them
    p = prog(*(Comparison("n.t", "above", float(i)) for i in range(1200)))
    assert len(p.partitions) >= 3
    net = Network(p)
    net.set_fact("s:n.t", {"ok": 1, "v": 600.5})
    assert net.is_true("r600") and not net.is_true("r601")
    net.close()


def test_reload_reuses_unchanged_rulesets_and_frees_the_rest() -> None:
    a = prog(*(Comparison(f"d{i}.t", "above", 1.0) for i in range(200)))
    net = Network(a)
    net.set_fact("s:d3.t", {"ok": 1, "v": 5.0})
    assert net.is_true("r3")
    b = prog(*(Comparison(f"d{i}.t", "above", 1.0 if i != 150 else 9.0) for i in range(200)))
    net.load(b)
    assert net.is_true("r3")  # facts kept
    assert net.size()[0] == len(b.partitions)
    for _ in range(50):
        net.load(a)
        net.load(b)
    gc.collect()
    assert net.is_true("r3")
    net.close()


def test_closing_rulesets_in_which_nothing_ever_fired_is_safe() -> None:
    # durable's delete_state frees a session's action context, which stays
    # uninitialised until some rule has fired: the network guards against that
    junk = [bytearray(b"\xab" * 4096) for _ in range(500)]  # dirty the heap
    del junk
    for _ in range(20):
        net = Network(prog(*(Comparison(f"d{i}.t", "above", 1.0) for i in range(40))))
        for i in range(40):
            net.set_fact(f"s:d{i}.t", {"ok": 0, "v": 0})
        assert not net.is_true("r0")
        net.close()


def test_a_reading_on_the_same_side_of_every_threshold_is_held_back_and_changes_nothing() -> None:
    # the rulesets only see values that cross one of the constants the fact is compared
    # with: the rest re-read no rule, and every answer stays what durable would give
    conds = (Comparison("n.t", "above", 25.0), Comparison("n.t", "between", (20.0, 30.0)),
             Comparison("n.t", "equals", 22.5), Not(Comparison("n.t", "at_most", 10.0)))
    net = Network(prog(*conds))
    values = [26.0, 27.0, 29.99, 30.0, 30.0, 30.5, 31.0, 22.5, 22.4, 21.0, 20.0, 19.0, 10.0, 9.0, 5.0, 11.0, 24.0]
    sent = 0
    before: float | None = None
    for v in values:
        again = net.set_fact("s:n.t", {"ok": 1, "v": v})
        same_side = before is not None and all(
            C.compare(op, before, t) == C.compare(op, v, t)
            for op, t in (("above", 25.0), ("between", (20.0, 30.0)), ("equals", 22.5), ("at_most", 10.0)))
        if not same_side:  # (held back only when no test can change; a value on a
            assert again, (before, v)  # threshold itself is sent even if its tests agree)
        sent += bool(again)
        assert [net.is_true(f"r{i}") for i in range(4)] == [
            v > 25.0, 20.0 <= v <= 30.0, v == 22.5, v > 10.0], v
        before = v
    assert sent <= len(values) - 6  # 27, 29.99, 30 again, 31, 21 and 5 never reached durable-rules
    net.set_fact("s:n.t", {"ok": 0, "v": 0})  # unknown is sent at once, and is true of nothing
    assert not any(net.is_true(f"r{i}") for i in range(4))
    net.close()


def test_a_held_back_value_reaches_the_rulesets_of_a_reload() -> None:
    net = Network(prog(Comparison("n.t", "above", 25.0)))
    net.set_fact("s:n.t", {"ok": 1, "v": 26.0})
    assert net.set_fact("s:n.t", {"ok": 1, "v": 30.0}) == set()  # held: 26 and 30 are both above 25
    assert net.fact("s:n.t") == {"ok": 1, "v": 30.0}
    # a new threshold between the value the rulesets saw (26) and the latest (30)
    net.load(prog(Comparison("n.t", "above", 25.0), Comparison("n.t", "above", 28.0)))
    assert net.is_true("r0") and net.is_true("r1")
    assert net.set_fact("s:n.t", {"ok": 1, "v": 29.0}) == set()  # above 28 too: held
    assert net.set_fact("s:n.t", {"ok": 1, "v": 27.0}) == {"r0", "r1"}
    assert net.is_true("r0") and not net.is_true("r1")
    net.load(prog(Comparison("n.t", "below", 27.5)))  # and back to a program that crosses it
    assert net.is_true("r0")
    net.close()


@pytest.mark.parametrize("negated", [False, True])
@pytest.mark.parametrize("op", SINGLE_OPS + RANGE_OPS)
def test_every_comparison_the_compiler_writes_has_cut_points(op: str, negated: bool) -> None:
    # if the compiler's test syntax changes, the network must still know where a
    # sensor fact's value can change a test; else it sends every reading (slower, not wrong)
    t: float | tuple[float, float] = (20.0, 30.5) if op in RANGE_OPS else 25.5
    c = Comparison("n.t", op, t)
    p = prog(Not(c) if negated else c)
    tests = [pat for term in p.terms["r0"] for fid, pat in term.patterns if fid == "s:n.t"]
    assert tests
    assert cut_points(tests) == ((20.0, 30.5) if op in RANGE_OPS else (25.5,))


def test_cut_points_refuse_a_test_on_anything_but_constants() -> None:
    assert cut_points([{"$and": [{"id": "s:n.t"}, {"$gt": {"v": 3}}]}]) == (3.0,)
    assert cut_points([{"$gt": {"v": {"$m": "f1.v"}}}]) is None  # a join on another fact's value
    assert cut_points([{"$ex": {"v": 1}}]) is None  # an operator it does not know
    assert cut_points([{"q": 1}]) is None  # another field
    assert cut_points([{"v": "warm"}]) is None
