"""Decision cost per reading: the Rete engine vs the reference evaluator.

    .venv/bin/python bench/bench_rules.py            # full run (a few minutes)
    .venv/bin/python bench/bench_rules.py --quick    # smaller memory runs

Deployment: 1,000 boards with 10 sensor refs each; rules compare one board's
sensor, every third joined with a neighbouring board's sensor, every fifth with
the board being online; 1 in 7 is a `while` rule. Each timed reading is of a
sensor some rule reads (a reading nobody reads costs almost nothing).

Prints a table: rules, rulesets, registering time, microseconds per reading for
Rete and for the reference (a linear scan over every rule), the speed-up, and the
memory checks (a million readings through 1,000 rules; 100 reloads).
Targets (issue 4): 100 rules < 0.1 ms per reading; 10,000 rules <= 3x of 100;
Rete faster than the reference from 1,000 rules, >= 10x at 10,000; memory growth
< 50 MB for the readings and < 20 MB for the reloads.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.core import BaseEngine, Engine
from engine.model import (
    Actuator,
    All,
    Comparison,
    Condition,
    Deployment,
    Device,
    DeviceIs,
    Reading,
    Rule,
    Safety,
    SafetyDefaults,
    Sensor,
    SetActuator,
)
from engine.reference import ReferenceEngine

BOARDS = 1000
SENSORS_PER_BOARD = 10  # sensor refs per board (multi-value chips count once per quantity)
T0 = 1_780_000_000.0


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def deployment(n_rules: int, seed: int = 1, variant: int = 0) -> Deployment:
    """``n_rules`` rules over 1,000 boards: a comparison on a board's sensor, every
    third rule joined with a neighbouring board's sensor, every fifth with the
    board being online. ``variant`` shifts a few thresholds (for reloads)."""
    rnd = random.Random(seed)
    devices = {
        f"b{i}": Device(f"b{i}", f"ESP_{i:06d}",
                        sensors=tuple(Sensor(f"b{i}", f"s{j}", 30 + j, "analog") for j in range(SENSORS_PER_BOARD)),
                        actuators=(Actuator(f"b{i}", "fan", 12, "relay"), Actuator(f"b{i}", "vent", 13, "pwm")))
        for i in range(BOARDS)
    }
    ops = ("above", "below", "at_least", "at_most")
    rules = []
    for i in range(n_rules):
        b = i % BOARDS
        sensor = f"b{b}.s{rnd.randrange(SENSORS_PER_BOARD)}"
        thr = float(rnd.randrange(10, 40)) + (0.5 if variant and i % 50 == variant % 50 else 0.0)
        cond: Condition = Comparison(sensor, rnd.choice(ops), thr)
        if i % 3 == 0:
            other = f"b{(b + 1) % BOARDS}.s{rnd.randrange(SENSORS_PER_BOARD)}"
            cond = All((cond, Comparison(other, "below", float(rnd.randrange(10, 40)))))
        elif i % 5 == 0:
            cond = All((cond, DeviceIs(f"b{b}", True)))
        act = SetActuator(f"b{b}.{rnd.choice(('fan', 'vent'))}", rnd.choice((0.0, 1.0, 0.5)))
        kind = "level" if i % 7 == 0 else "edge"
        rules.append(Rule(f"r{i}", kind, cond, (act,), priority=rnd.randrange(3), index=i))  # type: ignore[arg-type]
    return Deployment(devices=devices, rules=tuple(rules),
                      safety=Safety(SafetyDefaults(stale_after=1e9, max_switches_per_minute=10**6)))


def readings(n: int, seed: int = 2, dep: Deployment | None = None) -> list[Reading]:
    """Readings of sensors the rules mention (a reading nobody reads costs nothing)."""
    rnd = random.Random(seed)
    if dep is not None:
        refs = sorted({leaf.sensor for r in dep.rules for leaf in _leaves(r.condition)
                       if isinstance(leaf, Comparison)})
    else:
        refs = [f"b{i}.s{j}" for i in range(BOARDS) for j in range(SENSORS_PER_BOARD)]
    return [Reading(rnd.choice(refs), float(rnd.randrange(5, 45)) + rnd.random(), T0) for _ in range(n)]


def _leaves(c: Condition) -> list[Condition]:
    return [x for i in c.items for x in _leaves(i)] if isinstance(c, All) else [c]


def warm(e: BaseEngine, now: float) -> None:
    e.tick(now)
    for i in range(BOARDS):
        e.device_state(f"b{i}", True, now)
        for j in range(SENSORS_PER_BOARD):
            e.receive(Reading(f"b{i}.s{j}", 25.0, now), now)


def per_reading_us(e: BaseEngine, rs: list[Reading], now: float, repeat: int = 1) -> float:
    """Microseconds per reading: the best of ``repeat`` passes (the machine is noisy)."""
    best = float("inf")
    for k in range(repeat):
        t = time.perf_counter()
        base = now + k * len(rs) * 1e-3
        for i, r in enumerate(rs):
            e.receive(r, base + i * 1e-3)
        best = min(best, (time.perf_counter() - t) / len(rs) * 1e6)
    return best


def measure(n_rules: int, n_read: int, n_ref: int) -> dict[str, float]:
    dep = deployment(n_rules)
    t = time.perf_counter()
    rete = Engine(dep, start=T0)
    register_ms = (time.perf_counter() - t) * 1e3
    warm(rete, T0)
    rete_us = per_reading_us(rete, readings(n_read, dep=dep), T0 + 1, repeat=3)
    ref = ReferenceEngine(dep, start=T0)
    warm_ref = readings(50, seed=3)
    per_reading_us(ref, warm_ref, T0)
    ref_us = per_reading_us(ref, readings(n_ref, dep=dep), T0 + 1)
    parts = len(rete.program.partitions)
    rete.close()
    return {"rules": n_rules, "rulesets": parts, "register_ms": register_ms, "rete_us": rete_us, "ref_us": ref_us}


def memory_readings(n: int) -> float:
    dep = deployment(1000)
    e = Engine(dep, start=T0)
    warm(e, T0)
    batch = readings(20000, seed=5, dep=dep)
    per_reading_us(e, batch, T0 + 1)  # settle caches
    gc.collect()
    before = rss_mb()
    now = T0 + 100
    done = 0
    while done < n:
        for r in batch:
            now += 1e-3
            e.receive(r, now)
        done += len(batch)
    gc.collect()
    grown = rss_mb() - before
    e.close()
    return grown


def memory_reloads(n: int) -> float:
    e = Engine(deployment(1000), start=T0)
    warm(e, T0)
    e.reload(deployment(1000, variant=1), T0 + 1)
    e.reload(deployment(1000, variant=0), T0 + 2)
    gc.collect()
    before = rss_mb()
    for i in range(n):
        e.reload(deployment(1000, variant=i % 7 + 1), T0 + 3 + i)
    gc.collect()
    grown = rss_mb() - before
    e.close()
    return grown


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="100k readings and 20 reloads for the memory checks")
    p.add_argument("--readings", type=int, default=5000, help="readings timed per size (Rete)")
    args = p.parse_args(argv)

    rows = [measure(100, args.readings, 2000), measure(1000, args.readings, 500),
            measure(10000, args.readings, 60)]
    print(f"{'rules':>7} {'rulesets':>9} {'register':>10} {'rete us/rd':>11} {'ref us/rd':>11} {'speed-up':>9}")
    for r in rows:
        print(f"{int(r['rules']):>7} {int(r['rulesets']):>9} {r['register_ms']:>8.0f}ms {r['rete_us']:>11.1f} "
              f"{r['ref_us']:>11.1f} {r['ref_us'] / r['rete_us']:>8.1f}x")
    base = rows[0]["rete_us"]
    print(f"\n100 rules: {base / 1000:.3f} ms per reading (target < 0.1 ms)")
    print(f"10,000 rules cost {rows[2]['rete_us'] / base:.2f}x of 100 rules (target <= 3x)")
    print(f"speed-up over the reference: {rows[1]['ref_us'] / rows[1]['rete_us']:.1f}x at 1,000 rules "
          f"(target > 1x), {rows[2]['ref_us'] / rows[2]['rete_us']:.1f}x at 10,000 (target >= 10x)")

    n_read = 100_000 if args.quick else 1_000_000
    n_reload = 20 if args.quick else 100
    grown = memory_readings(n_read)
    print(f"\nmemory: {n_read:,} readings through 1,000 rules grew RSS by {grown:.1f} MB (target < 50 MB)")
    grown = memory_reloads(n_reload)
    print(f"memory: {n_reload} reloads of 1,000 rules grew RSS by {grown:.1f} MB (target < 20 MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
