"""Pull mode, the moving parts (docs/gitops.md): fetch the branch on the interval,
on SIGHUP and on ``kaiser sync``; check each new commit in a fresh worktree; hand
a commit that passes to the server's normal reload. The decisions are
engine/gitops.py's; git is engine/adapters/git.py.

The checks run in a child process (``python -m engine.puller check``): the same
``lint`` as ``kaiser lint`` and the same ``run_all`` as ``kaiser test``, but
compiling and running the tests never takes the server's GIL, memory or event
loop, and a crash in them refuses the commit instead of stopping the server.

Files, in the state directory (:func:`state_dir`): ``repo.git`` (the bare clone),
``worktrees/<commit>`` (the running commit and the one being checked) and
``state.json`` (running commit and refusals, so a restart runs the same commit
and refuses nothing twice).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Protocol

from engine import __version__
from engine.adapters.git import GitError, Mirror
from engine.config.settings import GitopsSettings
from engine.errors import ConfigError
from engine.gitops import (
    Check,
    Commit,
    Gate,
    PullState,
    Refusal,
    Step,
    backoff,
    commit_json,
    redact,
    refusal_json,
    verdict,
)

log = logging.getLogger("kaiser.gitops")

#: seconds the checks of one commit may take (lint + every rule test)
CHECK_TIMEOUT = 600.0
#: seconds ``kaiser sync`` waits for the answer before it says "still running"
SYNC_WAIT = 8.0


class Host(Protocol):
    """What the puller needs from engine.app.Server."""

    tz: str

    async def reload_from(self, rules_dir: Path, commit: Commit | None = None) -> bool: ...

    def refuse(self, rules_dir: Path, refusal: Refusal) -> None: ...


def state_dir(store_path: str, kaiser_id: str) -> Path:
    """Beside the store (``kaiser.duckdb`` -> ``kaiser.gitops/``); for a ``":memory:"``
    store ``$XDG_STATE_HOME/kaiser/ID.gitops`` (default ``~/.local/state/kaiser``)."""
    if store_path and store_path != ":memory:":
        return Path(store_path).with_suffix(".gitops")
    base = os.environ.get("XDG_STATE_HOME")
    return (Path(base) if base else Path.home() / ".local" / "state") / "kaiser" / f"{kaiser_id}.gitops"


class Puller:
    """Follows ``settings.branch`` of ``settings.repo`` for ``host`` (the server).

    ``await startup(local)`` says which rules folder to start with; ``run()`` is
    the task; ``sync()`` fetches now (``kaiser sync``, SIGHUP); ``health()`` and
    ``metrics()`` are for /health and /metrics."""

    def __init__(self, host: Host, settings: GitopsSettings, directory: Path, now: Any) -> None:
        self.host = host
        self.settings = settings
        self.dir = directory
        self.mirror = Mirror(directory / "repo.git", directory / "worktrees", settings.repo, settings.branch)
        self.state = PullState()
        self.policy = f"kaiser {__version__}, require_tests={str(settings.require_tests).lower()}"
        self._now = now
        self._wake = asyncio.Event()
        self._waiters: list[asyncio.Future[dict[str, Any]]] = []
        self._running_dir: Path | None = None  # the worktree the server runs from
        self._ensured = False  # the clone exists and points at settings.repo

    # ------------------------------------------------------------------ files
    @property
    def _state_file(self) -> Path:
        return self.dir / "state.json"

    def _load(self) -> None:
        try:
            self.state = PullState.from_json(json.loads(self._state_file.read_text("utf-8")))
        except (OSError, ValueError):
            self.state = PullState()

    def _save(self) -> None:
        """Write state.json atomically; a failure is logged, never raised."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".state-", dir=self.dir)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.state.to_json(), f, indent=1)
            os.replace(tmp, self._state_file)
        except OSError as exc:
            log.warning("cannot save the pull mode state in %s: %s", self.dir, exc)

    def _worktree(self, commit: Commit) -> Path:
        return self.mirror.worktrees / commit.short

    def _rules(self, worktree: Path) -> Path:
        return worktree / self.settings.path if self.settings.path not in ("", ".") else worktree

    # ------------------------------------------------------------------ start
    async def startup(self, local: Path) -> Path:
        """The rules folder to start with: the commit that ran last (its worktree),
        else the local rules folder when it exists, else the branch head if it
        passes its checks now. Raises ConfigError when there is none."""
        self._load()
        running = self.state.running
        if running is not None:
            rules = self._rules(self._worktree(running))
            if rules.is_dir():
                self._running_dir = self._worktree(running)
                log.info("pull mode: starting with commit %s (%s)", running.describe(), rules)
                return rules
            log.warning("pull mode: the worktree of commit %s is gone; fetching again", running.short)
            self.state.running = None
        if local.exists():
            log.info("pull mode: starting with the local rules %s until %s@%s is checked",
                     local, redact(self.settings.repo), self.settings.branch)
            return local
        result = await self._cycle(first=True)
        if self._running_dir is None:
            raise ConfigError(f"pull mode: no rules to start with: {result.get('message')}")
        return self._rules(self._running_dir)

    # ------------------------------------------------------------------ the task
    async def run(self) -> None:
        """Fetch on the interval (backing off after failures) or when woken; never
        raises (cancel it to stop)."""
        await self._cleanup()
        while True:
            due = self.state.next_fetch(self.settings.interval)
            delay = 0.0 if due is None else max(0.0, due - self._now())
            if delay > 0 and not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            waiters, self._waiters = self._waiters, []
            try:
                result = await self._cycle()
            except asyncio.CancelledError:
                for w in waiters:
                    w.cancel()
                raise
            except Exception as exc:  # a bug here must not end pull mode
                log.exception("pull mode: sync failed")
                self.state.fetch_failed(f"internal error: {exc}", self._now())
                result = {"ok": False, "outcome": "error", "message": f"internal error: {exc}"}
            for w in waiters:
                if not w.done():
                    w.set_result(result)

    async def sync(self, wait: float = SYNC_WAIT) -> dict[str, Any]:
        """Fetch now (``kaiser sync``); the outcome of that fetch, or "running" when
        it takes longer than ``wait`` seconds."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(fut), wait)
        except TimeoutError:
            return {"ok": True, "outcome": "running",
                    "message": "still checking; `kaiser status` tells how it ends"}

    def wake(self) -> None:
        """Fetch at the next chance (SIGHUP)."""
        self._wake.set()

    async def _cleanup(self) -> None:
        """Remove worktrees left by an earlier run (a check that was interrupted)."""
        if not self.mirror.worktrees.is_dir():
            return
        for d in self.mirror.worktrees.iterdir():
            if d.is_dir() and d != self._running_dir:
                await self.mirror.remove(d)

    # ------------------------------------------------------------------ one sync
    async def _cycle(self, first: bool = False) -> dict[str, Any]:
        """Fetch; deploy the head when it is new. Returns what ``kaiser sync`` prints."""
        now = self._now()
        try:
            if not self._ensured or self.state.failures:
                await self.mirror.ensure()
                self._ensured = True
            head = await self.mirror.fetch()
        except (GitError, OSError) as exc:
            message = redact(str(exc))
            if self.state.fetch_failed(message, now):
                log.warning("pull mode: fetch from %s failed (next try in %.0f s): %s", redact(self.settings.repo),
                            backoff(self.state.failures, self.settings.interval), message)
            return {"ok": False, "outcome": "fetch failed", "message": message, "failures": self.state.failures}
        if self.state.failures:
            log.info("pull mode: fetch from %s works again", redact(self.settings.repo))
        self.state.fetched(head, now)
        step = self.state.step(head, self.policy)
        if step is Step.IDLE:
            return {"ok": True, "outcome": "up to date", "commit": head}
        if step is Step.REFUSED:
            refusal = self.state.refused[head]
            return {"ok": False, "outcome": "refused", "message": refusal.text(), "commit": head,
                    "findings": list(refusal.findings)}
        return await self._deploy(head, first)

    async def _deploy(self, sha: str, first: bool) -> dict[str, Any]:
        try:
            commit = await self.mirror.commit(sha)
        except GitError as exc:
            commit = Commit(sha)
            log.warning("pull mode: no details of commit %s: %s", sha[:12], exc)
        log.info("pull mode: new commit %s on %s; checking it", commit.describe(), self.settings.branch)
        worktree = self._worktree(commit)
        rules = self._rules(worktree)
        try:
            await self.mirror.checkout(sha, worktree)
        except GitError as exc:  # the disk, not the commit: tried again at the next fetch
            message = f"cannot check out {commit.short}: {exc}"
            log.warning("pull mode: %s", message)
            await self.mirror.remove(worktree)
            return {"ok": False, "outcome": "checkout failed", "message": message, "commit": sha}
        if rules.is_dir():
            check = await self._check(worktree)
        else:
            check = Check(problem=f"it has no folder {self.settings.path!r}", gate=Gate.CHECKOUT)
        judged = verdict(check, self.settings.require_tests)
        if judged is None and check.failed:
            log.warning("pull mode: %d rule test(s) of %s fail; applied anyway (require_tests = false)",
                        len(check.failed), commit.short)
        if judged is None and not first:
            if await self.host.reload_from(rules, commit):
                return await self._applied(commit, worktree)
            # the server recorded why; remember the commit as refused
            judged = (Gate.RELOAD, "the reload refused it (see the log)", ())
        elif judged is None:
            return await self._applied(commit, worktree)
        gate, summary, findings = judged
        refusal = Refusal(commit, self._now(), gate, summary, findings, self.policy)
        self.state.refuse(refusal)
        self._save()
        if gate is not Gate.RELOAD:
            if first:  # nothing runs yet, and there is no store to record it in: the log says it
                log.error("%s:\n%s", refusal.text(), "\n".join(findings))
            else:
                self.host.refuse(rules, refusal)
        if worktree != self._running_dir:
            await self.mirror.remove(worktree)
        return {"ok": False, "outcome": "refused", "message": refusal.text(), "commit": sha,
                "findings": list(findings)}

    async def _applied(self, commit: Commit, worktree: Path) -> dict[str, Any]:
        old, self._running_dir = self._running_dir, worktree
        self.state.applied(commit, self._now())
        self._save()  # before the old worktree goes: a crash in between restarts on the new one
        log.info("pull mode: commit %s runs", commit.describe())
        if old is not None and old != worktree:
            await self.mirror.remove(old)
        return {"ok": True, "outcome": "applied", "commit": commit.sha, "message": f"commit {commit.describe()} runs"}

    async def _check(self, worktree: Path) -> Check:
        """``kaiser lint`` and ``kaiser test`` of the checkout, in a child process."""
        # -P: a folder of the repository never shadows Kaiser's own modules
        args = [sys.executable, "-P", "-m", "engine.puller", "check", "--tz", self.host.tz, self.settings.path or "."]
        proc = await asyncio.create_subprocess_exec(
            *args, cwd=worktree, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, env={**os.environ, "PYTHONPATH": _import_path()})
        try:
            out, err = await asyncio.wait_for(proc.communicate(), CHECK_TIMEOUT)
        except TimeoutError:
            return Check(problem=f"the checks took longer than {CHECK_TIMEOUT:.0f} s", gate=Gate.CHECK)
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(Exception):
                    await asyncio.shield(proc.wait())
        try:
            data = json.loads(out)
        except ValueError:
            tail = err.decode("utf-8", "replace").strip().splitlines()[-5:]
            return Check(problem="the checks crashed: " + ("; ".join(tail) or f"exit code {proc.returncode}"),
                         gate=Gate.CHECK)
        return Check(errors=tuple(data.get("errors", ())), warnings=tuple(data.get("warnings", ())),
                     tests=int(data.get("tests", 0)), failed=tuple(data.get("failed", ())),
                     report=str(data.get("report", "")))

    # ------------------------------------------------------------------ visibility
    def health(self) -> dict[str, Any]:
        s, now = self.state, self._now()
        due = s.next_fetch(self.settings.interval)
        return {
            "repo": redact(self.settings.repo),
            "branch": self.settings.branch,
            "path": self.settings.path,
            "interval_s": self.settings.interval,
            "require_tests": self.settings.require_tests,
            "running": commit_json(s.running) if s.running else None,
            "running_since": s.running_since,
            "head": s.head,
            "last_fetch": s.last_fetch,
            "last_attempt": s.last_attempt,
            "last_error": s.last_error,
            "failures": s.failures,
            "next_fetch_in_s": None if due is None else round(max(0.0, due - now), 1),
            "last_refused": refusal_json(s.last_refused) if s.last_refused else None,
            "refused_total": s.refused_total,
        }

    def metrics(self) -> list[str]:
        """Prometheus lines: last successful fetch, refusals, the running commit."""
        s = self.state
        running = s.running.sha if s.running else ""
        return [
            "# HELP kaiser_gitops_last_sync_timestamp Unix time of the last successful fetch",
            "# TYPE kaiser_gitops_last_sync_timestamp gauge",
            f"kaiser_gitops_last_sync_timestamp {s.last_fetch or 0}",
            "# HELP kaiser_gitops_refused_total commits refused (lint, tests, reload) since start",
            "# TYPE kaiser_gitops_refused_total counter",
            f"kaiser_gitops_refused_total {s.refused_total}",
            "# HELP kaiser_gitops_applied_total commits applied since start",
            "# TYPE kaiser_gitops_applied_total counter",
            f"kaiser_gitops_applied_total {s.applied_total}",
            "# HELP kaiser_gitops_fetch_failures fetches failed in a row",
            "# TYPE kaiser_gitops_fetch_failures gauge",
            f"kaiser_gitops_fetch_failures {s.failures}",
            "# HELP kaiser_gitops_running_info the commit the rules come from (empty: local rules)",
            "# TYPE kaiser_gitops_running_info gauge",
            f'kaiser_gitops_running_info{{commit="{running}",branch="{_label(self.settings.branch)}"}} 1',
        ]


def _label(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _import_path() -> str:
    """The child imports this very Kaiser, whatever its working directory."""
    here = os.fspath(Path(__file__).resolve().parent.parent)
    extra = os.environ.get("PYTHONPATH")
    return here + (os.pathsep + extra if extra else "")


# --------------------------------------------------------------------------
# the child: python -m engine.puller check [--tz TZ] PATH


def check(path: str, tz: str) -> dict[str, Any]:
    """Lint ``path`` as ``kaiser lint`` does and, without errors, run its rule tests
    as ``kaiser test`` does. JSON-able: errors, warnings, tests, failed, report."""
    from engine.config.lint import lint
    from engine.testing import report, run_all

    deployment, diagnostics = lint(path, tz)
    out: dict[str, Any] = {
        "errors": [d.text() for d in diagnostics if d.is_error],
        "warnings": [d.text() for d in diagnostics if not d.is_error],
        "tests": 0, "failed": [], "report": "",
    }
    if out["errors"]:
        return out
    results = run_all(deployment)
    failed = [r for r in results if not r.passed]
    out["tests"], out["failed"] = len(results), [r.test.name for r in failed]
    if failed:
        buf = io.StringIO()
        report(results, buf)
        out["report"] = "\n".join(x for x in buf.getvalue().splitlines() if not x.startswith("PASS "))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.puller")
    sub = ap.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("check", help="lint and rule tests of a checkout, as JSON")
    sp.add_argument("--tz", default="UTC")
    sp.add_argument("path")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    json.dump(check(args.path, args.tz), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
