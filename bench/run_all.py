#!/usr/bin/env python3
"""Run every Kaiser benchmark, one after the other, each printing its figures and
its ratio against a baseline measured in the same run.

    .venv/bin/python bench/run_all.py            # quick settings (about 3-5 minutes)
    .venv/bin/python bench/run_all.py --full     # each bench's own defaults (longer)
    .venv/bin/python bench/run_all.py codec guard  # only some

Benchmarks are never timed assertions in tests: machines are 2 cores and noisy,
so read the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (script, quick args)
BENCHES: dict[str, tuple[str, list[str]]] = {
    "lint": ("bench_lint.py", ["--runs", "2"]),
    "codec": ("bench_codec.py", ["--seconds", "1"]),
    "guard": ("bench_guard.py", ["--commands", "50000"]),
    "rules": ("bench_rules.py", ["--quick"]),
    "server": ("bench_server.py", ["--rates", "2000,3000,6000,9000", "--duration", "5"]),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("only", nargs="*", metavar="NAME", help=f"benchmarks to run: {', '.join(BENCHES)} (default: all)")
    p.add_argument("--full", action="store_true", help="each benchmark's own (longer) defaults")
    args = p.parse_args(argv)
    names = args.only or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        p.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    failed: list[str] = []
    for name in names:
        script, quick = BENCHES[name]
        cmd = [sys.executable, str(HERE / script), *([] if args.full else quick)]
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call(cmd)
        print(f"=== {name}: exit {rc} after {time.monotonic() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
