"""Golden lint corpus: every ``*.bad.yaml`` (or ``*.bad/`` directory) holds ONE defect
and says in a leading comment what lint must report for it::

    # expect: K401 12:11          (code, line, column in this file)

Every ``*.good.yaml`` / ``*.good/`` case must load and lint with no error and no
warning. A case is linted the way ``kaiser lint`` does it: the loader's findings
plus ``run_checks`` on the best-effort model. The finding list must be exactly the
expected one (a case may name extra, accepted findings with ``# also: CODE L:C``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.config import load_deployment
from engine.config.checks import run_checks
from engine.diagnostics import Diagnostic

HERE = Path(__file__).parent
EXAMPLE = HERE.parent.parent / "rules"
_EXPECT = re.compile(r"^#\s*(expect|also):\s*(K\d{3})\s+(\d+):(\d+)\s*$", re.M)


def _cases(kind: str) -> list[Path]:
    return sorted([*HERE.glob(f"*.{kind}.yaml"), *(p for p in HERE.glob(f"*.{kind}") if p.is_dir())])


def _expected(case: Path) -> tuple[tuple[str, str, int, int], list[tuple[str, str, int, int]]]:
    files = [case] if case.is_file() else sorted(case.rglob("*.yaml"))
    main: list[tuple[str, str, int, int]] = []
    also: list[tuple[str, str, int, int]] = []
    for f in files:
        for m in _EXPECT.finditer(f.read_text(encoding="utf-8")):
            item = (m.group(2), f.name, int(m.group(3)), int(m.group(4)))
            (main if m.group(1) == "expect" else also).append(item)
    assert len(main) == 1, f"{case.name}: a bad case declares exactly one '# expect: CODE LINE:COL'"
    return main[0], also


def lint(path: Path, tz: str = "UTC") -> list[Diagnostic]:
    """What ``kaiser lint`` reports: the loader's findings, then the semantic checks."""
    deployment, diagnostics = load_deployment(path, tz=tz)
    partial = any(d.is_error for d in diagnostics)
    return [*diagnostics, *run_checks(deployment, partial=partial)]


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
    assert expected in keys, f"expected {expected}, lint said:\n{_show(found)}"
    extra = [d for d, k in zip(found, keys, strict=True) if k != expected and k not in also]
    assert not extra, f"{case.name}: findings beyond its one defect:\n{_show(extra)}"
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
