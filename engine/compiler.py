"""Rules -> durable-rules ruleset definitions (pure: no durable import, no clock).

The split (docs/engine.md): the Rete network decides the combinational part of
every rule over *facts*, one fact per thing, always present:

- ``s:REF``  a sensor ref: ``{"ok": 1|0, "v": value}`` (``ok`` 0 = no usable value:
  never reported, quality bad/stale, older than ``stale_after``: unknown);
- ``d:DEV``  a device: ``{"st": 1 online | 0 offline | -1 unknown}``;
- ``a:REF``  an actuator's reported state: ``{"st": 1 on | 0 off | -1 unknown}``;
- ``b:KEY``  a derived leaf computed by Kaiser's clock-side code (a comparison
  with ``for:``/``hysteresis``/``count``/``fresh``, ``difference``,
  ``rises_by``/``falls_by``, ``no_data_for``, time windows, ``at``/``every``
  pulses): ``{"st": 1 true | 0 false | -1 unknown}``;
- ``c:true`` a constant (conditions like ``all: []``).

What each leaf kind means (its fact, its test) is its entry in engine.conditions.
Negation is pushed down to the leaves (every fact always exists, so ``not`` of a
leaf is a test on the same fact; it is strict: an unknown leaf satisfies neither
its test nor its negation), the condition is expanded to a disjunction of
conjunctions (*terms*), and each term becomes one durable rule that joins one
pattern per fact. A rule is *true* while any of its terms matches the current
facts (Kleene's logic: a rule that is not true is false or unknown; the engine
tells those apart, engine/core.py). Rules are packed into small rulesets (*partitions*); a fact
enters only the partitions that mention it.
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

from engine.conditions import kind_of, leaves, sensors_of
from engine.conditions.base import VALUE_LIMIT, norm_threshold, normalise
from engine.conditions.base import compare_value as compare
from engine.conditions.base import hold_value as hold_compare
from engine.conditions.time_window import in_window, local, next_window_change
from engine.conditions.triggers import next_at, next_every
from engine.errors import EngineError
from engine.model import Action, All, Any_, Condition, Deployment, Not, Rule

__all__ = [
    "VALUE_LIMIT", "compare", "compile_program", "dnf", "dumps", "hold_compare", "in_window", "is_native",
    "leaf_key", "leaf_sensors", "leaf_test", "leaves", "local", "next_at", "next_every", "next_window_change",
    "norm_threshold", "normalise", "number_json", "partition", "sensors_of",
]

#: at most this many terms per rule after expansion to a disjunction
MAX_TERMS = 256
#: partition limits: rules per ruleset and distinct constants per field
MAX_RULES_PER_PARTITION = 48
MAX_DISTINCT_PER_FIELD = 400
#: average rules per ruleset (content-defined cut points)
CHUNK = 16

# --------------------------------------------------------------------------
# Values


def number_json(value: float) -> str:
    """JSON text of a normalised number, never with an exponent (durable's parser
    rejects ``1e-05``): a whole number without ``.0``, else the shortest repr."""
    if value.__class__ is float:  # the hot path (every sensor fact): one repr
        s = repr(value)
        last = s[-1]
        if last.isdigit() and "e" not in s:  # not inf/nan, no exponent
            return str(int(value)) if s.endswith(".0") else s
    if value == int(value):
        return str(int(value))
    s = repr(value)
    if "e" in s or "E" in s:
        s = format(value, ".9f").rstrip("0").rstrip(".")
    return s


_STR = json.encoder.encode_basestring  # what json.dumps(s, ensure_ascii=False) gives a str
_KEY = json.encoder.encode_basestring_ascii  # ... and json.dumps(s)


def dumps(obj: object) -> str:
    """Compact JSON with numbers formatted by number_json."""
    # the containers and strings first, by exact type (a dict's str values without a
    # call): compiling 10,000 rules dumps ~150,000 values
    t = type(obj)
    if t is str:
        return _STR(obj)  # type: ignore[arg-type]
    if t is dict:
        return "{" + ",".join([_KEY(k if type(k) is str else str(k)) + ":"
                               + (_STR(v) if type(v) is str else dumps(v))
                               for k, v in obj.items()]) + "}"  # type: ignore[attr-defined]
    if t is list or t is tuple:
        return "[" + ",".join([dumps(v) for v in obj]) + "]"  # type: ignore[attr-defined]
    if t is int:
        return str(obj)
    return _dumps_other(obj)


def _dumps_other(obj: object) -> str:
    """``dumps`` of everything but an exact str, dict, list, tuple or int (subclasses too)."""
    if isinstance(obj, str):
        return _STR(obj)
    if isinstance(obj, dict):
        return "{" + ",".join([_KEY(str(k)) + ":" + dumps(v) for k, v in obj.items()]) + "}"
    if isinstance(obj, list | tuple):
        return "[" + ",".join([dumps(v) for v in obj]) + "]"
    if isinstance(obj, bool):
        return "true" if obj else "false"
    if isinstance(obj, int):
        return str(obj)
    if isinstance(obj, float):
        n = normalise(obj)
        return number_json(0.0 if n is None else n)
    raise TypeError(f"cannot encode {type(obj).__name__}")


# --------------------------------------------------------------------------
# Leaves


def leaf_key(c: Condition) -> str:
    """A stable name for a leaf condition (state carries over reloads by this key)."""
    return kind_of(c).key(c)


def is_native(c: Condition) -> bool:
    """Leaves the network tests directly on sensor/device/actuator facts."""
    return kind_of(c).native(c)


def leaf_sensors(leaf: Condition) -> tuple[str, ...]:
    """Sensor refs one leaf condition reads (none for time, device and actuator leaves)."""
    return kind_of(leaf).sensors(leaf)


def fact_id(c: Condition) -> str:
    return kind_of(c).fact(c)


# --------------------------------------------------------------------------
# Patterns


def leaf_test(c: Condition, negated: bool) -> dict[str, object]:
    """The test on the leaf's fact (without the id). Negation is strict: a leaf whose
    reading is unknown satisfies neither the test nor its negation (three-valued
    logic: the network finds the rules that are *true*)."""
    return kind_of(c).test(c, negated)


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
            _constants(pat, seen)
    return all(len(s) <= MAX_DISTINCT_PER_FIELD for s in seen.values())


_CONTAINERS = (dict, list)


def _constants(obj: object, into: dict[str, set[str]]) -> None:
    """Add the pattern's constants to ``into``: field -> their reprs."""
    stack = [obj]  # not recursive: a pattern is a few small dicts and lists deep
    push = stack.append
    while stack:
        o = stack.pop()
        t = type(o)
        if t is dict or (t is not list and isinstance(o, dict)):
            for k, v in o.items():  # type: ignore[attr-defined]
                vt = type(v)
                if vt is dict or vt is list or k.startswith("$") or (
                        vt is not int and vt is not float and vt is not str and isinstance(v, _CONTAINERS)):
                    push(v)
                else:
                    s = into.get(k)
                    if s is None:
                        s = into[k] = set()
                    s.add(repr(v))
        elif t is list or isinstance(o, list):
            stack.extend(o)  # type: ignore[arg-type]


def _unencodable(obj: object) -> object:
    raise TypeError(f"cannot encode {type(obj).__name__}")


#: json's C encoder, compact, non-ASCII as is (what ``_STR`` does); None without it
_C_ENCODER: Any = None if json.encoder.c_make_encoder is None else json.encoder.c_make_encoder(  # type: ignore[attr-defined]
    None, _unencodable, _STR, None, ":", ",", False, False, False)
#: a number ``dumps`` would write otherwise: an integral float (25.0: number_json writes
#: 25), an exponent, more than 9 decimals (not normalised), 16 digits or more (beyond
#: the clamp); found anywhere, strings included (then the slow path runs, to no harm)
_NOT_AS_DUMPS = re.compile(r"[:\[,]-?(?:\d{16,}|\d+(?:\.0[,\]}]|\.\d{10,}|(?:\.\d+)?[eE]))")


def _encoded(obj: dict[str, object]) -> str | None:
    """``dumps(obj)`` by json's C encoder (three times faster on a ruleset), or None
    when its text might differ: non-ASCII or DEL (``dumps`` escapes those in keys
    only), a number ``_NOT_AS_DUMPS`` finds, NaN or infinity, a type it does not know.
    Keys are the compiler's own (str)."""
    if _C_ENCODER is None:
        return None
    try:
        text = "".join(_C_ENCODER(obj, 0))
    except (TypeError, ValueError):
        return None
    if not text.isascii() or "\x7f" in text or _NOT_AS_DUMPS.search(text):
        return None
    return text


def _make_partition(terms: list[Term]) -> Partition:
    # what dumps({t.name: term_definition(t) for t in terms}) gives (names are unique)
    definition = _encoded({t.name: term_definition(t) for t in terms}) or \
        "{" + ",".join([_KEY(t.name) + ":" + dumps(term_definition(t)) for t in terms]) + "}"
    key = hashlib.sha256(definition.encode()).hexdigest()[:16]
    facts = frozenset([f for t in terms for f, _ in t.patterns])
    return Partition(key, tuple(terms), facts, definition)


def _too_many(seen: dict[str, set[str]], consts: dict[str, set[str]]) -> bool:
    """Adding ``consts`` would give a field more than MAX_DISTINCT_PER_FIELD distinct constants."""
    for f, vs in consts.items():
        have = seen.get(f)
        n = len(vs) if have is None else len(have) + len(vs.difference(have))
        if n > MAX_DISTINCT_PER_FIELD:
            return True
    return False


def partition(terms_by_rule: dict[str, tuple[Term, ...]]) -> tuple[Partition, ...]:
    """Pack rules into small rulesets.

    Rules are laid out by their first fact (so one sensor's rules sit together) and
    cut where a rule's name hashes to 0 mod ``CHUNK`` (content-defined boundaries:
    editing one rule changes only its neighbourhood, and a reload recompiles only
    that), or where a ruleset would exceed the size or distinct-value limits.
    """
    order = sorted(terms_by_rule, key=lambda r: (min([f for t in terms_by_rule[r] for f, _ in t.patterns],
                                                     default=""), r))
    out: list[Partition] = []
    cur: list[Term] = []
    cur_rules = 0
    seen: dict[str, set[str]] = {}  # field -> distinct constants in the current ruleset
    for rule in order:
        rterms = terms_by_rule[rule]
        consts: dict[str, set[str]] = {}
        for t in rterms:
            for _, pat in t.patterns:
                _constants(pat, consts)
        if cur and (cur_rules + 1 > MAX_RULES_PER_PARTITION or _too_many(seen, consts)):
            out.append(_make_partition(cur))
            cur, seen, cur_rules = [], {}, 0
        cur.extend(rterms)
        cur_rules += 1
        for f, vs in consts.items():
            have = seen.get(f)
            if have is None:
                seen[f] = set(vs)
            else:
                have.update(vs)
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
    from engine.actions import describe

    return describe(a)
