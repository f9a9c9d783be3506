"""`kaiser lint` and `kaiser schema` as a user runs them: exit codes, formats, summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
devices:
  north:
    esp_id: ESP_12AB34CD
    sensors:
      air_temp: {gpio: 4, type: DS18B20}
    actuators:
      fan: {gpio: 5, type: relay}
rules:
  - name: vent
    when: {sensor: north.air_temp, above: 28}
    then: [{actuator: north.fan, set: on, for: 10m}]
"""
BAD = GOOD + "  - name: broken\n    when: {sensor: north.air_temp, abov: 3}\n    then: [{notify: x}]\n"


def rules(tmp_path: Path, text: str) -> Path:
    d = tmp_path / "rules"
    d.mkdir(exist_ok=True)
    (d / "main.yaml").write_text(text)
    return d


def test_clean_example_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", str(REPO / "rules")]) == 0
    err = capsys.readouterr().err
    assert "0 errors" in err


def test_errors_exit_1_with_text_findings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = rules(tmp_path, BAD)
    assert main(["lint", str(d)]) == 1
    out, err = capsys.readouterr()
    assert f"{d / 'main.yaml'}:13:36: K201 unknown key 'abov' in a sensor comparison (did you mean 'above'?)" in out
    assert err.strip().endswith("in 1 file") and "error" in err


def test_json_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = rules(tmp_path, BAD)
    assert main(["lint", str(d), "--format", "json"]) == 1
    items = json.loads(capsys.readouterr().out)
    k201 = next(i for i in items if i["code"] == "K201")
    assert (k201["line"], k201["col"], k201["severity"]) == (13, 36, "error")
    assert main(["lint", str(rules(tmp_path, GOOD)), "--format", "json"]) in (0, 1)
    assert isinstance(json.loads(capsys.readouterr().out), list)


def test_github_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = rules(tmp_path, BAD)
    assert main(["lint", str(d), "--format", "github"]) == 1
    out = capsys.readouterr().out
    assert f"::error file={d / 'main.yaml'},line=13,col=36,title=K201::" in out


def test_strict_fails_on_warnings_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from engine.config import lint
    from engine.diagnostics import Diagnostic
    from engine.model import Position

    d = rules(tmp_path, GOOD)
    warn = Diagnostic("K499", "warning", "something odd", Position(str(d / "main.yaml"), 1, 1))
    monkeypatch.setattr(lint, "_run_checks", lambda dep, **_: [warn])
    assert main(["lint", str(d)]) == 0
    assert main(["lint", str(d), "--strict"]) == 1
    assert "1 warning" in capsys.readouterr().err


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", str(tmp_path / "missing")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["lint", "--format", "xml"])
    assert e.value.code == 2
    bad_toml = tmp_path / "kaiser.toml"
    bad_toml.write_text("[kaiser]\nrulez = 1\n")
    assert main(["lint", "-c", str(bad_toml)]) == 2


def test_config_gives_rules_dir_and_time_zone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules(tmp_path, BAD)
    toml = tmp_path / "kaiser.toml"
    toml.write_text('[kaiser]\nrules = "rules"\ntz = "Europe/Berlin"\n')
    assert main(["lint", "-c", str(toml)]) == 1
    assert "K201" in capsys.readouterr().out


def test_lint_as_a_real_process(tmp_path: Path) -> None:
    d = rules(tmp_path, BAD)
    p = subprocess.run([sys.executable, "-m", "engine", "lint", str(d)], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
    assert p.returncode == 1
    assert "K201" in p.stdout and "error" in p.stderr


def test_schema_check_passes_for_the_repository(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "--check", "--out", str(REPO / "schemas")]) == 0


def test_large_generated_deployment_lints(tmp_path: Path) -> None:
    """200 boards and 1,000 rules across files: loads with no loader errors."""
    d = tmp_path / "rules"
    d.mkdir()
    dev = ["devices:"]
    for b in range(200):
        dev.append(f"  b{b}:\n    esp_id: ESP_{b:06X}\n    sensors:\n      t: {{gpio: 4, type: DS18B20}}\n"
                   f"    actuators:\n      fan: {{gpio: 12, type: relay}}")
    (d / "devices.yaml").write_text("\n".join(dev) + "\n")
    for f in range(10):
        out = ["rules:"]
        for r in range(100):
            n = f * 100 + r
            out.append(f"  - name: r{n}\n    when: {{sensor: b{n % 200}.t, above: {20 + n % 10}, for: 2m}}\n"
                       f"    then: [{{actuator: b{n % 200}.fan, set: on, for: 10m}}]")
        (d / f"rules{f}.yaml").write_text("\n".join(out) + "\n")
    from engine.config import load_deployment

    dep, diags = load_deployment(d)
    assert [x for x in diags if x.is_error] == []
    assert len(dep.devices) == 200 and len(dep.rules) == 1000


def test_kaiser_toml_beside_the_rules_dir_is_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = rules(tmp_path, GOOD)
    (tmp_path / "kaiser.toml").write_text('[kaiser]\ntz = "Mars/Olympus"\n')
    assert main(["lint", str(d)]) == 2
    assert "K804" in capsys.readouterr().out
    (tmp_path / "kaiser.toml").write_text('[kaiser]\ntz = "Europe/Berlin"\n')
    assert main(["lint", str(d)]) in (0, 1)


def test_schema_writes_every_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s"
    assert main(["schema", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (REPO / "schemas").iterdir())
    assert main(["schema", "--check", "--out", str(out)]) == 0
    (out / "tests.schema.json").unlink()
    assert main(["schema", "--check", "--out", str(out)]) == 1
    assert "tests.schema.json: out of date" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["schema", "--out", str(blocker)]) == 2
