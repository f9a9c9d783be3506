"""GitOps pull mode, the policy (docs/gitops.md): which commit to deploy, what was
refused and why, when to fetch next. Pure: no git, no clock, no files; the caller
(engine/puller.py) passes the branch head it fetched and the time.

A commit goes through three gates, in order: the checkout has the rules folder,
``kaiser lint`` finds no error, and (``require_tests``) every rule test passes.
The running version changes only through the normal reload (state carried over).
A refused commit is remembered by its hash, with the findings, and never tried
again, unless it was judged by another Kaiser version or another
``require_tests``: then it is checked afresh. A force-push back to a commit that
ran before is a new head like any other: checked, and applied when it passes.

Fetch failures (network, authentication, a branch that is gone) back off
exponentially from the interval up to :data:`MAX_BACKOFF` and never stop anything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

#: the longest wait between two fetches after failures, seconds (or the interval, when longer)
MAX_BACKOFF = 600.0
#: refused commits remembered (oldest forgotten first)
MAX_REFUSED = 100
#: findings kept per refusal (the log has them all)
MAX_FINDINGS = 50
STATE_VERSION = 1


class Step(Enum):
    """What to do about the branch head just fetched."""

    IDLE = "idle"  # it runs already
    REFUSED = "refused"  # refused before, by the same policy: recorded once, not tried again
    DEPLOY = "deploy"  # new: check it, and reload from it when it passes


class Gate(Enum):
    """Why a commit was refused."""

    CHECKOUT = "checkout"  # it has no rules folder at ``path``
    LINT = "lint"  # the rules have errors
    TESTS = "tests"  # a rule test failed (require_tests)
    RELOAD = "reload"  # the engine refused the checked version
    CHECK = "check"  # the check itself failed (crash, time limit)


@dataclass(frozen=True, slots=True)
class Commit:
    """One commit of the followed branch. ``ts``: author time, Unix seconds."""

    sha: str
    author: str = ""
    ts: float = 0.0
    subject: str = ""
    message: str = ""

    @property
    def short(self) -> str:
        return self.sha[:12]

    def describe(self) -> str:
        by = f" by {self.author}" if self.author else ""
        return f"{self.short}{by}: {self.subject}" if self.subject else f"{self.short}{by}"


@dataclass(frozen=True, slots=True)
class Check:
    """What the checks found in one checkout (engine/puller.py runs them)."""

    errors: tuple[str, ...] = ()  # lint errors, file:line:col texts
    warnings: tuple[str, ...] = ()
    tests: int = 0  # rule tests run
    failed: tuple[str, ...] = ()  # names of failed tests
    report: str = ""  # kaiser test's report of the failures (the readable diff)
    problem: str = ""  # the check could not run (missing folder, crash, time limit)
    gate: Gate | None = None  # with ``problem``: which gate it belongs to


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused commit: the gate that refused it, a sentence, and the findings."""

    commit: Commit
    at: float  # Unix seconds
    gate: Gate
    summary: str
    findings: tuple[str, ...] = ()
    policy: str = ""  # Kaiser version and require_tests it was judged with

    def text(self) -> str:
        return f"commit {self.commit.describe()} refused ({self.gate.value}): {self.summary}"


def verdict(check: Check, require_tests: bool) -> tuple[Gate, str, tuple[str, ...]] | None:
    """None when the checked commit may run, else (gate, sentence, findings)."""
    if check.problem:
        return check.gate or Gate.CHECK, check.problem, ()
    if check.errors:
        n = len(check.errors)
        return Gate.LINT, f"{n} lint error{'s' if n != 1 else ''}", check.errors[:MAX_FINDINGS]
    if check.failed and require_tests:
        n = len(check.failed)
        lines = tuple(f"test failed: {name}" for name in check.failed)
        report = tuple(x for x in check.report.splitlines() if x.strip())
        return (Gate.TESTS, f"{n} of {check.tests} rule test{'s' if check.tests != 1 else ''} failed",
                (lines + report)[:MAX_FINDINGS])
    return None


@dataclass(slots=True)
class PullState:
    """What pull mode knows: the running commit, refusals, and how fetching goes.

    ``running`` is the commit the rules came from (None: they came from the local
    rules folder). Times are Unix seconds; ``None`` = never.
    """

    running: Commit | None = None
    running_since: float | None = None
    refused: dict[str, Refusal] = field(default_factory=dict)  # sha -> refusal, oldest first
    last_refused: Refusal | None = None
    head: str | None = None  # the branch head at the last successful fetch
    last_fetch: float | None = None  # last successful fetch
    last_attempt: float | None = None
    last_error: str = ""  # of the last failed fetch; "" after a success
    failures: int = 0  # fetch failures in a row
    refused_total: int = 0  # refusals since start (for /metrics)
    applied_total: int = 0

    # ---------------------------------------------------------------- decisions
    def step(self, head: str, policy: str) -> Step:
        """What to do about ``head`` (the branch's commit hash)."""
        if self.running is not None and head == self.running.sha:
            return Step.IDLE
        refusal = self.refused.get(head)
        if refusal is not None and refusal.policy == policy:
            return Step.REFUSED
        return Step.DEPLOY

    def next_fetch(self, interval: float) -> float | None:
        """When to fetch next (None: now). Backs off after failures: interval x 2^n,
        at most ``max(interval, MAX_BACKOFF)``."""
        if self.last_attempt is None:
            return None
        return self.last_attempt + backoff(self.failures, interval)

    # ---------------------------------------------------------------- events
    def fetched(self, head: str, now: float) -> None:
        self.head, self.last_fetch, self.last_attempt = head, now, now
        self.failures, self.last_error = 0, ""

    def fetch_failed(self, error: str, now: float) -> bool:
        """Record a failed fetch; True when the error is new (worth a log line)."""
        new = error != self.last_error
        self.last_attempt, self.last_error = now, error
        self.failures += 1
        return new

    def applied(self, commit: Commit, now: float) -> None:
        self.running, self.running_since = commit, now
        self.applied_total += 1

    def refuse(self, refusal: Refusal) -> None:
        self.refused.pop(refusal.commit.sha, None)
        self.refused[refusal.commit.sha] = refusal
        while len(self.refused) > MAX_REFUSED:
            del self.refused[next(iter(self.refused))]
        self.last_refused = refusal
        self.refused_total += 1

    # ---------------------------------------------------------------- persistence
    def to_json(self) -> dict[str, Any]:
        """What survives a restart: the running commit and the refusals."""
        return {
            "version": STATE_VERSION,
            "running": _commit_json(self.running) if self.running else None,
            "running_since": self.running_since,
            "refused": [_refusal_json(r) for r in self.refused.values()],
            "last_refused": self.last_refused.commit.sha if self.last_refused else None,
        }

    @classmethod
    def from_json(cls, data: object) -> PullState:
        """The state :meth:`to_json` wrote; anything unreadable is left out."""
        state = cls()
        if not isinstance(data, Mapping) or data.get("version") != STATE_VERSION:
            return state
        state.running = _commit(data.get("running"))
        since = data.get("running_since")
        state.running_since = float(since) if isinstance(since, int | float) else None
        raw = data.get("refused")
        for item in raw if isinstance(raw, list) else []:
            r = _refusal(item)
            if r is not None:
                state.refused[r.commit.sha] = r
        last = data.get("last_refused")
        state.last_refused = state.refused.get(last) if isinstance(last, str) else None
        return state


def backoff(failures: int, interval: float) -> float:
    """Seconds until the next fetch after ``failures`` failed ones in a row."""
    if failures <= 0:
        return interval
    return min(interval * 2.0 ** min(failures, 30), max(interval, MAX_BACKOFF))


_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def redact(text: str) -> str:
    """``https://user:token@host/...`` -> ``https://***@host/...``: a URL with
    credentials never reaches a log, /health or /metrics."""
    return _USERINFO.sub("***@", text)


def _commit_json(c: Commit) -> dict[str, Any]:
    return {"sha": c.sha, "author": c.author, "ts": c.ts, "subject": c.subject, "message": c.message}


def _commit(data: object) -> Commit | None:
    if not isinstance(data, Mapping) or not isinstance(data.get("sha"), str) or not data["sha"]:
        return None
    ts = data.get("ts")
    return Commit(str(data["sha"]), str(data.get("author") or ""), float(ts) if isinstance(ts, int | float) else 0.0,
                  str(data.get("subject") or ""), str(data.get("message") or ""))


def _refusal_json(r: Refusal) -> dict[str, Any]:
    return {"commit": _commit_json(r.commit), "at": r.at, "gate": r.gate.value, "summary": r.summary,
            "findings": list(r.findings), "policy": r.policy}


def _refusal(data: object) -> Refusal | None:
    if not isinstance(data, Mapping):
        return None
    commit = _commit(data.get("commit"))
    at = data.get("at")
    try:
        gate = Gate(data.get("gate"))
    except ValueError:
        return None
    if commit is None or not isinstance(at, int | float):
        return None
    findings = data.get("findings")
    return Refusal(commit, float(at), gate, str(data.get("summary") or ""),
                   tuple(str(f) for f in findings) if isinstance(findings, list) else (),
                   str(data.get("policy") or ""))


def refusal_json(r: Refusal) -> dict[str, Any]:
    """A refusal for /health, events and ``kaiser status``."""
    return {**_refusal_json(r), "sha": r.commit.sha, "short": r.commit.short}


def commit_json(c: Commit) -> dict[str, Any]:
    return {**_commit_json(c), "short": c.short}


__all__ = [
    "MAX_BACKOFF",
    "Check",
    "Commit",
    "Gate",
    "PullState",
    "Refusal",
    "Step",
    "backoff",
    "commit_json",
    "redact",
    "refusal_json",
    "verdict",
]
