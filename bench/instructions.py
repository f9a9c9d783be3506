"""Instructions a reading costs the server: deterministic, for judging a change to the
hot path on a noisy machine (docs/performance.md, "Instructions a reading").

    .venv/bin/python bench/instructions.py                 # this checkout
    .venv/bin/python bench/instructions.py --base HEAD~3   # and a git revision, with the ratio
    .venv/bin/python bench/instructions.py --pattern quiet # no rule fires: the difference is what commands cost

Runs ``bench/profile_server.py --batch N --decode --writer process`` under
valgrind's cachegrind (instruction counts only, no cache simulation) twice, with
``--readings`` LOW and HIGH, and prints (Ir(HIGH) - Ir(LOW)) / (HIGH - LOW): the
instructions of the server's process a reading, decoded, routed, through the rules,
the guard and the store's buffers (the store's own process is not counted), with
start-up, loading and the build of the 1,000-rule network cancelled out. Two runs
of one checkout agree to about 0.05 %; wall-clock time on these 2-core VMs varies
by 10-30 %. It is not latency: the live server also pays for cache misses, the
event loop and the broker (bench_server.py measures those). Needs valgrind
(``apt-get install valgrind``); about a minute a checkout.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def instructions(checkout: Path, readings: int, batch: int, pattern: str = "cross") -> int:
    """Instructions (cachegrind's Ir) of one profile_server.py run in ``checkout``."""
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=str(checkout))
    cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
           sys.executable, str(checkout / "bench" / "profile_server.py"), "--batch", str(batch), "--decode",
           "--writer", "process", "--readings", str(readings)]
    if pattern != "cross":  # revisions before the option know only espfleet's pattern
        cmd += ["--pattern", pattern]
    r = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True, timeout=1800, check=False)
    m = re.search(r"I\s+refs:\s+([\d,]+)", r.stderr)
    if r.returncode != 0 or m is None:
        raise RuntimeError(f"profile_server.py under valgrind failed ({r.returncode}): {r.stderr[-2000:]}")
    return int(m.group(1).replace(",", ""))


def per_reading(checkout: Path, low: int, high: int, batch: int, pattern: str = "cross") -> float:
    return (instructions(checkout, high, batch, pattern) - instructions(checkout, low, batch, pattern)) / (high - low)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=None, help="a git revision to measure too (in a temporary worktree)")
    ap.add_argument("--low", type=int, default=2000, help="readings of the first run")
    ap.add_argument("--high", type=int, default=12000, help="readings of the second run")
    ap.add_argument("--batch", type=int, default=10, help="readings a batch (Server.on_ingest)")
    ap.add_argument("--pattern", choices=("cross", "quiet"), default="cross",
                    help="profile_server.py's readings: cross (a command every other reading) or quiet (none)")
    a = ap.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("instructions.py: valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    if not 0 < a.low < a.high:
        print("instructions.py: need 0 < --low < --high", file=sys.stderr)
        return 2
    here = per_reading(ROOT, a.low, a.high, a.batch, a.pattern)
    print(f"this checkout: {here:,.0f} instructions a reading (batch {a.batch}, pattern {a.pattern})")
    if a.base is None:
        return 0
    with tempfile.TemporaryDirectory(prefix="kaiser-base-") as tmp:
        wt = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(wt), a.base], check=True,
                       capture_output=True)
        try:
            base = per_reading(wt, a.low, a.high, a.batch, a.pattern)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(wt)], check=False,
                           capture_output=True)
    print(f"{a.base}: {base:,.0f} instructions a reading; this checkout x{here / base:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
