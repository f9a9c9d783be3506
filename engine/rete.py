"""The only module that imports durable-rules: a Rete network over Kaiser's facts.

durable-rules 2.0.28 has sharp edges; this module keeps them in:

- its ``Host`` starts two polling threads and its timers are whole seconds: we use
  the C module directly, with no Host, no threads and no durable timers. Kaiser
  drives dispatch after every assert (time is Kaiser's business, engine/core.py);
- a ruleset name can never be registered twice: every ruleset gets a fresh name
  and is freed when a reload drops it: ``delete_state`` then ``delete_ruleset``
  (the latter alone leaks the session's memory, ~400 KB a ruleset), with a
  sentinel rule run once at creation so that ``delete_state`` never frees the
  uninitialised action context of a session in which no rule ever fired;
- its JSON parser rejects exponents (``1e-05``) and non-finite numbers: every
  fact is encoded with ``compiler.number_json`` (normalised, no exponent);
- a message that matches nothing is normal, not an error;
- events that match nothing stay in memory forever: we keep one FACT per thing and
  replace it (retract + assert), so working memory is bounded by the deployment;
- a retract + assert costs as much as the rest of a reading: a sensor fact whose
  new value lies where its old one did among the constants its tests compare ``v``
  with (its *cut points*) satisfies exactly the same tests, so it is not sent; the
  network keeps it and sends it with the next change that does cross a cut point,
  and before any reload;
- errors from the C engine are raised as EngineError, never swallowed.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

import durable_rules_engine as _dre

from engine.compiler import Partition, Program, number_json
from engine.errors import EngineError

_names = itertools.count(1)
_INIT = "__init__"  # never a term name: those always contain '#'

DEFAULT_FACTS: dict[str, dict[str, object]] = {
    "s": {"ok": 0, "v": 0},
    "d": {"st": -1},
    "a": {"st": -1},
    "b": {"st": 0},
    "c": {"st": 1},
}


def default_fact(fid: str) -> dict[str, object]:
    return dict(DEFAULT_FACTS[fid.split(":", 1)[0]])


class _Ruleset:
    """One durable ruleset (a partition) and its C handle."""

    __slots__ = ("handle", "part")

    def __init__(self, part: Partition) -> None:
        self.part = part
        # a sentinel rule, run once: durable leaves a session's action context
        # uninitialised until an action has run, and delete_state would free garbage
        definition = part.definition[:-1] + ',"' + _INIT + '":{"all":[{"f0":{"id":"x:init"}}]}}'
        try:
            self.handle = _dre.create_ruleset(f"kaiser_{next(_names)}", definition)
        except _dre.error as e:  # pragma: no cover - compiler output is valid
            raise EngineError(f"durable-rules refused a ruleset: {e}") from e
        self._run(_dre.assert_fact, '{"id":"x:init","k":0}')

    def _run(self, fn: object, text: str) -> list[str]:
        try:
            res = fn(self.handle, text)  # type: ignore[operator]
        except _dre.error as e:
            raise EngineError(f"durable-rules failed on {text}: {e}") from e
        return self._answer(res)

    def _answer(self, res: object) -> list[str]:
        """The terms an assert or retract fired (its actions run here)."""
        if not res or res[0] != 0:  # type: ignore[index]
            return []  # 1: matched nothing (normal), 2: observed before, 3: queued
        return self._dispatch(res[1])  # type: ignore[index]

    def _dispatch(self, state_handle: int) -> list[str]:
        fired: list[str] = []
        try:
            started = _dre.start_action_for_state(self.handle, state_handle)
            if not started:
                return fired
            message: str | None = started[1]
            while message:
                # one action per message: '{"<term name>":{...}}' (names never hold quotes)
                name = message[2:message.index('"', 2)]
                if name != _INIT:
                    fired.append(name)
                message = _dre.complete_and_start_action(self.handle, state_handle)
        except _dre.error as e:
            raise EngineError(f"durable-rules dispatch failed: {e}") from e
        return fired

    def assert_fact(self, text: str) -> list[str]:
        return self._run(_dre.assert_fact, text)

    def retract_fact(self, text: str) -> list[str]:
        return self._run(_dre.retract_fact, text)

    def replace_fact(self, old: str | None, new: str) -> list[str]:
        """Retract ``old`` (what that fires runs and is dropped), assert ``new``; the
        terms ``new`` fires. One call for the hot path (every reading)."""
        text = old
        try:
            if old is not None:
                self._answer(_dre.retract_fact(self.handle, old))
            text = new
            res = _dre.assert_fact(self.handle, new)
        except _dre.error as e:
            raise EngineError(f"durable-rules failed on {text}: {e}") from e
        return self._answer(res)

    def close(self) -> None:
        # delete_ruleset alone leaks the session state's pools (~400 KB a ruleset
        # with facts): free the state first
        with contextlib.suppress(_dre.error):
            _dre.delete_state(self.handle, "0")
        with contextlib.suppress(_dre.error):
            _dre.delete_ruleset(self.handle)


#: operators a sensor fact's test may use for the network to know its cut points
_ORDER_OPS = frozenset({"$gt", "$gte", "$lt", "$lte", "$neq"})


def _constants_of(test: object, cuts: set[float]) -> bool:
    """Add the numbers ``test`` compares ``v`` with to ``cuts``; False when the test
    reads anything else than ``id``, ``ok`` and ``v`` against constants."""
    if test.__class__ is not dict:
        return False
    for key, arg in test.items():
        if key in ("$and", "$or"):
            if arg.__class__ is not list or not all(_constants_of(t, cuts) for t in arg):
                return False
        elif key in _ORDER_OPS:
            if arg.__class__ is not dict or len(arg) != 1:
                return False
            ((name, const),) = arg.items()
            if not _constant(name, const, cuts):
                return False
        elif key.startswith("$") or not _constant(key, arg, cuts):
            return False
    return True


def _constant(name: str, const: object, cuts: set[float]) -> bool:
    if name == "v":
        if (const.__class__ is not int and const.__class__ is not float) or const != const:
            return False
        cuts.add(float(const))
        return True
    return name in ("id", "ok") and (const.__class__ is int or const.__class__ is str)


def cut_points(tests: Iterable[object]) -> tuple[float, ...] | None:
    """The sorted constants a sensor fact's tests compare its ``v`` with, or None
    when some test is not a comparison of ``ok`` or ``v`` with a constant."""
    cuts: set[float] = set()
    for t in tests:
        if not _constants_of(t, cuts):
            return None
    return tuple(sorted(cuts))


def side(cuts: tuple[float, ...], fields: dict[str, object]) -> int:
    """Where a sensor fact's value lies among ``cuts``: ``2i`` below ``cuts[i]`` (and
    above the one before), ``2i + 1`` on it; -1 when the fact has no usable value.
    Two facts on the same side (>= 0) satisfy the same comparisons with those cuts."""
    if fields.get("ok") != 1:
        return -1
    v = fields.get("v")
    if (v.__class__ is not float and v.__class__ is not int) or v != v:
        return -1
    i = bisect_left(cuts, v)
    return 2 * i + 1 if i < len(cuts) and cuts[i] == v else 2 * i


class Network:
    """Current facts and the rulesets deciding over them.

    ``set_fact(fid, fields)`` replaces one fact and returns the rules whose truth
    may have changed; ``is_true(rule)`` says whether any of its terms matches.
    """

    def __init__(self, program: Program) -> None:
        self._facts: dict[str, tuple[dict[str, object], str]] = {}
        self._heads: dict[str, str] = {}
        self._seq = itertools.count(1)
        self._sets: dict[str, _Ruleset] = {}
        self._by_fact: dict[str, list[_Ruleset]] = {}
        self._terms_by_fact: dict[str, list[str]] = {}
        self._rules_by_fact: dict[str, set[str]] = {}
        self._terms: dict[str, tuple[str, ...]] = {}
        self._term_rule: dict[str, str] = {}
        self._live: set[str] = set()
        #: sensor fact -> [its cut points, the side of the value its rulesets last saw]
        self._cuts: dict[str, list[Any]] = {}
        #: facts whose latest fields the rulesets have not seen (same side)
        self._held: set[str] = set()
        self.load(program)

    # ------------------------------------------------------------------
    def load(self, program: Program) -> set[str]:
        """Switch to a new program, reusing identical rulesets (and their facts).

        Returns the rules whose truth must be re-read."""
        self._send_held()
        old = self._sets
        new: dict[str, _Ruleset] = {}
        created: list[_Ruleset] = []
        for part in program.partitions:
            rs = old.get(part.key)
            if rs is None:
                rs = _Ruleset(part)
                created.append(rs)
            new[part.key] = rs
        for key, rs in old.items():
            if key not in new:
                rs.close()
        self._sets = new
        self._by_fact = {}
        self._terms_by_fact = {}
        self._rules_by_fact = {}
        self._terms = {r: tuple(t.name for t in ts) for r, ts in program.terms.items()}
        self._term_rule = {t.name: t.rule for ts in program.terms.values() for t in ts}
        for rs in new.values():
            for fid in rs.part.facts:
                self._by_fact.setdefault(fid, []).append(rs)
            for t in rs.part.terms:
                for fid in t.facts:
                    self._terms_by_fact.setdefault(fid, []).append(t.name)
                    self._rules_by_fact.setdefault(fid, set()).add(t.rule)
        # matches of kept rulesets stay valid; terms of new rulesets (even under an
        # old name: an edited rule) are matched afresh below
        kept = {t.name for key, rs in new.items() if key in old for t in rs.part.terms}
        self._live &= kept
        for rs in created:
            for fid in sorted(rs.part.facts):
                if fid not in self._facts:
                    self._store(fid, default_fact(fid))
                self._live.update(rs.assert_fact(self._facts[fid][1]))
        # facts nobody mentions any more are dropped (working memory stays bounded)
        for fid in [f for f in self._facts if f not in self._by_fact]:
            del self._facts[fid]
            self._heads.pop(fid, None)
        tests: dict[str, list[object]] = {}
        for rs in new.values():
            for t in rs.part.terms:
                for fid, pat in t.patterns:
                    if fid.startswith("s:"):
                        tests.setdefault(fid, []).append(pat)
        self._cuts = {fid: [c, side(c, self._facts[fid][0]) if fid in self._facts else -1]
                      for fid, ts in tests.items() if (c := cut_points(ts)) is not None}
        return set(self._terms)

    def _send_held(self) -> None:
        """Send the facts held back (their latest fields) to every ruleset."""
        for fid in sorted(self._held):
            fields, old_text = self._facts[fid]
            self._send(fid, fields, old_text, self._by_fact.get(fid, ()))
        self._held.clear()

    def _send(self, fid: str, fields: dict[str, object], old_text: str | None,
              sets: Iterable[_Ruleset]) -> None:
        """Replace the fact in ``sets``; its terms' matches follow."""
        live = self._live
        live.difference_update(self._terms_by_fact.get(fid, ()))
        text = self._store(fid, fields)
        for rs in sets:
            live.update(rs.replace_fact(old_text, text))

    def _store(self, fid: str, fields: dict[str, object]) -> str:
        # hand-rolled encoding (the hot path): numbers never get an exponent
        head = self._heads.get(fid)
        if head is None:
            head = self._heads[fid] = '{"id":' + json.dumps(fid)
        parts = [head]
        for name, v in fields.items():
            parts.append(f',"{name}":{v if isinstance(v, int) else number_json(v)}')  # type: ignore[arg-type]
        parts.append(f',"k":{next(self._seq)}}}')
        text = "".join(parts)
        self._facts[fid] = (fields, text)
        return text

    # ------------------------------------------------------------------
    def mentions(self, fid: str) -> bool:
        return fid in self._by_fact

    def fact(self, fid: str) -> dict[str, object] | None:
        f = self._facts.get(fid)
        return None if f is None else f[0]

    def set_fact(self, fid: str, fields: dict[str, object]) -> set[str]:
        """Replace fact ``fid`` (retract + assert in every ruleset mentioning it).

        Returns the rules to re-read (empty when nothing changed, when no ruleset
        mentions ``fid``: then nothing is stored, or when a sensor fact stays on its
        side of every cut point: then it is held back): the network's own set, which
        the caller must not change."""
        sets = self._by_fact.get(fid)
        if not sets:
            return set()
        old = self._facts.get(fid)
        if old is not None and old[0] == fields:
            return set()
        cut = self._cuts.get(fid)
        if cut is not None:
            at = side(cut[0], fields)
            if at >= 0 and at == cut[1] and old is not None:
                # no test of this fact can change: hold it back (sent with the next change
                # that crosses a cut point, or before a reload)
                self._facts[fid] = (fields, old[1])
                self._held.add(fid)
                return set()
        self._send(fid, fields, None if old is None else old[1], sets)
        if cut is not None:
            cut[1] = at
            if self._held:
                self._held.discard(fid)
        return self._rules_by_fact.get(fid, set())

    def is_true(self, rule: str) -> bool:
        return not self._live.isdisjoint(self._terms.get(rule, ()))

    def size(self) -> tuple[int, int]:
        """(rulesets, facts) for metrics."""
        return len(self._sets), len(self._facts)

    def close(self) -> None:
        for rs in self._sets.values():
            rs.close()
        self._sets = {}
        self._by_fact = {}
        self._facts = {}
        self._live = set()
        self._held = set()

    def __del__(self) -> None:  # free the C rulesets when a version is dropped
        with contextlib.suppress(Exception):
            self.close()
