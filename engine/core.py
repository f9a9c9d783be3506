"""The rule engine's core: readings and clock ticks in, decisions out. No I/O.

``Engine(deployment)`` decides with the Rete network (engine/rete.py) over facts
that Kaiser's clock-side code keeps current (docs/engine.md has the split). The
part after a rule's truth is known (edges and levels, cooldowns, actions, ``wait``,
arbitration, the loop guard) lives in ``BaseEngine`` and is shared with the
reference evaluator (engine/reference.py), which decides truth by plain recursion.

Truth is three-valued (docs/engine.md): a condition on a reading that is bad,
absent or too old is *unknown*. The network finds the rules that are true; when a
rule that was true is no longer, Kaiser tells false (release, re-arm) from unknown
(keep the state) with ``engine.conditions.truth_of``. Every leaf's meaning is its
entry in ``engine.conditions``.

Every public method takes ``now`` (Unix seconds) and returns ``Decisions``.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from engine import actions as A
from engine import compiler as C
from engine import freshness
from engine.conditions import (
    FALSE,
    TRUE,
    UNKNOWN,
    LeafState,
    Truth,
    kind_of,
    leaves,
    sensors_of,
    truth_of,
)
from engine.errors import EngineError
from engine.model import (
    Action,
    All,
    Blocked,
    Code,
    Command,
    Condition,
    Deployment,
    EmergencyStop,
    Event,
    Follow,
    Notification,
    Notify,
    Reading,
    Rule,
    RuleRun,
    SetActuator,
    Wait,
)

SNAPSHOT_VERSION = 1
#: the network's fact of a sensor with no usable reading
_UNKNOWN_SENSOR = {"ok": 0, "v": 0}


@dataclass(frozen=True, slots=True)
class EmergencyRequest:
    """An ``emergency_stop`` action: the pipeline hands it to the guard."""

    target: str
    reason: str
    rule: str


@dataclass(slots=True)
class Decisions:
    """What one engine step decided, in order. ``commands`` won arbitration and
    still have to pass the guard; ``blocked`` lost (CONFLICT) or were suspended."""

    commands: list[Command] = field(default_factory=list)
    blocked: list[Blocked] = field(default_factory=list)
    runs: list[RuleRun] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    emergencies: list[EmergencyRequest] = field(default_factory=list)

    def extend(self, other: Decisions) -> None:
        self.commands.extend(other.commands)
        self.blocked.extend(other.blocked)
        self.runs.extend(other.runs)
        self.notifications.extend(other.notifications)
        self.events.extend(other.events)
        self.emergencies.extend(other.emergencies)

    def __bool__(self) -> bool:
        return bool(self.commands or self.blocked or self.runs or self.notifications or self.events or self.emergencies)


@dataclass(slots=True)
class _Proposal:
    command: Command
    rule: Rule


@dataclass(slots=True)
class _Batch:
    now: float
    proposals: list[_Proposal] = field(default_factory=list)
    out: Decisions = field(default_factory=Decisions)


def _tz(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except Exception:
        return ZoneInfo("UTC")


class BaseEngine:
    """Inputs, rule state and decisions; subclasses decide truth."""

    def __init__(self, deployment: Deployment, *, start: float | None = None, version: str = "") -> None:
        self.version = version
        self._start = start
        self._now: float | None = None
        # inputs
        self._readings: dict[str, tuple[float | None, float, str]] = {}  # ref -> (value, ts, quality)
        self._last_data: dict[str, float] = {}
        self._history: dict[str, list[tuple[float, float]]] = {}
        self._devices: dict[str, int] = {}  # 1 online, 0 offline
        self._actuators: dict[str, float] = {}  # reported duty
        self._commanded: dict[str, float] = {}
        # rule state
        self._prev: dict[str, bool] = {}
        self._last_run: dict[str, float] = {}
        self._cooldown_ends: list[float] = []  # heap: instants a cooldown ends
        self._holds: dict[str, list[str]] = {}
        self._held_by: dict[str, set[str]] = {}  # actuator -> rules holding it
        self._waits: list[tuple[float, int, str, str, int]] = []  # (due, seq, rule, list, index)
        self._wait_seq = 0
        #: rule|actuator -> when it switched in the last minute, oldest first
        self._switches: dict[str, deque[float]] = {}
        self._suspended: set[str] = set()
        self._follow_last: dict[tuple[str, str], float] = {}  # (rule, actuator) -> last duty proposed
        self._moved: list[str] = []  # followed sensors read in this step
        self._reevaluate = False  # after restore: read every rule at the next step
        self._install(deployment)

    # ------------------------------------------------------------------ setup
    def _install(self, dep: Deployment) -> None:
        self._dep = dep
        self._tzinfo = _tz(dep.tz)
        self._stale_after = dep.safety.defaults.stale_after
        self._max_switches = dep.safety.defaults.max_switches_per_minute
        self._rules: dict[str, Rule] = {r.name: r for r in dep.rules if r.enabled}
        self._index = {r.name: (r.index, i) for i, r in enumerate(dep.rules)}
        self._keep_history: dict[str, float] = {}
        #: rule -> (ref, a device of the map, an actuator of the map) of each fact its condition reads
        self._trigger_refs: dict[str, list[tuple[str, bool, bool]]] = {}
        self._summaries: dict[str, tuple[Rule, tuple[str, ...]]] = {}  # rule -> its actions described
        #: (id(rule), id(action), hold) -> (rule, action, its command) of actions with a fixed value:
        #: the same immutable command at every run (the entry keeps both ids theirs)
        self._fixed: dict[tuple[int, int, bool], tuple[Rule, SetActuator, Command]] = {}
        #: sensor -> (rule, index in ``hold``) of computed duties that follow it
        self._followers: dict[str, list[tuple[str, int]]] = {}
        for r in self._rules.values():
            refs = sensors_of(r.condition)
            for leaf in leaves(r.condition):
                kind = kind_of(leaf)
                hist = kind.history(leaf)
                if hist is not None:
                    self._keep_history[hist[0]] = max(self._keep_history.get(hist[0], 0.0), hist[1])
                for what, ref in kind.refs(leaf):
                    if what != "sensor" and ref not in refs:
                        refs.append(ref)
            # what each ref is, looked up once (RuleRun.trigger is made at every run)
            self._trigger_refs[r.name] = [(ref, ref in dep.devices, dep.actuator(ref) is not None) for ref in refs]
            if r.kind == "level":
                for i, a in enumerate(r.actions):
                    if isinstance(a, SetActuator) and isinstance(a.state, Follow):
                        self._followers.setdefault(a.state.sensor, []).append((r.name, i))

    # ------------------------------------------------------------------ truth (subclasses)
    def _truth(self, rule: str) -> bool:
        """The rule's condition is true now."""
        raise NotImplementedError

    def _false(self, rule: str) -> bool:
        """The rule's condition is false now (not true and not unknown). Asked only when
        a rule that was true is no longer true."""
        raise NotImplementedError

    def _advance(self, now: float) -> set[str]:
        """Apply everything time-based due at or before ``now``; rules to re-read."""
        raise NotImplementedError

    def _pulse(self, now: float, on: bool) -> set[str]:
        """Raise (on) or lower the ``at``/``every`` triggers due now; rules to re-read."""
        raise NotImplementedError

    def _on_sensor(self, ref: str, now: float, reading: bool) -> set[str]:
        """A sensor's state changed: a new reading (``reading``) or its age."""
        raise NotImplementedError

    def _on_device(self, device: str, now: float) -> set[str]:
        raise NotImplementedError

    def _on_actuator(self, ref: str, now: float) -> set[str]:
        raise NotImplementedError

    def _truth_due(self) -> float | None:
        raise NotImplementedError

    def _truth_snapshot(self) -> dict[str, object]:
        raise NotImplementedError

    def _truth_restore(self, d: dict[str, object], now: float) -> None:
        raise NotImplementedError

    def _truth_reload(self, dep: Deployment, now: float) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ inputs (engine.conditions.Inputs)
    @property
    def start(self) -> float | None:
        return self._start

    @property
    def tzinfo(self) -> ZoneInfo:
        return self._tzinfo

    def usable(self, ref: str, now: float, limit: float | None = None) -> float | None:
        """The sensor's latest value if it is usable at ``now`` (engine.freshness: a
        usable quality, not older than ``limit``, default ``stale_after``), else None."""
        return freshness.value(self._readings.get(ref), now, self._stale_after if limit is None else limit)

    def lost_at(self, ref: str, limit: float | None = None) -> float | None:
        """When the latest reading turns unknown; None when it has no usable value."""
        r = self._readings.get(ref)
        if r is None or not freshness.has_value(r):
            return None
        return freshness.lost_at(r[1], self._stale_after if limit is None else limit)

    def recent(self, ref: str) -> Sequence[tuple[float, float]]:
        return self._history.get(ref, ())

    def last_data(self, ref: str) -> float | None:
        return self._last_data.get(ref)

    def device_status(self, device: str) -> int:
        return self._devices.get(device, -1)

    def actuator_value(self, ref: str) -> float | None:
        return self._actuators.get(ref)

    def latest(self, ref: str) -> float | None:
        """The latest value of a sensor ref (any quality), or None."""
        r = self._readings.get(ref)
        return None if r is None else r[0]

    def _store_reading(self, r: Reading, now: float) -> None:
        v = C.normalise(r.value)
        ts = r.ts if isinstance(r.ts, (int, float)) and math.isfinite(r.ts) else now
        self._readings[r.sensor] = (v, ts, r.quality)
        self._last_data[r.sensor] = now
        within = self._keep_history.get(r.sensor)
        if within is not None:
            h = self._history.setdefault(r.sensor, [])
            u = self.usable(r.sensor, now)
            if u is not None:
                h.append((now, u))
            while h and now - h[0][0] >= within:
                h.pop(0)

    def window(self, ref: str, within: float, now: float) -> list[float]:
        """Usable values of ``ref`` received in the last ``within`` seconds."""
        return [v for t, v in self._history.get(ref, ()) if now - t < within]

    # ------------------------------------------------------------------ public API
    def receive(self, reading: Reading, now: float) -> Decisions:
        """A sensor reading. Retained readings fill state but fire no edge."""
        return self._step(now, lambda: self._land((reading,), now), fire=not reading.retained)

    def receive_many(self, readings: Sequence[Reading], now: float) -> Decisions:
        """Readings that arrived together (one test step, one ``sensor/batch``
        message): all are stored first, then the rules are evaluated once. Of two
        readings of one ref the later wins. Retained ones fill state first and fire
        nothing."""
        out = Decisions()
        for group in ([r for r in readings if r.retained], [r for r in readings if not r.retained]):
            if not group:
                continue
            out.extend(self._step(now, lambda group=group: self._land(group, now),  # type: ignore[misc]
                                  fire=not group[0].retained))
        return out

    def _land(self, readings: Sequence[Reading], now: float) -> set[str]:
        """Store readings, then bring what reads them up to date; the rules to re-read."""
        for r in readings:
            self._store_reading(r, now)
        refs = [readings[0].sensor] if len(readings) == 1 else list(dict.fromkeys(r.sensor for r in readings))
        affected: set[str] = set()
        for ref in refs:
            if ref in self._followers:
                self._moved.append(ref)
            affected |= self._on_sensor(ref, now, True)
        return affected

    def tick(self, now: float) -> Decisions:
        """Advance the clock: ``for:`` timers, windows, triggers, waits, staleness."""
        return self._step(now, set)

    def device_state(self, device: str, online: bool, now: float) -> Decisions:
        """A device came online (heartbeat/data) or went offline."""
        def apply() -> set[str]:
            st = 1 if online else 0
            if self._devices.get(device) == st:
                return set()
            self._devices[device] = st
            return self._on_device(device, now)

        return self._step(now, apply)

    def actuator_reported(self, ref: str, value: float, now: float) -> Decisions:
        """The state an actuator reports (duty 0.0-1.0)."""
        def apply() -> set[str]:
            v = C.normalise(value)
            if v is None:
                return set()
            self._actuators[ref] = v
            return self._on_actuator(ref, now)

        return self._step(now, apply)

    def commanded(self, ref: str, value: float) -> None:
        """The guard allowed ``value`` for ``ref`` (used to resolve ``toggle``)."""
        self._commanded[ref] = value

    def next_due(self) -> float | None:
        """Earliest instant something time-based is due (None: nothing pending)."""
        cands: list[float] = []
        t = self._truth_due()
        if t is not None:
            cands.append(t)
        if self._waits:
            cands.append(min(w[0] for w in self._waits))
        ends = self._cooldown_ends
        while ends and self._now is not None and ends[0] <= self._now:
            heapq.heappop(ends)
        if ends:
            cands.append(ends[0])
        return min(cands) if cands else None

    def is_true(self, rule: str) -> bool:
        """The rule's remembered truth (kept while its condition is unknown)."""
        return self._prev.get(rule, False)

    def true_now(self, rule: str) -> bool:
        """The rule's condition is true now (not merely remembered as true)."""
        return rule in self._rules and self._truth(rule)

    def holds(self) -> dict[str, list[str]]:
        """Level rules currently holding -> the actuators they hold."""
        return {k: list(v) for k, v in self._holds.items()}

    def holding(self, rule: str, ref: str) -> bool:
        return ref in self._holds.get(rule, ())

    def rule_sensors(self, rule: str) -> tuple[str, ...]:
        """Sensor refs a rule reads: its condition's and its computed duties'."""
        r = self._rules.get(rule)
        if r is None:
            return ()
        out = dict.fromkeys(sensors_of(r.condition))
        for a in (*r.actions, *(r.release or ())):
            out.update(dict.fromkeys(A.action_sensors(a)))
        return tuple(out)

    def holder(self, ref: str) -> str | None:
        """The top-ranked rule holding ``ref`` (None: no rule holds it)."""
        holders = [self._rules[h] for h in self._held_by.get(ref, ()) if h in self._rules]
        return max(holders, key=self._rank).name if holders else None

    def trigger(self, rule: str) -> dict[str, float | None]:
        """The facts a rule's condition reads, as RuleRun.trigger shows them."""
        return self._trigger(self._rules[rule]) if rule in self._rules else {}

    def hold_command(self, ref: str) -> Command | None:
        """The command the top-ranked rule holding ``ref`` holds it with now (a
        computed duty at the sensor's latest value), None when no rule holds it."""
        holders = [self._rules[h] for h in self._held_by.get(ref, ()) if h in self._rules]
        if not holders:
            return None
        rule = max(holders, key=self._rank)
        act = next((a for a in reversed(rule.actions) if isinstance(a, SetActuator) and a.actuator == ref), None)
        if act is None:
            return None
        return self._command(rule, act, True, self._now if self._now is not None else 0.0, None)

    # ------------------------------------------------------------------ the step
    def _step(self, now: float, apply: Callable[[], set[str]], fire: bool = True) -> Decisions:
        batch = _Batch(now)
        first = self._start is None or self._now is None
        if self._start is None:
            self._start = now
        if self._now is not None and now < self._now:
            now = self._now  # the clock never goes backwards here
            batch.now = now
        self._now = now
        affected = self._advance(now)
        if first or self._reevaluate:
            self._reevaluate = False
            affected |= set(self._rules)
        if fire:
            affected |= apply()
        pulsed = self._pulse(now, True)
        self._evaluate(affected | pulsed if pulsed else affected, batch, fire=True)
        if pulsed:
            self._evaluate(self._pulse(now, False), batch, fire=True)
        if not fire:
            self._evaluate(apply(), batch, fire=False)
        if self._moved:
            if fire:
                self._track(batch)
            self._moved = []
        self._run_waits(now, batch)
        self._arbitrate(batch)
        return batch.out

    def _order(self, names: Iterable[str]) -> list[str]:
        rules = self._rules
        found = [n for n in names if n in rules]
        if len(found) > 1:
            found.sort(key=self._index.__getitem__)
        return found

    def _evaluate(self, names: Iterable[str], batch: _Batch, fire: bool) -> None:
        for name in self._order(names):
            rule = self._rules[name]
            was = self._prev.get(name, False)
            if self._truth(name):
                if was:
                    continue
                now_true = True
            elif not was or not self._false(name):
                continue  # false, or unknown: the rule keeps its state (nothing fires or releases)
            else:
                now_true = False
            self._prev[name] = now_true
            if not fire:
                continue
            if rule.kind == "edge":
                if now_true:
                    self._run(rule, batch)
            elif now_true:
                self._run(rule, batch)
            elif name in self._holds:
                self._release(rule, batch)

    def _run(self, rule: Rule, batch: _Batch) -> None:
        now = batch.now
        last = self._last_run.get(rule.name)
        trigger = self._trigger(rule)
        if rule.cooldown > 0 and last is not None and now - last < rule.cooldown:
            batch.out.runs.append(RuleRun(rule.name, now, trigger, (), "skipped_cooldown", self.version))
            return
        self._last_run[rule.name] = now
        if rule.cooldown > 0:
            heapq.heappush(self._cooldown_ends, now + rule.cooldown)
        if rule.kind == "level":
            self._holds[rule.name] = [a.actuator for a in rule.actions if isinstance(a, SetActuator)]
            for ref in self._holds[rule.name]:
                self._held_by.setdefault(ref, set()).add(rule.name)
        self._run_actions(rule, "hold" if rule.kind == "level" else "then", 0, batch)
        summary = self._summaries.get(rule.name)
        if summary is None or summary[0] is not rule:
            summary = self._summaries[rule.name] = (rule, tuple(A.describe(a) for a in rule.actions))
        batch.out.runs.append(RuleRun(rule.name, now, trigger, summary[1], "ran", self.version))

    def _release(self, rule: Rule, batch: _Batch) -> None:
        held = self._holds.pop(rule.name, [])
        for ref in held:
            holders = self._held_by.get(ref)
            if holders is not None:
                holders.discard(rule.name)
                if not holders:
                    del self._held_by[ref]
        self._waits = [w for w in self._waits if not (w[2] == rule.name and w[3] == "hold")]
        for ref in held:
            self._follow_last.pop((rule.name, ref), None)
        if rule.release is not None:
            self._run_actions(rule, "release", 0, batch)
            summary = tuple(A.describe(a) for a in rule.release)
        else:
            for ref in dict.fromkeys(held):
                batch.proposals.append(_Proposal(
                    Command(ref, 0.0, None, "rule", rule.name, rule.priority, f"rule {rule.name} released its hold"),
                    rule,
                ))
            summary = tuple(f"set {ref} off" for ref in dict.fromkeys(held))
        batch.out.runs.append(RuleRun(rule.name, batch.now, self._trigger(rule), summary, "released", self.version))

    def _actions_of(self, rule: Rule, which: str) -> tuple[Action, ...]:
        if which == "release":
            return rule.release or ()
        return rule.actions

    def _run_actions(self, rule: Rule, which: str, start: int, batch: _Batch) -> None:
        actions = self._actions_of(rule, which)
        for i in range(start, len(actions)):
            a = actions[i]
            if isinstance(a, Wait):
                self._wait_seq += 1
                self._waits.append((batch.now + a.duration, self._wait_seq, rule.name, which, i + 1))
                return
            if isinstance(a, SetActuator):
                cmd = self._command(rule, a, which == "hold", batch.now, batch)
                if cmd is not None:
                    batch.proposals.append(_Proposal(cmd, rule))
            elif isinstance(a, Notify):
                batch.out.notifications.append(Notification(batch.now, a.level, self.render(a.text), rule.name))
            elif isinstance(a, EmergencyStop):
                batch.out.emergencies.append(EmergencyRequest(a.target, a.reason, rule.name))

    def _run_waits(self, now: float, batch: _Batch) -> None:
        while self._waits:
            due = [w for w in self._waits if w[0] <= now]
            if not due:
                return
            w = min(due)
            self._waits.remove(w)
            rule = self._rules.get(w[2])
            if rule is None or (w[3] == "hold" and w[2] not in self._holds):
                continue
            self._run_actions(rule, w[3], w[4], batch)

    def _command(self, rule: Rule, a: SetActuator, hold: bool, now: float, batch: _Batch | None) -> Command | None:
        """The command an actuator action asks for now. A computed duty whose sensor is
        unknown keeps a hold's last duty; with none to keep, nothing is sent (an event
        says why, when ``batch`` is given)."""
        state = a.state
        toggle = state == "toggle"
        if not toggle and not isinstance(state, Follow):
            key = (id(rule), id(a), hold)
            hit = self._fixed.get(key)
            if hit is None or hit[0] is not rule or hit[1] is not a:
                hit = self._fixed[key] = (rule, a, Command(a.actuator, float(state), a.for_, "rule", rule.name,
                                                           rule.priority, self._reason(rule), False, hold))
            return hit[2]
        reason = self._reason(rule)
        if isinstance(state, Follow):
            x = self.usable(state.sensor, now)
            if x is not None:
                value = A.duty(state, x)
                reason += f" ({state.sensor} {x:g} -> duty {value:g})"
            else:
                last = self._follow_last.get((rule.name, a.actuator)) if hold else None
                if last is None:
                    if batch is not None:
                        why = (f"rule {rule.name}: no duty for {a.actuator}: {state.sensor} has no fresh "
                               "reading to compute it from")
                        batch.out.events.append(Event(now, "rule", "warning", rule.name, why,
                                                      {"rule": rule.name, "actuator": a.actuator,
                                                       "sensor": state.sensor}))
                    return None
                value = last
            if hold:
                self._follow_last[(rule.name, a.actuator)] = value
        else:  # toggle
            cur = self._actuators.get(a.actuator, self._commanded.get(a.actuator, 0.0))
            value = 0.0 if cur > 0 else 1.0
        return Command(a.actuator, value, a.for_, "rule", rule.name, rule.priority, reason, toggle, hold)

    @staticmethod
    def _reason(rule: Rule) -> str:
        return f"rule {rule.name}: {rule.description}" if rule.description else f"rule {rule.name}"

    def _track(self, batch: _Batch) -> None:
        """Computed duties of holding rules follow their sensor: re-sent when the duty
        moved by at least the action's ``step`` since it was last sent."""
        now = batch.now
        for sensor in dict.fromkeys(self._moved):
            x = self.usable(sensor, now)
            if x is None:
                continue  # unknown: the hold keeps its duty
            for name, i in self._followers.get(sensor, ()):
                rule = self._rules.get(name)
                if rule is None or name not in self._holds:
                    continue
                a = rule.actions[i]
                assert isinstance(a, SetActuator) and isinstance(a.state, Follow)
                last = self._follow_last.get((name, a.actuator))
                d = A.duty(a.state, x)
                if last is not None and abs(d - last) < a.state.step - 1e-9:
                    continue
                cmd = self._command(rule, a, True, now, batch)
                if cmd is not None:
                    batch.proposals.append(_Proposal(cmd, rule))

    def _rank(self, rule: Rule) -> tuple[int, int]:
        return (rule.priority, -self._index[rule.name][0])

    def _arbitrate(self, batch: _Batch) -> None:
        if not batch.proposals:
            return
        now = batch.now
        out = batch.out
        by_act: dict[str, list[_Proposal]] = {}
        for p in batch.proposals:
            by_act.setdefault(p.command.actuator, []).append(p)
        for act, props in by_act.items():
            holders = [self._rules[h] for h in self._held_by.get(act, ()) if h in self._rules]
            best: Rule | None = None
            for p in props:
                if best is None or self._rank(p.rule) > self._rank(best):
                    best = p.rule
            assert best is not None
            for h in holders:
                if h.name != best.name and self._rank(h) > self._rank(best):
                    best = h
            for p in props:
                if p.rule.name != best.name:
                    why = (f"rule {p.rule.name} (priority {p.rule.priority}) lost {act} to rule "
                           f"{best.name} (priority {best.priority})")
                    out.blocked.append(Blocked(p.command, Code.CONFLICT, why))
                    out.events.append(Event(now, "conflict", "warning", act, why,
                                            {"winner": best.name, "loser": p.rule.name}))
                    continue
                if self._loop_guard(p, now, out):
                    continue
                out.commands.append(p.command)
                self._commanded[act] = p.command.value

    def _loop_guard(self, p: _Proposal, now: float, out: Decisions) -> bool:
        """True when the command is refused because its rule switches too often."""
        key = f"{p.rule.name}|{p.command.actuator}"
        cmd = p.command
        if key in self._suspended:
            if cmd.is_off:
                return False
            out.blocked.append(Blocked(cmd, Code.RATE_LIMIT,
                                       f"rule {p.rule.name} is suspended for {cmd.actuator} (switching too often)"))
            return True
        times = self._switches.get(key)
        if times is None:
            times = self._switches[key] = deque()
        # a step's now never goes back, so the oldest switches leave the minute first
        # (a list filtered at every command cost O(switches a minute) at high rates)
        while times and now - times[0] >= 60.0:
            times.popleft()
        if len(times) >= self._max_switches and not cmd.is_off:
            self._suspended.add(key)
            self._switches.pop(key, None)
            why = (f"rule {p.rule.name} switched {cmd.actuator} more than {self._max_switches} times a "
                   f"minute; suspended for it until the rules are reloaded")
            out.blocked.append(Blocked(cmd, Code.RATE_LIMIT, why))
            out.events.append(Event(now, "suspended", "critical", p.rule.name, why,
                                    {"rule": p.rule.name, "actuator": cmd.actuator}))
            out.runs.append(RuleRun(p.rule.name, now, self._trigger(p.rule), (), "suspended", self.version))
            return True
        times.append(now)
        return False

    # ------------------------------------------------------------------ helpers
    def _trigger(self, rule: Rule) -> dict[str, float | None]:
        now = self._now if self._now is not None else 0.0
        out: dict[str, float | None] = {}
        for ref, device, actuator in self._trigger_refs.get(rule.name, ()):
            if device:
                st = self._devices.get(ref)
                out[ref] = None if st is None else float(st)
            elif ref in self._actuators or actuator:
                out[ref] = self._actuators.get(ref)
            else:
                out[ref] = self.usable(ref, now)
        return out

    def render(self, text: str) -> str:
        """Replace ``{REF}`` (``{REF:.1f}``) by the latest value of a sensor (or an
        actuator's state); ``?`` for a known sensor without a value."""
        def value(ref: str) -> float | str | None:
            r = self._readings.get(ref)
            if r is not None:
                return "?" if r[0] is None else r[0]
            if ref in self._actuators:
                return self._actuators[ref]
            if self._dep.sensor(ref) is not None:
                return "?"
            return None

        return A.render(text, value)

    # ------------------------------------------------------------------ persistence
    def snapshot(self) -> dict[str, object]:
        """JSON-able state: latest readings, timers, latches, cooldowns, holds, waits."""
        return {
            "version": SNAPSHOT_VERSION,
            "start": self._start,
            "now": self._now,
            "readings": {k: list(v) for k, v in self._readings.items()},
            "last_data": dict(self._last_data),
            "history": {k: [list(e) for e in v] for k, v in self._history.items()},
            "devices": dict(self._devices),
            "actuators": dict(self._actuators),
            "commanded": dict(self._commanded),
            "prev": dict(self._prev),
            "last_run": dict(self._last_run),
            "holds": {k: list(v) for k, v in self._holds.items()},
            "waits": [list(w) for w in self._waits],
            "wait_seq": self._wait_seq,
            "switches": {k: list(v) for k, v in self._switches.items()},
            "suspended": sorted(self._suspended),
            "follow": [[r, a, v] for (r, a), v in self._follow_last.items()],
            "truth": self._truth_snapshot(),
        }

    def restore(self, d: dict[str, object]) -> None:
        """Load a snapshot() (from this or an older config version)."""
        try:
            self._restore(d)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise EngineError(f"cannot restore engine state: {e}") from e

    def _restore(self, d: dict[str, object]) -> None:
        g = d.get
        self._start = g("start")  # type: ignore[assignment]
        self._now = g("now")  # type: ignore[assignment]
        now = float(self._now) if self._now is not None else 0.0
        self._readings = {k: (v[0], float(v[1]), str(v[2])) for k, v in dict(g("readings") or {}).items()}  # type: ignore[call-overload]
        self._last_data = {k: float(v) for k, v in dict(g("last_data") or {}).items()}  # type: ignore[call-overload]
        self._history = {k: [(float(a), float(b)) for a, b in v] for k, v in dict(g("history") or {}).items()}  # type: ignore[call-overload]
        self._devices = {k: int(v) for k, v in dict(g("devices") or {}).items()}  # type: ignore[call-overload]
        self._actuators = {k: float(v) for k, v in dict(g("actuators") or {}).items()}  # type: ignore[call-overload]
        self._commanded = {k: float(v) for k, v in dict(g("commanded") or {}).items()}  # type: ignore[call-overload]
        self._prev = {k: bool(v) for k, v in dict(g("prev") or {}).items() if k in self._rules}  # type: ignore[call-overload]
        self._last_run = {k: float(v) for k, v in dict(g("last_run") or {}).items()}  # type: ignore[call-overload]
        self._cooldown_ends = sorted(t + self._rules[k].cooldown for k, t in self._last_run.items()
                                     if k in self._rules and self._rules[k].cooldown > 0)
        self._holds = {k: list(v) for k, v in dict(g("holds") or {}).items() if k in self._rules}  # type: ignore[call-overload]
        self._reindex_holds()
        self._waits = [(float(w[0]), int(w[1]), str(w[2]), str(w[3]), int(w[4])) for w in list(g("waits") or [])  # type: ignore[call-overload]
                       if w[2] in self._rules]
        self._wait_seq = int(g("wait_seq") or 0)  # type: ignore[call-overload]
        self._switches = {k: deque(sorted(float(t) for t in v)) for k, v in dict(g("switches") or {}).items()}  # type: ignore[call-overload]
        self._suspended = set(g("suspended") or [])  # type: ignore[call-overload]
        self._follow_last = {(str(r), str(a)): float(v) for r, a, v in list(g("follow") or [])  # type: ignore[call-overload]
                             if r in self._holds}
        self._truth_restore(dict(g("truth") or {}), now)  # type: ignore[call-overload]
        self._reevaluate = True

    def _reindex_holds(self) -> None:
        self._held_by = {}
        for name, refs in self._holds.items():
            for ref in refs:
                self._held_by.setdefault(ref, set()).add(name)

    def reload(self, deployment: Deployment, now: float) -> Decisions:
        """Switch to a new deployment, carrying over state; rules that are gone release
        their holds, new rules are evaluated (an already-true new `when` is an edge)."""
        old_rules = self._rules
        batch = _Batch(now)
        self._install(deployment)
        self._truth_reload(deployment, now)
        for name in list(self._holds):
            new_rule = self._rules.get(name)
            if new_rule is None or new_rule.kind != "level":
                # gone, disabled or now a when/then rule: its hold ends here
                rule = old_rules[name]
                self._rules[name] = rule  # temporarily, to release through the normal path
                self._index.setdefault(name, (rule.index, len(self._index)))
                self._release(rule, batch)
                if new_rule is None:
                    del self._rules[name]
                else:
                    self._rules[name] = new_rule
                    self._prev[name] = False
        self._prev = {k: v for k, v in self._prev.items() if k in self._rules}
        self._follow_last = {k: v for k, v in self._follow_last.items() if k[0] in self._holds}
        self._waits = [w for w in self._waits if w[2] in self._rules]
        self._suspended = set()
        self._switches = {}
        self._arbitrate(batch)
        out = batch.out
        out.extend(self._step(now, lambda: set(self._rules)))
        return out


# ==========================================================================
# The Rete engine


class Engine(BaseEngine):
    """Rules decided by the durable-rules Rete network (engine/rete.py)."""

    def __init__(self, deployment: Deployment, *, start: float | None = None, version: str = "") -> None:
        from engine.rete import Network

        self._program = C.compile_program(deployment)
        self._net = Network(self._program)
        self._atoms: dict[str, LeafState] = {}
        self._atoms_by_sensor: dict[str, list[str]] = {}
        self._keys: dict[str, tuple[str, str]] = {}  # sensor ref -> (fact id, staleness timer key)
        self._pulses: list[str] = []
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}
        self._unknowable: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}  # rule -> (facts, atom keys)
        self._scratch = LeafState(All(()))  # stateless leaves evaluate with it
        super().__init__(deployment, start=start, version=version or self._program.digest())
        self._build_atoms()

    @property
    def program(self) -> C.Program:
        return self._program

    def errors(self) -> dict[str, str]:
        """Rules left out of the network, and why."""
        return dict(self._program.errors)

    def _build_atoms(self, keep: dict[str, LeafState] | None = None) -> None:
        keep = keep or {}
        self._atoms = {}
        self._atoms_by_sensor = {}
        self._pulses = []
        for key, leaf in self._program.derived.items():
            atom = keep.get(key) or LeafState(leaf)
            atom.leaf = leaf
            self._atoms[key] = atom
            kind = kind_of(leaf)
            for r in kind.sensors(leaf):
                self._atoms_by_sensor.setdefault(r, []).append(key)
            if kind.trigger:
                self._pulses.append(key)

    # ------------------------------------------------------------------ scheduling
    def _schedule(self, key: str, due: float | None) -> None:
        if due is None:
            self._due.pop(key, None)
            return
        cur = self._due.get(key)
        if cur is not None and cur <= due:
            # an earlier wake-up is pending: it recomputes and reschedules then
            # (keeps the heap at about one entry per key under a stream of readings)
            return
        self._due[key] = due
        heapq.heappush(self._heap, (due, key))

    def _truth_due(self) -> float | None:
        while self._heap:
            due, key = self._heap[0]
            if self._due.get(key) == due:
                return due
            heapq.heappop(self._heap)
        return None

    # ------------------------------------------------------------------ facts
    def _sensor_keys(self, ref: str) -> tuple[str, str]:
        """(its fact id, its staleness timer key) of a sensor ref (made once: the hot path)."""
        keys = self._keys.get(ref)
        if keys is None:
            keys = self._keys[ref] = (f"s:{ref}", f"stale:{ref}")
        return keys

    def _sensor_fact(self, ref: str, now: float) -> set[str]:
        r = self._readings.get(ref)
        v = freshness.value(r, now, self._stale_after)
        fid, stale = self._sensor_keys(ref)
        self._schedule(stale, None if v is None else freshness.lost_at(r[1], self._stale_after))  # type: ignore[index]
        fields: dict[str, object] = {"ok": 1, "v": v} if v is not None else {"ok": 0, "v": 0}
        return self._net.set_fact(fid, fields)

    def _compute(self, key: str, now: float, reading: bool = False) -> set[str]:
        atom = self._atoms[key]
        leaf = atom.leaf
        kind = kind_of(leaf)
        if kind.trigger:
            return set()
        value, due = kind.evaluate(leaf, atom, self, now, reading)
        self._schedule(key, due)
        atom.value = value
        return self._net.set_fact(f"b:{key}", {"st": value})

    # ------------------------------------------------------------------ hooks
    def _truth(self, rule: str) -> bool:
        return self._net.is_true(rule)

    def _false(self, rule: str) -> bool:
        # not true, and no leaf of it unknown: false (the common case, two-valued);
        # otherwise fold the condition with three-valued logic
        unknowable = self._unknowable.get(rule)
        if unknowable is None:
            unknowable = self._unknowable[rule] = self._unknowable_of(self._rules[rule].condition)
        facts, atoms = unknowable
        if all(self._net.fact(f) != _UNKNOWN_SENSOR for f in facts) and \
                all(self._atoms[k].value != UNKNOWN for k in atoms if k in self._atoms):
            return True
        now = self._now if self._now is not None else 0.0
        return truth_of(self._rules[rule].condition, lambda leaf: self._leaf_truth(leaf, now)) == FALSE

    def _unknowable_of(self, c: Condition) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The sensor facts and clock-side leaves of a condition that may be unknown."""
        facts: dict[str, None] = {}
        atoms: dict[str, None] = {}
        for leaf in leaves(c):
            kind = kind_of(leaf)
            if not kind.sensors(leaf):
                continue
            if kind.native(leaf):
                facts[kind.fact(leaf)] = None
            else:
                atoms[kind.key(leaf)] = None
        return tuple(facts), tuple(atoms)

    def _leaf_truth(self, leaf: Condition, now: float) -> Truth:
        kind = kind_of(leaf)
        if kind.native(leaf):
            return kind.evaluate(leaf, self._scratch, self, now, False)[0]
        atom = self._atoms.get(kind.key(leaf))
        return atom.value if atom is not None else FALSE

    def _on_sensor(self, ref: str, now: float, reading: bool) -> set[str]:
        atoms = self._atoms_by_sensor.get(ref, ())
        if not atoms and not self._net.mentions(self._sensor_keys(ref)[0]):
            return set()
        aff = self._sensor_fact(ref, now)
        if atoms:
            aff = set(aff)  # set_fact hands out the network's own set: never add to it
            for key in atoms:
                aff |= self._compute(key, now, reading)
        return aff

    def _on_device(self, device: str, now: float) -> set[str]:
        return self._net.set_fact(f"d:{device}", {"st": self._devices.get(device, -1)})

    def _on_actuator(self, ref: str, now: float) -> set[str]:
        v = self._actuators.get(ref)
        return self._net.set_fact(f"a:{ref}", {"st": -1 if v is None else int(v > 0)})

    def _advance(self, now: float) -> set[str]:
        aff: set[str] = set()
        if not getattr(self, "_initialised", False):
            self._initialised = True
            for key in self._atoms:
                atom = self._atoms[key]
                if kind_of(atom.leaf).trigger:
                    self._init_pulse(atom, now)
                else:
                    aff |= self._compute(key, now)
        while self._heap and self._heap[0][0] <= now:
            due, key = heapq.heappop(self._heap)
            if self._due.get(key) != due:
                continue
            del self._due[key]
            if key.startswith("stale:"):
                aff |= self._on_sensor(key[6:], now, False)
            elif key in self._atoms and key not in self._pulses:
                aff |= self._compute(key, now)
        return aff

    def _init_pulse(self, atom: LeafState, now: float) -> None:
        leaf = atom.leaf
        start = self._start if self._start is not None else now
        if atom.nxt is None:
            atom.nxt = kind_of(leaf).first_pulse(leaf, start, now, self._tzinfo)
        self._schedule(f"pulse:{C.leaf_key(leaf)}", atom.nxt)

    def _pulse(self, now: float, on: bool) -> set[str]:
        aff: set[str] = set()
        for key in self._pulses:
            atom = self._atoms[key]
            if on:
                if atom.nxt is None or atom.nxt > now:
                    continue
                atom.nxt = kind_of(atom.leaf).next_pulse(atom.leaf, atom.nxt, now, self._tzinfo)
                self._schedule(f"pulse:{key}", atom.nxt)
                atom.value = TRUE
                aff |= self._net.set_fact(f"b:{key}", {"st": 1})
            elif atom.value:
                atom.value = FALSE
                aff |= self._net.set_fact(f"b:{key}", {"st": 0})
        return aff

    # ------------------------------------------------------------------ persistence
    def _truth_snapshot(self) -> dict[str, object]:
        return {"atoms": {k: a.dump() for k, a in self._atoms.items()}}

    def _truth_restore(self, d: dict[str, object], now: float) -> None:
        atoms = dict(d.get("atoms") or {})  # type: ignore[call-overload]
        for k, st in atoms.items():
            a = self._atoms.get(k)
            if a is not None:
                a.load(st)
        self._refresh(now)

    def _refresh(self, now: float) -> None:
        """Recompute every fact from the carried-over state (restore, reload)."""
        self._heap, self._due = [], {}
        for ref in sorted(self._atoms_by_sensor):
            self._sensor_fact(ref, now)
        for fid in list(self._net_facts()):
            kind, _, name = fid.partition(":")
            if kind == "s":
                self._sensor_fact(name, now)
            elif kind == "d":
                self._on_device(name, now)
            elif kind == "a":
                self._on_actuator(name, now)
        self._initialised = False
        if self._start is not None:
            self._advance(now)

    def _net_facts(self) -> list[str]:
        facts: set[str] = set()
        for part in self._program.partitions:
            facts |= part.facts
        return sorted(facts)

    def _truth_reload(self, dep: Deployment, now: float) -> None:
        self._unknowable = {}
        self._program = C.compile_program(dep)
        self.version = self._program.digest()
        self._net.load(self._program)
        self._build_atoms(keep=self._atoms)
        self._refresh(now)

    def close(self) -> None:
        """Free the durable rulesets now (otherwise when garbage-collected)."""
        self._net.close()
