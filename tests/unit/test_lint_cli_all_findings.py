"""`kaiser lint` reports every defect in one run (SPEC: "all errors are reported,
not only the first"): a bad action, condition or field never hides the rest of its
rule, a duplicate's body is still checked, and what was left out never cascades
into findings of its own."""

from __future__ import annotations

import itertools
import os
import re
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.cli import main
from engine.config import load_deployment
from engine.config.lint import lint
from engine.config.loader import load
from engine.diagnostics import Diagnostic

DEVICES = """\
devices:
  north:
    esp_id: ESP_12AB34
    board: esp32dev
    sensors:
      air_temp: {gpio: 4, type: DS18B20, onewire_address: "28FF641E8D3C0C79"}
      soil:     {gpio: 34, type: moisture}
    actuators:
      fan:  {gpio: 5, type: relay}
      vent: {gpio: 18, type: relay}
      pump: {gpio: 19, type: pump}
"""

LEAD = DEVICES + """\
rules:
  - name: hot
    when: {sensor: north.air_tmp, above: 28, for: 2m}
    then:
      - {actuator: north.fan, set: on}
      - {actuator: north.fan, set: 1.5}
  - name: hot
    when: {sensor: north.air_temp, between: [5, 1]}
    then: [{notify: "x"}]
"""


def write(tmp_path: Path, text: str, name: str = "main.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


def found(path: Path) -> list[tuple[str, int, int]]:
    return [(d.code, d.pos.line, d.pos.col) for d in lint(path)[1]]


def codes(path: Path) -> list[str]:
    return [d.code for d in lint(path)[1]]


def test_the_leads_file_gets_every_finding(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write(tmp_path, LEAD)
    assert main(["lint", str(p)]) == 1
    out = capsys.readouterr().out
    assert f"{p}:14:11: K401 unknown sensor 'north.air_tmp' (did you mean north.air_temp?)" in out
    assert f"{p}:17:36: K204 'set' must be a duty 0.0-1.0, got 1.5 (a duty is 0.0-1.0, or on/off)" in out
    assert f"{p}:18:11: K301 duplicate rule name 'hot'" in out
    assert f"{p}:19:11: K440 between: [5, 1] has its bounds reversed (write between: [1, 5])" in out
    assert found(p) == [("K401", 14, 11), ("K204", 17, 36), ("K301", 18, 11), ("K440", 19, 11)]


def test_the_model_keeps_only_whole_unique_items(tmp_path: Path) -> None:
    """What the server would run is unchanged: a rule with a defect is not in the
    model, nor the second rule of a name; the checks see both."""
    p = write(tmp_path, LEAD + """\
  - name: fine
    when: {sensor: north.air_temp, above: 30}
    then: [{actuator: north.vent, set: on}]
""")
    dep, diags = load_deployment(p)
    assert [r.name for r in dep.rules] == ["fine"] and dep.rules[0].index == 0
    loaded = load(p)
    assert loaded.deployment == dep and loaded.diagnostics == diags
    assert [r.name for r in loaded.checked.rules] == ["hot", "hot", "fine"]
    first = loaded.checked.rules[0]
    assert len(first.actions) == 1  # the bad action is left out, the good one kept
    assert first.pos in loaded.gaps.items and first.pos not in loaded.gaps.conditions
    assert loaded.checked.rules[1].pos not in loaded.gaps.items  # a duplicate, but whole


# Independent defects in one rule: every combination reports exactly the union
# of what each defect reports alone (nothing hidden, nothing cascading).

RULE = """\
rules:
  - name: hot
    priority: {prio}
    when:
      all:
        - {{sensor: {sensor}, above: 28, for: {for_}}}
        - {{sensor: north.air_temp, between: {range_}}}
    then:
      - {{actuator: {act}, set: on, for: 10m}}
      - {{wait: 1m}}
      - {{actuator: north.fan, set: {set2}}}
      - {{notify: "hot", level: {level}}}
  - name: other
    when: {{sensor: north.soil, below: 30}}
    then: [{{actuator: north.pump, set: on, for: 1m}}, {{notify: "{{north.soil}}"}}]
"""
GOOD = {"prio": "1", "sensor": "north.air_temp", "for_": "2m", "range_": "[20, 40]",
        "act": "north.vent", "set2": "off", "level": "warning"}
DEFECTS = {"prio": "high", "sensor": "north.air_tmpp", "for_": "2 minutes", "range_": "[40, 20]",
           "act": "north.vnet", "set2": "1.5", "level": "loud"}


def _lint_rule(tmp_path: Path, bad: tuple[str, ...]) -> set[tuple[str, int, int]]:
    d = tmp_path / "-".join(bad or ("none",))
    d.mkdir()
    values = {k: DEFECTS[k] if k in bad else v for k, v in GOOD.items()}
    (d / "devices.yaml").write_text(DEVICES)
    (d / "rules.yaml").write_text(RULE.format(**values))
    return set(found(d))


def test_independent_defects_in_one_rule_are_all_reported(tmp_path: Path) -> None:
    assert _lint_rule(tmp_path, ()) == set()
    alone = {k: _lint_rule(tmp_path, (k,)) for k in DEFECTS}
    for k, f in alone.items():
        assert len(f) == 1, (k, f)  # each defect is one finding
    for n in range(2, len(DEFECTS) + 1):
        for combo in itertools.combinations(DEFECTS, n):
            want = set().union(*(alone[k] for k in combo))
            assert _lint_rule(tmp_path, combo) == want, combo


# No cascades from what was left out


def test_a_rule_that_lost_its_only_action_gets_no_more(tmp_path: Path) -> None:
    p = write(tmp_path, DEVICES + """\
rules:
  - name: water
    when: {sensor: north.soil, below: 30}
    then: [{actuator: north.pump, set: 60}]
""")
    [d] = lint(p)[1]
    assert (d.code, d.hint) == ("K204", "a duty is a fraction: if you meant 60 %, write 0.6")


def test_a_declared_but_broken_sensor_or_device_is_not_unknown(tmp_path: Path) -> None:
    p = write(tmp_path, """\
devices:
  north:
    esp_id: ESP_12AB34
    sensors:
      soil: {gpio: 34, type: moisturex}
      hum:  {gpio: 99, type: DS18B20}
    actuators:
      fan: {gpio: 5, type: fan}
  south:
    sensors:
      t: {gpio: 4, type: DS18B20, onewire_address: "28EDBF88465F03F5"}
    actuators:
      heater: {gpio: 5, type: relay}
  east: not a mapping
rules:
  - name: r
    when:
      any:
        - {sensor: north.soil, below: 30}
        - {sensor: north.hum, above: 3}
        - {sensor: south.t, below: 3}
        - {device: east, is: offline}
        - {sensor: east.t, above: 3}
    then:
      - {actuator: north.fan, set: on}
      - {actuator: south.heater, set: on}
""")
    assert codes(p) == ["K305", "K204", "K204", "K203", "K202"]


def test_a_dropped_item_of_any_makes_no_contradiction(tmp_path: Path) -> None:
    """``all: [t > 30, any: [t < 10, <bad>]]``: without the bad item the rule would
    look contradictory; it is not reported as such."""
    p = write(tmp_path, DEVICES + """\
rules:
  - name: r
    when:
      all:
        - {sensor: north.air_temp, above: 30}
        - any:
            - {sensor: north.air_temp, below: 10}
            - {sensor: north.air_temp, above: warm}
    then: [{actuator: north.fan, set: on}]
""")
    assert codes(p) == ["K202"]


def test_a_dropped_action_makes_no_interlock_finding(tmp_path: Path) -> None:
    """The misspelt ``off`` between two ons would have kept them apart."""
    p = write(tmp_path, DEVICES + """\
safety:
  interlocks:
    - {name: apart, never_together: [north.fan, north.vent]}
rules:
  - name: swap
    when: {sensor: north.air_temp, above: 30}
    then:
      - {actuator: north.fan, set: on}
      - {actuator: north.fan, set: of}
      - {actuator: north.vent, set: on}
""")
    assert codes(p) == ["K204"]


def test_a_bad_priority_makes_no_opposite_states_warning(tmp_path: Path) -> None:
    p = write(tmp_path, DEVICES + """\
rules:
  - name: on
    when: {sensor: north.air_temp, above: 30}
    then: [{actuator: north.fan, set: on}]
  - name: off
    priority: high
    when: {sensor: north.air_temp, above: 25}
    then: [{actuator: north.fan, set: off}]
""")
    assert codes(p) == ["K202"]


def test_tests_and_interlocks_that_lost_a_part(tmp_path: Path) -> None:
    p = write(tmp_path, DEVICES + """\
safety:
  interlocks:
    - {name: apart, never_together: [north.fan, North Vent]}
rules:
  - name: r
    when: {sensor: north.air_temp, above: 30}
    then: [{actuator: north.fan, set: on}, {actuator: north.vent, set: on}]
tests:
  - name: t
    steps:
      - {at: 0s, readings: {north.air_temp: 31}}
    expect:
      - {at: 1s, command: {actuator: north.fan, set: maybe}}
""")
    # the bad ref only (no "never_together needs two"); the bad state only (no
    # "expects nothing"); the pump is unused, but that is not said while errors stand
    assert codes(p) == ["K304", "K204"]


def test_both_parts_of_a_when_and_while_rule_are_checked(tmp_path: Path) -> None:
    p = write(tmp_path, DEVICES + """\
rules:
  - name: x
    when: {sensor: north.air_tmp, above: 28}
    then: [{actuator: north.fan, set: on}]
    while: {sensor: north.air_temp, between: [30, 20]}
    hold: [{actuator: north.fna, set: on}]
  - when: {sensor: north.air_temp, above: 28}
    then: [{actuator: north.fan, set: on}]
    enabled: false
""")
    assert found(p) == [("K401", 14, 11), ("K205", 16, 5), ("K440", 16, 12), ("K402", 17, 12),
                        ("K203", 18, 5), ("K470", 18, 5)]
    assert "rule '<rule at line 18>' is disabled" in lint(p)[1][-1].message
    assert load_deployment(p)[0].rules == ()


# Refs of parts that could not be built are still looked up


def test_refs_of_dropped_parts_are_checked(tmp_path: Path) -> None:
    p = write(tmp_path, DEVICES + """\
safety:
  interlocks:
    - {name: dry, actuator: north.pump, only_if: {sensor: north.soill, below: dry}}
rules:
  - name: r
    when: {sensor: north.air_tmp, above: warm}
    then:
      - {actuator: north.fna, set: 1.5}
      - {emergency_stop: nrth, reason: [3]}
tests:
  - name: t
    steps:
      - {at: soon, readings: {north.air_tmp: 3}}
    expect:
      - {at: later, command: {actuator: north.fna}}
""")
    assert found(p) == [
        ("K401", 14, 50), ("K202", 14, 79),  # only_if: unknown sensor, bad threshold
        ("K401", 17, 11), ("K202", 17, 42),  # when: the same
        ("K402", 19, 9), ("K204", 19, 36),  # set: unknown actuator, bad duty
        ("K403", 20, 9), ("K202", 20, 40),  # emergency_stop: kept without its bad reason
        ("K401", 24, 9), ("K204", 24, 14),  # a test step with a bad time
        ("K402", 26, 9), ("K204", 26, 14),  # an expectation with a bad time
    ]


def test_duplicates_bodies_are_checked(tmp_path: Path) -> None:
    write(tmp_path, DEVICES + """\
  north:
    esp_id: ESP_99
    board: esp32dev
    actuators:
      heater: {gpio: 6, type: relay}
""", "a.yaml")
    write(tmp_path, """\
devices:
  north:
    esp_id: ESP_99
    board: esp32dev
    sensors:
      t: {gpio: 4, type: DS18B20}
    actuators:
      heater: {gpio: 0, type: relay}
      t: {gpio: 2, type: relay}
rules:
  - name: r
    when: {sensor: north.t, above: 3}
    then: [{actuator: north.heater, set: on}]
""", "b.yaml")
    f = lint(tmp_path)[1]
    got = [(Path(d.pos.file).name, d.code, d.pos.line) for d in f]
    # a.yaml's second `north` key is a YAML duplicate key (the parser keeps the first)
    assert ("a.yaml", "K107", 12) in got
    # b.yaml's `north` is a duplicate device: reported, its body checked (reserved
    # pin on the duplicate-named actuator too), but it is no ref target
    assert ("b.yaml", "K301", 2) in got
    assert ("b.yaml", "K412", 8) in got and ("b.yaml", "K302", 9) in got and ("b.yaml", "K412", 9) in got
    assert ("b.yaml", "K401", 12) in got and ("b.yaml", "K402", 13) in got


# The duty hint


@pytest.mark.parametrize(("value", "hint"), [
    ("1.5", "a duty is 0.0-1.0, or on/off"),
    ("60", "a duty is a fraction: if you meant 60 %, write 0.6"),
    ("100", "a duty is a fraction: if you meant 100 %, write 1"),
    ("2", "a duty is a fraction: if you meant 2 %, write 0.02"),
    ("150", "a duty is 0.0-1.0, or on/off"),
    ("-1", "a duty is 0.0-1.0, or on/off"),
    ("62.5", "a duty is 0.0-1.0, or on/off"),
    ("60%", "a duty is a fraction: if you meant 60 %, write 0.6"),
])
def test_duty_hints(tmp_path: Path, value: str, hint: str) -> None:
    p = write(tmp_path, DEVICES + f"rules:\n  - name: r\n    when: {{sensor: north.soil, below: 30}}\n"
              f"    then: [{{actuator: north.pump, set: {value}}}]\n")
    [d] = lint(p)[1]
    assert d.code == "K204" and d.hint == hint, d.text()


def test_every_finding_is_positioned(tmp_path: Path) -> None:
    p = write(tmp_path, LEAD)
    f: list[Diagnostic] = lint(p)[1]
    assert f and all(d.pos.file == str(p) and d.pos.line >= 1 and d.pos.col >= 1 for d in f)


# Property, over the shipped example: independent defects on different lines are
# all reported together, and together they report nothing their parts do not.

EXAMPLE = Path(__file__).resolve().parents[2] / "rules"
_TEXTS = {p.relative_to(EXAMPLE).as_posix(): p.read_text(encoding="utf-8")
          for p in sorted(EXAMPLE.rglob("*.yaml"))}
_SUBSTITUTIONS = (  # (pattern, replacement): each makes one defect on its line
    (re.compile(r"(sensor: [a-z_]+\.[a-z_]+(?:\.[a-z_]+)?)"), r"\1x"),  # K401
    (re.compile(r"(actuator: [a-z_]+\.[a-z_]+)"), r"\1x"),  # K402
    (re.compile(r"set: on\b"), "set: 1.5"),  # K204
    (re.compile(r"\bfor: (\d+)m\b"), r"for: \1 minutes"),  # K204
    (re.compile(r"\babove: \d+(\.\d+)?"), "above: hot"),  # K202
    (re.compile(r"\bbetween: \[([\d.]+), ([\d.]+)\]"), r"between: [\2, \1]"),  # K440
    (re.compile(r"\bpriority: \d+"), "priority: high"),  # K202
    (re.compile(r"\blevel: (info|warning|critical)\b"), "level: loud"),  # K204
    (re.compile(r"\bgpio: \d+"), "gpio: 99"),  # K204: the sensor or actuator is not built
    (re.compile(r"\btype: (relay|pump|valve|pwm)\b"), "type: relais"),  # K204: the actuator is not built
)
_MUTATIONS = [(name, i, k) for name, text in _TEXTS.items() for i, line in enumerate(text.split("\n"))
              if not line.lstrip().startswith("#")
              for k, (pat, _) in enumerate(_SUBSTITUTIONS) if pat.search(line)]


def _mutated_errors(root: Path, picked: tuple[tuple[str, int, int], ...]) -> frozenset[tuple[str, str, int, int]]:
    d = root / f"m{len(list(root.iterdir()))}"
    lines = {name: text.split("\n") for name, text in _TEXTS.items()}
    for name, i, k in picked:
        pat, repl = _SUBSTITUTIONS[k]
        lines[name][i] = pat.sub(repl, lines[name][i], count=1)
    for name, ls in lines.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text("\n".join(ls), encoding="utf-8")
    return frozenset((f.code, Path(f.pos.file).relative_to(d).as_posix(), f.pos.line, f.pos.col)
                     for f in lint(d, "Europe/Berlin")[1] if f.is_error)


def test_the_property_has_material() -> None:
    assert len(_MUTATIONS) >= 40 and {k for _, _, k in _MUTATIONS} == set(range(len(_SUBSTITUTIONS)))


@settings(max_examples=40 if os.environ.get("KAISER_HYPOTHESIS_PROFILE", "default") == "default" else 600)
@given(st.lists(st.sampled_from(_MUTATIONS), min_size=2, max_size=5, unique_by=lambda m: (m[0], m[1])))
def test_independent_defects_are_all_reported_together(picked: list[tuple[str, int, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        alone = [_mutated_errors(root, (m,)) for m in picked]
        for m, errors in zip(picked, alone, strict=True):
            assert errors, f"{m}: the mutation makes no error"
        together = _mutated_errors(root, tuple(picked))
        assert together == frozenset().union(*alone)


_JUNK = ["\t", ":", "- ", "{", "]", "&a ", "*a", "x", "~", "'", "#", "? ", "[]", "1.5", "north.", "  "]


@st.composite
def _mangled(draw: st.DrawFn) -> dict[str, str]:
    """The example's files with 1-4 edits: a line deleted or repeated, junk put in,
    or one of the defect substitutions above."""
    lines = {name: text.split("\n") for name, text in _TEXTS.items()}
    for _ in range(draw(st.integers(1, 4))):
        name = draw(st.sampled_from(sorted(lines)))
        ls = lines[name]
        i = draw(st.integers(0, len(ls) - 1))
        kind = draw(st.sampled_from(["delete", "repeat", "junk", "defect"]))
        if kind == "delete":
            del ls[i]
        elif kind == "repeat":
            ls.insert(i, ls[i])
        elif kind == "junk":
            at = draw(st.integers(0, len(ls[i])))
            ls[i] = ls[i][:at] + draw(st.sampled_from(_JUNK)) + ls[i][at:]
        else:
            pat, repl = draw(st.sampled_from(_SUBSTITUTIONS))
            ls[i] = pat.sub(repl, ls[i], count=1)
    return {name: "\n".join(ls) for name, ls in lines.items()}


@given(_mangled())
def test_lint_over_what_was_built_never_fails_internally(files: dict[str, str]) -> None:
    """Linted as `kaiser lint` does (the checks also over the items built in part):
    no internal error, and every finding is positioned in a file."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
            (Path(tmp) / name).write_text(text, encoding="utf-8")
        f = lint(tmp, "Europe/Berlin")[1]
    for d in f:
        assert d.code not in ("K199", "K499"), d.text()
        assert d.message and d.pos.line >= 1, d.text()


def test_a_bad_day_or_a_second_expectation_kind_hides_nothing(tmp_path: Path) -> None:
    p = write(tmp_path, DEVICES + """\
rules:
  - name: r
    when:
      all:
        - time: {after: "06:00", before: "06:00", weekdays: [mon, funday]}
        - {sensor: north.air_tmp, above: 20}
    then: [{actuator: north.fan, set: on}]
tests:
  - name: t
    steps: [{at: 0s, readings: {north.air_temp: 21}}]
    expect:
      - {at: 0s, command: {actuator: north.fna}, notify: {}}
""")
    assert found(p) == [("K450", 16, 11), ("K204", 16, 67), ("K401", 17, 11), ("K402", 23, 9), ("K205", 23, 50)]


def test_duplicate_limits_and_defaults_have_their_bodies_checked(tmp_path: Path) -> None:
    write(tmp_path, DEVICES + """\
safety:
  defaults: {offline_after: 2m}
  actuators:
    north.fan: {max_runtime: 10m}
rules:
  - name: r
    when: {sensor: north.air_temp, above: 30}
    then: [{actuator: north.fan, set: on}, {actuator: north.vent, set: on}, {actuator: north.pump, set: on}]
""", "a.yaml")
    write(tmp_path, """\
safety:
  defaults: {offline_after: soon}
  actuators:
    north.fan: {max_runtime: 2 minutes}
""", "b.yaml")
    got = [(Path(d.pos.file).name, d.code, d.pos.line) for d in lint(tmp_path)[1]]
    assert got == [("b.yaml", "K301", 2), ("b.yaml", "K204", 2), ("b.yaml", "K301", 4), ("b.yaml", "K204", 4)]
