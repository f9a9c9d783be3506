"""Pull mode without a server: the policy (engine/gitops.py), the [gitops] settings,
the git command line on real repositories (engine/adapters/git.py), the checks of
a checkout (engine/puller.py), history files and `kaiser plan --rev/--history`
(engine/history.py, engine/commands.py), and `kaiser status`'s text."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from engine import history
from engine.adapters import git
from engine.adapters.query import QueryResult
from engine.commands import cmd_plan, status_lines
from engine.config.settings import parse_settings
from engine.errors import ConfigError
from engine.gitops import (
    MAX_BACKOFF,
    MAX_REFUSED,
    Check,
    Commit,
    Gate,
    PullState,
    Refusal,
    Step,
    backoff,
    redact,
    verdict,
)
from engine.model import Reading
from engine.puller import check, state_dir

POLICY = "kaiser 0.1.0, require_tests=true"
A, B, C = "a" * 40, "b" * 40, "c" * 40


def refusal(sha: str, policy: str = POLICY, at: float = 100.0) -> Refusal:
    return Refusal(Commit(sha, "Alice <a@x>", 1.0, "subject"), at, Gate.TESTS, "1 of 1 rule test failed",
                   ("test failed: x",), policy)


# --------------------------------------------------------------------------
# the policy


def test_a_new_head_is_deployed_the_running_one_is_left_alone() -> None:
    s = PullState()
    assert s.step(A, POLICY) is Step.DEPLOY  # nothing runs yet
    s.applied(Commit(A), 10.0)
    assert s.step(A, POLICY) is Step.IDLE
    assert s.step(B, POLICY) is Step.DEPLOY


def test_a_refused_commit_is_not_tried_again_until_a_newer_one_arrives() -> None:
    s = PullState()
    s.applied(Commit(A), 10.0)
    s.refuse(refusal(B))
    assert s.step(B, POLICY) is Step.REFUSED
    assert s.step(C, POLICY) is Step.DEPLOY
    assert s.refused_total == 1 and s.last_refused is not None and s.last_refused.commit.sha == B


def test_a_force_push_back_to_a_commit_that_ran_before_is_deployed_again() -> None:
    s = PullState()
    s.applied(Commit(A), 10.0)
    s.applied(Commit(B), 20.0)
    assert s.step(A, POLICY) is Step.DEPLOY


def test_a_refusal_judged_by_another_kaiser_or_require_tests_is_checked_afresh() -> None:
    s = PullState()
    s.refuse(refusal(B, policy="kaiser 0.0.9, require_tests=true"))
    assert s.step(B, POLICY) is Step.DEPLOY


def test_refusals_are_bounded_oldest_forgotten_first() -> None:
    s = PullState()
    for i in range(MAX_REFUSED + 5):
        s.refuse(refusal(f"{i:040x}"))
    assert len(s.refused) == MAX_REFUSED and f"{0:040x}" not in s.refused
    assert s.refused_total == MAX_REFUSED + 5


def test_fetch_failures_back_off_up_to_a_limit_and_a_success_resets() -> None:
    s = PullState()
    assert s.next_fetch(30.0) is None  # never fetched: now
    assert s.fetch_failed("no route to host", 100.0) is True
    assert s.fetch_failed("no route to host", 160.0) is False  # the same error: no new log line
    assert s.next_fetch(30.0) == 160.0 + 120.0
    assert [backoff(n, 30.0) for n in range(4)] == [30.0, 60.0, 120.0, 240.0]
    assert backoff(50, 30.0) == MAX_BACKOFF
    assert backoff(50, 3600.0) == 3600.0  # never faster than the interval
    s.fetched(B, 500.0)
    assert s.failures == 0 and s.last_error == "" and s.next_fetch(30.0) == 530.0 and s.head == B


def test_verdict_lint_errors_then_failing_tests_refuse() -> None:
    assert verdict(Check(tests=3), True) is None
    gate, summary, findings = verdict(Check(errors=("rules/a.yaml:3:5: K401 error: x",)), True) or (None, "", ())
    assert gate is Gate.LINT and summary == "1 lint error" and findings == ("rules/a.yaml:3:5: K401 error: x",)
    failing = Check(tests=4, failed=("fan when hot",), report="FAIL  fan when hot\n    - at 10s command ...\n")
    gate, summary, findings = verdict(failing, True) or (None, "", ())
    assert gate is Gate.TESTS and summary == "1 of 4 rule tests failed"
    assert findings[0] == "test failed: fan when hot" and "FAIL  fan when hot" in findings
    assert verdict(failing, False) is None  # require_tests = false
    gate, summary, _ = verdict(Check(problem="it has no folder 'rules'", gate=Gate.CHECKOUT), True) or (None, "", ())
    assert gate is Gate.CHECKOUT and "no folder" in summary


def test_the_state_survives_a_restart_and_garbage_is_ignored() -> None:
    s = PullState()
    s.applied(Commit(A, "Alice <a@x>", 5.0, "first", "first\n\nbody"), 10.0)
    s.refuse(refusal(B))
    back = PullState.from_json(s.to_json())
    assert back.running == s.running and back.running_since == 10.0
    assert back.refused == s.refused and back.last_refused == s.last_refused
    assert back.step(B, POLICY) is Step.REFUSED
    junks: list[object] = [None, [], {"version": 99}, {"version": 1, "running": {"sha": 3}, "refused": [{"at": "x"}, 5]}]
    for junk in junks:
        assert PullState.from_json(junk).running is None


def test_credentials_in_a_url_never_show() -> None:
    assert redact("fatal: https://bot:ghp_secret@github.com/o/r.git not found") == \
        "fatal: https://***@github.com/o/r.git not found"
    assert redact("git@github.com:o/r.git") == "git@github.com:o/r.git"


# --------------------------------------------------------------------------
# settings


def test_gitops_settings_defaults_and_paths(tmp_path: Path) -> None:
    s = parse_settings("", "kaiser.toml", base=tmp_path)
    assert not s.gitops.enabled and s.gitops.branch == "main" and s.gitops.path == "rules"
    assert s.gitops.interval == 30.0 and s.gitops.require_tests is True
    s = parse_settings('[gitops]\nrepo = "../rules.git"\ninterval = "5s"\nrequire_tests = false\n',
                       "kaiser.toml", base=tmp_path)
    assert s.gitops.enabled and s.gitops.repo == str(tmp_path / "../rules.git")
    assert s.gitops.interval == 5.0 and s.gitops.require_tests is False
    for url in ("git@github.com:greenhouse/rules.git", "https://github.com/greenhouse/rules.git"):
        assert parse_settings(f'[gitops]\nrepo = "{url}"\n', "kaiser.toml", base=tmp_path).gitops.repo == url


def test_bad_gitops_settings_are_reported_with_their_lines(tmp_path: Path) -> None:
    text = ('[gitops]\nrepo = "x.git"\nbranch = "a..b"\npath = "../elsewhere"\n'
            'interval = "0s"\nrequire_tests = "yes"\nbrnach = "main"\n')
    with pytest.raises(ConfigError) as e:
        parse_settings(text, "kaiser.toml", base=tmp_path)
    found = {(d.pos.line, d.code) for d in e.value.diagnostics}
    assert found == {(3, "K804"), (4, "K804"), (5, "K804"), (6, "K803"), (7, "K802")}
    assert "did you mean 'branch'" in " ".join(d.text() for d in e.value.diagnostics)


def test_the_state_directory_is_beside_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert state_dir(str(tmp_path / "kaiser.duckdb"), "god") == tmp_path / "kaiser.gitops"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert state_dir(":memory:", "god") == tmp_path / "state" / "kaiser" / "god.gitops"


# --------------------------------------------------------------------------
# git, for real


def sh(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "Bob", "GIT_AUTHOR_EMAIL": "bob@example.org",
           "GIT_COMMITTER_NAME": "Bob", "GIT_COMMITTER_EMAIL": "bob@example.org"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def commit_file(work: Path, name: str, text: str, message: str) -> str:
    (work / name).parent.mkdir(parents=True, exist_ok=True)
    (work / name).write_text(text)
    sh(work, "add", "-A")
    sh(work, "commit", "--quiet", "-m", message)
    return sh(work, "rev-parse", "HEAD")


@pytest.fixture
def origin(tmp_path: Path) -> tuple[Path, Path]:
    bare, work = tmp_path / "origin.git", tmp_path / "work"
    sh(tmp_path, "init", "--quiet", "--bare", "--initial-branch=main", str(bare))
    sh(tmp_path, "clone", "--quiet", str(bare), str(work))
    sh(work, "checkout", "--quiet", "-B", "main")
    return bare, work


def test_the_mirror_follows_a_branch_force_pushes_included(origin: tuple[Path, Path], tmp_path: Path) -> None:
    bare, work = origin
    first = commit_file(work, "rules/a.yaml", "rules: []\n", "first")
    sh(work, "push", "--quiet", "origin", "HEAD:main")
    mirror = git.Mirror(tmp_path / "state" / "repo.git", tmp_path / "state" / "worktrees", str(bare), "main")

    async def scenario() -> None:
        await mirror.ensure()
        await mirror.ensure()  # idempotent
        assert await mirror.fetch() == first
        second = commit_file(work, "rules/a.yaml", "rules: [] # two\n", "second\n\nwith a body")
        sh(work, "push", "--quiet", "origin", "HEAD:main")
        assert await mirror.fetch() == second
        info = await mirror.commit(second)
        assert info.author == "Bob <bob@example.org>" and info.subject == "second"
        assert info.message == "second\n\nwith a body" and info.ts > 0
        dest = mirror.worktrees / info.short
        await mirror.checkout(second, dest)
        assert (dest / "rules" / "a.yaml").read_text() == "rules: [] # two\n"
        await mirror.checkout(second, dest)  # a leftover is replaced
        await mirror.remove(dest)
        assert not dest.exists()
        sh(work, "reset", "--quiet", "--hard", first)
        sh(work, "push", "--quiet", "--force", "origin", "HEAD:main")
        assert await mirror.fetch() == first
        gone = git.Mirror(mirror.git_dir, mirror.worktrees, str(tmp_path / "missing.git"), "main")
        await gone.ensure()  # points the clone elsewhere
        with pytest.raises(git.GitError, match="git fetch"):
            await gone.fetch()
        with pytest.raises(git.GitError):
            await git.Mirror(mirror.git_dir, mirror.worktrees, str(bare), "no-such-branch").fetch()

    asyncio.run(scenario())


def test_a_revision_is_exported_without_touching_the_repository(origin: tuple[Path, Path], tmp_path: Path) -> None:
    _, work = origin
    first = commit_file(work, "deploy/rules/a.yaml", "one\n", "first")
    commit_file(work, "deploy/rules/a.yaml", "two\n", "second")
    top, prefix = git.repo_of(work / "deploy" / "rules")
    assert top == work.resolve() and prefix == "deploy/rules"
    assert git.resolve("HEAD~1", cwd=top) == first
    out = git.export(first, prefix, tmp_path / "out", cwd=top)
    assert out == tmp_path / "out" / "deploy" / "rules" and (out / "a.yaml").read_text() == "one\n"
    assert sh(work, "status", "--porcelain") == ""
    with pytest.raises(git.GitError, match="unknown revision"):
        git.resolve("no-such-branch", cwd=top)
    with pytest.raises(git.GitError):
        git.resolve("--output=x", cwd=top)


# --------------------------------------------------------------------------
# the checks of a checkout (what the child process runs)


DEVICES = """
devices:
  north:
    esp_id: ESP_00A1B2
    sensors:
      air_temp: {gpio: 4, type: DS18B20, onewire_address: 28FF641E8D3C0C79}
    actuators:
      fan: {gpio: 5, type: relay}
"""
RULES = """
rules:
  - name: fan-when-hot
    when: {sensor: north.air_temp, above: THRESHOLD}
    then:
      - {actuator: north.fan, set: on}
"""
TESTS = """
tests:
  - name: fan when hot
    start: "2026-06-01T10:00:00+00:00"
    steps:
      - {at: 0s, readings: {north.air_temp: 20}}
      - {at: 10s, readings: {north.air_temp: 29}}
    expect:
      - {at: 10s, command: {actuator: north.fan, set: on}}
"""


def rules_dir(root: Path, threshold: str = "28", tests: str = TESTS) -> Path:
    d = root / "rules"
    d.mkdir(parents=True, exist_ok=True)
    (d / "devices.yaml").write_text(DEVICES)
    (d / "rules.yaml").write_text(RULES.replace("THRESHOLD", threshold))
    (d / "tests.yaml").write_text(tests)
    return d


def test_check_runs_lint_and_the_rule_tests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rules_dir(tmp_path / "good")
    assert check("good/rules", "UTC") == {"errors": [], "warnings": [], "tests": 1, "failed": [], "report": ""}
    rules_dir(tmp_path / "failing", threshold="35")
    out = check("failing/rules", "UTC")
    assert out["failed"] == ["fan when hot"] and "expected, did not happen" in out["report"]
    assert "0 passed, 1 failed" in out["report"]
    rules_dir(tmp_path / "broken", threshold="hot")
    out = check("broken/rules", "UTC")
    assert out["errors"] and out["errors"][0].startswith("broken/rules/rules.yaml:4:") and out["tests"] == 0


# --------------------------------------------------------------------------
# history files and kaiser plan


def test_pages_give_every_row_once_in_stored_order_even_when_time_stamps_tie() -> None:
    import re

    # 23 rows, runs of up to 4 sharing a time stamp (stored out of value order), pages of 3
    stamps = [1, 1, 1, 1, 2, 3, 3, 3, 4, 5, 5, 6, 7, 7, 7, 8, 9, 9, 9, 9, 10, 11, 11]
    data = [(us, rid, "s", float(100 - rid)) for rid, us in enumerate(stamps)]
    calls: list[str] = []

    def query(sql: str) -> QueryResult:
        calls.append(sql)
        m = re.search(r"epoch_us\(ts\) > (\d+) OR \(epoch_us\(ts\) = \d+ AND rowid > (\d+)\)", sql)
        us, rid = (int(m.group(1)), int(m.group(2))) if m else (-1, -1)
        limit = int(sql.rsplit("LIMIT ", 1)[1])
        rows = [r for r in data if (r[0], r[1]) > (us, rid)][:limit]
        return QueryResult(["us", "rid", "sensor", "value"], rows, False)

    got = [r for page in history.pages(query, history._READINGS, 0.0, 1e9, page=3) for r in page]
    assert got == data and len(calls) == 8
    assert "TRUE" in calls[0]


def test_routine_commands_are_not_compared() -> None:
    assert history.is_routine("lease", "renew", 1.0)
    assert not history.is_routine("lease", "for: ended", 0.0)  # the end of a for: is a decision
    assert history.is_routine("safety", "emergency stop: pH", 0.0)
    assert not history.is_routine("safety", "max_runtime", 0.0)
    assert not history.is_routine("rule", "emergency stop: x", 0.0)


def test_a_history_file_round_trips(tmp_path: Path) -> None:
    h = history.History(1000.0, 2000.0, [Reading("north.air_temp", 21.5, 1000.123456, "good", "°C", True)],
                        [history.Sent(1001.5, "north.fan", 1.0, "rule", "hot", "fan-when-hot", 600.0),
                         history.Sent(1002.0, "north.fan", 1.0, "rule", "", "x", None, "blocked")], "test")
    path = tmp_path / "h.parquet"
    history.write(h, path, {"kaiser.id": "god"})
    back = history.read(path)
    assert (back.since, back.until) == (1000.0, 2000.0) and back.readings == h.readings
    assert back.commands == h.commands and [c.outcome for c in back.sent] == ["sent"]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(history.HistoryError, match="not a history file"):
        history.read(tmp_path / "other.parquet")
    with pytest.raises(history.HistoryError, match="cannot read"):
        history.read(tmp_path / "missing.parquet")


def _toml(tmp_path: Path, rules: Path) -> str:
    toml = tmp_path / "kaiser.toml"
    toml.write_text(f'[kaiser]\nrules = "{rules}"\n[store]\npath = "{tmp_path / "none.duckdb"}"\n'
                    '[websocket]\nlisten = "127.0.0.1:1"\n')
    return str(toml)


def _production(tmp_path: Path) -> Path:
    """A history where the fan went on at 29 °C, with a lease renewal and an emergency OFF."""
    t0 = 1_780_000_000.0
    h = history.History(t0, t0 + 300, [Reading("north.air_temp", 20.0, t0), Reading("north.air_temp", 29.0, t0 + 60)],
                        [history.Sent(t0 + 60, "north.fan", 1.0, "rule", "", "fan-when-hot"),
                         history.Sent(t0 + 90, "north.fan", 1.0, "lease", "renewal"),
                         history.Sent(t0 + 120, "north.fan", 0.0, "safety", "emergency stop: test")], "production")
    path = tmp_path / "prod.parquet"
    history.write(h, path)
    return path


def test_plan_history_compares_with_what_production_sent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _production(tmp_path)
    same = rules_dir(tmp_path / "same")
    assert cmd_plan(argparse.Namespace(config=_toml(tmp_path, same), path=None, since="24h", rev=None,
                                       history=str(path))) == 0
    out = capsys.readouterr().out
    assert "no difference" in out, out  # the renewal and the emergency OFF are not differences
    hotter = rules_dir(tmp_path / "hotter", threshold="30")
    assert cmd_plan(argparse.Namespace(config=_toml(tmp_path, same), path=str(hotter), since="24h", rev=None,
                                       history=str(path))) == 0
    out = capsys.readouterr().out
    assert "- " in out and "north.fan on  (was sent, would not be)" in out and "0 new, 1 gone" in out


def test_plan_rev_takes_the_rules_at_a_git_revision(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _production(tmp_path)
    work = tmp_path / "repo"
    work.mkdir()
    sh(work, "init", "--quiet")
    rules = rules_dir(work)
    sh(work, "add", "-A")
    sh(work, "commit", "--quiet", "-m", "28")
    rules_dir(work, threshold="30")
    sh(work, "commit", "--quiet", "-am", "30")
    ns = argparse.Namespace(config=_toml(tmp_path, rules), path=None, since="24h", rev="HEAD", history=str(path))
    assert cmd_plan(ns) == 0
    assert "0 new, 1 gone" in capsys.readouterr().out
    ns.rev = "HEAD~1"
    assert cmd_plan(ns) == 0
    out = capsys.readouterr().out
    assert "no difference" in out and "HEAD~1 (" in out
    ns.rev = "nope"
    assert cmd_plan(ns) == 1
    assert "unknown revision" in capsys.readouterr().err


# --------------------------------------------------------------------------
# kaiser status


def test_status_says_what_runs_what_was_refused_and_what_is_latched() -> None:
    health = {
        "status": "ok", "kaiser_id": "god", "version": "0.1.0", "uptime_s": 3700,
        "mqtt": {"connected": True, "url": "mqtt://127.0.0.1:1883"}, "store": {"ok": True},
        "rules_version": "abc123def456", "git_commit": A, "rules_dir": "/srv/kaiser.gitops/worktrees/aaaa/rules",
        "last_reload": {"version": "abc123def456", "ok": True, "at": 1000.0, "errors": [], "commit": "aaaaaaaaaaaa"},
        "devices": {"north": "online", "south": "offline"}, "boards": {"unknown": 0},
        "latches": [{"target": "south", "reason": "pH", "who": "shared (alice)", "since": 1100.0}],
        "gitops": {"repo": "https://***@github.com/g/r.git", "branch": "main", "path": "rules", "interval_s": 30.0,
                   "require_tests": True, "running": {"sha": A, "short": A[:12], "author": "Alice", "subject": "hot"},
                   "running_since": 1000.0, "head": B, "last_fetch": 1190.0, "last_error": "", "failures": 0,
                   "next_fetch_in_s": 20.0,
                   "last_refused": {"sha": B, "short": B[:12], "commit": {"author": "Bob", "subject": "oops"},
                                    "at": 1150.0, "gate": "lint", "summary": "1 lint error",
                                    "findings": ["rules/a.yaml:3:5: K401 error: unknown sensor"]}},
    }
    text = "\n".join(status_lines(health, "UTC", 1200.0))
    assert "kaiser 0.1.0 (god): ok, up 61 min; MQTT connected" in text
    assert f"commit {A[:12]}" in text and "loaded version abc123def456 at 1970-01-01 00:16:40 (3 min ago)" in text
    assert f"refused:   {B[:12]} by Bob: oops" in text and "(lint: 1 lint error)" in text
    assert "rules/a.yaml:3:5: K401" in text and "north online, south offline" in text
    assert "EMERGENCY STOP south by shared (alice)" in text
    del health["gitops"]
    health["latches"] = []
    text = "\n".join(status_lines(health, "Europe/Berlin", 1200.0))
    assert "pull mode" not in text and "no emergency stop" in text and "01:16:40" in text


def test_sighup_fetches_in_pull_mode_and_reloads_otherwise() -> None:
    from types import SimpleNamespace

    from engine.commands import _hangup

    woken: list[bool] = []
    reloaded: list[bool] = []

    async def reload() -> bool:
        reloaded.append(True)
        return True

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        _hangup(SimpleNamespace(gitops=SimpleNamespace(wake=lambda: woken.append(True)), reload=reload),  # type: ignore[arg-type]
                loop)
        _hangup(SimpleNamespace(gitops=None, reload=reload), loop)  # type: ignore[arg-type]
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert woken == [True] and reloaded == [True]
