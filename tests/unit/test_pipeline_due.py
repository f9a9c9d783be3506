"""Kaiser.next_due and offline detection keep heaps instead of scanning every device
and actuator: they must say exactly what a scan says, in any order of events."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.model import (
    Actuator,
    ActuatorLimits,
    Comparison,
    Deployment,
    Device,
    Reading,
    Rule,
    Safety,
    SafetyDefaults,
    Sensor,
    SetActuator,
)
from engine.pipeline import Kaiser

T0 = 1_780_000_000.0
NAMES = ["d0", "d1", "d2", "d3", "d4"]


def deployment() -> Deployment:
    devices = {
        n: Device(n, f"ESP_{i}", sensors=(Sensor(n, "t", 4, "ds18b20"),), actuators=(Actuator(n, "fan", 12, "relay"),))
        for i, n in enumerate(NAMES)
    }
    rules = tuple(
        Rule(f"hot-{n}", "edge", Comparison(f"{n}.t", "above", 25.0), (SetActuator(f"{n}.fan", 1.0, 30.0 + i),),
             index=i)
        for i, n in enumerate(NAMES)
    )
    limits = {f"{n}.fan": ActuatorLimits(f"{n}.fan", max_runtime=45.0) for n in NAMES}
    return Deployment(devices=devices, rules=rules, safety=Safety(SafetyDefaults(offline_after=20.0), limits))


def scanned_due(k: Kaiser) -> float | None:
    """What next_due was before: a scan over every device and every actuator."""
    cands = [t for t in (k.engine.next_due(),) if t is not None]
    g = k.guard
    if g._due:
        due = min(g._due.values())
        last = g.state.last_now
        cands.append(last if last is not None and due < last else due)
    if k._start is not None:
        after = k.deployment.safety.defaults.offline_after
        for dev in k.deployment.devices:
            if k._online.get(dev) is not False:
                cands.append(k._last_seen.get(dev, k._start) + after)
    return min(cands) if cands else None


step = st.tuples(
    st.sampled_from(["seen", "offline", "reading", "tick", "reported"]),
    st.sampled_from(NAMES),
    st.floats(min_value=0.0, max_value=15.0),
    st.sampled_from([20.0, 30.0]),
)


@given(st.lists(step, max_size=40))
def test_next_due_and_offline_events_match_a_scan(steps: list[tuple[str, str, float, float]]) -> None:
    k = Kaiser(deployment())
    now = T0
    k.tick(now)
    for kind, dev, dt, value in steps:
        now += dt
        # offline events of this tick: exactly the devices a scan finds, in map order
        after = k.deployment.safety.defaults.offline_after
        expect = [d for d in k.deployment.devices if k._online.get(d) is not False
                  and now - k._last_seen.get(d, T0) >= after]
        out = k.tick(now)
        assert [e.subject for e in out.events if e.kind == "device" and not e.data["online"]] == expect
        if kind == "seen":
            k.device_seen(dev, now)
        elif kind == "offline":
            k.device_offline(dev, now, "will")
        elif kind == "reading":
            k.receive(Reading(f"{dev}.t", value, now), now)
        elif kind == "reported":
            k.actuator_reported(f"{dev}.fan", 1.0 if value > 25 else 0.0, now)
        assert k.next_due() == scanned_due(k)
