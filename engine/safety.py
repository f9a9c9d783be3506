"""The safety guard: every command passes here, and only what passes is sent.

Rules, people (WebSocket) and the CLI only *request*; the guard alone *issues*
(ISO 13850 / IEC 60204-1 habits). It decides with no I/O and no clock: ``now``
(Unix seconds) is always passed in.

Two faces over one decision function:

- the pure :func:`guard` ``(command, state, limits, now) -> (verdict, new_state)``,
  which never mutates its inputs;
- the :class:`Guard` class the pipeline drives, which keeps that state itself and
  also emits server-originated commands (:meth:`Guard.tick`), emergency stops and
  resets.

Checks run in this fixed order; the first that fails decides (docs/safety.md):

 1. ``EMERGENCY_STOP_ACTIVE``   a latched stop for all boards or for the device
 2. ``ACTUATOR_NOT_CONFIGURED`` the actuator is in the device map
    -- an OFF that gets this far is always allowed --
 3. ``PWM_OUT_OF_RANGE``        0.0-1.0 and the configured ``pwm`` range (or clamped
                                into it: ``out_of_range: clamp``)
 4. ``GPIO_CONFLICT``           the actuator's GPIO is not a sensor's on that device
 5. ``DEVICE_OFFLINE``          the device is online
 6. ``SENSOR_LOST``             ``on_sensor_loss`` (a watched sensor is silent or stale)
 7. ``INTERLOCK``               ``never_together``, then ``only_if``
 8. ``MIN_OFF``                 (starts only)
 9. ``MAX_RUNTIME``             (already on: on for at least max_runtime)
10. ``MAX_STARTS``              (starts only)
11. ``RATE_LIMIT``              (rule, person and CLI commands; renewals exempt)

``CONFLICT`` is never produced here: it is the rule engine's arbitration (a rule
lost to a higher-priority one), recorded before its command reaches the guard.

Whether a reading may be used (quality, age) is engine.freshness, shared with the
rule engine so the two never disagree. What happens to the actuators of a rule
whose sensor is lost (``on_sensor_loss``) is decided here and only here.
"""

from __future__ import annotations

import difflib
import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from engine import freshness
from engine.actions import action_sensors
from engine.conditions import kind_of, leaves
from engine.model import (
    Action,
    Actuator,
    ActuatorLimits,
    Allowed,
    Blocked,
    Code,
    Command,
    Comparison,
    Condition,
    Deployment,
    EmergencyOut,
    Event,
    Interlock,
    Outputs,
    Reading,
    SafetyDefaults,
    SetActuator,
    Verdict,
)
from engine.units import format_duration

__all__ = [
    "ActuatorState",
    "Entry",
    "Guard",
    "GuardState",
    "Latch",
    "Limits",
    "compile_limits",
    "guard",
    "is_on",
]

#: server-originated sources (max_runtime OFF, lease end, renewals): exempt from the rate limit
SERVER_SOURCES = frozenset({"safety", "lease"})

SNAPSHOT_VERSION = 1
#: slack for float sums (ts + stale_after): a due time must also be "due" at that time
EPS = 1e-6

# --------------------------------------------------------------------------
# Static tables, compiled once per deployment


@dataclass(frozen=True, slots=True)
class Entry:
    """Everything the guard knows statically about one actuator."""

    actuator: Actuator
    limits: ActuatorLimits
    #: sensor refs sharing this actuator's GPIO on its device (GPIO_CONFLICT)
    gpio_sensors: tuple[str, ...] = ()
    #: (interlock name, other actuator ref) for every never_together partner
    partners: tuple[tuple[str, str], ...] = ()
    only_if: tuple[Interlock, ...] = ()
    #: sensor refs read by the conditions (and computed duties) of rules that drive this actuator
    watched: tuple[str, ...] = ()
    #: sensor ref -> its freshness limit in seconds where a condition's ``fresh:`` sets
    #: one (the shortest, when several do); the others use ``stale_after``
    fresh: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Limits:
    """The guard's compiled view of a deployment (see :func:`compile_limits`)."""

    entries: Mapping[str, Entry] = field(default_factory=dict)
    defaults: SafetyDefaults = field(default_factory=SafetyDefaults)
    #: device name -> its actuator refs, in declaration order
    devices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: esp_id -> device name
    esp_ids: Mapping[str, str] = field(default_factory=dict)
    #: every sensor ref the guard must remember readings of
    sensors: frozenset[str] = frozenset()
    #: sensor ref -> actuators whose watched sensors or only_if read it
    users: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def _condition_sensors(cond: Condition) -> Iterable[tuple[str, float | None]]:
    """(sensor ref, ``fresh`` limit or None) a condition reads to decide, as each
    condition kind says (``no_data_for`` is left out: it *expects* silence, so
    silence must not block the rule it serves)."""
    for leaf in leaves(cond):
        yield from kind_of(leaf).watched(leaf)


def _driven(actions: Iterable[Action]) -> Iterable[str]:
    for a in actions:
        if isinstance(a, SetActuator):
            yield a.actuator


def compile_limits(deployment: Deployment) -> Limits:
    """Build the guard's tables. Limits naming unknown actuators are ignored here
    (``kaiser lint`` reports them)."""
    safety = deployment.safety
    stale_after = safety.defaults.stale_after
    watched: dict[str, dict[str, float]] = {}  # actuator -> sensor -> freshness limit
    for rule in deployment.rules:
        if not rule.enabled:
            continue
        acts = (*rule.actions, *(rule.release or ()))
        sensors = [*_condition_sensors(rule.condition),
                   *((s, None) for a in acts for s in action_sensors(a))]
        for ref in _driven(acts):
            bucket = watched.setdefault(ref, {})
            for s, limit in sensors:
                lim = stale_after if limit is None else limit
                bucket[s] = min(bucket.get(s, lim), lim)
    partners: dict[str, list[tuple[str, str]]] = {}
    only_if: dict[str, list[Interlock]] = {}
    for lock in safety.interlocks:
        for ref in lock.never_together:
            for other in lock.never_together:
                if other != ref:
                    partners.setdefault(ref, []).append((lock.name, other))
        if lock.actuator is not None and lock.only_if is not None:
            only_if.setdefault(lock.actuator, []).append(lock)
    entries: dict[str, Entry] = {}
    devices: dict[str, tuple[str, ...]] = {}
    needed: set[str] = set()
    for dev in deployment.devices.values():
        devices[dev.name] = tuple(a.ref for a in dev.actuators)
        for act in dev.actuators:
            pins = {act.gpio} | ({act.aux_gpio} if act.aux_gpio is not None else set())
            gpio_sensors = tuple(s.ref for s in dev.sensors if s.gpio in pins)
            locks = tuple(only_if.get(act.ref, ()))
            mine = watched.get(act.ref, {})
            entry = Entry(
                actuator=act,
                limits=safety.actuators.get(act.ref) or ActuatorLimits(actuator=act.ref),
                gpio_sensors=gpio_sensors,
                partners=tuple(partners.get(act.ref, ())),
                only_if=locks,
                watched=tuple(mine),
                fresh={s: lim for s, lim in mine.items() if lim != stale_after},
            )
            entries[act.ref] = entry
            needed.update(entry.watched)
            needed.update(lock.only_if.sensor for lock in locks if lock.only_if is not None)
    users: dict[str, list[str]] = {}
    for ref, entry in entries.items():
        for s in {*entry.watched, *(lock.only_if.sensor for lock in entry.only_if if lock.only_if)}:
            users.setdefault(s, []).append(ref)
    return Limits(
        entries=entries,
        defaults=safety.defaults,
        devices=devices,
        esp_ids={d.esp_id: d.name for d in deployment.devices.values()},
        sensors=frozenset(needed),
        users={s: tuple(refs) for s, refs in users.items()},
    )


# --------------------------------------------------------------------------
# Runtime state


class ActuatorState(NamedTuple):
    """What the guard remembers about one actuator: an immutable value (a new one
    per change; a tuple because it is built on every allowed command)."""

    value: float | None = None  # last allowed value (None: never commanded)
    value_at: float | None = None
    reported: float | None = None  # last value the firmware reported
    reported_at: float | None = None
    on_since: float | None = None
    off_since: float | None = None
    starts: tuple[float, ...] = ()  # start times inside the max_starts window
    recent: tuple[float, ...] = ()  # rate-limited commands inside the rate_limit window
    lease: Command | None = None  # the command whose lease runs (for: or hold)
    lease_end: float | None = None
    renew_at: float | None = None  # holds only


EMPTY = ActuatorState()


def is_on(st: ActuatorState) -> bool:
    """Best knowledge of whether it runs: the newer of commanded and reported."""
    if st.reported is not None and (
        st.value_at is None or (st.reported_at is not None and st.reported_at > st.value_at)
    ):
        return st.reported > 0.0
    return st.value is not None and st.value > 0.0


@dataclass(frozen=True, slots=True)
class Latch:
    """A latched emergency stop: who, why, since when."""

    target: str  # "all" or a device name
    reason: str
    who: str
    ts: float


@dataclass(slots=True)
class GuardState:
    """Everything the guard's decisions depend on besides the limits."""

    actuators: dict[str, ActuatorState] = field(default_factory=dict)
    latches: dict[str, Latch] = field(default_factory=dict)
    online: dict[str, bool] = field(default_factory=dict)
    #: sensor ref -> (value, ts, quality) of its newest reading
    readings: dict[str, tuple[float, float, str]] = field(default_factory=dict)
    #: when the server (or the test) started: a sensor never heard from is silent since
    start: float | None = None
    assume_online: bool = False
    #: the latest ``now`` the guard was given
    last_now: float | None = None


# --------------------------------------------------------------------------
# Sentences


_span = freshness.span


def _rate(count: int, per: float) -> str:
    unit = {3600.0: "h", 60.0: "m", 1.0: "s", 86400.0: "d"}.get(per)
    return f"{count}/{unit}" if unit else f"{count}/{format_duration(per)}"


def _val(v: float) -> str:
    return "on" if v == 1.0 else f"{v:g}"


def _latch_of(state: GuardState, device: str) -> Latch | None:
    return state.latches.get("all") or state.latches.get(device)


def _emergency_sentence(ref: str, latch: Latch, now: float) -> str:
    where = "all boards" if latch.target == "all" else f"device {latch.target}"
    by = f" by {latch.who}" if latch.who else ""
    return (
        f"{ref}: emergency stop for {where} is active (set{by} {_span(now - latch.ts)} ago: "
        f"{latch.reason or 'no reason given'}); only OFF is allowed until a reset"
    )


def _limit(entry: Entry, defaults: SafetyDefaults, sensor: str) -> float:
    return entry.fresh.get(sensor, defaults.stale_after) if entry.fresh else defaults.stale_after


def _stale_at(state: GuardState, defaults: SafetyDefaults, sensor: str, limit: float | None = None) -> float | None:
    """When ``sensor`` is (or becomes) lost; None while unknowable (no start yet)."""
    return freshness.lost_since(state.readings.get(sensor), state.start,
                                defaults.stale_after if limit is None else limit)


def _lost_sensor(
    state: GuardState, defaults: SafetyDefaults, entry: Entry, now: float
) -> tuple[str, str] | None:
    """The first watched sensor that is lost at ``now`` (engine.freshness), with a
    sentence part."""
    readings, fresh, stale_after = state.readings, entry.fresh, defaults.stale_after
    for s in entry.watched:
        limit = fresh.get(s, stale_after) if fresh else stale_after
        r = readings.get(s)
        if r is not None and freshness.value(r, now, limit) is not None:
            continue  # the common case: fresh
        why = freshness.why_lost(s, r, state.start, now, limit,
                                 "stale_after" if limit == stale_after else "fresh")
        if why is not None:
            return s, why
    return None


def _fresh_value(
    state: GuardState, defaults: SafetyDefaults, sensor: str, now: float
) -> tuple[float | None, str]:
    """(value, "") when fresh and usable, else (None, why not)."""
    r = state.readings.get(sensor)
    v = freshness.value(r, now, defaults.stale_after)
    if v is not None:
        return v, ""
    if r is None:
        return None, f"{sensor} has not reported"
    if not freshness.has_value(r):
        return None, f"{sensor} reports quality {r[2]}"
    return None, f"{sensor} is stale (last reading {_span(now - r[1])} ago)"


def _compare(c: Comparison, x: float) -> bool:
    v = c.value
    if isinstance(v, tuple):
        lo, hi = v
        inside = lo <= x <= hi
        return inside if c.op == "between" else not inside
    if c.op == "above":
        return x > v
    if c.op == "below":
        return x < v
    if c.op == "at_least":
        return x >= v
    if c.op == "at_most":
        return x <= v
    if c.op == "equals":
        return abs(x - v) <= 1e-9 * max(1.0, abs(v))
    return False


def _describe(c: Comparison) -> str:
    v = c.value
    if isinstance(v, tuple):
        return f"{c.op} {v[0]:g}-{v[1]:g}"
    return f"{c.op.replace('_', ' ')} {v:g}"


def _only_if_failure(state: GuardState, defaults: SafetyDefaults, entry: Entry, now: float) -> str | None:
    """A sentence for the first ``only_if`` interlock that does not hold, else None."""
    for lock in entry.only_if:
        c = lock.only_if
        if c is None:
            continue
        x, why = _fresh_value(state, defaults, c.sensor, now)
        if x is None:
            return f"interlock {lock.name} needs {c.sensor} {_describe(c)}, but {why}"
        if not _compare(c, x):
            return f"interlock {lock.name}: {c.sensor} is {x:g}, needs {_describe(c)}"
    return None


def _only_if_due(state: GuardState, defaults: SafetyDefaults, entry: Entry) -> float | None:
    """When the ``only_if`` interlocks of a running actuator stop holding."""
    due: float | None = None
    for lock in entry.only_if:
        c = lock.only_if
        if c is None:
            continue
        r = state.readings.get(c.sensor)
        if r is None:
            t = state.start
        elif not freshness.has_value(r) or not _compare(c, r[0]):
            t = r[1]
        else:
            t = freshness.lost_at(r[1], defaults.stale_after)
        if t is not None and (due is None or t < due):
            due = t
    return due


# --------------------------------------------------------------------------
# The decision


def _resolve(command: Command, st: ActuatorState) -> Command:
    if command.toggle:
        value = 0.0 if is_on(st) else 1.0
        return replace(command, value=value, toggle=False, duration=command.duration if value else None)
    if command.value <= 0.0 and (command.value != 0.0 or command.duration is not None or command.hold):
        return replace(command, value=0.0, duration=None, hold=False)
    return command


def _decide(
    command: Command, state: GuardState, limits: Limits, now: float
) -> tuple[Verdict, ActuatorState | None]:
    """The one decision. Returns the verdict (with the command as it will be sent)
    and, when allowed, the actuator's new state. Mutates nothing."""
    ref = command.actuator
    entry = limits.entries.get(ref)
    st = state.actuators.get(ref, EMPTY)
    cmd = _resolve(command, st)
    off = cmd.value <= 0.0
    device = entry.actuator.device if entry is not None else ref.partition(".")[0]

    # 1. emergency stop
    if not off and state.latches:
        latch = _latch_of(state, device)
        if latch is not None:
            return Blocked(cmd, Code.EMERGENCY_STOP_ACTIVE, _emergency_sentence(ref, latch, now)), None
    # 2. exists
    if entry is None:
        hint = difflib.get_close_matches(ref, list(limits.entries), n=1)
        more = f" (did you mean {hint[0]}?)" if hint else ""
        return Blocked(
            cmd, Code.ACTUATOR_NOT_CONFIGURED, f"{ref} is not an actuator in the device map{more}"
        ), None
    if off:
        return Allowed(cmd), _after(cmd, st, entry, limits.defaults, now)

    lim = entry.limits
    value = cmd.value
    # 3. range
    if not 0.0 <= value <= 1.0:  # NaN fails too
        return Blocked(cmd, Code.PWM_OUT_OF_RANGE, f"{ref}: {value:g} is outside 0.0-1.0"), None
    if lim.pwm is not None and not lim.pwm[0] <= value <= lim.pwm[1]:
        lo, hi = lim.pwm
        if lim.out_of_range != "clamp":
            return Blocked(
                cmd, Code.PWM_OUT_OF_RANGE, f"{ref}: {value:g} is outside its pwm range {lo:g}-{hi:g}"
            ), None
        clamped = lo if value < lo else hi
        note = f"clamped {value:g} to {clamped:g} (pwm range {lo:g}-{hi:g}, out_of_range: clamp)"
        cmd = Command(cmd.actuator, clamped, cmd.duration, cmd.source, cmd.rule, cmd.priority,
                      f"{cmd.reason}; {note}" if cmd.reason else note, cmd.toggle, cmd.hold)
        value = clamped
    # 4. GPIO
    if entry.gpio_sensors:
        return Blocked(
            cmd, Code.GPIO_CONFLICT,
            f"{ref}: GPIO {entry.actuator.gpio} is also sensor {', '.join(entry.gpio_sensors)} "
            f"on device {device}",
        ), None
    # 5. online
    if not state.online.get(device, state.assume_online):
        return Blocked(cmd, Code.DEVICE_OFFLINE, f"{ref}: device {device} is offline"), None
    running = is_on(st)
    # 6. sensor loss
    if entry.watched and lim.on_sensor_loss != "on":
        lost = _lost_sensor(state, limits.defaults, entry, now)
        if lost is not None and (
            lim.on_sensor_loss == "off" or not running or (st.value is not None and value != st.value)
        ):
            what = "keeps it off" if lim.on_sensor_loss == "off" else "holds its state"
            return Blocked(
                cmd, Code.SENSOR_LOST,
                f"{ref}: {lost[1]}; on_sensor_loss: {lim.on_sensor_loss} {what} until it is fresh",
            ), None
    # 7. interlocks
    for name, other in entry.partners:
        ost = state.actuators.get(other)
        if ost is not None and is_on(ost):
            return Blocked(
                cmd, Code.INTERLOCK, f"{ref}: interlock {name}: {other} is on (never together)"
            ), None
    if entry.only_if:
        failed = _only_if_failure(state, limits.defaults, entry, now)
        if failed is not None:
            return Blocked(cmd, Code.INTERLOCK, f"{ref}: {failed}"), None
    if not running:
        # 8. min_off (starts only)
        if lim.min_off is not None and st.off_since is not None and now - st.off_since < lim.min_off:
            ago = now - st.off_since
            return Blocked(
                cmd, Code.MIN_OFF,
                f"{ref} was switched off {_span(ago)} ago; min_off is "
                f"{format_duration(lim.min_off)} ({_span(lim.min_off - ago, up=True)} to go)",
            ), None
    # 9. max_runtime (already running)
    elif lim.max_runtime is not None and st.on_since is not None and now - st.on_since >= lim.max_runtime - EPS:
        return Blocked(
            cmd, Code.MAX_RUNTIME,
            f"{ref} has been on for {_span(now - st.on_since)}; max_runtime is "
            f"{format_duration(lim.max_runtime)}",
        ), None
    # 10. max_starts
    if not running and lim.max_starts is not None:
        count, per = lim.max_starts
        n, wait = _window(st.starts, per, now)
        if n >= count:
            return Blocked(
                cmd, Code.MAX_STARTS,
                f"{ref} started {n} times in the last {format_duration(per)}; max_starts is "
                f"{_rate(count, per)} (next start in {_span(wait, up=True)})",
            ), None
    # 11. rate limit
    if lim.rate_limit is not None and cmd.source not in SERVER_SOURCES:
        count, per = lim.rate_limit
        n, wait = _window(st.recent, per, now)
        if n >= count:
            return Blocked(
                cmd, Code.RATE_LIMIT,
                f"{ref} got {n} commands in the last {format_duration(per)}; rate_limit is "
                f"{_rate(count, per)} (next in {_span(wait, up=True)})",
            ), None
    # allowed: fix the firmware duration (hold lease, max_runtime as a backstop)
    duration = limits.defaults.lease if cmd.hold else cmd.duration
    if lim.max_runtime is not None:
        left = lim.max_runtime - (now - st.on_since if running and st.on_since is not None else 0.0)
        if duration is None or duration > left:
            duration = left
    if duration != cmd.duration:
        cmd = _with_duration(cmd, duration)
    return Allowed(cmd), _after(cmd, st, entry, limits.defaults, now)


def _with_duration(c: Command, duration: float | None) -> Command:
    # dataclasses.replace costs more than the rest of a decision
    return Command(c.actuator, c.value, duration, c.source, c.rule, c.priority, c.reason, c.toggle, c.hold)


def _after(cmd: Command, st: ActuatorState, entry: Entry, defaults: SafetyDefaults, now: float) -> ActuatorState:
    """The actuator's state once ``cmd`` (allowed) is sent."""
    was_on = is_on(st)
    lim = entry.limits
    if cmd.value > 0.0:
        on_since, starts, recent = st.on_since, st.starts, st.recent
        if not was_on:
            on_since = now
            if lim.max_starts is not None:
                per = lim.max_starts[1]
                starts = (*[t for t in starts if now - t < per], now)
        if lim.rate_limit is not None and cmd.source not in SERVER_SOURCES:
            per = lim.rate_limit[1]
            recent = (*[t for t in recent if now - t < per], now)
        holding: Command | None
        end: float | None
        renew: float | None
        if cmd.hold:
            lease = cmd.duration if cmd.duration is not None else defaults.lease
            holding, end, renew = cmd, now + lease, now + defaults.lease / 2
        elif cmd.duration is not None:
            holding, end, renew = cmd, now + cmd.duration, None
        else:
            holding = end = renew = None
        return ActuatorState(cmd.value, now, st.reported, st.reported_at, on_since, st.off_since,
                             starts, recent, holding, end, renew)
    return ActuatorState(cmd.value, now, st.reported, st.reported_at, None,
                         now if was_on else st.off_since, st.starts, st.recent, None, None, None)



def _window(times: Iterable[float], per: float, now: float) -> tuple[int, float]:
    """Events in the sliding window of ``per`` seconds before ``now`` (times oldest
    first), and seconds until the oldest of them leaves it."""
    recent = [t for t in times if now - t < per]
    return len(recent), (recent[0] + per - now if recent else per)

def guard(command: Command, state: GuardState, limits: Limits, now: float) -> tuple[Verdict, GuardState]:
    """Decide one command: ``(Allowed | Blocked(code, reason), new_state)``.

    Pure: ``state`` is not changed; when allowed, ``new_state`` is a copy with the
    actuator's on-since, starts, lease and commanded value recorded. ``now`` is Unix
    seconds. (The :class:`Guard` class uses the same decision without the copy.)
    """
    if state.start is None:
        state = replace(state, start=now)
    verdict, new = _decide(command, state, limits, now)
    if new is None:
        return verdict, state
    return verdict, replace(state, actuators={**state.actuators, command.actuator: new})


def _actuator_due(state: GuardState, defaults: SafetyDefaults, entry: Entry, st: ActuatorState) -> float | None:
    """When :meth:`Guard.tick` next has something to do for this actuator."""
    lim = entry.limits
    due: float | None = None
    if st.lease is not None:
        due = st.renew_at if st.lease.hold else st.lease_end
    if not is_on(st):
        return due
    times: list[float | None] = [due]
    if lim.max_runtime is not None and st.on_since is not None:
        times.append(st.on_since + lim.max_runtime)
    if entry.watched and lim.on_sensor_loss == "off":
        readings, fresh, stale_after, start = state.readings, entry.fresh, defaults.stale_after, state.start
        for s in entry.watched:
            times.append(freshness.lost_since(readings.get(s), start, fresh.get(s, stale_after) if fresh else stale_after))
    if entry.only_if:
        times.append(_only_if_due(state, defaults, entry))
    known = [t for t in times if t is not None]
    return min(known) if known else None


# --------------------------------------------------------------------------
# The stateful guard the pipeline drives


def _off(ref: str, reason: str, source: str = "safety", rule: str | None = None) -> Command:
    return Command(actuator=ref, value=0.0, source=source, rule=rule, reason=reason)


class Guard:
    """The safety guard with its state. Nothing here does I/O or reads a clock."""

    def __init__(self, deployment: Deployment, assume_online: bool = False, start: float | None = None) -> None:
        """``assume_online``: devices count as online until told otherwise (``kaiser
        test``); otherwise a device never seen is offline. ``start`` (Unix seconds):
        when the server started; defaults to the first ``now`` the guard sees."""
        self._limits = compile_limits(deployment)
        self._state = GuardState(assume_online=assume_online, start=start)
        #: actuator ref -> when tick has something to do for it (only those that have)
        self._due: dict[str, float] = {}
        #: (due, ref) entries, lazily deleted: valid while ``_due[ref]`` equals due
        self._due_heap: list[tuple[float, str]] = []
        self._pending: list[Event] = []

    # -- queries ---------------------------------------------------------
    @property
    def limits(self) -> Limits:
        return self._limits

    @property
    def state(self) -> GuardState:
        return self._state

    def emergency_active(self, device: str) -> bool:
        """True when a stop for all boards or for ``device`` (name or esp_id) is latched."""
        device = self._limits.esp_ids.get(device, device)
        return _latch_of(self._state, device) is not None

    def latches(self) -> list[Latch]:
        return list(self._state.latches.values())

    def commanded(self, ref: str) -> float | None:
        """The last allowed value (0.0-1.0), None if never commanded."""
        st = self._state.actuators.get(ref)
        return None if st is None else st.value

    def is_on(self, ref: str) -> bool:
        st = self._state.actuators.get(ref)
        return st is not None and is_on(st)

    # -- inputs ----------------------------------------------------------
    def _touch(self, now: float) -> None:
        s = self._state
        if s.start is None:
            s.start = now
        if s.last_now is None or now > s.last_now:
            s.last_now = now

    def _store(self, ref: str, new: ActuatorState) -> None:
        self._state.actuators[ref] = new
        self._schedule(ref)

    def _schedule(self, ref: str) -> None:
        entry = self._limits.entries.get(ref)
        st = self._state.actuators.get(ref)
        t = None if entry is None or st is None else _actuator_due(self._state, self._limits.defaults, entry, st)
        if t is None:
            self._due.pop(ref, None)
        elif self._due.get(ref) != t:
            self._due[ref] = t
            heap = self._due_heap
            heapq.heappush(heap, (t, ref))
            if len(heap) > 2 * len(self._due) + 64:  # mostly stale entries: rebuild
                self._due_heap = [(d, r) for r, d in self._due.items()]
                heapq.heapify(self._due_heap)

    def _earliest(self) -> float | None:
        """min(self._due.values()) without a scan."""
        heap, due = self._due_heap, self._due
        while heap:
            t, ref = heap[0]
            if due.get(ref) == t:
                return t
            heapq.heappop(heap)
        return None

    def check(self, command: Command, now: float) -> Verdict:
        """Decide ``command`` at ``now``; on Allowed record the state change.

        The returned Allowed carries the command as it must be published (toggle
        resolved, hold lease and max_runtime backstop in ``duration``)."""
        self._touch(now)
        try:
            verdict, new = _decide(command, self._state, self._limits, now)
        except Exception as exc:  # never let a bad command through, never crash the server
            return self._unusable(command, exc, now)
        if new is not None:
            self._store(command.actuator, new)
        return verdict

    def _unusable(self, command: Command, exc: Exception, now: float) -> Verdict:
        """A command the checks cannot even read (a value that is not a number...)."""
        ref = command.actuator if isinstance(command.actuator, str) else repr(command.actuator)
        entry = self._limits.entries.get(ref)
        if entry is None:
            return Blocked(command, Code.ACTUATOR_NOT_CONFIGURED, f"{ref} is not an actuator in the device map")
        value = command.value
        if isinstance(value, int | float) and value <= 0.0 and not command.toggle:  # still an OFF
            off = Command(ref, 0.0, None, str(command.source), command.rule, 0, str(command.reason))
            self._store(ref, _after(off, self._state.actuators.get(ref, EMPTY), entry, self._limits.defaults, now))
            return Allowed(off)
        return Blocked(command, Code.PWM_OUT_OF_RANGE, f"{ref}: {value!r} is not a value 0.0-1.0 ({exc})")

    def device_online(self, device: str, online: bool, now: float) -> None:
        """The device (name or esp_id) came online or went offline. Holds whose
        renewal waited for it are renewed at the next tick."""
        self._touch(now)
        device = self._limits.esp_ids.get(device, device)
        was = self._state.online.get(device, self._state.assume_online)
        self._state.online[device] = online
        if online and not was:
            for ref in self._limits.devices.get(device, ()):
                st = self._state.actuators.get(ref)
                if st is not None and st.lease is not None and st.lease.hold and st.renew_at is None:
                    self._store(ref, st._replace(renew_at=now))

    def actuator_reported(self, ref: str, value: float, now: float) -> Outputs:
        """The firmware reported ``value`` (0.0-1.0) for actuator ``ref``.

        Interlocks correct, not only block: a report of ``ref`` on while a
        ``never_together`` partner is on, or while its ``only_if`` fails (someone
        pressed its button), switches ``ref`` off: an OFF in ``.sent`` (source
        "safety") and a safety event with code INTERLOCK."""
        self._touch(now)
        out = Outputs()
        entry = self._limits.entries.get(ref)
        if entry is None or not isinstance(value, int | float) or math.isnan(value):
            return out
        st = self._state.actuators.get(ref, EMPTY)
        was_on = is_on(st)
        new = st._replace(reported=float(value), reported_at=now)
        on = is_on(new)
        if on and not was_on:
            new = new._replace(on_since=now)  # switched on outside our commands: max_runtime still counts
        elif was_on and not on:
            new = new._replace(off_since=now, on_since=None)
        self._store(ref, new)
        if value > 0.0 and (entry.partners or entry.only_if):
            why = self._interlock_violated(entry, now)
            if why is not None:
                self._emit_off(out, ref, f"{ref} switched off: reported on, but {why}", now, Code.INTERLOCK,
                               "warning", reported=float(value))
        return out

    def _interlock_violated(self, entry: Entry, now: float) -> str | None:
        """Why ``entry``'s actuator may not run next to what is on now, or None."""
        for name, other in entry.partners:
            ost = self._state.actuators.get(other)
            if ost is not None and is_on(ost):
                return f"interlock {name}: {other} is on (never together)"
        if entry.only_if:
            return _only_if_failure(self._state, self._limits.defaults, entry, now)
        return None

    def reading(self, reading: Reading) -> None:
        """Remember the newest reading of each sensor (interlocks, sensor loss)."""
        old = self._state.readings.get(reading.sensor)
        if old is None or reading.ts >= old[1]:
            new = (float(reading.value), float(reading.ts), reading.quality)
            self._state.readings[reading.sensor] = new
            users = self._limits.users.get(reading.sensor)
            if not users:
                return
            # a usable reading newer than the last one only moves a sensor-loss
            # deadline later: an actuator already scheduled keeps its (earlier) wake-up,
            # where tick finds nothing due yet and schedules it afresh (the hot path:
            # one reading, one schedule less). Bad readings, first readings and only_if
            # interlocks may move it earlier: those are scheduled now.
            lazy = old is not None and freshness.has_value(new)
            entries, due, actuators = self._limits.entries, self._due, self._state.actuators
            for ref in users:
                if ref in actuators:
                    if lazy and ref in due and not entries[ref].only_if:
                        continue
                    self._schedule(ref)

    # -- server-originated commands ---------------------------------------
    def tick(self, now: float) -> Outputs:
        """Commands due at ``now`` (Unix seconds): max_runtime OFF, sensor-loss OFF,
        ``for:`` end OFF, hold renewals (through the checks). Each as Allowed in
        ``.sent`` (a blocked renewal is in ``.blocked``, followed by an OFF)."""
        self._touch(now)
        out = Outputs()
        if self._pending:
            out.events.extend(self._pending)
            self._pending.clear()
        limits, state = self._limits, self._state
        first = self._earliest()
        due_now = sorted(r for r, t in self._due.items() if t <= now) if first is not None and first <= now else []
        for ref in due_now:
            entry = limits.entries.get(ref)
            st = state.actuators.get(ref)
            if entry is None or st is None:
                self._due.pop(ref, None)
                continue
            t = _actuator_due(state, limits.defaults, entry, st)
            if t is None or t > now:  # woken early (see reading): nothing due yet
                self._schedule(ref)
                continue
            lim = entry.limits
            running = is_on(st)
            if running and lim.max_runtime is not None and st.on_since is not None \
                    and now - st.on_since >= lim.max_runtime - EPS:
                msg = (f"{ref} switched off: on for {_span(now - st.on_since)}, "
                       f"max_runtime is {format_duration(lim.max_runtime)}")
                self._emit_off(out, ref, msg, now, Code.MAX_RUNTIME, "warning")
                continue
            if running and entry.watched and lim.on_sensor_loss == "off":
                lost = _lost_sensor(state, limits.defaults, entry, now)
                if lost is not None:
                    msg = f"{ref} switched off: {lost[1]} (on_sensor_loss: off)"
                    self._emit_off(out, ref, msg, now, Code.SENSOR_LOST, "warning", sensor=lost[0])
                    continue
            if running and entry.only_if:
                failed = _only_if_failure(state, limits.defaults, entry, now)
                if failed is not None:
                    self._emit_off(out, ref, f"{ref} switched off: {failed}", now, Code.INTERLOCK, "warning")
                    continue
            lease = st.lease
            if lease is None:
                continue
            if not lease.hold and st.lease_end is not None and now >= st.lease_end:
                reason = f"for: {format_duration(lease.duration or 0.0)} ended"
                off = _off(ref, reason, source="lease", rule=lease.rule)
                out.sent.append(Allowed(off))
                self._store(ref, _after(off, st, entry, limits.defaults, now))
                continue
            if lease.hold and st.renew_at is not None and now >= st.renew_at:
                renewal = replace(lease, source="lease", duration=None)
                verdict, new = _decide(renewal, state, limits, now)
                if isinstance(verdict, Allowed) and new is not None:
                    out.sent.append(verdict)
                    self._store(ref, new)
                elif isinstance(verdict, Blocked):
                    out.blocked.append(verdict)
                    if verdict.code is Code.DEVICE_OFFLINE:
                        # nothing reaches it; the board's own lease turns it off.
                        # Renew as soon as it is back (device_online).
                        self._store(ref, st._replace(renew_at=None))
                        out.events.append(Event(now, "safety", "warning", ref,
                                                f"hold on {ref} not renewed: {verdict.reason}; the board's "
                                                "lease switches it off, the hold resumes when it is back",
                                                {"code": str(verdict.code), "rule": lease.rule}))
                    else:
                        self._emit_off(out, ref, f"{ref} switched off: hold renewal blocked: {verdict.reason}",
                                       now, verdict.code, "warning")
        return out

    def _emit_off(self, out: Outputs, ref: str, message: str, now: float, code: Code,
                  severity: str, **data: object) -> None:
        st = self._state.actuators.get(ref, EMPTY)
        entry = self._limits.entries[ref]
        off = _off(ref, message)  # the guard's own decision: no rule asked for it
        out.sent.append(Allowed(off))
        out.events.append(Event(now, "safety", severity, ref, message, {"code": str(code), **data}))
        self._store(ref, _after(off, st, entry, self._limits.defaults, now))

    def next_due(self) -> float | None:
        """The earliest Unix time at which :meth:`tick` has something to do (never
        earlier than the latest ``now`` given: a past due time means "now")."""
        due = self._earliest()
        if due is None:
            return None
        last = self._state.last_now
        return last if last is not None and due < last else due

    # -- emergency stop ---------------------------------------------------
    def emergency_stop(self, target: str, reason: str, who: str, now: float) -> Outputs:
        """Latch an emergency stop for ``"all"`` boards or one device (name or esp_id).

        Returns the EmergencyOut to publish, an OFF (Allowed, source "safety") for every
        actuator of the stopped boards (legacy firmware ignores the emergency topic),
        and a critical Event. Stays latched until :meth:`reset`."""
        self._touch(now)
        out = Outputs()
        target = self._limits.esp_ids.get(target, target) or "all"
        if target != "all" and target not in self._limits.devices:
            out.events.append(Event(now, "emergency", "critical", target,
                                    f"emergency stop for unknown device {target!r} refused: "
                                    f"use 'all' or one of {', '.join(sorted(self._limits.devices))}",
                                    {"reason": reason, "who": who, "refused": True}))
            return out
        self._state.latches[target] = Latch(target, reason, who, now)
        out.emergencies.append(EmergencyOut(now, target, reason, True, who))
        devices = list(self._limits.devices) if target == "all" else [target]
        for dev in devices:
            for ref in self._limits.devices[dev]:
                off = _off(ref, f"emergency stop: {reason}")
                out.sent.append(Allowed(off))
                st = self._state.actuators.get(ref, EMPTY)
                self._store(ref, _after(off, st, self._limits.entries[ref], self._limits.defaults, now))
        where = "all boards" if target == "all" else f"device {target}"
        out.events.append(Event(now, "emergency", "critical", target,
                                f"emergency stop for {where} by {who or 'unknown'}: {reason}",
                                {"reason": reason, "who": who, "active": True}))
        return out

    def reset(self, target: str, who: str, reason: str, now: float) -> Outputs:
        """Release a latched stop. ``"all"`` clears every latch. Turns nothing on:
        rules and people may start actuators again, through the checks."""
        self._touch(now)
        out = Outputs()
        target = self._limits.esp_ids.get(target, target) or "all"
        latches = self._state.latches
        cleared = list(latches) if target == "all" else [t for t in (target,) if t in latches]
        if not cleared:
            out.events.append(Event(now, "emergency", "info", target,
                                    f"reset by {who or 'unknown'}: no emergency stop was active for "
                                    f"{'any board' if target == 'all' else target}",
                                    {"reason": reason, "who": who, "active": False}))
            return out
        for t in cleared:
            del latches[t]
            out.emergencies.append(EmergencyOut(now, t, reason, False, who))
        msg = f"emergency stop reset for {', '.join(cleared)} by {who or 'unknown'}: {reason}"
        if "all" in latches:
            msg += "; the stop for all boards is still active"
        out.events.append(Event(now, "emergency", "warning", target, msg,
                                {"reason": reason, "who": who, "active": False, "cleared": cleared}))
        return out

    # -- persistence -------------------------------------------------------
    def snapshot(self) -> dict[str, object]:
        """Latches, per-actuator state and the readings the guard uses, JSON-able.
        Device online flags are left out: after a restart, boards must be seen again."""
        s = self._state
        return {
            "version": SNAPSHOT_VERSION,
            "start": s.start,
            "saved_at": s.last_now,
            "latches": {t: {"reason": x.reason, "who": x.who, "ts": x.ts} for t, x in s.latches.items()},
            "actuators": {ref: _dump_actuator(st) for ref, st in s.actuators.items()},
            "readings": {ref: [v, ts, q] for ref, (v, ts, q) in s.readings.items()},
        }

    def restore(self, data: dict[str, object]) -> None:
        """Load a :meth:`snapshot`. Unusable parts are skipped; unreadable latches
        latch a stop for all boards (fail safe), reported as an Event at the next tick."""
        if not isinstance(data, dict):
            self._pending.append(Event(0.0, "safety", "warning", "", "safety snapshot unreadable; ignored"))
            return
        s = self._state
        start = data.get("start")
        if isinstance(start, int | float) and s.start is None:
            s.start = float(start)
        saved = data.get("saved_at")
        if isinstance(saved, int | float) and (s.last_now is None or saved > s.last_now):
            s.last_now = float(saved)  # a lower bound of the clock: due times before it mean "now"
        readings = data.get("readings", {})
        if isinstance(readings, dict):
            for ref, raw in readings.items():
                try:
                    v, ts, q = raw
                    s.readings[str(ref)] = (float(v), float(ts), str(q))
                except (TypeError, ValueError):
                    continue
        latches = _load_latches(data.get("latches", {}))
        if latches is None:
            s.latches["all"] = Latch("all", "emergency state unreadable after restart", "kaiser", s.start or 0.0)
            self._pending.append(Event(s.start or 0.0, "emergency", "critical", "all",
                                       "emergency latches in the snapshot were unreadable: stopped all boards "
                                       "until a reset", {"active": True}))
        else:
            s.latches.update(latches)
        acts = data.get("actuators", {})
        if isinstance(acts, dict):
            for ref, raw in acts.items():
                if ref in self._limits.entries and isinstance(raw, dict):
                    try:
                        self._store(ref, _load_actuator(ref, raw))
                    except (TypeError, ValueError, KeyError):
                        continue

    def reload(self, deployment: Deployment) -> None:
        """Switch to a new deployment, keeping latches, readings, online flags and the
        state (leases, on-since, starts) of actuators that still exist."""
        self._limits = compile_limits(deployment)
        s = self._state
        s.actuators = {r: st for r, st in s.actuators.items() if r in self._limits.entries}
        self._due.clear()
        self._due_heap = []
        for ref in s.actuators:
            self._schedule(ref)


# --------------------------------------------------------------------------
# Snapshot encoding


def _dump_actuator(st: ActuatorState) -> dict[str, object]:
    lease = st.lease
    return {
        "value": st.value, "value_at": st.value_at, "reported": st.reported,
        "reported_at": st.reported_at, "on_since": st.on_since, "off_since": st.off_since,
        "starts": list(st.starts), "recent": list(st.recent),
        "lease": None if lease is None else {
            "value": lease.value, "duration": lease.duration, "source": lease.source, "rule": lease.rule,
            "priority": lease.priority, "reason": lease.reason, "hold": lease.hold,
        },
        "lease_end": st.lease_end, "renew_at": st.renew_at,
    }


def _load_latches(raw: object) -> dict[str, Latch] | None:
    """Latches from a snapshot; None when they cannot be read."""
    if not isinstance(raw, dict):
        return None
    out: dict[str, Latch] = {}
    for t, x in raw.items():
        if not isinstance(x, dict):
            return None
        try:
            out[str(t)] = Latch(str(t), str(x.get("reason", "")), str(x.get("who", "")), float(x.get("ts", 0.0)))
        except (TypeError, ValueError):
            return None
    return out


def _opt(raw: Mapping[str, object], key: str) -> float | None:
    v = raw.get(key)
    if v is None:
        return None
    if not isinstance(v, int | float):
        raise TypeError(key)
    return float(v)


def _load_actuator(ref: str, raw: Mapping[str, object]) -> ActuatorState:
    lease_raw = raw.get("lease")
    lease = None
    if isinstance(lease_raw, dict):
        lease = Command(
            actuator=ref, value=float(lease_raw["value"]), duration=_opt(lease_raw, "duration"),
            source=str(lease_raw.get("source", "rule")),
            rule=None if lease_raw.get("rule") is None else str(lease_raw["rule"]),
            priority=int(lease_raw.get("priority", 0)), reason=str(lease_raw.get("reason", "")),
            hold=bool(lease_raw.get("hold", False)),
        )
    starts = raw.get("starts", [])
    recent = raw.get("recent", [])
    return ActuatorState(
        value=_opt(raw, "value"), value_at=_opt(raw, "value_at"), reported=_opt(raw, "reported"),
        reported_at=_opt(raw, "reported_at"), on_since=_opt(raw, "on_since"),
        off_since=_opt(raw, "off_since"),
        starts=tuple(float(t) for t in starts) if isinstance(starts, list) else (),
        recent=tuple(float(t) for t in recent) if isinstance(recent, list) else (),
        lease=lease, lease_end=_opt(raw, "lease_end"), renew_at=_opt(raw, "renew_at"),
    )
