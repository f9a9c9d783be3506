"""Issue 12 without a server: metrics text, CLI output formats and times, did you
mean, a closed pipe, kaiser init, JSON logs, the monitoring files, the HTTP parser
the REST port relies on."""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine import logs, output
from engine.init import cmd_init
from engine.metrics import Exposition, Histogram, Telemetry, escape

ROOT = Path(__file__).resolve().parents[2]
BERLIN = output.zone("Europe/Berlin")


def test_histogram_buckets_are_cumulative_and_parse() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    h = Histogram((0.001, 0.01))
    for v in (0.0005, 0.002, 0.002, 5.0):
        h.observe(v)
    x = Exposition()
    x.histogram("x_seconds", h, "test")
    x.family("y", "gauge", "labels", [({"sensor": 'a"b\\c\nd'}, 1.5)])
    fams = {f.name: f for f in text_string_to_metric_families(x.text())}
    buckets = {s.labels["le"]: s.value for s in fams["kaiser_x_seconds"].samples if s.name.endswith("_bucket")}
    assert buckets == {"0.001": 1, "0.01": 3, "+Inf": 4}
    assert fams["kaiser_y"].samples[0].labels["sensor"] == 'a"b\\c\nd'
    assert h.quantile(0.5) == 0.01 and escape("a\nb") == "a\\nb"


def test_rule_run_outcomes_stay_few() -> None:
    t = Telemetry()
    t.rule_run("r", "error: division by zero", 1.0)
    t.rule_run("r", "error: something else", 2.0)
    t.rule_run("r", "ran", 3.0)
    assert t.rule_runs == {("r", "error"): 2, ("r", "ran"): 1} and t.last_run["r"] == (3.0, "ran")


def test_times_are_shown_in_the_configured_zone_in_one_format() -> None:
    summer = dt.datetime(2026, 6, 1, 8, 0, 0, 250000, tzinfo=dt.UTC)
    from_file = output.cell(summer, BERLIN)  # the store file gives datetimes
    from_server = output.cell("2026-06-01T08:00:00.250000+00:00", BERLIN)  # the server gives JSON text
    assert from_file == from_server == "2026-06-01 10:00:00.250+02:00"
    assert output.when(summer.timestamp(), BERLIN) == from_file
    assert output.cell("north.fan", BERLIN) == "north.fan"


@pytest.mark.parametrize("fmt", ["json", "csv", "table"])
def test_records_print_whole_in_every_format(fmt: str) -> None:
    out = io.StringIO()
    long = "x" * 300
    output.emit(["ts", "note"], [[dt.datetime(2026, 1, 1, tzinfo=dt.UTC), long]], fmt, BERLIN, out)
    text = out.getvalue()
    if fmt == "json":
        assert json.loads(text) == [{"ts": "2026-01-01 01:00:00+01:00", "note": long}]
    elif fmt == "csv":
        assert text.splitlines() == ["ts,note", f"2026-01-01 01:00:00+01:00,{long}"]
    else:
        assert "…" not in text and text.count("x") == 300  # wrapped, never cut


def test_a_pipe_gets_csv_and_a_terminal_a_table() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert output.choose(None, io.StringIO()) == "csv"
    assert output.choose(None, Tty()) == "table"
    assert output.choose("json", Tty()) == "json"
    assert output.did_you_mean("gh.soill", ["gh.soil", "gh.air"]) == "; did you mean gh.soil?"


def _kaiser(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, input=stdin, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                                                         "HOME": str(cwd)})


def test_init_writes_a_deployment_that_lints_clean_and_passes_its_test(tmp_path: Path) -> None:
    assert cmd_init(argparse.Namespace(dir=str(tmp_path / "gh"))) == 0
    gh = tmp_path / "gh"
    lint = _kaiser("lint", "rules", "--strict", cwd=gh)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    test = _kaiser("test", "rules", cwd=gh)
    assert test.returncode == 0 and "1 passed, 0 failed" in test.stdout, test.stdout + test.stderr
    assert cmd_init(argparse.Namespace(dir=str(gh))) == 1  # never overwrites


def test_unknown_refs_get_did_you_mean_and_exit_1(tmp_path: Path) -> None:
    cmd_init(argparse.Namespace(dir=str(tmp_path)))
    r = _kaiser("history", "house.air_tmp", cwd=tmp_path)
    assert r.returncode == 1 and "unknown sensor 'house.air_tmp'; did you mean house.air_temp" in r.stderr
    r = _kaiser("why", "house.fna", cwd=tmp_path)
    assert r.returncode == 1 and "did you mean house.fan" in r.stderr
    r = _kaiser("command", "house.fan", "on", "--for", "10m", cwd=tmp_path)  # no server: a clear error
    assert r.returncode == 1 and "Traceback" not in r.stderr


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    if shutil.which("head") is None:
        pytest.skip("no head")
    cmd_init(argparse.Namespace(dir=str(tmp_path)))
    script = f"{sys.executable} -m engine query --format csv 'SELECT * FROM range(200000)' | head -1"
    r = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)})
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr


def test_json_logs_are_one_object_per_line() -> None:
    stream = io.StringIO()
    logs.setup("json", stream)
    try:
        assert os.environ["KAISER_LOG_FORMAT"] == "json"  # the store's process logs to the same stream alike
        logging.getLogger("kaiser").warning("EMERGENCY STOP %s by %s: %s", "all", "local", "two\nlines")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("kaiser").exception("failed")
    finally:
        logs.setup("text")
    lines = stream.getvalue().splitlines()
    first, second = (json.loads(x) for x in lines)
    assert first["level"] == "warning" and first["message"] == "EMERGENCY STOP all by local: two\nlines"
    assert first["ts"].endswith("Z") and "ValueError: boom" in second["exc"]


ALERTS = ROOT / "docs" / "monitoring" / "kaiser-alerts.yml"


def test_alert_rules_pass_promtool_or_parse() -> None:
    from ruamel.yaml import YAML

    if shutil.which("promtool"):
        r = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
    doc = YAML(typ="safe").load(ALERTS.read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert len(rules) >= 10 and all({"alert", "expr", "labels", "annotations"} <= set(r) for r in rules)
    # every kaiser_ series an alert names is one /metrics exports
    import re

    from engine import metrics

    source = Path(metrics.__file__).read_text()
    for r in rules:
        for name in re.findall(r"kaiser_[a-z_]+", r["expr"]):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert f'"{base[len("kaiser_"):]}"' in source, f"{r['alert']}: {name} is not exported"


def test_the_grafana_dashboard_is_json_with_kaiser_queries() -> None:
    dash = json.loads((ROOT / "docs" / "monitoring" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert any("kaiser_device_online" in e for e in exprs) and any("kaiser_emergency_stop_active" in e for e in exprs)


def test_websockets_still_has_what_the_post_parser_uses() -> None:
    """engine/adapters/rest.py reads POST on the WebSocket port through websockets'
    internals: fail loudly here when a release moves them."""
    from websockets.http11 import parse_headers, parse_line
    from websockets.server import ServerProtocol
    from websockets.streams import StreamReader

    from engine.adapters.rest import HttpRequest, _parse_request

    assert callable(parse_headers) and callable(parse_line)
    assert hasattr(ServerProtocol(), "parser") and hasattr(StreamReader, "read_exact")
    reader = StreamReader()
    reader.feed_data(b'POST /api/v1/reset HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}')
    gen = _parse_request(reader.read_line, reader.read_exact)
    with pytest.raises(StopIteration) as done:
        next(gen)
    req = done.value.value
    assert isinstance(req, HttpRequest) and (req.method, req.path, req.body) == ("POST", "/api/v1/reset", b"{}")
