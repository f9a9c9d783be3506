"""Pull mode against a real git remote (a bare repository on disk), a real broker
and a real DuckDB file: good commits are applied within one interval, commits
with a failing rule test or a lint error are refused once while the old rules
keep running, a force-push back to an older commit is applied, an unreachable
remote never stops the server, and a restart runs the same commit."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from engine.app import Server
from engine.config.settings import GitopsSettings, Settings

from .conftest import DEVICES, Board, make_settings

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

NORTH, SOUTH = "ESP_00A1B2", "ESP_00C3D4"
INTERVAL = 0.5  # seconds between fetches in these tests

RULES = """
rules:
  - name: cool-south-when-north-hot
    when: {{sensor: north.air_temp, above: {threshold}}}
    then:
      - {{actuator: south.fan, set: on}}
"""

TEST = """
tests:
  - name: fan when north is hot
    start: "2026-06-01T10:00:00+00:00"
    steps:
      - {{at: 0s, readings: {{north.air_temp: 20}}}}
      - {{at: 10s, readings: {{north.air_temp: {hot}}}}}
    expect:
      - {{at: 10s, command: {{actuator: south.fan, set: on}}}}
"""


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "Alice Gardener", "GIT_AUTHOR_EMAIL": "alice@example.org",
           "GIT_COMMITTER_NAME": "Alice Gardener", "GIT_COMMITTER_EMAIL": "alice@example.org"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


class Remote:
    """A bare repository (the remote Kaiser follows) and a clone to push from."""

    def __init__(self, root: Path) -> None:
        self.bare = root / "remote.git"
        self.work = root / "work"
        git(root, "init", "--quiet", "--bare", "--initial-branch=main", str(self.bare))
        git(root, "clone", "--quiet", str(self.bare), str(self.work))
        git(self.work, "checkout", "--quiet", "-B", "main")

    def push(self, message: str, *, threshold: float, hot: float, rules: str | None = None) -> str:
        d = self.work / "rules"
        (d / "tests").mkdir(parents=True, exist_ok=True)
        (d / "devices.yaml").write_text(DEVICES)
        (d / "rules.yaml").write_text(rules if rules is not None else RULES.format(threshold=threshold))
        (d / "tests" / "fan_test.yaml").write_text(TEST.format(hot=hot))
        git(self.work, "add", "-A")
        git(self.work, "commit", "--quiet", "--allow-empty", "-m", message)
        git(self.work, "push", "--quiet", "--force", "origin", "HEAD:main")
        return git(self.work, "rev-parse", "HEAD")

    def force_push(self, sha: str) -> None:
        git(self.work, "reset", "--quiet", "--hard", sha)
        git(self.work, "push", "--quiet", "--force", "origin", "HEAD:main")


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    return Remote(tmp_path)


@pytest.fixture
def gitops_settings(clean_retained: None, kaiser_id: str, broker_url: str, tmp_path: Path,
                    remote: Remote) -> Settings:
    s = make_settings(kaiser_id, broker_url, tmp_path / "no-local-rules", tmp_path / "kaiser.duckdb")
    return replace(s, gitops=GitopsSettings(repo=str(remote.bare), branch="main", path="rules",
                                            interval=INTERVAL, require_tests=True))


@pytest.fixture
async def gitops_server(gitops_settings: Settings, remote: Remote) -> AsyncIterator[Server]:
    remote.push("fan above 28", threshold=28, hot=29)
    s = Server(gitops_settings)
    await s.start()
    yield s
    await s.stop()


async def until(pred: Callable[[], bool], timeout: float = 30.0) -> float:
    """Seconds until ``pred()`` holds (fails the test after ``timeout``)."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


def running(server: Server) -> str | None:
    assert server.gitops is not None
    r = server.gitops.state.running
    return r.sha if r else None


def refused(server: Server) -> str | None:
    assert server.gitops is not None
    r = server.gitops.state.last_refused
    return r.commit.sha if r else None


async def rows(server: Server, sql: str) -> list[tuple[Any, ...]]:
    assert server.store is not None
    await asyncio.to_thread(server.store.flush)
    return server.store.query(sql).rows


async def fan_on_for(board: Board, celsius: float, timeout: float = 3.0) -> bool:
    """Does a reading of ``celsius`` in the north make the south fan go on?"""
    board.seen.clear()
    while not board.inbox.empty():
        board.inbox.get_nowait()
    await board.reading(NORTH, 4, "ds18b20", 10 * 16)  # cool first: the next one is an edge
    await asyncio.sleep(0.2)
    await board.reading(NORTH, 4, "ds18b20", celsius * 16)
    try:
        await board.expect(lambda t, p: t.endswith(f"{SOUTH}/actuator/5/command") and p.get("command") == "ON",
                           timeout)
        return True
    except TimeoutError:
        return False


async def test_pull_mode_applies_good_commits_refuses_bad_ones_and_rides_out_a_dead_remote(
        gitops_server: Server, remote: Remote, board: Board, tmp_path: Path) -> None:
    server = gitops_server
    assert server.gitops is not None and server.hub is not None
    first = git(remote.work, "rev-parse", "HEAD")
    # started on the branch head: there were no local rules
    assert running(server) == first and server.health()["git_commit"] == first
    await board.heartbeat(SOUTH)
    await board.heartbeat(NORTH)
    assert await fan_on_for(board, 29)

    async with connect(server.hub.url) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topic": "system"}))
        await asyncio.wait_for(ws.recv(), 15)

        # a good commit is applied within one interval (plus the time its checks take)
        good = remote.push("fan only above 30", threshold=30, hot=31)
        pushed = time.monotonic()
        await until(lambda: running(server) == good)
        took = time.monotonic() - pushed
        # one interval at most until the fetch, then the checks (a child process: ~1 s) and the reload
        print(f"applied {took:.2f} s after the push")
        assert took < INTERVAL + 8.0, took
        assert not await fan_on_for(board, 29, timeout=1.0)  # the new threshold runs
        ev = await _next(ws, lambda e: e["data"].get("kind") == "reload" and e["data"]["data"].get("commit") == good)
        assert "running" in ev["data"]["message"]

        # a commit whose rule test fails is refused; the old rules keep running
        failing = remote.push("fan only above 35 (forgot the test)", threshold=35, hot=31)
        await until(lambda: refused(server) == failing)
        assert running(server) == good
        ev = await _next(ws, lambda e: e["data"].get("data", {}).get("commit") == failing)
        assert "refused (tests)" in ev["data"]["message"] and ev["data"]["severity"] == "warning"
        assert any("fan when north is hot" in f for f in ev["data"]["data"]["errors"])
        assert await fan_on_for(board, 31)

        # a commit with a lint error is refused
        broken = remote.push("typo", threshold=30, hot=31,
                             rules=RULES.format(threshold=30).replace("north.air_temp", "north.air_tmp"))
        await until(lambda: refused(server) == broken)
        assert running(server) == good
        ev = await _next(ws, lambda e: e["data"].get("data", {}).get("commit") == broken)
        assert "refused (lint)" in ev["data"]["message"]
        assert any(f.startswith("rules/rules.yaml:") and "north.air_tmp" in f for f in ev["data"]["data"]["errors"])

    # refused once, with commit, author and message; not retried while it is the head
    await asyncio.sleep(4 * INTERVAL)
    recorded = await rows(server, "SELECT git_commit, ok, author, message, errors FROM config_versions "
                                  "ORDER BY loaded_at")
    by_commit = {r[0]: r for r in recorded}
    assert [r[0] for r in recorded].count(broken) == 1 and [r[0] for r in recorded].count(failing) == 1
    assert by_commit[failing][1] is False and by_commit[broken][1] is False and by_commit[good][1] is True
    assert by_commit[failing][2] == "Alice Gardener <alice@example.org>"
    assert by_commit[failing][3] == "fan only above 35 (forgot the test)"
    assert "north.air_tmp" in by_commit[broken][4]

    # a force-push back to an older commit is applied: it passed before
    remote.force_push(first)
    await until(lambda: running(server) == first)
    assert await fan_on_for(board, 29)

    # visibility: /health, /metrics, kaiser status
    health = server.health()["gitops"]
    assert health["running"]["sha"] == first and health["last_refused"]["sha"] == broken
    assert health["last_fetch"] and health["failures"] == 0
    metrics = server.prometheus()
    assert "kaiser_gitops_refused_total 2" in metrics
    assert f'kaiser_gitops_running_info{{commit="{first}",branch="main"}} 1' in metrics
    assert "kaiser_gitops_last_sync_timestamp 1" in metrics  # a Unix time
    status = await _cli(server, tmp_path, "cmd_status", format="table")
    assert status[0] == 0 and first[:12] in status[1] and broken[:12] in status[1] and "lint" in status[1]

    # an unreachable remote: the server keeps serving, fetching backs off
    hidden = remote.bare.with_name("hidden.git")
    remote.bare.rename(hidden)
    await until(lambda: server.gitops is not None and server.gitops.state.failures >= 2)
    assert server.gitops.state.last_error and running(server) == first
    assert await fan_on_for(board, 29)
    assert server.health()["gitops"]["failures"] >= 2
    code, out = await _cli(server, tmp_path, "cmd_sync")
    assert code == 1 and "fetch failed" not in out  # the error text is git's, on stderr
    # back again: `kaiser sync` fetches at once, whatever the backoff says
    hidden.rename(remote.bare)
    code, out = await _cli(server, tmp_path, "cmd_sync")
    assert code == 0 and "up to date" in out, out
    assert server.gitops.state.failures == 0


async def _next(ws: Any, pred: Callable[[dict[str, Any]], bool], timeout: float = 15.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            ev = json.loads(await ws.recv())
            if ev.get("event_type") != "error" and isinstance(ev.get("data"), dict) and pred(ev):
                return ev


async def _cli(server: Server, tmp_path: Path, name: str, **extra: Any) -> tuple[int, str]:
    """Run a CLI command against the running server; (exit code, stdout + stderr)."""
    import contextlib
    import io

    from engine import commands

    assert server.hub is not None
    toml = tmp_path / "cli.toml"
    toml.write_text(f'[kaiser]\nid = "{server.kaiser_id}"\n[store]\npath = "{server.settings.store.path}"\n'
                    f'[websocket]\nlisten = "127.0.0.1:{server.hub.port}"\n')
    ns = argparse.Namespace(config=str(toml), **extra)
    out, err = io.StringIO(), io.StringIO()

    def call() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return int(getattr(commands, name)(ns))

    code = await asyncio.to_thread(call)
    return code, out.getvalue() + err.getvalue()


async def test_a_restart_runs_the_same_commit_and_refuses_nothing_twice(
        gitops_settings: Settings, remote: Remote) -> None:
    first = remote.push("fan above 28", threshold=28, hot=29)
    server = Server(gitops_settings)
    await server.start()
    try:
        bad = remote.push("fan above 35", threshold=35, hot=31)
        await until(lambda: refused(server) == bad)
    finally:
        await server.stop()
    again = Server(gitops_settings)
    await again.start()
    try:
        assert running(again) == first and again.health()["git_commit"] == first
        await asyncio.sleep(4 * INTERVAL)  # several fetches of the refused head
        assert running(again) == first
        assert (await rows(again, f"SELECT count(*) FROM config_versions WHERE git_commit = '{bad}'"))[0][0] == 1
    finally:
        await again.stop()


async def test_an_unreachable_remote_at_start_falls_back_to_the_local_rules(
        gitops_settings: Settings, rules_dir: Path, tmp_path: Path) -> None:
    settings = replace(gitops_settings, kaiser=replace(gitops_settings.kaiser, rules=rules_dir),
                       gitops=replace(gitops_settings.gitops, repo=str(tmp_path / "nowhere.git")))
    server = Server(settings)
    await server.start()
    try:
        assert server.gitops is not None and server.rules_dir == rules_dir
        await until(lambda: server.gitops is not None and server.gitops.state.failures >= 1)
        health = server.health()
        assert health["gitops"]["running"] is None and health["gitops"]["last_error"]
        assert server.hub is not None
        url = f"http://127.0.0.1:{server.hub.port}/metrics"

        def get() -> str:
            with urllib.request.urlopen(url, timeout=5) as r:
                return str(r.read().decode())

        assert "kaiser_gitops_last_sync_timestamp 0" in await asyncio.to_thread(get)
    finally:
        await server.stop()


async def test_no_rules_anywhere_refuses_to_start(gitops_settings: Settings, tmp_path: Path) -> None:
    from engine.errors import ConfigError

    settings = replace(gitops_settings, gitops=replace(gitops_settings.gitops, repo=str(tmp_path / "nowhere.git")))
    server = Server(settings)
    with pytest.raises(ConfigError, match="no rules to start with"):
        await server.start()
    await server.stop()


async def test_export_history_through_the_running_server_and_plan_it_in_ci(
        server: Server, board: Board, tmp_path: Path, rules_dir: Path) -> None:
    """What CI does: the history of production as a file, replayed through the
    rules of a pull request; only real differences are listed."""
    await board.heartbeat(SOUTH)
    for c in (20, 30, 21, 31):
        await board.reading(NORTH, 4, "ds18b20", c * 16)
        await asyncio.sleep(0.15)
    await board.expect(lambda t, p: t.endswith(f"{SOUTH}/actuator/5/command"))
    await asyncio.sleep(0.3)
    file = tmp_path / "prod.parquet"
    code, out = await _cli(server, tmp_path, "cmd_export_history", since="1h", file=str(file))
    assert code == 0 and "4 readings" in out, out
    from engine import history

    h = history.read(file)
    assert [r.value for r in h.readings] == [20.0, 30.0, 21.0, 31.0]
    assert [c.actuator for c in h.sent] == ["south.fan", "south.fan"]
    # the same rules: no difference; a higher threshold: both fan commands gone
    code, out = await _cli(server, tmp_path, "cmd_plan", path=str(rules_dir), since="24h", rev=None,
                           history=str(file))
    assert code == 0 and "no difference" in out, out
    hotter = tmp_path / "hotter"
    hotter.mkdir()
    (hotter / "devices.yaml").write_text((rules_dir / "devices.yaml").read_text())
    (hotter / "rules.yaml").write_text(RULES.format(threshold=35))
    code, out = await _cli(server, tmp_path, "cmd_plan", path=str(hotter), since="24h", rev=None,
                           history=str(file))
    assert code == 0 and "0 new, 2 gone" in out, out
    # with the server stopped, the file is read directly
    await server.stop()
    again = tmp_path / "again.parquet"
    code, out = await _cli(server, tmp_path, "cmd_export_history", since="1h", file=str(again))
    assert code == 0 and len(history.read(again).readings) == 4, out
