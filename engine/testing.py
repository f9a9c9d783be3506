"""``kaiser test``: run the rule tests of a document set on a virtual clock.

Each test drives ``Kaiser(deployment, assume_online=True)`` (the same compiled
network and the same guard as ``kaiser run``) on a ManualClock that stops at every
step and at every instant something is due (``next_due()``), so a ``for: 2m``
fires at 120 s. A step's readings land together (``Kaiser.receive_many``): all are
stored before the rules and the guard are evaluated. An expectation matches a
command (sent) or block within one second after its ``at`` whose fields include
the ones given (duties to 0.001). A test runs until its last step or expectation,
plus one second.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field, replace
from typing import TextIO

from engine.clock import ManualClock
from engine.diagnostics import Diagnostic, render
from engine.errors import EngineError
from engine.model import (
    Allowed,
    Blocked,
    Deployment,
    Expectation,
    Notification,
    Outputs,
    Reading,
    RuleTest,
    TestStep,
)
from engine.pipeline import Kaiser

#: an expectation at ``at`` matches what happened in [at, at + WINDOW]
WINDOW = 1.0
EPS = 1e-6
#: an expected duty matches a command's within this much
DUTY_TOLERANCE = 0.001


@dataclass(frozen=True, slots=True)
class Happened:
    """One command, block or notification at ``t`` seconds after the test's start."""

    t: float
    kind: str  # "command" | "blocked" | "notify"
    item: Allowed | Blocked | Notification
    #: caused by the test's own step (the OFFs of an ``emergency_stop:`` step):
    #: matchable, but never "not expected"
    own: bool = False

    def describe(self) -> str:
        return f"at {_secs(self.t):>6}  {self.kind:<8} {_describe_item(self.item)}"


@dataclass(slots=True)
class TestResult:
    __test__ = False

    test: RuleTest
    happened: list[Happened] = field(default_factory=list)
    missing: list[Expectation] = field(default_factory=list)
    unexpected: list[Happened] = field(default_factory=list)
    error: str = ""
    until: float = 0.0  # seconds after start the test ran to

    @property
    def passed(self) -> bool:
        return not self.missing and not self.unexpected and not self.error


def _secs(t: float) -> str:
    return f"{t:g}s"


def _state(v: float) -> str:
    return "on" if v == 1.0 else "off" if v == 0.0 else f"{v:g}"


def _describe_item(item: Allowed | Blocked | Notification) -> str:
    if isinstance(item, Notification):
        return f"{item.level}: {item.text}" + (f"  (rule {item.rule})" if item.rule else "")
    c = item.command
    s = f"{c.actuator} set {'toggle->' if c.toggle else ''}{_state(c.value)}"
    if c.duration:
        s += f" for {c.duration:g}s"
    who = f"rule {c.rule}" if c.rule else c.source
    if c.source == "lease":
        who = f"lease ({c.rule})" if c.rule else "lease"
    if isinstance(item, Blocked):
        s += f"  {item.code}: {item.reason}"
    return f"{s}  ({who})"


def describe_expectation(e: Expectation) -> str:
    f = dict(e.fields)
    parts = []
    if "actuator" in f:
        parts.append(str(f["actuator"]))
    if "set" in f:
        v = f["set"]
        parts.append("set " + (v if isinstance(v, str) else _state(float(v))))  # type: ignore[arg-type]
    if "for" in f:
        parts.append(f"for {float(f['for']):g}s")  # type: ignore[arg-type]
    if "reason" in f:
        parts.append(str(f["reason"]))
    if "level" in f:
        parts.append(f"{f['level']}:")
    if "text" in f:
        parts.append(repr(f["text"]))
    return f"at {_secs(e.at):>6}  {e.kind:<8} {' '.join(parts)}"


# --------------------------------------------------------------------------
# matching


def matches(e: Expectation, h: Happened) -> bool:
    """Whether ``h`` satisfies expectation ``e`` (time window and included fields)."""
    if not (e.at - EPS <= h.t <= e.at + WINDOW + EPS):
        return False
    f = e.fields
    if e.kind == "notify":
        if not isinstance(h.item, Notification):
            return False
        if "level" in f and h.item.level != f["level"]:
            return False
        return not ("text" in f and str(f["text"]) not in h.item.text)
    if e.kind not in ("command", "blocked", "no_command") or isinstance(h.item, Notification):
        return False
    if (e.kind == "blocked") != isinstance(h.item, Blocked):
        return False
    c = h.item.command
    if "actuator" in f and c.actuator != f["actuator"]:
        return False
    if "set" in f:
        want = f["set"]
        if want == "toggle":
            if not c.toggle:
                return False
        elif not isinstance(want, int | float) or abs(c.value - float(want)) > DUTY_TOLERANCE + 1e-9:
            return False
    if "for" in f:
        want_for = f["for"]
        if c.duration is None or not isinstance(want_for, int | float) or abs(c.duration - float(want_for)) > 1e-6:
            return False
    return not ("reason" in f and isinstance(h.item, Blocked) and str(h.item.code) != str(f["reason"]))


def _is_renewal(h: Happened) -> bool:
    return isinstance(h.item, Allowed) and h.item.command.source == "lease" and not h.item.command.is_off


def judge(test: RuleTest, happened: list[Happened]) -> tuple[list[Expectation], list[Happened]]:
    """(missing expectations, unexpected commands)."""
    used: set[int] = set()
    missing: list[Expectation] = []
    for e in test.expect:
        if e.kind == "no_command":
            bad = [i for i, h in enumerate(happened) if h.kind == "command" and not _is_renewal(h) and matches(e, h)]
            if bad:
                missing.append(e)
            continue
        found = next((i for i, h in enumerate(happened) if i not in used and matches(e, h)), None)
        if found is None:
            missing.append(e)
        else:
            used.add(found)
    unexpected: list[Happened] = []
    if test.only_expected:
        unexpected = [h for i, h in enumerate(happened)
                      if h.kind == "command" and i not in used and not _is_renewal(h) and not h.own]
    return missing, unexpected


# --------------------------------------------------------------------------
# running


def _record(out: Outputs, t: float, into: list[Happened], own: bool = False) -> None:
    for a in out.sent:
        into.append(Happened(t, "command", a, own))
    for b in out.blocked:
        into.append(Happened(t, "blocked", b))
    for n in out.notifications:
        into.append(Happened(t, "notify", n))


def run_test(deployment: Deployment, test: RuleTest) -> TestResult:
    """Run one test; never raises (an engine failure is the test's error)."""
    result = TestResult(test)
    dep = deployment
    if test.rules:
        dep = replace(deployment, rules=tuple(r for r in deployment.rules if r.name in test.rules))
    result.until = max([s.at for s in test.steps] + [e.at for e in test.expect] + [0.0]) + WINDOW
    try:
        _drive(dep, test, result.happened)
    except (EngineError, ValueError, KeyError, TypeError) as e:
        result.error = f"{type(e).__name__}: {e}"
        return result
    result.missing, result.unexpected = judge(test, result.happened)
    return result


def _drive(dep: Deployment, test: RuleTest, happened: list[Happened]) -> None:
    start = test.start
    clock = ManualClock(start)
    k = Kaiser(dep, assume_online=True, start=start)
    steps = sorted(test.steps, key=lambda s: s.at)
    last = max([s.at for s in steps] + [e.at for e in test.expect] + [0.0])
    end = start + last + WINDOW
    _record(k.tick(start), 0.0, happened)
    i = 0
    guard = 0
    while True:
        now = clock.now()
        cands: list[float] = []
        if i < len(steps):
            cands.append(start + steps[i].at)
        due = k.next_due()
        if due is not None:
            if due <= now:
                guard += 1
                if guard > 1000:  # something keeps being due without progress
                    raise EngineError(f"the clock makes no progress at {now - start:g}s")
            else:
                guard = 0
            cands.append(max(due, now))
        cands = [t for t in cands if t <= end + EPS]
        if not cands:
            break
        t = min(cands)
        clock.set(max(t, now))
        now = clock.now()
        rel = now - start
        out = Outputs()
        while i < len(steps) and start + steps[i].at <= now + EPS:
            step = steps[i]
            i += 1
            apply_step(k, step, now, out, happened, rel)
        out.extend(k.tick(now))
        _record(out, rel, happened)


def apply_step(k: Kaiser, step: TestStep, now: float, out: Outputs, happened: list[Happened], rel: float) -> None:
    """One step, in this order: devices, reported actuator states, the emergency stop,
    the reset, then the readings, which land together (``receive_many``)."""
    for dev, online in step.devices.items():
        out.extend(k.device_seen(dev, now) if online else k.device_offline(dev, now, "test step"))
    for ref, value in step.actuators.items():
        out.extend(k.actuator_reported(ref, value, now))
    if step.emergency_stop is not None:
        _record(k.emergency_stop(step.emergency_stop, "test step", "test", now), rel, happened, own=True)
    if step.reset is not None:
        out.extend(k.reset(step.reset, "test", "test step", now))
    if step.readings:
        readings = [Reading(ref, math.nan, now, quality="bad") if v is None or not math.isfinite(v)
                    else Reading(ref, float(v), now) for ref, v in step.readings.items()]
        out.extend(k.receive_many(readings, now))


# --------------------------------------------------------------------------
# the command


def _load(path: str, tz: str) -> tuple[Deployment, list[Diagnostic]]:
    """The same load and checks as `kaiser lint` (every finding in one run)."""
    from engine.config.lint import lint

    return lint(path, tz)


def run_all(deployment: Deployment, select: str | None = None) -> list[TestResult]:
    tests = [t for t in deployment.tests if select is None or select in t.name]
    return [run_test(deployment, t) for t in tests]


def report(results: list[TestResult], stream: TextIO) -> None:
    """Print each test with pass/fail, and a diff for the failures."""
    color = stream.isatty()
    try:
        from rich.console import Console

        console: Console | None = Console(file=stream, force_terminal=color, no_color=not color,
                                          highlight=False, soft_wrap=True)
    except ImportError:  # pragma: no cover
        console = None

    def line(text: str, style: str = "") -> None:
        if console is not None and color and style:
            console.print(text, style=style, markup=False)
        else:
            stream.write(text + "\n")

    for r in results:
        where = f"  ({r.test.pos})" if r.test.pos.line else ""
        if r.passed:
            line(f"PASS  {r.test.name}", "green")
            continue
        line(f"FAIL  {r.test.name}{where}", "bold red")
        if r.error:
            line(f"      error: {r.error}", "red")
        for e in r.missing:
            what = "happened but must not" if e.kind == "no_command" else "expected, did not happen"
            line(f"    - {describe_expectation(e)}   <- {what} ({e.pos})", "red")
        for h in r.unexpected:
            line(f"    + {h.describe()}   <- not expected (only_expected)", "yellow")
        if r.happened:
            line(f"      what happened (the test ran until {_secs(r.until)}):", "dim")
            for h in r.happened:
                line(f"        {h.describe()}", "dim")
        else:
            line(f"      nothing happened until {_secs(r.until)} (no command, block or notification)", "dim")
    failed = sum(not r.passed for r in results)
    summary = f"{len(results) - failed} passed, {failed} failed"
    line(summary, "bold red" if failed else "bold green")


def _find_settings(path: str) -> str | None:
    """kaiser.toml beside the rules dir, else in the working directory (for ``tz``)."""
    from pathlib import Path

    for cand in (Path(path).resolve().parent / "kaiser.toml", Path("kaiser.toml")):
        if cand.is_file():
            return str(cand)
    return None


def cmd_test(args: argparse.Namespace) -> int:
    """``kaiser test [PATH] [-k NAME] [-c kaiser.toml]``: 0 all pass, 1 a failure, 2 config errors."""
    path = getattr(args, "path", None) or "rules"
    tz = "UTC"
    cfg = getattr(args, "config", None) or _find_settings(path)
    if cfg:
        try:
            from engine.config.settings import load_settings

            tz = load_settings(cfg).kaiser.tz
        except Exception as e:
            diags = getattr(e, "diagnostics", None)
            sys.stderr.write((render(diags) if diags else str(e)) + "\n")
            return 2
    dep, diags = _load(path, tz)
    errors = [d for d in diags if d.is_error]
    if errors:
        sys.stderr.write(render(errors) + "\n")
        sys.stderr.write(f"{len(errors)} configuration error(s): no tests were run\n")
        return 2
    results = run_all(dep, getattr(args, "select", None))
    if not results:
        sys.stdout.write("no tests found" + (f" matching {args.select!r}" if getattr(args, "select", None) else "")
                         + f" in {path}\n")
        return 0
    report(results, sys.stdout)
    return 1 if any(not r.passed for r in results) else 0
