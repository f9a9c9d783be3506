"""``kaiser lint [PATH] [--format text|json|github] [--strict] [-c kaiser.toml]``.

Without ``-c``, a kaiser.toml beside the rules dir (or in the working
directory) gives the time zone and, without PATH, the rules dir.

Every static check, offline: YAML syntax and structure, schema, names (the
loader), then the semantic checks of ``engine.config.checks``. Prints every
finding sorted by position, then a one-line summary on stderr.

Exit codes: 0 no errors, 1 errors (or warnings with ``--strict``), 2 usage
error (the path does not exist, bad settings file).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from engine import gcpause
from engine.config.checks import NO_GAPS, Gaps, run_checks
from engine.config.loader import load
from engine.diagnostics import Diagnostic, render, sort_key
from engine.errors import ConfigError
from engine.model import Deployment, Position


def _run_checks(deployment: Deployment, partial: bool = False, gaps: Gaps = NO_GAPS) -> list[Diagnostic]:
    try:
        return list(run_checks(deployment, partial=partial, gaps=gaps))
    except Exception as e:  # a check bug must not hide the loader's findings
        return [Diagnostic("K499", "error", f"internal error in the semantic checks: "
                           f"{type(e).__name__}: {e}", Position("<checks>", 0, 0),
                           hint="please report this")]


def lint(path: str | os.PathLike[str], tz: str = "UTC") -> tuple[Deployment, list[Diagnostic]]:
    """Load and check: the deployment (the loader's model) and every finding (loader +
    semantic checks), deduplicated and sorted by position. Never raises.

    The semantic checks run over everything the loader could build, also items it
    built in part and the bodies of duplicates, so one defect never hides another."""
    with gcpause.paused():  # millions of long-lived objects, no cycles to free (engine/gcpause.py)
        loaded = load(path, tz)
        found = loaded.diagnostics
        found = found + _run_checks(loaded.checked, partial=any(d.is_error for d in found), gaps=loaded.gaps)
        seen: set[tuple[object, ...]] = set()
        unique: list[Diagnostic] = []
        for d in found:
            key = (d.code, d.pos, d.message)
            if key not in seen:
                seen.add(key)
                unique.append(d)
        unique.sort(key=sort_key)
    return loaded.deployment, unique


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _summary(diags: list[Diagnostic], files: int) -> str:
    errors = sum(1 for d in diags if d.is_error)
    warnings = len(diags) - errors
    plural = _plural
    return f"{plural(errors, 'error')}, {plural(warnings, 'warning')} in {plural(files, 'file')}"


def _find_settings(path: str | None) -> str | None:
    """kaiser.toml beside the rules dir, else in the working directory (as ``kaiser test``)."""
    candidates = [Path(path).resolve().parent / "kaiser.toml"] if path else []
    candidates.append(Path("kaiser.toml"))
    for cand in candidates:
        if cand.is_file():
            return os.fspath(cand)
    return None


def cmd_lint(args: argparse.Namespace) -> int:
    """The ``kaiser lint`` command (see the module docstring for exit codes)."""
    fmt = getattr(args, "format", "text") or "text"
    if fmt not in ("text", "json", "github"):
        print(f"kaiser lint: unknown format {fmt!r} (text, json or github)", file=sys.stderr)
        return 2
    tz = "UTC"
    config = getattr(args, "config", None)
    path_arg = getattr(args, "path", None)
    if config is None:
        config = _find_settings(path_arg)
    if config is not None:
        from engine.config.settings import load_settings

        try:
            settings = load_settings(config)
        except ConfigError as e:
            print(render(e.diagnostics, fmt), file=sys.stdout)
            print(f"kaiser lint: {config}: the settings file has errors", file=sys.stderr)
            return 2
        tz = settings.kaiser.tz
        if path_arg is None:
            path_arg = os.fspath(settings.kaiser.rules)
    path = Path(path_arg or "rules")
    if not path.exists():
        print(f"kaiser lint: no such file or directory: {path}", file=sys.stderr)
        return 2
    deployment, diags = lint(path, tz)
    text = render(diags, fmt)
    if text or fmt == "json":
        print(text)
    print(_summary(diags, len(deployment.files)), file=sys.stderr)
    errors = any(d.is_error for d in diags)
    if errors or (getattr(args, "strict", False) and diags):
        return 1
    return 0
