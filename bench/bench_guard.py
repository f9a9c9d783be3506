"""Guard decisions per second: 1,000 actuators, every limit configured.

Run: ``.venv/bin/python bench/bench_guard.py [--actuators 1000] [--commands 200000]``

Prints microseconds per decision for ``Guard.check`` and for the pure ``guard()``
function, and the ratio against a baseline measured in the same run (a bare dict
lookup and a comparison per command). Target: under 20 us per decision.
"""

from __future__ import annotations

import argparse
import random
import time

from engine.model import (
    Actuator,
    ActuatorLimits,
    Command,
    Comparison,
    Deployment,
    Device,
    Interlock,
    Reading,
    Rule,
    Safety,
    SafetyDefaults,
    Sensor,
    SetActuator,
)
from engine.safety import Guard, GuardState, compile_limits, guard

PER_DEVICE = 10


def build(n: int) -> Deployment:
    devices: dict[str, Device] = {}
    limits: dict[str, ActuatorLimits] = {}
    locks: list[Interlock] = []
    rules: list[Rule] = []
    for d in range(n // PER_DEVICE):
        name = f"d{d}"
        acts = tuple(Actuator(name, f"a{i}", 4 + i, "pump") for i in range(PER_DEVICE))
        sensors = (Sensor(name, "level", 34, "flow"), Sensor(name, "temp", 35, "ds18b20"))
        devices[name] = Device(name, f"ESP_{d:06X}", sensors=sensors, actuators=acts)
        for a in acts:
            limits[a.ref] = ActuatorLimits(
                a.ref, max_runtime=600, min_off=5, max_starts=(1000, 3600), on_sensor_loss="off",
                pwm=(0.0, 1.0), rate_limit=(1000, 60),
            )
            rules.append(Rule(f"r-{name}-{a.name}", "level", Comparison(f"{name}.temp", "below", 50.0),
                              (SetActuator(a.ref, 1.0),)))
        for i in range(0, PER_DEVICE, 2):
            locks.append(Interlock(f"pair-{name}-{i}", never_together=(f"{name}.a{i}", f"{name}.a{i + 1}")))
            locks.append(Interlock(f"water-{name}-{i}", actuator=f"{name}.a{i}",
                                   only_if=Comparison(f"{name}.level", "above", 10.0)))
    return Deployment(devices=devices, safety=Safety(SafetyDefaults(stale_after=1e9), limits, tuple(locks)),
                      rules=tuple(rules))


def commands(d: Deployment, count: int, seed: int = 1) -> list[Command]:
    rnd = random.Random(seed)
    refs = d.actuator_refs()
    return [Command(rnd.choice(refs), rnd.choice((0.0, 1.0, 1.0, 0.5)), duration=rnd.choice((None, 30.0)))
            for _ in range(count)]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--actuators", type=int, default=1000)
    p.add_argument("--commands", type=int, default=200_000)
    args = p.parse_args()
    d = build(args.actuators)
    cmds = commands(d, args.commands)
    t0 = 1_780_000_000.0

    g = Guard(d, assume_online=True, start=t0)
    for dev in d.devices.values():
        for s in ("level", "temp"):
            g.reading(Reading(f"{dev.name}.{s}", 20.0, t0))

    # baseline: the least a decision could cost (a lookup and a comparison)
    table = {ref: 1.0 for ref in d.actuator_refs()}
    start = time.perf_counter()
    ok = 0
    for c in cmds:
        if c.value <= table[c.actuator]:
            ok += 1
    base = (time.perf_counter() - start) / len(cmds)

    start = time.perf_counter()
    allowed = 0
    for i, c in enumerate(cmds):
        if type(g.check(c, t0 + i * 0.01)).__name__ == "Allowed":
            allowed += 1
    per = (time.perf_counter() - start) / len(cmds)

    limits = compile_limits(d)
    state = GuardState(assume_online=True, start=t0, readings=dict(g.state.readings))
    n_pure = min(len(cmds), 20_000)
    start = time.perf_counter()
    for i, c in enumerate(cmds[:n_pure]):
        _, state = guard(c, state, limits, t0 + i * 0.01)
    pure = (time.perf_counter() - start) / n_pure

    # tick and next_due with every actuator held (renewals due at half the lease)
    h = Guard(d, assume_online=True, start=t0)
    for dev in d.devices.values():
        for s in ("level", "temp"):
            h.reading(Reading(f"{dev.name}.{s}", 20.0, t0))
    for ref in d.actuator_refs()[::2]:
        h.check(Command(ref, 1.0, hold=True), t0)
    held = len(h.state.actuators)
    start = time.perf_counter()
    for i in range(1000):
        h.tick(t0 + 1 + i * 0.02)
        h.next_due()
    idle = (time.perf_counter() - start) / 1000
    due = h.next_due() or t0
    start = time.perf_counter()
    renewed = len(h.tick(due).sent)
    renew = (time.perf_counter() - start) / max(renewed, 1)

    print(f"actuators: {len(table)}, commands: {len(cmds)}, allowed: {allowed} ({allowed / len(cmds):.0%})")
    print(f"baseline (dict lookup + compare): {base * 1e6:.3f} us per command")
    print(f"Guard.check:                      {per * 1e6:.2f} us per decision "
          f"({1 / per:,.0f}/s, {per / base:.0f}x baseline) target < 20 us: {'ok' if per < 20e-6 else 'MISSED'}")
    print(f"pure guard() (copies state):      {pure * 1e6:.2f} us per decision ({pure / base:.0f}x baseline)")
    print(f"tick + next_due, {held} held, none due: {idle * 1e6:.1f} us")
    print(f"hold renewals:                    {renew * 1e6:.2f} us each ({renewed} renewed in one tick)")


if __name__ == "__main__":
    main()
