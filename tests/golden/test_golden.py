"""Golden lint corpus: every ``*.bad.yaml`` (or ``*.bad/`` directory) holds a defect
and says in a leading comment what lint must report for it::

    # expect: K401 12:11          (code, line, column in this file)

Most cases hold ONE defect. A ``many-defects-*`` case holds several independent ones, one
``# expect:`` line each: lint must report every one of them in the same run (SPEC:
"all errors are reported, not only the first"), and nothing else.

Every ``*.good.yaml`` / ``*.good/`` case must load and lint with no error and no
warning. A case is linted the way ``kaiser lint`` does it: the loader's findings
plus ``run_checks`` over everything the loader could build. The finding list must
be exactly the expected one (a case may name extra, accepted findings with
``# also: CODE L:C``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.config import load_deployment
from engine.config.checks import run_checks
from engine.config.lint import lint as engine_lint
from engine.diagnostics import Diagnostic

HERE = Path(__file__).parent
EXAMPLE = HERE.parent.parent / "rules"
_EXPECT = re.compile(r"^#\s*(expect|also):\s*(K\d{3})\s+(\d+):(\d+)\s*$", re.M)


def _cases(kind: str) -> list[Path]:
    return sorted([*HERE.glob(f"*.{kind}.yaml"), *(p for p in HERE.glob(f"*.{kind}") if p.is_dir())])


def _expected(case: Path) -> tuple[list[tuple[str, str, int, int]], list[tuple[str, str, int, int]]]:
    files = [case] if case.is_file() else sorted(case.rglob("*.yaml"))
    main: list[tuple[str, str, int, int]] = []
    also: list[tuple[str, str, int, int]] = []
    for f in files:
        for m in _EXPECT.finditer(f.read_text(encoding="utf-8")):
            item = (m.group(2), f.name, int(m.group(3)), int(m.group(4)))
            (main if m.group(1) == "expect" else also).append(item)
    if case.name.startswith("many-defects-"):
        assert len(main) >= 2, f"{case.name}: a many-defects case declares each defect with '# expect:'"
    else:
        assert len(main) == 1, f"{case.name}: a bad case declares exactly one '# expect: CODE LINE:COL'"
    assert len(set(main)) == len(main), f"{case.name}: an '# expect:' line is repeated"
    return main, also


def lint(path: Path, tz: str = "UTC") -> list[Diagnostic]:
    """What ``kaiser lint`` reports: the loader's findings, then the semantic checks
    (``run_checks(partial=...)`` when the loader found errors), deduplicated."""
    return engine_lint(path, tz)[1]


def test_lint_is_loader_plus_checks() -> None:
    """The runner goes through ``kaiser lint``'s own function; pin what it composes."""
    case = HERE / "opposite-states.bad.yaml"
    deployment, diagnostics = load_deployment(case)
    assert not diagnostics
    assert lint(case) == run_checks(deployment)


def _key(d: Diagnostic) -> tuple[str, str, int, int]:
    return (d.code, Path(d.pos.file).name, d.pos.line, d.pos.col)


def _show(found: list[Diagnostic]) -> str:
    return "\n".join(d.text() for d in found) or "(nothing)"


BAD = _cases("bad")
GOOD = _cases("good")


def test_corpus_size() -> None:
    assert len(BAD) >= 45
    assert len(GOOD) >= 5


_XFAIL = re.compile(r"^#\s*xfail:\s*(.+)$", re.M)


def _marks(case: Path) -> list[pytest.MarkDecorator]:
    """``# xfail: why`` marks a known gap in someone else's module (strict: a fix
    makes the case pass, and then the line must go)."""
    text = case.read_text(encoding="utf-8") if case.is_file() else ""
    m = _XFAIL.search(text)
    return [pytest.mark.xfail(reason=m.group(1), strict=True)] if m else []


@pytest.mark.parametrize("case", [pytest.param(p, marks=_marks(p), id=p.name) for p in BAD])
def test_bad_case_reports_exactly_its_defect(case: Path) -> None:
    expected, also = _expected(case)
    found = lint(case)
    keys = [_key(d) for d in found]
    missing = [e for e in expected if e not in keys]
    assert not missing, f"expected {missing}, lint said:\n{_show(found)}"
    extra = [d for d, k in zip(found, keys, strict=True) if k not in expected and k not in also]
    assert not extra, f"{case.name}: findings beyond its declared defects:\n{_show(extra)}"
    assert all(d.message and d.pos.line >= 1 for d in found)


@pytest.mark.parametrize("case", GOOD, ids=[p.name for p in GOOD])
def test_good_case_is_clean(case: Path) -> None:
    found = lint(case)
    assert not found, _show(found)


def test_example_deployment_is_clean() -> None:
    """The shipped greenhouse passes ``kaiser lint rules --strict``."""
    found = lint(EXAMPLE, tz="Europe/Berlin")
    assert not found, _show(found)


# Inputs too big or too binary to commit: generated here.


def _errors_only(path: Path) -> list[Diagnostic]:
    found = lint(path)
    assert found, "bad input must produce a finding"
    assert all(d.pos.file.endswith(path.name) for d in found if d.pos.line)
    return found


def test_binary_junk(tmp_path: Path) -> None:
    f = tmp_path / "junk.yaml"
    f.write_bytes(bytes(range(256)) * 4)
    found = _errors_only(f)
    assert found[0].is_error and found[0].code.startswith("K1")


def test_invalid_utf8(tmp_path: Path) -> None:
    f = tmp_path / "latin1.yaml"
    f.write_bytes("rules:\n  - name: gew\xe4chshaus\n".encode("latin-1"))
    found = _errors_only(f)
    assert [d.code for d in found] == ["K104"]


def test_ten_megabytes(tmp_path: Path) -> None:
    f = tmp_path / "huge.yaml"
    line = b"# " + b"x" * 98 + b"\n"
    f.write_bytes(b"rules:\n" + line * (10 * 1024 * 1024 // len(line)))
    found = _errors_only(f)
    assert [d.code for d in found] == ["K103"]
    assert (found[0].pos.line, found[0].pos.col) == (1, 1)


def test_empty_file_is_fine(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "comments.yaml").write_text("# nothing here yet\n")
    assert lint(tmp_path) == []


def test_missing_path(tmp_path: Path) -> None:
    found = lint(tmp_path / "nope")
    assert [d.code for d in found] == ["K100"]


# The example deployment is documentation: it must show every feature.


def _walk(c: object) -> list[object]:
    from engine.model import All, Any_, Not

    out = [c]
    if isinstance(c, All | Any_):
        for i in c.items:
            out += _walk(i)
    elif isinstance(c, Not):
        out += _walk(c.item)
    return out


def test_example_shows_every_feature() -> None:
    from engine.model import (
        ActuatorIs,
        All,
        Any_,
        At,
        Change,
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

    dep, found = load_deployment(EXAMPLE, tz="Europe/Berlin")
    assert not found
    # devices: three esp32dev boards, >= 12 sensors of >= 6 types, 8+ actuators of all 4 types
    assert set(dep.devices) >= {"north", "south", "tank"}
    assert all(d.board == "esp32dev" and re.fullmatch(r"ESP_[0-9A-F]{6,8}", d.esp_id) for d in dep.devices.values())
    sensors = [s for d in dep.devices.values() for s in d.sensors]
    actuators = [a for d in dep.devices.values() for a in d.actuators]
    assert len(sensors) >= 12 and len({s.type for s in sensors}) >= 6
    assert any(s.quantities for s in sensors) and any(s.calibration for s in sensors)
    assert len(actuators) >= 8 and {a.type for a in actuators} == {"pump", "valve", "relay", "pwm"}
    # safety: every limit kind and both interlock kinds
    limits = list(dep.safety.actuators.values())
    for attr in ("max_runtime", "min_off", "max_starts", "pwm", "rate_limit"):
        assert any(getattr(lim, attr) is not None for lim in limits), attr
    assert {lim.on_sensor_loss for lim in limits} >= {"off", "hold"}
    assert any(il.never_together for il in dep.safety.interlocks)
    assert any(il.only_if is not None for il in dep.safety.interlocks)
    # conditions
    conds = [c for r in dep.rules for c in _walk(r.condition)]
    comparisons = [c for c in conds if isinstance(c, Comparison)]
    assert {c.op for c in comparisons} | {c.op for c in conds if isinstance(c, Difference)} >= {
        "above", "below", "at_least", "at_most", "equals", "between", "outside"}
    assert any(c.for_ for c in comparisons) and any(c.hysteresis for c in comparisons)
    assert {c.direction for c in conds if isinstance(c, Change)} == {"rises", "falls"}
    assert {c.online for c in conds if isinstance(c, DeviceIs)} == {True, False}
    assert {c.on for c in conds if isinstance(c, ActuatorIs)} == {True, False}
    windows = [c for c in conds if isinstance(c, TimeWindow)]
    assert any(w.weekdays for w in windows)
    assert any(w.after is not None and w.before is not None and w.before < w.after for w in windows)
    for kind in (Difference, NoData, At, Every, All, Any_, Not):
        assert any(isinstance(c, kind) for c in conds), kind.__name__
    # actions
    actions = [a for r in dep.rules for a in (*r.actions, *(r.release or ()))]
    sets = [a for a in actions if isinstance(a, SetActuator)]
    assert {1.0, 0.0, "toggle"} <= {a.state for a in sets}
    assert any(isinstance(a.state, float) and 0 < a.state < 1 for a in sets)
    assert any(a.for_ for a in sets) and any(a.for_ is None for a in sets)
    notes = [a for a in actions if isinstance(a, Notify)]
    assert {n.level for n in notes} == {"info", "warning", "critical"} and any("{" in n.text for n in notes)
    assert any(isinstance(a, Wait) for a in actions)
    assert {a.target for a in actions if isinstance(a, EmergencyStop)} >= {"all", "tank"}
    # rules: both kinds, release with and without, priorities, cooldowns
    level = [r for r in dep.rules if r.kind == "level"]
    assert level and any(r.kind == "edge" for r in dep.rules)
    assert any(r.release for r in level) and any(not r.release for r in level)
    assert len({r.priority for r in dep.rules}) >= 3 and any(r.cooldown for r in dep.rules)
    for f in EXAMPLE.glob("*.yaml"):
        assert f.read_text(encoding="utf-8").startswith(
            "# yaml-language-server: $schema=../schemas/kaiser-rules.schema.json\n"), f.name


def test_unknown_time_zone() -> None:
    found = lint(EXAMPLE, tz="Mars/Olympus_Mons")
    assert [d.code for d in found] == ["K109"]
