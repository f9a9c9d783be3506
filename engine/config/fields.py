"""Small typed readers over the positioned YAML tree, shared by the loader and the
condition/action registries. Each reader appends a diagnostic (with the node's
position) and returns None when the value is wrong; none of them raises.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from engine.config.source import YMap, YNode, YScalar, YSeq, type_name
from engine.diagnostics import Diagnostic
from engine.model import Position
from engine.units import parse_duration, parse_rate, parse_time_of_day

NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
RULE_NAME_RE = re.compile(r"^[a-z0-9_-]+$")
REF_PART = r"[A-Za-z0-9_-]+"
SENSOR_REF_RE = re.compile(rf"^{REF_PART}\.{REF_PART}(\.{REF_PART})?$")
ACTUATOR_REF_RE = re.compile(rf"^{REF_PART}\.{REF_PART}$")
DEVICE_REF_RE = re.compile(rf"^{REF_PART}$")
#: the name of an environment variable (``emergency_token_env: NORTH_ESTOP_TOKEN``)
ENV_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")


#: words people write for a key Kaiser spells differently: unknown key -> (meant key, hint)
KEY_HINTS: dict[str, tuple[str, str]] = {
    "and": ("", "to combine conditions use all: [...]"),
    "or": ("", "to combine conditions use any: [...]"),
    "state": ("set", "did you mean 'set'?"),
    "value": ("set", "did you mean 'set'?"),
    "duration": ("for", "did you mean 'for'?"),
    "delay": ("wait", "did you mean 'wait'?"),
    "sleep": ("wait", "did you mean 'wait'?"),
    "message": ("notify", "did you mean 'notify'?"),
    "from": ("after", "did you mean 'after'?"),
    "to": ("before", "did you mean 'before'?"),
    "until": ("before", "did you mean 'before'?"),
    "days": ("weekdays", "did you mean 'weekdays'?"),
    "pin": ("gpio", "did you mean 'gpio'?"),
    "greater_than": ("above", "did you mean 'above'?"),
    "less_than": ("below", "did you mean 'below'?"),
    "gt": ("above", "did you mean 'above'?"),
    "lt": ("below", "did you mean 'below'?"),
}

_UNIT_WORDS = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*(ms|msec|millis|milliseconds?|s|secs?|seconds?|m|mins?|minutes?|"
    r"h|hrs?|hours?|d|days?)\s*$", re.IGNORECASE)


def duration_hint(value: object) -> str:
    """``2 minutes`` -> "write 2m"."""
    m = _UNIT_WORDS.match(str(value))
    if not m:
        return ""
    word = m.group(2).lower()
    unit = "ms" if word.startswith("m") and word not in ("m", "min", "mins", "minute", "minutes") \
        else word[0]
    return f"write {m.group(1)}{unit}"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``did you mean 'above'?`` or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""


@dataclass
class Ctx:
    """Where we are (file) and where findings go."""

    out: list[Diagnostic]
    tz: str = "UTC"
    #: inside a ``when`` (triggers ``at``/``every`` allowed) vs ``while``
    triggers_allowed: bool = True
    #: parent mapping's allowed keys, for "wrong indentation" hints
    parents: list[Collection[str]] = field(default_factory=list)
    #: errors reported through ``error`` so far: an item built while this grew is
    #: incomplete (builders are best effort: they leave out only the bad part)
    errors: int = 0
    #: refs (kind, ref, position) of conditions/actions that could not be built, so
    #: the semantic checks still look them up (``engine.config.checks.Gaps.probes``)
    probes: list[tuple[str, str, Position]] = field(default_factory=list)

    # findings -------------------------------------------------------------
    def error(self, code: str, message: str, pos: Position, hint: str = "",
              related: Position | None = None) -> None:
        self.errors += 1
        self.out.append(Diagnostic(code, "error", message, pos, hint, related))

    def probe(self, node: YNode | None, kind: str, pos: Position) -> None:
        """Remember a well-formed ref in ``node`` (quietly: no finding) for the checks."""
        if isinstance(node, YScalar) and isinstance(node.value, str):
            pattern = {"sensor": SENSOR_REF_RE, "actuator": ACTUATOR_REF_RE, "device": DEVICE_REF_RE}[kind]
            if pattern.match(node.value):
                self.probes.append((kind, node.value, pos))

    def warning(self, code: str, message: str, pos: Position, hint: str = "") -> None:
        self.out.append(Diagnostic(code, "warning", message, pos, hint))

    # shapes ---------------------------------------------------------------
    def map(self, node: YNode | None, what: str) -> YMap | None:
        if isinstance(node, YMap):
            return node
        if node is not None:
            self.error("K202", f"{what} must be a mapping (key: value), not {type_name(node)}", node.pos)
        return None

    def seq(self, node: YNode | None, what: str) -> YSeq | None:
        if isinstance(node, YSeq):
            return node
        if node is not None:
            self.error("K202", f"{what} must be a list, not {type_name(node)}", node.pos,
                       hint="start each item with '- '")
        return None

    def keys(self, m: YMap, allowed: Collection[str], what: str,
             required: Iterable[str] = (), children: Collection[str] = ()) -> bool:
        """Report unknown keys (with did-you-mean and indentation hints) and
        missing required ones. True when nothing was wrong."""
        ok = True
        meant: set[str] = set()  # keys a misspelling stands for: not reported missing too
        for k in m.values:
            if k in allowed:
                continue
            ok = False
            kpos = m.keys[k]
            close = difflib.get_close_matches(k, list(allowed), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else ""
            meant.update(close)
            special = KEY_HINTS.get(k.lower())
            if not hint and special and (not special[0] or special[0] in allowed):
                hint = special[1]
                meant.add(special[0])
            if not hint:
                if self.parents and k in self.parents[-1]:
                    hint = f"{k!r} belongs one level up: check its indentation"
                elif k in children:
                    hint = f"{k!r} belongs one level deeper: check its indentation"
                else:
                    hint = "allowed here: " + ", ".join(sorted(allowed))
            self.error("K201", f"unknown key {k!r} in {what}", kpos, hint=hint)
        for r in required:
            if r not in m.values and r not in meant:
                ok = False
                self.error("K203", f"{what} needs {r!r}", m.pos)
        return ok

    # scalars --------------------------------------------------------------
    def scalar(self, node: YNode | None, what: str) -> YScalar | None:
        if isinstance(node, YScalar):
            return node
        if node is not None:
            self.error("K202", f"{what} must be a single value, not {type_name(node)}", node.pos)
        return None

    def text(self, node: YNode | None, what: str, allow_empty: bool = False) -> str | None:
        s = self.scalar(node, what)
        if s is None:
            return None
        v = s.value
        if isinstance(v, str):
            if not v.strip() and not allow_empty:
                self.error("K204", f"{what} must not be empty", s.pos)
                return None
            return v
        if v is None:
            if allow_empty:
                return ""
            self.error("K202", f"{what} is empty", s.pos)
            return None
        if isinstance(v, bool):
            self.error("K202", f"{what} must be text, not {type_name(s)}", s.pos, hint="quote it")
            return None
        # a number where text is wanted (esp_id: 123, name: 2024): accept its spelling
        return str(v)

    def name(self, node: YNode | None, what: str, pattern: re.Pattern[str] = NAME_RE,
             rule: str = "letters, digits, '_' and '-'") -> str | None:
        s = self.text(node, what)
        if s is None:
            return None
        if not pattern.match(s):
            assert node is not None
            self.error("K303", f"{what} {s!r} is not a valid name", node.pos, hint=f"use {rule}")
            return None
        return s

    def number(self, node: YNode | None, what: str, lo: float | None = None,
               hi: float | None = None) -> float | None:
        s = self.scalar(node, what)
        if s is None:
            return None
        v = s.value
        if isinstance(v, bool) or not isinstance(v, int | float):
            self.error("K202", f"{what} must be a number, not {type_name(s)}", s.pos)
            return None
        f = float(v)
        if not math.isfinite(f):
            self.error("K204", f"{what} must be a finite number", s.pos)
            return None
        if (lo is not None and f < lo) or (hi is not None and f > hi):
            rng = f"{lo:g} to {hi:g}" if lo is not None and hi is not None else (
                f">= {lo:g}" if lo is not None else f"<= {hi:g}")
            self.error("K204", f"{what} must be {rng}, got {v}", s.pos)
            return None
        return f

    def integer(self, node: YNode | None, what: str, lo: int | None = None,
                hi: int | None = None) -> int | None:
        s = self.scalar(node, what)
        if s is None:
            return None
        v = s.value
        if isinstance(v, bool) or not isinstance(v, int):
            self.error("K202", f"{what} must be a whole number, not {type_name(s)}", s.pos)
            return None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f"{lo} to {hi}" if lo is not None and hi is not None else (
                f">= {lo}" if lo is not None else f"<= {hi}")
            self.error("K204", f"{what} must be {rng}, got {v}", s.pos)
            return None
        return v

    def boolean(self, node: YNode | None, what: str) -> bool | None:
        s = self.scalar(node, what)
        if s is None:
            return None
        if isinstance(s.value, bool):
            return s.value
        hint = ""
        if isinstance(s.value, str) and s.value.lower() in ("yes", "no", "on", "off"):
            hint = "write true or false"
        self.error("K202", f"{what} must be true or false, not {type_name(s)}", s.pos, hint=hint)
        return None

    def duration(self, node: YNode | None, what: str, positive: bool = False) -> float | None:
        s = self.scalar(node, what)
        if s is None:
            return None
        try:
            d = parse_duration(s.value)
        except ValueError as e:
            self.error("K204", f"{what}: {e}", s.pos, hint=duration_hint(s.value))
            return None
        if positive and d <= 0:
            self.error("K204", f"{what} must be longer than 0", s.pos)
            return None
        return d

    def rate(self, node: YNode | None, what: str) -> tuple[int, float] | None:
        s = self.scalar(node, what)
        if s is None:
            return None
        try:
            r = parse_rate(s.value)
        except ValueError as e:
            self.error("K204", f"{what}: {e}", s.pos)
            return None
        if r[0] < 1:
            self.error("K204", f"{what} must allow at least 1", s.pos)
            return None
        return r

    def time_of_day(self, node: YNode | None, what: str) -> int | None:
        s = self.scalar(node, what)
        if s is None:
            return None
        v = s.value
        if isinstance(v, int) and not isinstance(v, bool) and not s.quoted:
            # YAML 1.1 readers turn 06:30 into a sexagesimal number; 1.2 keeps text.
            self.error("K204", f"{what} must be a quoted time like \"06:30\", got {v}", s.pos)
            return None
        try:
            return parse_time_of_day(v)
        except ValueError as e:
            self.error("K204", f"{what}: {e}", s.pos)
            return None

    def choice(self, node: YNode | None, what: str, choices: Collection[str]) -> str | None:
        s = self.scalar(node, what)
        if s is None:
            return None
        v = s.value
        if isinstance(v, bool):  # `on` written as true
            v = "on" if v else "off"
        if isinstance(v, str) and v in choices:
            return v
        if isinstance(v, str) and v.lower() in choices:
            return v.lower()
        hint = did_you_mean(str(v), choices) if isinstance(v, str) else ""
        self.error("K204", f"{what} must be one of {', '.join(choices)}, not {type_name(s)}",
                   s.pos, hint=hint)
        return None

    def env_name(self, node: YNode | None, what: str) -> str | None:
        """The name of an environment variable (upper-case letters, digits, ``_``; no
        leading digit). A bad value is not quoted back: it may be a secret written in
        the wrong place, and findings end up in CI logs."""
        s = self.scalar(node, what)
        if s is None:
            return None
        v = s.value
        if isinstance(v, str) and ENV_NAME_RE.match(v):
            return v
        hint = "upper-case letters, digits and '_', not starting with a digit, e.g. KAISER_NORTH_TOKEN"
        if isinstance(v, str) and ENV_NAME_RE.match(v.upper()):
            hint = "write the name in upper case"
        self.error("K204", f"{what} must be the name of an environment variable", s.pos, hint=hint)
        return None

    def ref(self, node: YNode | None, what: str, kind: str) -> str | None:
        """A reference: kind 'sensor' (dev.name[.quantity]), 'actuator' (dev.name), 'device'."""
        s = self.text(node, what)
        if s is None:
            return None
        pattern = {"sensor": SENSOR_REF_RE, "actuator": ACTUATOR_REF_RE, "device": DEVICE_REF_RE}[kind]
        if not pattern.match(s):
            assert node is not None
            example = {"sensor": "north.air_temp or north.climate.humidity",
                       "actuator": "north.fan", "device": "north"}[kind]
            self.error("K304", f"{what} {s!r} is not a valid {kind} reference", node.pos,
                       hint=f"write it like {example}")
            return None
        return s

    def pair(self, node: YNode | None, what: str) -> tuple[float, float] | None:
        q = self.seq(node, what)
        if q is None:
            return None
        if len(q.items) != 2:
            self.error("K202", f"{what} must be a list of two numbers [low, high]", q.pos)
            return None
        lo = self.number(q.items[0], f"{what} low")
        hi = self.number(q.items[1], f"{what} high")
        if lo is None or hi is None:
            return None
        return (lo, hi)
