"""Safety invariants over random limits and random command sequences (Hypothesis).

A simple, independent re-implementation of every limit replays the history of
what the guard *sent* and checks each allowed ON against it: zero false
negatives. OFF is never blocked, a latched emergency blocks every non-OFF until
reset, a reset never produces an ON, a restart keeps the latch.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.model import (
    USABLE_QUALITY,
    Actuator,
    ActuatorLimits,
    Allowed,
    Blocked,
    Code,
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
from engine.safety import Guard

T0 = 1_780_000_000.0
REFS = ("a.x", "a.y", "b.z")
ALL_REFS = (*REFS, "a.bad", "a.nope")
SENSORS = ("a.s1", "b.s2")
SERVER = ("safety", "lease")


# --------------------------------------------------------------------------
# random deployments


@st.composite
def actuator_limits(draw: st.DrawFn, ref: str) -> ActuatorLimits:
    pwm = None
    if draw(st.booleans()):
        lo = draw(st.sampled_from([0.0, 0.1, 0.3]))
        pwm = (lo, draw(st.sampled_from([0.5, 0.8, 1.0])))
    return ActuatorLimits(
        actuator=ref,
        max_runtime=draw(st.none() | st.sampled_from([10.0, 45.0, 120.0, 600.0])),
        min_off=draw(st.none() | st.sampled_from([5.0, 30.0, 100.0, 300.0])),
        max_starts=draw(st.none() | st.tuples(st.integers(1, 4), st.sampled_from([60.0, 600.0, 3600.0]))),
        on_sensor_loss=draw(st.sampled_from(["off", "hold", "on"])),
        pwm=pwm,
        rate_limit=draw(st.none() | st.tuples(st.integers(1, 5), st.sampled_from([10.0, 60.0, 120.0]))),
        out_of_range=draw(st.sampled_from(["block", "clamp"])),
    )


@st.composite
def deployments(draw: st.DrawFn) -> Deployment:
    a = Device("a", "ESP_A",
               sensors=(Sensor("a", "s1", 32, "flow"), Sensor("a", "t", 13, "ds18b20")),
               actuators=(Actuator("a", "x", 16, "pump"), Actuator("a", "y", 17, "pwm"),
                          Actuator("a", "bad", 13, "relay")))
    b = Device("b", "ESP_B", sensors=(Sensor("b", "s2", 33, "flow"),),
               actuators=(Actuator("b", "z", 18, "valve"),))
    limits = {ref: draw(actuator_limits(ref)) for ref in REFS if draw(st.booleans())}
    locks: list[Interlock] = []
    if draw(st.booleans()):
        pair = draw(st.permutations(REFS))[:2]
        locks.append(Interlock("pair", never_together=tuple(pair)))
    if draw(st.booleans()):
        locks.append(Interlock("needs", actuator=draw(st.sampled_from(REFS)),
                               only_if=Comparison("a.s1", "above", 10.0)))
    rules = []
    if draw(st.booleans()):
        rules.append(Rule("r", "level", Comparison("b.s2", "below", 5.0,
                                                   fresh=draw(st.sampled_from([None, None, 20.0, 900.0]))),
                          (SetActuator(draw(st.sampled_from(REFS)), 1.0),)))
    defaults = SafetyDefaults(stale_after=draw(st.sampled_from([30.0, 120.0, 600.0])),
                              lease=draw(st.sampled_from([10.0, 60.0])))
    return Deployment(devices={"a": a, "b": b},
                      safety=Safety(defaults=defaults, actuators=limits, interlocks=tuple(locks)),
                      rules=tuple(rules))


values = st.sampled_from([0.0, 1.0, 0.0, 1.0, 0.05, 0.2, 0.5, 0.9, 1.5, -1.0, math.nan])
command = st.tuples(
    st.just("command"), st.sampled_from((*REFS, *REFS, "a.bad", "a.nope")), values,
    st.none() | st.sampled_from([5.0, 60.0, 900.0]), st.booleans(), st.sampled_from([False, False, False, True]), st.sampled_from(["rule", "manual", "cli"]))
advance = st.tuples(st.just("advance"), st.sampled_from([0.0, 0.5, 3.0, 10.0, 10.0, 40.0, 130.0, 700.0]))
reading = st.tuples(st.just("reading"), st.sampled_from(SENSORS), st.sampled_from([0.0, 8.0, 20.0, 20.0]),
                    st.sampled_from(["good", "good", "good", "bad", "stale"]))
rare = st.one_of(
    st.tuples(st.just("online"), st.sampled_from(["a", "b"]), st.booleans()),
    st.tuples(st.just("estop"), st.sampled_from(["all", "a", "b"])),
    st.tuples(st.just("restart")),
)
reset = st.tuples(st.just("reset"), st.sampled_from(["all", "all", "a", "b"]))
ops = st.one_of(advance, advance, advance, command, command, command, command, reading, reading, rare, reset)


# --------------------------------------------------------------------------
# the independent re-implementation of the limits


@dataclass
class Track:
    value: float = 0.0
    on_since: float | None = None
    off_since: float | None = None
    starts: list[float] = field(default_factory=list)
    counted: list[float] = field(default_factory=list)


class Reference:
    def __init__(self, d: Deployment, assume_online: bool) -> None:
        self.d = d
        self.defaults = d.safety.defaults
        self.track = {r: Track() for r in (*REFS, "a.bad")}
        self.latched: set[str] = set()
        #: stopped by an emergency stop and not started by a command since
        self.stopped: set[str] = set()
        self.online: dict[str, bool] = {}
        self.assume_online = assume_online
        self.readings: dict[str, tuple[float, float, str]] = {}
        #: actuator -> sensor -> freshness limit (a condition's fresh, else stale_after)
        self.watched: dict[str, dict[str, float]] = {}
        for rule in d.rules:
            for act in rule.actions:
                assert isinstance(act, SetActuator) and isinstance(rule.condition, Comparison)
                c = rule.condition
                limit = self.defaults.stale_after if c.fresh is None else c.fresh
                mine = self.watched.setdefault(act.actuator, {})
                mine[c.sensor] = min(mine.get(c.sensor, limit), limit)

    def limits(self, ref: str) -> ActuatorLimits:
        return self.d.safety.actuators.get(ref) or ActuatorLimits(ref)

    def fresh(self, sensor: str, now: float, start: float, limit: float | None = None) -> bool:
        """Not older than the limit (a reading exactly that old is still fresh; the
        clock resolution is 1 ms; lenient by 1 us either side of that)."""
        limit = self.defaults.stale_after if limit is None else limit
        r = self.readings.get(sensor)
        if r is None:
            return now - start < limit + 0.001 + 1e-6
        return r[2] in USABLE_QUALITY and now - r[1] < limit + 0.001 + 1e-6

    def violations(self, cmd: Command, now: float, start: float) -> list[str]:
        """Every limit an allowed non-OFF ``cmd`` at ``now`` would break."""
        ref, v = cmd.actuator, cmd.value
        dev = ref.split(".")[0]
        bad = []
        if ref not in REFS:
            bad.append("not configured or gpio conflict")
            return bad
        lim, t = self.limits(ref), self.track[ref]
        if "all" in self.latched or dev in self.latched:
            bad.append("emergency")
        if not self.online.get(dev, self.assume_online):
            bad.append("offline")
        if not 0.0 <= v <= 1.0 or (lim.pwm and not lim.pwm[0] <= v <= lim.pwm[1]):
            bad.append("range")
        running = t.value > 0.0
        if not running:
            if lim.min_off is not None and t.off_since is not None and now - t.off_since < lim.min_off:
                bad.append("min_off")
            if lim.max_starts is not None:
                n, per = lim.max_starts
                if len([s for s in t.starts if now - s < per]) >= n:
                    bad.append("max_starts")
        elif lim.max_runtime is not None and t.on_since is not None and now - t.on_since >= lim.max_runtime - 1e-6:
            bad.append("max_runtime")
        if lim.max_runtime is not None:
            left = lim.max_runtime - (now - t.on_since if running and t.on_since is not None else 0.0)
            if cmd.duration is None or cmd.duration > left + 1e-6:
                bad.append("duration beyond max_runtime")
        if lim.rate_limit is not None and cmd.source not in SERVER:
            n, per = lim.rate_limit
            if len([s for s in t.counted if now - s < per]) >= n:
                bad.append("rate_limit")
        for lock in self.d.safety.interlocks:
            if ref in lock.never_together and any(
                    self.track[o].value > 0 for o in lock.never_together if o != ref):
                bad.append("never_together")
            if lock.actuator == ref and lock.only_if is not None:
                r = self.readings.get(lock.only_if.sensor)
                if r is None or not self.fresh(lock.only_if.sensor, now, start) or not r[0] > 10.0:
                    bad.append("only_if")
        watched = self.watched.get(ref, {})
        if any(not self.fresh(s, now, start, limit) for s, limit in watched.items()):
            if lim.on_sensor_loss == "off":
                bad.append("sensor lost (off)")
            elif lim.on_sensor_loss == "hold" and (not running or v != t.value):
                bad.append("sensor lost (hold)")
        return bad

    def sent(self, cmd: Command, now: float) -> None:
        t = self.track[cmd.actuator]
        if cmd.value > 0.0:
            if t.value <= 0.0:
                t.on_since = now
                t.starts.append(now)
            if cmd.source not in SERVER:
                t.counted.append(now)
        elif t.value > 0.0:
            t.off_since, t.on_since = now, None
        t.value = max(cmd.value, 0.0)

    def running_violations(self, now: float, start: float) -> list[str]:
        """What must never be true between two instants once tick ran."""
        bad = []
        for ref in REFS:
            t, lim = self.track[ref], self.limits(ref)
            if t.value <= 0.0:
                continue
            if lim.max_runtime is not None and t.on_since is not None and now - t.on_since >= lim.max_runtime - 1e-6:
                bad.append(f"{ref} ran past max_runtime")
            if lim.on_sensor_loss == "off" and any(not self.fresh(s, now, start, limit)
                                                   for s, limit in self.watched.get(ref, {}).items()):
                bad.append(f"{ref} runs with a lost sensor")
            for lock in self.d.safety.interlocks:
                if lock.actuator == ref and lock.only_if is not None:
                    r = self.readings.get(lock.only_if.sensor)
                    if r is None or not self.fresh(lock.only_if.sensor, now, start) or not r[0] > 10.0:
                        bad.append(f"{ref} runs without its only_if")
                if ref in lock.never_together and any(
                        self.track[o].value > 0 for o in lock.never_together if o != ref):
                    bad.append(f"{ref} runs together with its interlock partner")
        return bad


# --------------------------------------------------------------------------


def _record(ref: Reference, verdicts: list[Allowed], now: float, start: float) -> None:
    for a in verdicts:
        if a.command.value > 0.0:
            assert a.command.actuator not in ref.stopped, "an emergency-stopped actuator came back by itself"
            problems = ref.violations(a.command, now, start)
            assert not problems, f"server ON {a.command} at +{now - T0}: {problems}"
        ref.sent(a.command, now)


@settings(max_examples=200)
@given(deployments(), st.booleans(), st.lists(ops, min_size=20, max_size=80))
def test_no_allowed_command_ever_breaks_a_limit(d: Deployment, assume_online: bool, steps: list[tuple]) -> None:
    run(d, assume_online, steps)


def random_steps(rnd: random.Random, n: int) -> list[tuple]:
    """Long, busy sequences: mostly commands and short waits, a stop now and then."""
    steps: list[tuple] = []
    for _ in range(n):
        x = rnd.random()
        if x < 0.35:
            steps.append(("advance", rnd.choice([0.0, 1.0, 3.0, 10.0, 30.0, 60.0, 200.0])))
        elif x < 0.80:
            steps.append(("command", rnd.choice((*REFS, *REFS, *REFS, "a.bad", "a.nope")),
                          rnd.choice([0.0, 1.0, 1.0, 0.0, 0.3, 0.6, 0.9, 0.05, 1.5]),
                          rnd.choice([None, None, 5.0, 60.0, 900.0]), rnd.random() < 0.3,
                          rnd.random() < 0.1, rnd.choice(["rule", "manual", "cli"])))
        elif x < 0.93:
            steps.append(("reading", rnd.choice(SENSORS), rnd.choice([0.0, 20.0, 20.0, 20.0]),
                          rnd.choice(["good"] * 6 + ["bad"])))
        elif x < 0.96:
            steps.append(("online", rnd.choice("ab"), rnd.random() < 0.7))
        elif x < 0.975:
            steps.append(("estop", rnd.choice(["all", "a", "b"])))
        elif x < 0.995:
            steps.append(("reset", rnd.choice(["all", "all", "a", "b"])))
        else:
            steps.append(("restart",))
    return steps


@settings(max_examples=150)
@given(deployments(), st.randoms(use_true_random=False))
def test_long_busy_sequences_never_break_a_limit(d: Deployment, rnd: random.Random) -> None:
    run(d, rnd.random() < 0.8, random_steps(rnd, 300))


def run(d: Deployment, assume_online: bool, steps: list[tuple]) -> None:
    g = Guard(d, assume_online=assume_online, start=T0)
    ref = Reference(d, assume_online)
    now = start = T0
    for op in steps:
        kind = op[0]
        if kind == "advance":
            target = now + op[1]
            for _ in range(10_000):
                due = g.next_due()
                if due is None or due > target:
                    break
                assert due >= now - 1e-9, "next_due went backwards"
                now = max(now, due)
                out = g.tick(now)
                assert not out.emergencies
                _record(ref, out.sent, now, start)
                for b in out.blocked:
                    assert b.command.source == "lease"
            else:
                raise AssertionError("tick never settles: next_due stays due")
            now = target
            g.tick(now)  # nothing may be due here, but calling it is harmless
            assert not (problems := ref.running_violations(now, start)), problems
        elif kind == "command":
            _, actuator, value, duration, hold, toggle, source = op
            cmd = Command(actuator, value, duration=duration, hold=hold, toggle=toggle, source=source)
            latched = "all" in ref.latched or actuator.split(".")[0] in ref.latched
            v = g.check(cmd, now)
            if isinstance(v, Allowed):
                if v.command.value > 0.0:
                    assert not (problems := ref.violations(v.command, now, start)), (v.command, problems)
                    assert not latched
                if actuator in ref.track:
                    ref.sent(v.command, now)
                    ref.stopped.discard(actuator)
            else:
                assert isinstance(v, Blocked) and v.reason and v.code is not Code.CONFLICT
                if v.command.value <= 0.0 and not v.command.toggle:
                    # OFF is only ever refused for an actuator that does not exist
                    assert actuator == "a.nope" and v.code is Code.ACTUATOR_NOT_CONFIGURED
                if (latched and v.command.value > 0.0) or math.isnan(v.command.value):
                    assert v.code is Code.EMERGENCY_STOP_ACTIVE or not latched
            if latched and (toggle or not value <= 0.0):
                # everything was switched off by the stop, so a toggle means ON too
                assert isinstance(v, Blocked), "a latched emergency stop let an ON through"
                assert v.code is Code.EMERGENCY_STOP_ACTIVE
        elif kind == "reading":
            _, sensor, value, quality = op
            g.reading(Reading(sensor, value, now, quality=quality))
            ref.readings[sensor] = (value, now, quality)
        elif kind == "online":
            g.device_online(op[1], op[2], now)
            ref.online[op[1]] = op[2]
        elif kind == "estop":
            out = g.emergency_stop(op[1], "test", "hypothesis", now)
            ref.latched.add(op[1])
            assert out.emergencies and out.emergencies[0].active
            assert all(a.command.value == 0.0 for a in out.sent)
            _record(ref, out.sent, now, start)
            stopped = {r for r in (*REFS, "a.bad") if op[1] == "all" or r.startswith(op[1] + ".")}
            assert {a.command.actuator for a in out.sent} == stopped
            ref.stopped |= stopped
        elif kind == "reset":
            out = g.reset(op[1], "hypothesis", "test", now)
            assert not out.sent, "a reset must never switch anything"
            if op[1] == "all":
                ref.latched.clear()
            else:
                ref.latched.discard(op[1])
        elif kind == "restart":
            data = json.loads(json.dumps(g.snapshot()))
            g = Guard(d, assume_online=assume_online)
            g.restore(data)
            ref.online.clear()  # a restarted server has seen no board yet
            for dev in ("a", "b"):
                assert g.emergency_active(dev) == ("all" in ref.latched or dev in ref.latched)
