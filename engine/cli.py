"""The ``kaiser`` command. Each subcommand lives with the code it drives; this
module only parses arguments and imports lazily so ``kaiser lint`` stays fast.

Exit codes: 0 ok, 1 failure (errors found, tests failed, an unknown name), 2 usage
error, 141 when the reader of the output went away (``kaiser why x | head -1``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

# subcommand -> "module:function"; the function takes the argparse Namespace and
# returns the exit code.
COMMANDS: dict[str, str] = {
    "run": "engine.commands:cmd_run",
    "demo": "engine.demo:cmd_demo",
    "simulate": "engine.demo:cmd_simulate",
    "lint": "engine.config.lint:cmd_lint",
    "schema": "engine.config.schema:cmd_schema",
    "test": "engine.testing:cmd_test",
    "plan": "engine.commands:cmd_plan",
    "estop": "engine.commands:cmd_estop",
    "reset": "engine.commands:cmd_reset",
    "command": "engine.commands:cmd_command",
    "init": "engine.init:cmd_init",
    "why": "engine.commands:cmd_why",
    "history": "engine.commands:cmd_history",
    "query": "engine.commands:cmd_query",
    "status": "engine.commands:cmd_status",
    "sync": "engine.commands:cmd_sync",
    "export-history": "engine.commands:cmd_export_history",
    "calibrate": "sensors.calibration:cmd_calibrate",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="kaiser", description="God-Kaiser automation server for El Trabajante ESP32 boards")
    p.add_argument("--version", action="version", version="kaiser 0.1.0")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def cfg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-c", "--config", default="kaiser.toml", help="kaiser.toml (default: ./kaiser.toml)")

    def fmt(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--format", choices=["table", "json", "csv"], default=None,
                        help="table (the default on a terminal), json or csv (the default elsewhere)")

    sp = sub.add_parser("run", help="run the server; SIGHUP or a file change reloads")
    cfg(sp)
    sp.add_argument("--log-format", choices=["text", "json"], default=None,
                    help="text (default, or $KAISER_LOG_FORMAT) or json: one object per line for log shippers")

    sp = sub.add_parser("demo", help="embedded broker, simulated boards, the example rules, a live view")
    cfg(sp)
    sp.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds and print a summary")
    sp.add_argument("--rules", default=None, help="rules dir (default: the one kaiser.toml names)")

    sp = sub.add_parser("simulate", help="virtual ESP32 boards against a broker")
    cfg(sp)
    sp.add_argument("--devices", type=int, default=3, metavar="N")
    sp.add_argument("--rate", type=float, default=1.0, metavar="R", help="readings per second in total")
    sp.add_argument("--duration", type=float, default=None, metavar="S")
    sp.add_argument("--firmware", choices=["legacy", "current", "mixed"], default="mixed",
                    help="El Trabajante generation of boards the device map leaves on auto (default: mixed)")

    sp = sub.add_parser("lint", help="every static check of the YAML, offline")
    sp.add_argument("path", nargs="?", default=None, help="rules dir or file (default: rules, or the one -c names)")
    sp.add_argument("--format", choices=["text", "json", "github"], default="text")
    sp.add_argument("--strict", action="store_true", help="warnings fail too")
    sp.add_argument("-c", "--config", default=None, help="kaiser.toml (for tz; optional)")

    sp = sub.add_parser("schema", help="write the JSON Schemas")
    sp.add_argument("--out", default="schemas", help="directory (default: schemas)")
    sp.add_argument("--check", action="store_true", help="exit 1 if the files on disk differ")

    sp = sub.add_parser("test", help="run the rule tests on a virtual clock")
    sp.add_argument("path", nargs="?", default="rules")
    sp.add_argument("-k", dest="select", default=None, help="only tests whose name contains this")
    sp.add_argument("-c", "--config", default=None, help="kaiser.toml (for tz; optional)")

    sp = sub.add_parser("plan", help="replay stored telemetry through new rules; print what would differ")
    cfg(sp)
    sp.add_argument("path", nargs="?", default=None)
    sp.add_argument("--since", default="24h", help="how much of the store to replay (default 24h)")
    sp.add_argument("--rev", default=None, metavar="REF",
                    help="the rules at this git revision (pull mode's clone, or the repository PATH is in)")
    sp.add_argument("--history", default=None, metavar="FILE.parquet",
                    help="replay a file of `kaiser export-history` instead of the store (CI)")

    sp = sub.add_parser("estop", help="emergency stop (latched) through the running server")
    cfg(sp)
    sp.add_argument("--device", default=None)
    sp.add_argument("--reason", required=True)
    fmt(sp)

    sp = sub.add_parser("reset", help="reset an emergency stop (turns nothing on)")
    cfg(sp)
    sp.add_argument("--device", default=None)
    sp.add_argument("--reason", default="reset from CLI")
    fmt(sp)

    sp = sub.add_parser("command", help="a manual command through the running server's safety guard")
    cfg(sp)
    sp.add_argument("actuator", help="an actuator ref, e.g. north.fan")
    sp.add_argument("state", help="on, off, toggle or a duty 0.0-1.0")
    sp.add_argument("--for", dest="for_", default=None, metavar="D", help="how long, e.g. 10m (then off)")
    sp.add_argument("--reason", default=None)
    sp.add_argument("--priority", type=int, default=None, help="against rules (default 1000: above them)")
    fmt(sp)

    sp = sub.add_parser("init", help="write a small commented deployment (one board, two rules, one test)")
    sp.add_argument("dir", metavar="DIR")

    sp = sub.add_parser("why", help="causal trace of an actuator's last commands and blocks")
    cfg(sp)
    sp.add_argument("actuator")
    sp.add_argument("-n", type=int, default=10)
    fmt(sp)

    sp = sub.add_parser("history", help="readings of a sensor")
    cfg(sp)
    sp.add_argument("sensor")
    sp.add_argument("--since", default="1h")
    fmt(sp)

    sp = sub.add_parser("query", help="read-only SQL against the store")
    cfg(sp)
    sp.add_argument("sql")
    fmt(sp)

    sp = sub.add_parser("status", help="what the running server runs: version, commit, last reload, boards, "
                                       "emergency latches")
    cfg(sp)
    sp.add_argument("--format", choices=["table", "json"], default="table")

    sp = sub.add_parser("sync", help="pull mode: fetch the branch now and apply a new commit that passes")
    cfg(sp)

    sp = sub.add_parser("export-history", help="readings and commands of the store as Parquet (for plan --history)")
    cfg(sp)
    sp.add_argument("--since", default="7d")
    sp.add_argument("file", metavar="FILE.parquet")

    sp = sub.add_parser("calibrate", help="two-point calibration: print the calibration block")
    sp.add_argument("type", help="ph or ec")
    sp.add_argument("points", nargs=2, metavar="RAW=REF")
    return p


def _resolve(target: str) -> Callable[[argparse.Namespace], int]:
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        code = int(_resolve(COMMANDS[args.command])(args))
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader left (`kaiser why x | head -1`): no traceback, and none at exit
        # when Python flushes stdout again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
