"""Rules -> durable-rules ruleset definitions (pure: no durable import, no clock).

The split (docs/engine.md): the Rete network decides the combinational part of
every rule over *facts*, one fact per thing, always present:

- ``s:REF``  a sensor ref: ``{"ok": 1|0, "v": value}`` (``ok`` 0 = no usable value:
  never reported, quality bad/stale, older than ``stale_after``);
- ``d:DEV``  a device: ``{"st": 1 online | 0 offline | -1 unknown}``;
- ``a:REF``  an actuator's reported state: ``{"st": 1 on | 0 off | -1 unknown}``;
- ``b:KEY``  a derived boolean computed by Kaiser's clock-side code (a comparison
  with ``for:``/``hysteresis``, ``difference``, ``rises_by``/``falls_by``,
  ``no_data_for``, time windows, ``at``/``every`` pulses): ``{"st": 1|0}``;
- ``c:true`` a constant (conditions like ``all: []``).

Negation is pushed down to the leaves (every fact always exists, so ``not`` of a
leaf is a positive test on the same fact), the condition is expanded to a
disjunction of conjunctions (*terms*), and each term becomes one durable rule
that joins one pattern per fact. A rule is true while any of its terms matches
the current facts. Rules are packed into small rulesets (*partitions*); a fact
enters only the partitions that mention it.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from engine.errors import EngineError
from engine.model import (
    Action,
    ActuatorIs,
    All,
    Any_,
    At,
    Change,
    Comparison,
    Condition,
    Deployment,
    DeviceIs,
    Difference,
    Every,
    NoData,
    Not,
    Rule,
    TimeWindow,
)

#: largest magnitude a value may have in the network (the C JSON parser's limits)
VALUE_LIMIT = 1e15
#: at most this many terms per rule after expansion to a disjunction
MAX_TERMS = 256
#: partition limits: rules per ruleset and distinct constants per field
MAX_RULES_PER_PARTITION = 48
MAX_DISTINCT_PER_FIELD = 400
#: average rules per ruleset (content-defined cut points)
CHUNK = 16

# --------------------------------------------------------------------------
# Values


def normalise(value: float) -> float | None:
    """The value as the network sees it: rounded to 1e-9, clamped to +-1e15.

    None for NaN and infinities (such a reading satisfies no comparison)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(v):
        return None
    v = max(-VALUE_LIMIT, min(VALUE_LIMIT, v))
    v = round(v, 9)
    return 0.0 if v == 0 else v


def number_json(value: float) -> str:
    """JSON text of a normalised number, never with an exponent (durable's parser
    rejects ``1e-05``)."""
    if value == int(value):
        return str(int(value))
    s = repr(value)
    if "e" in s or "E" in s:
        s = format(value, ".9f").rstrip("0").rstrip(".")
    return s


def dumps(obj: object) -> str:
    """Compact JSON with numbers formatted by number_json."""
    if isinstance(obj, bool):
        return "true" if obj else "false"
    if isinstance(obj, int):
        return str(obj)
    if isinstance(obj, float):
        n = normalise(obj)
        return number_json(0.0 if n is None else n)
    if isinstance(obj, str):
        return json.dumps(obj, ensure_ascii=False)
    if isinstance(obj, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{dumps(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, list | tuple):
        return "[" + ",".join(dumps(v) for v in obj) + "]"
    raise TypeError(f"cannot encode {type(obj).__name__}")


def compare(op: str, value: float, threshold: float | tuple[float, float]) -> bool:
    """The comparison semantics on normalised numbers."""
    if isinstance(threshold, tuple):
        lo, hi = threshold
        if op == "between":
            return lo <= value <= hi
        if op == "outside":
            return value < lo or value > hi
        return False
    if op == "above":
        return value > threshold
    if op == "below":
        return value < threshold
    if op == "at_least":
        return value >= threshold
    if op == "at_most":
        return value <= threshold
    if op == "equals":
        return value == threshold
    return False


def hold_compare(op: str, value: float, threshold: float | tuple[float, float], h: float) -> bool:
    """Whether a latched (hysteresis) comparison stays true: ``h`` back past the threshold."""
    if isinstance(threshold, tuple):
        lo, hi = threshold
        if op == "between":
            return lo - h <= value <= hi + h
        if op == "outside":
            return value < lo + h or value > hi - h
        return False
    if op in ("above", "at_least"):
        return value > threshold - h if op == "above" else value >= threshold - h
    if op in ("below", "at_most"):
        return value < threshold + h if op == "below" else value <= threshold + h
    if op == "equals":
        return abs(value - threshold) <= h
    return False


def norm_threshold(value: float | tuple[float, float]) -> float | tuple[float, float]:
    if isinstance(value, tuple):
        lo, hi = (normalise(value[0]), normalise(value[1]))
        return (lo if lo is not None else 0.0, hi if hi is not None else 0.0)
    n = normalise(value)
    return n if n is not None else 0.0


# --------------------------------------------------------------------------
# Time of day (zoneinfo): windows and `at`


def local(now: float, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(now, tz)


def in_window(w: TimeWindow, now: float, tz: ZoneInfo) -> bool:
    """Local time inside the window. A window with before < after spans midnight; its
    part after midnight belongs to the day it started on (for ``weekdays``)."""
    dt = local(now, tz)
    sec = dt.hour * 3600 + dt.minute * 60 + dt.second + dt.microsecond / 1e6
    a = 0 if w.after is None else w.after * 60
    b = 86400 if w.before is None else w.before * 60
    day = dt.weekday()
    if a <= b:
        inside = a <= sec < b
    elif sec >= a:
        inside = True
    elif sec < b:
        inside = True
        day = (day - 1) % 7
    else:
        inside = False
    return inside and (not w.weekdays or day in w.weekdays)


def _local_instants(now: float, tz: ZoneInfo, minutes: Iterator[int] | list[int]) -> list[float]:
    """Unix instants of the given local minutes-of-day, today and the next two days."""
    base = local(now, tz).replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    out: list[float] = []
    mins = list(minutes)
    for d in range(3):
        day = base + timedelta(days=d)
        for m in mins:
            naive = day + timedelta(minutes=m)
            out.append(naive.replace(tzinfo=tz).timestamp())
    return out


def next_window_change(w: TimeWindow, now: float, tz: ZoneInfo) -> float:
    """The next instant after ``now`` at which the window may open or close."""
    mins = [0, 1440] + [m for m in (w.after, w.before) if m is not None]
    later = [t for t in _local_instants(now, tz, mins) if t > now + 1e-6]
    return min(later)


def next_every(start: float, interval: float, now: float) -> float:
    """The first instant ``start + k * interval`` (k >= 1) at or after ``now``."""
    interval = max(interval, 1e-3)
    if now <= start + interval:
        return start + interval
    return start + math.ceil((now - start) / interval) * interval


def next_at(minute: int, now: float, tz: ZoneInfo) -> float:
    """The next instant strictly after ``now`` with local time ``minute`` after midnight."""
    later = [t for t in _local_instants(now, tz, [minute]) if t > now + 1e-6]
    return min(later)


# --------------------------------------------------------------------------
# Leaves


def leaf_key(c: Condition) -> str:
    """A stable name for a leaf condition (state carries over reloads by this key)."""
    if isinstance(c, Comparison):
        return f"cmp:{c.sensor}:{c.op}:{_thr(c.value)}:{c.for_:g}:{c.hysteresis:g}"
    if isinstance(c, Difference):
        return f"diff:{c.a}:{c.b}:{c.op}:{_thr(c.value)}:{c.for_:g}:{c.hysteresis:g}"
    if isinstance(c, Change):
        return f"chg:{c.sensor}:{c.direction}:{c.amount:g}:{c.within:g}"
    if isinstance(c, NoData):
        return f"nodata:{c.sensor}:{c.duration:g}"
    if isinstance(c, DeviceIs):
        return f"dev:{c.device}:{int(c.online)}"
    if isinstance(c, ActuatorIs):
        return f"act:{c.actuator}:{int(c.on)}"
    if isinstance(c, TimeWindow):
        return f"win:{c.after}:{c.before}:{','.join(map(str, c.weekdays))}"
    if isinstance(c, At):
        return f"at:{c.minute}"
    if isinstance(c, Every):
        return f"every:{c.interval:g}"
    raise EngineError(f"not a leaf condition: {type(c).__name__}")


def _thr(v: float | tuple[float, float]) -> str:
    if isinstance(v, tuple):
        return f"{v[0]:g}..{v[1]:g}"
    return f"{v:g}"


def is_native(c: Condition) -> bool:
    """Leaves the network tests directly on sensor/device/actuator facts."""
    if isinstance(c, Comparison):
        return c.for_ <= 0 and c.hysteresis <= 0
    return isinstance(c, DeviceIs | ActuatorIs)


def leaves(c: Condition) -> Iterator[Condition]:
    if isinstance(c, All | Any_):
        for i in c.items:
            yield from leaves(i)
    elif isinstance(c, Not):
        yield from leaves(c.item)
    else:
        yield c


def leaf_sensors(leaf: Condition) -> tuple[str, ...]:
    """Sensor refs one leaf condition reads (none for time, device and actuator leaves)."""
    if isinstance(leaf, Comparison | Change | NoData):
        return (leaf.sensor,)
    if isinstance(leaf, Difference):
        return (leaf.a, leaf.b)
    return ()


def sensors_of(c: Condition) -> list[str]:
    """Sensor refs a condition reads (in order, unique)."""
    out: list[str] = []
    for leaf in leaves(c):
        for r in leaf_sensors(leaf):
            if r not in out:
                out.append(r)
    return out


def fact_id(c: Condition) -> str:
    if isinstance(c, Comparison) and is_native(c):
        return f"s:{c.sensor}"
    if isinstance(c, DeviceIs):
        return f"d:{c.device}"
    if isinstance(c, ActuatorIs):
        return f"a:{c.actuator}"
    return f"b:{leaf_key(c)}"


# --------------------------------------------------------------------------
# Patterns

_OPS = {"above": "$gt", "below": "$lt", "at_least": "$gte", "at_most": "$lte"}
_NEG = {"above": "$lte", "below": "$gte", "at_least": "$lt", "at_most": "$gt"}


_NEVER: dict[str, object] = {"ok": 2}  # no fact has ok == 2
_ALWAYS: dict[str, object] = {"$neq": {"ok": 2}}


def _cmp_test(op: str, value: float | tuple[float, float], negated: bool) -> dict[str, object]:
    t = norm_threshold(value)
    ranged = op in ("between", "outside")
    if ranged != isinstance(t, tuple) or (not ranged and op not in _OPS and op != "equals"):
        return _ALWAYS if negated else _NEVER  # malformed (the loader refuses it): never true
    if isinstance(t, tuple):
        lo, hi = t
        inside: dict[str, object] = {"$and": [{"$gte": {"v": lo}}, {"$lte": {"v": hi}}]}
        outside: dict[str, object] = {"$or": [{"$lt": {"v": lo}}, {"$gt": {"v": hi}}]}
        if op == "between":
            return outside if negated else inside
        return inside if negated else outside
    if op == "equals":
        return {"$neq": {"v": t}} if negated else {"v": t}
    return {(_NEG if negated else _OPS)[op]: {"v": t}}


def leaf_test(c: Condition, negated: bool) -> dict[str, object]:
    """The test on the leaf's fact (without the id)."""
    if isinstance(c, Comparison) and is_native(c):
        test = _cmp_test(c.op, c.value, negated)
        if negated:
            return {"$or": [{"ok": 0}, test]}
        return {"$and": [{"ok": 1}, test]}
    if isinstance(c, DeviceIs | ActuatorIs):
        want = int(c.online if isinstance(c, DeviceIs) else c.on)
        return {"$neq": {"st": want}} if negated else {"st": want}
    return {"st": 0 if negated else 1}


Literal_ = tuple[Condition, bool]  # (leaf, negated)


def dnf(c: Condition, negated: bool = False) -> list[list[Literal_]]:
    """Disjunction of conjunctions of (leaf, negated) literals."""
    if isinstance(c, Not):
        return dnf(c.item, not negated)
    if isinstance(c, All | Any_):
        conj = isinstance(c, All) != negated
        parts = [dnf(i, negated) for i in c.items]
        if conj:
            out: list[list[Literal_]] = [[]]
            for p in parts:
                out = [a + b for a in out for b in p]
                if len(out) > MAX_TERMS:
                    raise EngineError(f"condition expands to more than {MAX_TERMS} alternatives")
            return out
        res = [t for p in parts for t in p]
        if len(res) > MAX_TERMS:
            raise EngineError(f"condition expands to more than {MAX_TERMS} alternatives")
        return res
    return [[(c, negated)]]


@dataclass(frozen=True, slots=True)
class Term:
    name: str  # durable rule name: "<rule>#<n>"
    rule: str
    patterns: tuple[tuple[str, dict[str, object]], ...]  # (fact id, test incl. id)

    @property
    def facts(self) -> tuple[str, ...]:
        return tuple(f for f, _ in self.patterns)


def compile_term(rule: str, n: int, lits: list[Literal_]) -> Term:
    by_fact: dict[str, list[dict[str, object]]] = {}
    for leaf, neg in lits:
        by_fact.setdefault(fact_id(leaf), []).append(leaf_test(leaf, neg))
    if not by_fact:
        by_fact["c:true"] = []
    pats: list[tuple[str, dict[str, object]]] = []
    for fid in sorted(by_fact):
        tests: list[dict[str, object]] = [{"id": fid}, *by_fact[fid]]
        pats.append((fid, {"$and": tests}))
    return Term(f"{rule}#{n}", rule, tuple(pats))


def term_definition(t: Term) -> dict[str, object]:
    return {"all": [{f"f{i}": pat} for i, (_, pat) in enumerate(t.patterns)]}


# --------------------------------------------------------------------------
# Program


@dataclass(frozen=True, slots=True)
class Partition:
    """One durable ruleset: its terms, the facts it needs, its definition JSON."""

    key: str  # content hash: equal keys = identical rulesets (reused on reload)
    terms: tuple[Term, ...]
    facts: frozenset[str]
    definition: str


@dataclass(slots=True)
class Program:
    """A compiled deployment."""

    rules: tuple[Rule, ...]
    terms: dict[str, tuple[Term, ...]] = field(default_factory=dict)  # rule -> terms
    partitions: tuple[Partition, ...] = ()
    derived: dict[str, Condition] = field(default_factory=dict)  # key -> leaf
    errors: dict[str, str] = field(default_factory=dict)  # rule -> why it was not compiled

    def digest(self) -> str:
        h = hashlib.sha256()
        for p in self.partitions:
            h.update(p.key.encode())
        return h.hexdigest()[:12]


def _distinct_ok(terms: list[Term]) -> bool:
    seen: dict[str, set[str]] = {}
    for t in terms:
        for _, pat in t.patterns:
            for f, v in _constants(pat):
                s = seen.setdefault(f, set())
                s.add(v)
                if len(s) > MAX_DISTINCT_PER_FIELD:
                    return False
    return True


def _constants(obj: object, fld: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k.startswith("$"):
                yield from _constants(v, fld)
            elif isinstance(v, dict | list):
                yield from _constants(v, k)
            else:
                yield (k, repr(v))
    elif isinstance(obj, list):
        for v in obj:
            yield from _constants(v, fld)


def _make_partition(terms: list[Term]) -> Partition:
    definition = dumps({t.name: term_definition(t) for t in terms})
    key = hashlib.sha256(definition.encode()).hexdigest()[:16]
    facts = frozenset(f for t in terms for f in t.facts)
    return Partition(key, tuple(terms), facts, definition)


def partition(terms_by_rule: dict[str, tuple[Term, ...]]) -> tuple[Partition, ...]:
    """Pack rules into small rulesets.

    Rules are laid out by their first fact (so one sensor's rules sit together) and
    cut where a rule's name hashes to 0 mod ``CHUNK`` (content-defined boundaries:
    editing one rule changes only its neighbourhood, and a reload recompiles only
    that), or where a ruleset would exceed the size or distinct-value limits.
    """
    order = sorted(terms_by_rule, key=lambda r: (min((f for t in terms_by_rule[r] for f in t.facts), default=""), r))
    out: list[Partition] = []
    cur: list[Term] = []
    cur_rules = 0
    seen: dict[str, set[str]] = {}  # field -> distinct constants in the current ruleset
    for rule in order:
        rterms = list(terms_by_rule[rule])
        consts: dict[str, set[str]] = {}
        for t in rterms:
            for _, pat in t.patterns:
                for f, v in _constants(pat):
                    consts.setdefault(f, set()).add(v)
        full = cur_rules + 1 > MAX_RULES_PER_PARTITION
        if cur and (full or any(len(seen.get(f, set()) | vs) > MAX_DISTINCT_PER_FIELD for f, vs in consts.items())):
            out.append(_make_partition(cur))
            cur, seen, cur_rules = [], {}, 0
        cur.extend(rterms)
        cur_rules += 1
        for f, vs in consts.items():
            seen.setdefault(f, set()).update(vs)
        if zlib.crc32(rule.encode()) % CHUNK == 0:
            out.append(_make_partition(cur))
            cur, seen, cur_rules = [], {}, 0
    if cur:
        out.append(_make_partition(cur))
    return tuple(out)


def compile_program(dep: Deployment) -> Program:
    """Compile every enabled rule. A rule that cannot be compiled is left out and
    named in ``Program.errors`` (the rest keep running)."""
    rules = tuple(r for r in dep.rules if r.enabled)
    prog = Program(rules=rules)
    for r in rules:
        try:
            alts = dnf(r.condition)
        except EngineError as e:
            prog.errors[r.name] = str(e)
            continue
        terms = tuple(compile_term(r.name, i, lits) for i, lits in enumerate(alts))
        prog.terms[r.name] = terms
        for leaf in leaves(r.condition):
            if not is_native(leaf):
                prog.derived[leaf_key(leaf)] = leaf
    prog.partitions = partition(prog.terms)
    return prog


def describe_action(a: Action) -> str:
    """A short human summary of an action (RuleRun.actions)."""
    from engine.model import EmergencyStop, Notify, SetActuator, Wait

    if isinstance(a, SetActuator):
        st = "toggle" if a.state == "toggle" else ("on" if a.state == 1.0 else "off" if a.state == 0.0 else f"{a.state:g}")
        return f"set {a.actuator} {st}" + (f" for {a.for_:g}s" if a.for_ else "")
    if isinstance(a, Notify):
        return f"notify {a.level}: {a.text}"
    if isinstance(a, Wait):
        return f"wait {a.duration:g}s"
    if isinstance(a, EmergencyStop):
        return f"emergency_stop {a.target}: {a.reason}"
    return type(a).__name__
