"""Benchmark ``kaiser lint`` on a big synthetic deployment.

Generates 200 boards (4 sensors and 4 actuators each, safety limits and an
interlock per board) and 1,000 rules (5 per board, every one sharing its
actuators with another at the same priority, so the opposite-state check has
real work) into a temporary directory, then times, best of ``--runs``:

- baseline: parsing the same YAML files with ruamel's safe loader, nothing else;
- in-process: ``engine.config.lint.lint`` (load + checks), and ``run_checks`` alone;
- subprocess: the ``kaiser lint DIR`` command, interpreter start-up included.

Usage: ``python bench/bench_lint.py [--boards 200] [--rules-per-board 5] [--runs 3] [--keep DIR]``.
Target: the in-process lint under 2 s. Exit 1 when the generated deployment is
not lint-clean (the generator and the checks disagree) or the target is missed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

TARGET_S = 2.0


def generate(folder: Path, boards: int = 200, rules_per_board: int = 5) -> tuple[int, int]:
    """Write a clean deployment; returns (boards, rules) written."""
    folder.mkdir(parents=True, exist_ok=True)
    dev: list[str] = ["devices:"]
    safety: list[str] = ["safety:", "  defaults: {offline_after: 90s, stale_after: 5m}", "  actuators:"]
    interlocks: list[str] = ["  interlocks:"]
    rule_files: list[list[str]] = [["rules:"] for _ in range(10)]
    n_rules = 0
    for i in range(boards):
        b = f"b{i:03d}"
        dev += [
            f"  {b}:",
            f"    esp_id: ESP_{0x100000 + i:06X}",
            "    zone: greenhouse",
            "    board: esp32dev",
            "    sensors:",
            "      air_temp: {gpio: 4, type: DS18B20}",
            "      climate: {gpio: 21, type: SHT31, i2c_address: 0x44}",
            "      soil: {gpio: 34, type: moisture, calibration: {dry: 3200, wet: 1300}}",
            "      co2: {gpio: 16, type: co2}",
            "    actuators:",
            "      fan: {gpio: 5, type: relay}",
            "      heater: {gpio: 18, type: relay}",
            "      vent: {gpio: 25, type: pwm}",
            "      pump: {gpio: 17, type: pump}",
        ]
        safety += [
            f"    {b}.pump: {{max_runtime: 20m, min_off: 2m, max_starts: 6/h}}",
            f"    {b}.vent: {{pwm: [0.1, 0.9], rate_limit: 6/m}}",
            f"    {b}.heater: {{min_off: 3m, on_sensor_loss: off}}",
        ]
        interlocks += [f"    - name: heat-or-vent-{b}", f"      never_together: [{b}.heater, {b}.fan]"]
        templates = [
            [f"  - name: vent-hot-{b}", "    priority: 10", "    cooldown: 5m", "    when:", "      all:",
             f"        - {{sensor: {b}.climate.temperature, above: 28, for: 2m}}",
             '        - {time: {after: "06:00", before: "21:00", weekdays: [mon, tue, wed, thu, fri]}}',
             "    then:", f"      - {{actuator: {b}.fan, set: on, for: 10m}}", "      - {wait: 30s}",
             f"      - {{actuator: {b}.vent, set: 0.6}}",
             f'      - {{notify: "{b} is hot: {{{b}.climate.temperature}} °C", level: warning}}'],
            [f"  - name: fan-cool-{b}", "    priority: 10",
             f"    when: {{sensor: {b}.climate.temperature, below: 24}}",
             "    then:", f"      - {{actuator: {b}.fan, set: off}}", f"      - {{actuator: {b}.vent, set: 0.2}}"],
            [f"  - name: heat-{b}", "    priority: 20",
             f"    while: {{sensor: {b}.air_temp, below: 16, hysteresis: 1}}",
             "    hold:", f"      - {{actuator: {b}.heater, set: on}}"],
            [f"  - name: water-{b}", "    priority: 10", "    cooldown: 1h", "    when:", "      all:",
             f"        - {{sensor: {b}.soil, below: 35, for: 10m}}", f"        - {{device: {b}, is: online}}",
             "    then:", f"      - {{actuator: {b}.pump, set: on, for: 15m}}"],
            [f"  - name: pump-stop-{b}", "    priority: 10", "    when:", "      all:",
             f"        - {{actuator: {b}.pump, is: on}}", f"        - {{sensor: {b}.soil, above: 70}}",
             "    then:", f"      - {{actuator: {b}.pump, set: off}}",
             f'      - {{notify: "{b} soil at {{{b}.soil}} %: pump stopped", level: info}}'],
        ]
        for k in range(rules_per_board):
            lines = list(templates[k % len(templates)])
            if k >= len(templates):  # extra rules: same shape, new name, a later hour
                lines[0] = lines[0] + f"-{k}"
            rule_files[(i * rules_per_board + k) % 10] += lines
            n_rules += 1
    (folder / "devices.yaml").write_text("\n".join(dev) + "\n", encoding="utf-8")
    (folder / "safety.yaml").write_text("\n".join(safety + interlocks) + "\n", encoding="utf-8")
    for j, lines in enumerate(rule_files):
        (folder / f"rules_{j:02d}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return boards, n_rules


def best_of(runs: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--boards", type=int, default=200)
    p.add_argument("--rules-per-board", type=int, default=5)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--keep", default=None, help="write the deployment here and keep it")
    args = p.parse_args(argv)

    from ruamel.yaml import YAML

    from engine.config import load_deployment
    from engine.config.checks import run_checks
    from engine.config.lint import lint as kaiser_lint
    from engine.diagnostics import Diagnostic

    tmp = None
    if args.keep:
        folder = Path(args.keep)
    else:
        tmp = tempfile.mkdtemp(prefix="kaiser-bench-")
        folder = Path(tmp) / "rules"
    try:
        boards, rules = generate(folder, args.boards, args.rules_per_board)
        files = sorted(folder.glob("*.yaml"))
        size = sum(f.stat().st_size for f in files)
        print(f"deployment: {boards} boards, {rules} rules, {len(files)} files, {size / 1024:.0f} KiB in {folder}")

        def parse() -> None:
            for f in files:
                YAML(typ="safe").load(f.read_text(encoding="utf-8"))

        def lint() -> list[Diagnostic]:
            """What `kaiser lint` does in-process: load, check, deduplicate."""
            return kaiser_lint(folder)[1]

        found = lint()
        if found:
            print(f"the generated deployment is not clean ({len(found)} findings), e.g.:")
            for d in found[:5]:
                print("  ", d.text())
            return 1
        dep, _ = load_deployment(folder)

        try:
            import yaml as pyyaml

            c_loader = pyyaml.CSafeLoader
        except (ImportError, AttributeError):
            c_loader = None

        def parse_c() -> None:
            for f in files:
                pyyaml.load(f.read_text(encoding="utf-8"), Loader=c_loader)

        t_parse = best_of(args.runs, parse)
        t_parse_c = best_of(args.runs, parse_c) if c_loader is not None else None
        t_lint = best_of(args.runs, lint)
        t_checks = best_of(args.runs, lambda: run_checks(dep))
        kaiser = shutil.which("kaiser", path=os.path.dirname(sys.executable)) or shutil.which("kaiser")
        cmd = [kaiser, "lint", str(folder)] if kaiser else [sys.executable, "-m", "engine", "lint", str(folder)]

        def sub() -> None:
            r = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if r.returncode != 0:
                raise SystemExit(f"kaiser lint failed ({r.returncode}): {r.stdout[-500:]}{r.stderr[-500:]}")

        t_sub = best_of(args.runs, sub)
        t_start = best_of(args.runs, lambda: subprocess.run([sys.executable, "-c", "pass"], check=True))
        print(f"baseline  ruamel safe parse only     {t_parse:7.3f} s")
        if t_parse_c is not None:
            print(f"          libyaml CSafeLoader only   {t_parse_c:7.3f} s   (the loader composes with libyaml "
                  f"when PyYAML has it; lint = {t_lint / t_parse_c:.1f}x this)")
        print(f"in-process kaiser lint (load+checks) {t_lint:7.3f} s   {t_lint / t_parse:5.2f}x baseline")
        print(f"           run_checks alone          {t_checks:7.3f} s   {t_checks / t_parse:5.2f}x baseline")
        print(f"subprocess kaiser lint               {t_sub:7.3f} s   {t_sub / t_parse:5.2f}x baseline "
              f"(python start-up alone {t_start:.3f} s)")
        ok = t_lint < TARGET_S
        print(f"target: in-process lint under {TARGET_S:.0f} s: {'met' if ok else 'MISSED'}")
        return 0 if ok else 1
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
