# mypy: disable-error-code="union-attr"
"""engine.config.load_deployment: the model it builds and the findings it reports
(code, line, column) for every class of bad input."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from engine.config import load_deployment
from engine.diagnostics import Diagnostic
from engine.model import (
    ActuatorIs,
    All,
    Any_,
    At,
    Change,
    Code,
    Comparison,
    DeviceIs,
    Difference,
    EmergencyStop,
    Every,
    NoData,
    Not,
    Notify,
    SetActuator,
    TimeWindow,
    Wait,
)

REPO = Path(__file__).resolve().parents[2]

DEVICES = """\
devices:
  north:
    esp_id: ESP_12AB34CD
    zone: greenhouse
    board: esp32dev
    sensors:
      air_temp: {gpio: 4, type: DS18B20}
      soil:     {gpio: 34, type: moisture, calibration: {dry: 3200, wet: 1300}}
      climate:  {gpio: 21, type: SHT31, i2c_address: 0x44}
    actuators:
      fan:    {gpio: 5,  type: relay}
      pump:   {gpio: 18, type: pump, critical: true}
      vent:   {gpio: 12, type: pwm}
      heater: {gpio: 13, type: relay}
"""


def load(tmp_path: Path, files: dict[str, str], tz: str = "UTC") -> tuple[Any, list[Diagnostic]]:
    for name, text in files.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_deployment(tmp_path, tz)


def one(diags: list[Diagnostic], code: str) -> Diagnostic:
    hits = [d for d in diags if d.code == code]
    assert len(hits) == 1, [d.text() for d in diags]
    return hits[0]


def at(d: Diagnostic) -> tuple[int, int]:
    return (d.pos.line, d.pos.col)


# ---------------------------------------------------------------------------
# the good path


def test_example_deployment_loads_clean() -> None:
    dep, diags = load_deployment(REPO / "rules")
    assert [d for d in diags if d.is_error] == []
    assert dep.devices and dep.rules
    assert [r.index for r in dep.rules] == list(range(len(dep.rules)))


def test_devices_are_built_with_positions_and_canonical_types(tmp_path: Path) -> None:
    dep, diags = load(tmp_path, {"devices.yaml": DEVICES})
    assert diags == []
    north = dep.devices["north"]
    assert (north.esp_id, north.zone, north.board) == ("ESP_12AB34CD", "greenhouse", "esp32dev")
    assert (north.pos.line, north.pos.col) == (2, 3)
    assert north.pos.file == str(tmp_path / "devices.yaml")
    sensors = {s.name: s for s in north.sensors}
    assert sensors["air_temp"].type == "ds18b20"
    assert sensors["air_temp"].quantities == ()
    assert sensors["climate"].type == "sht31"
    assert set(sensors["climate"].quantities) == {"temperature", "humidity"}
    assert sensors["climate"].i2c_address == 0x44
    assert sensors["soil"].calibration == {"dry": 3200.0, "wet": 1300.0}
    assert dep.sensor("north.climate.humidity") is sensors["climate"]
    acts = {a.name: a for a in north.actuators}
    assert acts["pump"].critical and acts["pump"].type == "pump"
    assert (acts["vent"].pos.line, acts["vent"].pos.col) == (13, 15)


def test_safety_section(tmp_path: Path) -> None:
    dep, diags = load(tmp_path, {"devices.yaml": DEVICES, "safety.yaml": """\
        safety:
          defaults:
            offline_after: 2m
            stale_after: 10m
            max_switches_per_minute: 4
            lease: 30s
          actuators:
            north.pump:
              max_runtime: 10m
              min_off: 2m
              max_starts: 6/h
              rate_limit: 10/m
              on_sensor_loss: hold
            north.vent:
              pwm: [0.1, 0.8]
          interlocks:
            - name: heat-or-cool
              never_together: [north.heater, north.fan]
            - name: pump-needs-water
              actuator: north.pump
              only_if: {sensor: north.soil, below: 80}
        """})
    assert diags == []
    s = dep.safety
    assert (s.defaults.offline_after, s.defaults.stale_after, s.defaults.max_switches_per_minute,
            s.defaults.lease) == (120.0, 600.0, 4, 30.0)
    pump = s.actuators["north.pump"]
    assert (pump.max_runtime, pump.min_off, pump.max_starts, pump.rate_limit, pump.on_sensor_loss) == \
        (600.0, 120.0, (6, 3600.0), (10, 60.0), "hold")
    assert s.actuators["north.vent"].pwm == (0.1, 0.8)
    heat, water = s.interlocks
    assert heat.never_together == ("north.heater", "north.fan")
    assert water.actuator == "north.pump"
    assert isinstance(water.only_if, Comparison)
    assert (water.only_if.sensor, water.only_if.op, water.only_if.value) == ("north.soil", "below", 80.0)


def test_every_condition_and_action_type(tmp_path: Path) -> None:
    dep, diags = load(tmp_path, {"devices.yaml": DEVICES, "rules.yaml": """\
        rules:
          - name: vent-when-hot
            description: Cool the north house
            priority: 10
            cooldown: 5m
            when:
              all:
                - {sensor: north.air_temp, above: 28, for: 2m, hysteresis: 1}
                - {sensor: north.climate.humidity, between: [40, 60]}
                - {difference: [north.air_temp, north.climate.temperature], at_most: 3}
                - {sensor: north.soil, falls_by: 10, within: 30m}
                - {sensor: north.soil, no_data_for: 5m}
                - {device: north, is: online}
                - {actuator: north.pump, is: off}
                - {time: {after: "22:00", before: "06:00", weekdays: [mon, Friday]}}
                - any: [{at: "06:30"}, {every: 15m}]
                - not: {sensor: north.air_temp, outside: [0, 50]}
            then:
              - {actuator: north.fan, set: on, for: 10m}
              - {wait: 30s}
              - {actuator: north.vent, set: 0.6}
              - {actuator: north.heater, set: toggle}
              - {notify: "North is hot: {north.air_temp} °C", level: warning}
              - {emergency_stop: all, reason: too hot}
          - name: heater-thermostat
            enabled: false
            while:
              - {sensor: north.air_temp, below: 18, hysteresis: 1}
            hold:
              - {actuator: north.heater, set: on}
            release:
              - {actuator: north.heater, set: off}
        """})
    assert diags == []
    hot: Any
    thermo: Any
    hot, thermo = dep.rules
    assert (hot.name, hot.kind, hot.priority, hot.cooldown, hot.index) == ("vent-when-hot", "edge", 10, 300.0, 0)
    assert isinstance(hot.condition, All)
    kinds = [type(c) for c in hot.condition.items]
    assert kinds == [Comparison, Comparison, Difference, Change, NoData, DeviceIs, ActuatorIs,
                     TimeWindow, Any_, Not]
    cmp, between, diff, change, nodata, dev, act, win, anyc, notc = hot.condition.items
    assert (cmp.op, cmp.value, cmp.for_, cmp.hysteresis) == ("above", 28.0, 120.0, 1.0)
    assert (cmp.pos.line, cmp.pos.col) == (8, 11)
    assert between.sensor == "north.climate.humidity" and between.value == (40.0, 60.0)
    assert (diff.a, diff.b, diff.op, diff.value) == ("north.air_temp", "north.climate.temperature", "at_most", 3.0)
    assert (change.direction, change.amount, change.within) == ("falls", 10.0, 1800.0)
    assert nodata.duration == 300.0
    assert dev.online is True and act.on is False
    assert (win.after, win.before, win.weekdays) == (22 * 60, 6 * 60, (0, 4))
    assert [type(i) for i in anyc.items] == [At, Every]
    assert anyc.items[0].minute == 390 and anyc.items[1].interval == 900.0
    assert isinstance(notc.item, Comparison) and notc.item.op == "outside"
    fan, wait, vent, heater, note, stop = hot.actions
    assert fan == SetActuator("north.fan", 1.0, 600.0, fan.pos)
    assert isinstance(wait, Wait) and wait.duration == 30.0
    assert vent.state == 0.6 and vent.for_ is None
    assert heater.state == "toggle"
    assert isinstance(note, Notify) and note.level == "warning" and "{north.air_temp}" in note.text
    assert isinstance(stop, EmergencyStop) and (stop.target, stop.reason) == ("all", "too hot")
    assert (thermo.kind, thermo.enabled, thermo.index) == ("level", False, 1)
    assert isinstance(thermo.condition, All)  # a bare list means all
    assert thermo.release is not None and thermo.release[0].state == 0.0


def test_index_is_declaration_order_across_files(tmp_path: Path) -> None:
    rule = "  - {{name: {n}, when: {{every: 1m}}, then: [{{notify: x}}]}}\n"
    dep, diags = load(tmp_path, {
        "a.yaml": "rules:\n" + rule.format(n="a1") + rule.format(n="a2"),
        "sub/b.yaml": "rules:\n" + rule.format(n="b1"),
    })
    assert diags == []
    assert [(r.name, r.index) for r in dep.rules] == [("a1", 0), ("a2", 1), ("b1", 2)]
    assert dep.files == (str(tmp_path / "a.yaml"), str(tmp_path / "sub/b.yaml"))


def test_tests_section_is_normalised(tmp_path: Path) -> None:
    dep, diags = load(tmp_path, {"devices.yaml": DEVICES, "tests.yaml": """\
        tests:
          - name: fan after two hot minutes
            start: "2026-06-01T10:00:00+02:00"
            rules: [vent-when-hot]
            steps:
              - {at: 0s, readings: {north.air_temp: 29, north.climate.humidity: 50}}
              - {at: 130s, readings: {north.air_temp: null}, devices: {north: offline},
                 actuators: {north.fan: on, north.vent: 0.5}}
              - {at: "2026-06-01T10:05:00+02:00", readings: {north.air_temp: 30}}
            expect:
              - {at: 120s, command: {actuator: north.fan, set: on, for: 10m}}
              - {at: 150s, blocked: {actuator: north.vent, reason: PWM_OUT_OF_RANGE}}
              - {at: 2m, notify: {level: warning, text: hot}}
              - {at: 1s, no_command: {actuator: north.pump}}
            only_expected: true
          - name: defaults
            steps: []
        """})
    assert diags == []
    t, d = dep.tests
    assert t.start == 1780300800.0  # 2026-06-01T08:00:00Z
    assert d.start == 1767225600.0  # 2026-01-01T00:00:00Z
    assert t.only_expected and t.rules == ("vent-when-hot",)
    s0, s1, s2 = t.steps
    assert s0.readings == {"north.air_temp": 29.0, "north.climate.humidity": 50.0}
    assert s1.at == 130.0 and s1.readings == {"north.air_temp": None}
    assert s1.devices == {"north": False} and s1.actuators == {"north.fan": 1.0, "north.vent": 0.5}
    assert s2.at == 300.0
    cmd, blk, note, none = t.expect
    assert (cmd.kind, dict(cmd.fields)) == ("command", {"actuator": "north.fan", "set": 1.0, "for": 600.0})
    assert blk.fields["reason"] == Code.PWM_OUT_OF_RANGE and blk.at == 150.0
    assert (note.kind, dict(note.fields)) == ("notify", {"level": "warning", "text": "hot"})
    assert (none.kind, dict(none.fields)) == ("no_command", {"actuator": "north.pump"})


def test_single_file_and_empty_files(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "comments.yml").write_text("# nothing yet\n")
    (tmp_path / "notes.txt").write_text("not: [yaml")
    dep, diags = load_deployment(tmp_path)
    assert diags == [] and len(dep.files) == 2
    dep, diags = load_deployment(tmp_path / "empty.yaml")
    assert diags == [] and dep.files == (str(tmp_path / "empty.yaml"),)


def test_yaml_12_scalars(tmp_path: Path) -> None:
    """`on`/`off`/`yes` are strings (YAML 1.2), so `set: on` is on, and a name `no` is a name."""
    dep, diags = load(tmp_path, {"devices.yaml": DEVICES, "r.yaml": """\
        rules:
          - name: "no"
            when: {sensor: north.air_temp, above: 1e1}
            then: [{actuator: north.fan, set: off}]
        """})
    assert diags == []
    r = dep.rules[0]
    assert r.name == "no" and r.condition.value == 10.0 and r.actions[0].state == 0.0


# ---------------------------------------------------------------------------
# bad input: every class, with code and position


def test_missing_path(tmp_path: Path) -> None:
    dep, diags = load_deployment(tmp_path / "nope")
    assert one(diags, "K100").is_error and dep.rules == ()


def test_not_yaml(tmp_path: Path) -> None:
    _, diags = load(tmp_path, {"a.yaml": "rules:\n  - name: a\n    when: {sensor: x.y, above: 3\n"})
    d = one(diags, "K101")
    assert "flow mapping" in d.message and "line 3, column 11" in d.message


def test_bad_indentation_hint(tmp_path: Path) -> None:
    _, diags = load(tmp_path, {"a.yaml": "rules:\n  - name: a\n   when: x\n"})
    d = one(diags, "K101")
    assert at(d) == (3, 4) and "indentation" in d.hint


def test_tabs(tmp_path: Path) -> None:
    _, diags = load(tmp_path, {"a.yaml": "rules:\n  - name: a\n\twhen: x\n"})
    d = one(diags, "K102")
    assert at(d) == (3, 1) and d.hint == "YAML indents with spaces, not tabs"


def test_binary_junk(tmp_path: Path) -> None:
    (tmp_path / "nul.yaml").write_bytes(b"rules:\n  \x00\x01\x02")
    (tmp_path / "latin1.yaml").write_bytes("rules:\n  - name: caf\xe9\n".encode("latin-1"))
    _, diags = load_deployment(tmp_path)
    nul = next(d for d in diags if d.pos.file.endswith("nul.yaml"))
    lat = next(d for d in diags if d.pos.file.endswith("latin1.yaml"))
    assert (nul.code, at(nul)) == ("K104", (2, 3))
    assert (lat.code, at(lat)) == ("K104", (2, 14))
    assert "UTF-8" in lat.message


def test_huge_file_is_refused_quickly(tmp_path: Path) -> None:
    (tmp_path / "big.yaml").write_bytes(b"# " + b"x" * (10 * 1024 * 1024))
    _, diags = load_deployment(tmp_path)
    d = one(diags, "K103")
    assert at(d) == (1, 1) and "too large" in d.message


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    prev = "a"
    for n in "bcdefghi":
        lines.append(f"{n}: &{n} [" + ",".join([f"*{prev}"] * 9) + "]")
        prev = n
    lines.append("rules: *i")
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    _, diags = load_deployment(tmp_path)
    assert time.perf_counter() - t0 < 30  # never hangs (the real bound is far lower)
    d = one(diags, "K105")
    assert "alias" in d.message and d.pos.line <= 10


def test_recursive_alias(tmp_path: Path) -> None:
    _, diags = load(tmp_path, {"a.yaml": "rules: &r\n  - *r\n"})
    assert one(diags, "K105").pos.line == 1


def test_small_aliases_and_merge_keys_are_fine(tmp_path: Path) -> None:
    dep, diags = load(tmp_path, {"devices.yaml": DEVICES, "r.yaml": """\
        rules:
          - name: a
            when: &hot {sensor: north.air_temp, above: 30}
            then: &fan [{actuator: north.fan, set: on}]
          - name: b
            when: *hot
            then: *fan
        """})
    assert diags == [] and len(dep.rules) == 2


def test_deep_nesting(tmp_path: Path) -> None:
    _, diags = load(tmp_path, {"a.yaml": "rules: " + "[" * 5000 + "]" * 5000 + "\n"})
    assert one(diags, "K105").is_error


def test_several_documents(tmp_path: Path) -> None:
    _, diags = load(tmp_path, {"a.yaml": "rules: []\n---\nrules: []\n"})
    assert at(one(diags, "K106")) == (2, 1)


def test_duplicate_key_names_both_places(tmp_path: Path) -> None:
    _, diags = load(tmp_path, {"a.yaml": "rules:\n  - name: a\n    name: b\n    when: {every: 1m}\n"
                                         "    then: [{notify: x}]\n"})
    d = one(diags, "K107")
    assert at(d) == (3, 5) and d.related is not None and (d.related.line, d.related.col) == (2, 5)
    assert "duplicate key 'name'" in d.text()


def test_top_level_list_or_scalar(tmp_path: Path) -> None:
    _, diags = load(tmp_path, {"a.yaml": "- rules\n", "b.yaml": "just text\n"})
    assert [(d.code, d.pos.file.rsplit("/", 1)[1]) for d in diags] == [("K108", "a.yaml"), ("K108", "b.yaml")]


def test_unknown_keys_with_did_you_mean(tmp_path: Path) -> None:
    _, diags = load(tmp_path, {"devices.yaml": DEVICES, "a.yaml": """\
        rulez: []
        rules:
          - name: a
            when: {sensor: north.air_temp, abov: 3}
            then: [{actuator: north.fan, sett: on}]
            priorty: 3
        """})
    by = {d.message: d for d in diags}
    top = by["unknown key 'rulez' in a rules file"]
    assert (top.code, at(top), top.hint) == ("K201", (1, 1), "did you mean 'rules'?")
    abov = by["unknown key 'abov' in a sensor comparison"]
    assert (at(abov), abov.hint) == ((4, 36), "did you mean 'above'?")
    assert by["unknown key 'sett' in an actuator action"].hint == "did you mean 'set'?"
    assert at(by["unknown key 'priorty' in a rule"]) == (6, 5)


def test_key_at_the_wrong_indentation(tmp_path: Path) -> None:
    _, diags = load(tmp_path, {"a.yaml": """\
        devices:
          north:
            esp_id: ESP_1
          sensors:
            t: {gpio: 4, type: DS18B20}
        safety:
          max_runtime: 10m
        """})
    d = next(d for d in diags if "'sensors'" in d.message)
    assert (d.code, at(d)) == ("K201", (4, 3)) and "indent" in d.hint
    d = next(d for d in diags if "max_runtime" in d.message)
    assert (d.code, at(d)) == ("K201", (7, 3))


def test_wrong_types(tmp_path: Path) -> None:
    _, diags = load(tmp_path, {"a.yaml": """\
        devices:
          north:
            esp_id: ESP_1
            sensors:
              t: {gpio: four, type: DS18B20}
            actuators:
              fan: {gpio: 5, type: motor}
        rules: {name: a}
        """})
    gpio = next(d for d in diags if "'gpio'" in d.message)
    assert (gpio.code, at(gpio)) == ("K202", (5, 17)) and "the text 'four'" in gpio.message
    motor = next(d for d in diags if "'type'" in d.message)
    assert (motor.code, at(motor)) == ("K204", (7, 28))
    rules = next(d for d in diags if "'rules'" in d.message)
    assert (rules.code, at(rules)) == ("K202", (8, 8))


def test_bad_values(tmp_path: Path) -> None:
    _, diags = load(tmp_path, {"devices.yaml": DEVICES, "a.yaml": """\
        rules:
          - name: a
            cooldown: 5x
            when: [{sensor: north.air_temp, between: [1]}, {time: {after: "25:00", weekdays: [mon, tus]}}]
            then: [{actuator: north.vent, set: 1.5}, {notify: hi, level: loud}, {actuator: north.fan, set: onn}]
        """})
    got = {(d.code, d.pos.line, d.pos.col) for d in diags}
    assert ("K204", 3, 15) in got  # duration
    assert ("K202", 4, 46) in got  # between needs two numbers
    assert ("K204", 4, 67) in got  # 25:00
    assert ("K204", 4, 92) in got  # tus
    assert ("K204", 5, 40) in got  # duty 1.5
    assert ("K204", 5, 66) in got  # level
    assert ("K204", 5, 100) in got  # onn
    onn = next(d for d in diags if d.pos.col == 100)
    assert onn.hint == "did you mean 'on'?"


def test_rule_shape_errors(tmp_path: Path) -> None:
    _, diags = load(tmp_path, {"devices.yaml": DEVICES, "a.yaml": """\
        rules:
          - name: both
            when: {every: 1m}
            then: [{notify: x}]
            while: {sensor: north.air_temp, above: 3}
          - name: neither
            description: nothing
          - name: no-then
            when: {every: 1m}
          - name: trigger-in-while
            while: {at: "06:30"}
            hold: [{actuator: north.fan, set: on}]
          - name: wait-in-hold
            while: {sensor: north.air_temp, above: 3}
            hold: [{actuator: north.fan, set: on}, {wait: 3s}]
          - name: Bad Name
            when: {evry: 1m}
            then: [{switch: north.fan}]
        """})
    got = {(d.code, d.pos.line, d.pos.col) for d in diags}
    assert ("K205", 5, 5) in got
    assert ("K203", 6, 5) in got
    assert ("K203", 9, 5) in got
    assert ("K208", 11, 13) in got
    assert ("K204", 15, 44) in got
    assert ("K303", 16, 11) in got
    assert ("K206", 17, 12) in got
    assert ("K207", 18, 13) in got
    assert next(d for d in diags if d.code == "K206").hint == "did you mean 'every'?"


def test_duplicate_names_across_files_name_both_places(tmp_path: Path) -> None:
    _, diags = load(tmp_path, {
        "a.yaml": DEVICES + "rules:\n  - {name: r, when: {every: 1m}, then: [{notify: x}]}\n",
        "b.yaml": """\
            devices:
              north: {esp_id: ESP_OTHER}
              south:
                esp_id: ESP_12AB34CD
                sensors:
                  t: {gpio: 4, type: DS18B20}
                actuators:
                  t: {gpio: 5, type: relay}
            rules:
              - {name: r, when: {every: 1m}, then: [{notify: x}]}
            """,
    })
    dup = [d for d in diags if d.code == "K301"]
    assert len(dup) == 2
    dev = next(d for d in dup if "device" in d.message)
    assert at(dev) == (2, 3) and dev.pos.file.endswith("b.yaml")
    assert dev.related is not None and dev.related.file.endswith("a.yaml") and dev.related.line == 2
    rule = next(d for d in dup if "rule" in d.message)
    assert rule.related is not None and rule.related.line == 16
    assert at(one(diags, "K302")) == (8, 7)
    esp = one(diags, "K306")
    assert at(esp) == (4, 13) and esp.related is not None and esp.related.line == 3


def test_unknown_sensor_type_did_you_mean(tmp_path: Path) -> None:
    _, diags = load(tmp_path, {"a.yaml": """\
        devices:
          north:
            esp_id: ESP_1
            sensors:
              t: {gpio: 4, type: DS18B2O}
        """})
    d = one(diags, "K305")
    assert at(d) == (5, 26) and "ds18b20" in d.hint


def test_bad_refs(tmp_path: Path) -> None:
    _, diags = load(tmp_path, {"a.yaml": """\
        rules:
          - name: a
            when: {sensor: north, above: 1}
            then: [{actuator: north..fan, set: on}]
        """})
    assert [(d.code, at(d)) for d in diags] == [("K304", (3, 20)), ("K304", (4, 23))]


def test_bad_tests(tmp_path: Path) -> None:
    _, diags = load(tmp_path, {"a.yaml": """\
        tests:
          - name: t
            start: yesterday
            steps:
              - {readings: {north.t: warm}}
            expect:
              - {at: 1s, command: {actuator: north.fan}, blocked: {actuator: north.fan}}
              - {at: 1s, blocked: {actuator: north.fan, reason: TOO_HOT}}
        """})
    got = {(d.code, d.pos.line, d.pos.col) for d in diags}
    assert ("K204", 3, 12) in got  # start
    assert ("K203", 5, 9) in got  # step needs at
    assert ("K202", 5, 30) in got  # reading not a number
    assert ("K205", 7, 50) in got  # two kinds in one expectation
    assert ("K204", 8, 57) in got  # unknown reason


def test_bad_timezone_is_reported(tmp_path: Path) -> None:
    _, diags = load(tmp_path, {"a.yaml": "rules: []\n"}, tz="Mars/Olympus")
    assert one(diags, "K109").is_error


def test_all_errors_at_once_and_good_items_kept(tmp_path: Path) -> None:
    dep, diags = load(tmp_path, {"devices.yaml": DEVICES, "a.yaml": """\
        rules:
          - {name: good, when: {every: 1m}, then: [{notify: x}]}
          - {name: bad1, when: {every: 1x}, then: [{notify: x}]}
          - {name: bad2, when: {every: 1m}, then: [{notify: x, level: y}]}
          - {name: good2, when: {every: 1m}, then: [{notify: x}]}
        """})
    assert len([d for d in diags if d.is_error]) == 2
    assert [r.name for r in dep.rules] == ["good", "good2"]


def test_diagnostic_text_format(tmp_path: Path) -> None:
    _, diags = load(tmp_path, {"a.yaml": "rulez: []\n"})
    assert diags[0].text() == f"{tmp_path / 'a.yaml'}:1:1: K201 unknown key 'rulez' in a rules file (did you mean 'rules'?)"


def test_ruamel_fallback_gives_the_same_findings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.config import source

    files = {"devices.yaml": DEVICES, "a.yaml": "rules:\n  - name: a\n    name: b\n",
             "b.yaml": "rules:\n  - name: a\n\twhen: x\n", "c.yaml": "rules: [\n"}
    _, fast = load(tmp_path, files)
    monkeypatch.setattr(source, "_CLoader", None)
    _, slow = load_deployment(tmp_path)
    assert [(d.code, d.pos) for d in slow if d.code != "K101"] == \
        [(d.code, d.pos) for d in fast if d.code != "K101"]
    assert {d.code for d in slow} == {d.code for d in fast}


def test_per_quantity_sensor_type_is_single_valued(tmp_path: Path) -> None:
    dep, diags = load(tmp_path, {"a.yaml": """\
        devices:
          north:
            esp_id: ESP_1
            sensors:
              hum: {gpio: 21, type: Humidity_SHT31, i2c_address: 0x44}
              tank: {gpio: 4, type: temperature_ds18b20}
        """})
    assert diags == []
    hum, tank = dep.devices["north"].sensors
    assert (hum.type, hum.quantities, hum.refs()) == ("sht31_humidity", (), ("north.hum",))
    assert tank.type == "ds18b20"


def test_a_fifo_is_not_read(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "pipe.yaml")
    _, diags = load_deployment(tmp_path)
    assert one(diags, "K100").message == "not a regular file"


def test_indentation_hints_for_rules(tmp_path: Path) -> None:
    _, diags = load(tmp_path, {"a.yaml": """\
        rules:
          - name: a
            when:
              sensor: north.t
              above: 3
              then: [{notify: x}]
          - name: b
            when: {every: 1m}
            then:
            - actuator: north.fan
            set: on
          - name: c
            when:
            sensor: north.t
            above: 3
            then: [{notify: x}]
        """})
    hints = {(d.code, d.pos.line, d.pos.col): d.hint for d in diags}
    assert "belongs one level up" in hints[("K201", 6, 7)]
    assert "belongs one level deeper" in hints[("K201", 11, 5)]
    assert "indent what belongs to 'when' under it" in hints[("K203", 13, 10)]
    assert "belongs one level deeper" in hints[("K201", 14, 5)]


def test_reusing_a_template_many_times_is_not_a_bomb(tmp_path: Path) -> None:
    """200 devices merging one 40-node template: legitimate reuse within the budget."""
    tmpl = "x-template: &board\n  zone: house\n  sensors:\n" + "".join(
        f"    s{i}: {{gpio: {i}, type: DS18B20}}\n" for i in range(8))
    devs = "".join(f"  d{i}:\n    <<: *board\n    esp_id: ESP_{i:06X}\n" for i in range(200))
    (tmp_path / "a.yaml").write_text(tmpl + "devices:\n" + devs)
    dep, diags = load_deployment(tmp_path)
    assert [d.code for d in diags] == ["K201"]  # only the unknown top-level key x-template
    assert len(dep.devices) == 200 and len(dep.devices["d7"].sensors) == 8


def test_hints_for_words_people_write(tmp_path: Path) -> None:
    _, diags = load(tmp_path, {"a.yaml": """\
        rules:
          - name: a
            when: {sensor: north.t, below: 50, for: 2 minutes, and: {sensor: north.u, above: 2}}
            then: [{actuator: north.pump, set: 50%}, {actuator: north.fan, state: on}, {actuator: north.vent, set: 60}]
        """})
    hints = {d.hint for d in diags}
    assert {"write 2m", "to combine conditions use all: [...]", "a duty is a fraction: if you meant 50 %, write 0.5",
            "did you mean 'set'?", "a duty is a fraction: if you meant 60 %, write 0.6"} <= hints


def test_a_misspelt_required_key_is_reported_once(tmp_path: Path) -> None:
    _, diags = load(tmp_path, {"a.yaml": """\
        rules:
          - name: a
            when: {every: 1m}
            thne: [{actuator: north.fan, sett: on}]
        """})
    assert [(d.code, d.hint) for d in diags] == [("K201", "did you mean 'then'?")]
    _, diags = load(tmp_path, {"a.yaml": """\
        rules:
          - name: a
            when: {every: 1m}
            then: [{actuator: north.fan, sett: on}]
        """})
    assert [(d.code, d.hint) for d in diags] == [("K201", "did you mean 'set'?")]


def test_top_level_devices_and_rules_without_their_section(tmp_path: Path) -> None:
    _, diags = load(tmp_path, {"a.yaml": """\
        north:
          esp_id: ESP_1
        climate:
          - {name: a, when: {every: 1m}, then: [{notify: x}]}
        """})
    assert [(d.code, at(d), d.hint) for d in diags] == [
        ("K201", (1, 1), "is 'north' a device? devices go under 'devices:'"),
        ("K201", (3, 1), "rules go under 'rules:', one list for all of them"),
    ]


def test_issue_10_syntax(tmp_path: Path) -> None:
    dep, diags = load(tmp_path, {"d.yaml": DEVICES, "r.yaml": """\
safety:
  actuators:
    north.vent: {pwm: [0.1, 0.9], out_of_range: clamp}
rules:
  - name: vent
    while: {sensor: north.air_temp, above: 24, count: 3, fresh: 2m}
    hold:
      - {actuator: north.vent, set: {follow: north.air_temp, map: [[24, 0.2], [30, 1.0]], step: 0.1}}
tests:
  - name: stop and reset
    steps:
      - {at: 10s, emergency_stop: all}
      - {at: 20s, reset: north, readings: {north.air_temp: 25}}
    expect:
      - {at: 25s, command: {actuator: north.vent, set: 0.25}}
"""})
    assert diags == []
    assert dep.safety.actuators["north.vent"].out_of_range == "clamp"
    rule = dep.rules[0]
    assert rule.condition == Comparison("north.air_temp", "above", 24.0, pos=rule.condition.pos, count=3, fresh=120.0)
    act = rule.actions[0]
    assert isinstance(act, SetActuator) and not isinstance(act.state, float | str)
    assert act.state.points == ((24.0, 0.2), (30.0, 1.0)) and act.state.step == 0.1
    steps = dep.tests[0].steps
    assert (steps[0].emergency_stop, steps[0].reset, steps[1].emergency_stop, steps[1].reset) == \
        ("all", None, None, "north")


def test_a_when_rule_with_hold_is_one_finding(tmp_path: Path) -> None:
    _, diags = load(tmp_path, {"d.yaml": DEVICES, "r.yaml": """\
rules:
  - name: fan
    when: {sensor: north.air_temp, above: 24}
    hold:
      - {actuator: north.fan, set: on}
"""})
    assert [(d.code, d.message) for d in diags] == [("K205", "a when rule uses then:, not hold:")]


def test_out_of_range_needs_a_pwm_range(tmp_path: Path) -> None:
    _, diags = load(tmp_path, {"d.yaml": DEVICES, "r.yaml": """\
safety:
  actuators:
    north.fan: {out_of_range: clamp}
"""})
    assert [d.code for d in diags] == ["K203"]
