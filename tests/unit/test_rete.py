"""The durable-rules network: facts, joins across boards, negation, reloads, limits."""

from __future__ import annotations

import gc

import pytest

from engine import compiler as C
from engine.model import ActuatorIs, All, Comparison, Deployment, DeviceIs, Not, Notify, Rule
from engine.rete import Network


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
