"""Reading YAML files into a small positioned tree (YMap / YSeq / YScalar).

Every node keeps its 1-based ``Position``. Scalars are resolved with the YAML
1.2 core schema (``on``/``off``/``yes`` stay strings; ``0x44`` is an int), the
same way editors using the JSON Schemas read the files.

A file made only of the usual shapes (block mappings and lists, one-line
flow collections and scalars, comments) is read a line at a time with regular
expressions (``_LineReader``); it declines anything else, and a test compares
it with libyaml on generated and mutated files. Other files: with libyaml
(ruamel.yaml.clib) the tree is built straight from the
parser's events, one Python object a node (``_EventBuilder``); a file with an
anchor or an alias (``&a``, ``*a``) is read instead by the YAML *composer*
(nodes with marks, no object construction) and converted (``_Converter``),
which alone knows aliases and their budget. Without libyaml, ruamel.yaml's
pure-Python composer reads every file. All three give the same tree and the
same findings. Bad input never raises out of ``read_yaml``: it returns
diagnostics (too large, not UTF-8, control characters, tabs, syntax errors,
several documents, duplicate keys, alias bombs, nesting too deep).
"""

from __future__ import annotations

import math
import re
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeAlias

from ruamel.yaml.composer import ComposerError
from ruamel.yaml.events import (
    AliasEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)

from engine.diagnostics import Diagnostic
from engine.model import Position

#: files larger than this are refused (a rules file is a few hundred KB at most)
MAX_FILE_BYTES = 2 * 1024 * 1024
#: all aliases of a file together may stand for at most this many nodes, or
#: 2 x len(text) for a larger file (billion-laughs protection: a bomb is a tiny
#: text that expands enormously; legitimate reuse grows with the text)
ALIAS_BUDGET = 10_000
MAX_DEPTH = 64

try:  # libyaml through ruamel.yaml.clib: fast C scanner/parser/composer
    from ruamel.yaml.cyaml import CBaseLoader as _CBase

    class _FastLoader(_CBase):
        """libyaml composer; tags are not needed (we resolve scalars ourselves)."""

        def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
            return "?"

        def descend_resolver(self, current_node: Any, current_index: Any) -> None:
            return None

        def ascend_resolver(self) -> None:
            return None

    _CLoader: Any = _FastLoader
except (ImportError, AttributeError):  # pragma: no cover - depends on the install
    _CLoader = None


# --------------------------------------------------------------------------
# The positioned tree


class YScalar:
    """A scalar: ``value`` is None | bool | int | float | str (YAML 1.2 core schema)."""

    __slots__ = ("col", "file", "line", "quoted", "value")

    def __init__(self, value: object, file: str, line: int, col: int, quoted: bool = False) -> None:
        self.value = value
        self.file = file
        self.line = line
        self.col = col
        self.quoted = quoted

    @classmethod
    def at(cls, value: object, pos: Position) -> YScalar:
        """A scalar written at ``pos`` (e.g. a mapping key treated as a value)."""
        return cls(value, pos.file, pos.line, pos.col)

    @property
    def pos(self) -> Position:
        # built on demand: most nodes never need one, and Position is costly to make
        return Position(self.file, self.line, self.col)

    def __repr__(self) -> str:
        return f"YScalar({self.value!r} at {self.line}:{self.col})"


class _KeyPositions(Mapping[str, Position]):
    """Key -> where the key is written, made on demand from (line, col)."""

    __slots__ = ("_file", "_lc")

    def __init__(self, file: str, lc: dict[str, tuple[int, int]]) -> None:
        self._file = file
        self._lc = lc

    def __getitem__(self, key: str) -> Position:
        line, col = self._lc[key]
        return Position(self._file, line, col)

    def __iter__(self) -> Iterator[str]:
        return iter(self._lc)

    def __len__(self) -> int:
        return len(self._lc)

    def __contains__(self, key: object) -> bool:
        return key in self._lc


class YMap:
    """A mapping: ``values`` key -> node; ``keys`` key -> Position of the key."""

    __slots__ = ("col", "file", "keylc", "line", "values")

    def __init__(self, file: str, line: int, col: int) -> None:
        self.file = file
        self.line = line
        self.col = col
        self.values: dict[str, YNode] = {}
        self.keylc: dict[str, tuple[int, int]] = {}

    @property
    def pos(self) -> Position:
        return Position(self.file, self.line, self.col)

    @property
    def keys(self) -> Mapping[str, Position]:
        return _KeyPositions(self.file, self.keylc)

    def get(self, key: str) -> YNode | None:
        return self.values.get(key)

    def __repr__(self) -> str:
        return f"YMap({list(self.values)} at {self.line}:{self.col})"


class YSeq:
    """A list of nodes."""

    __slots__ = ("col", "file", "items", "line")

    def __init__(self, file: str, line: int, col: int) -> None:
        self.file = file
        self.line = line
        self.col = col
        self.items: list[YNode] = []

    @property
    def pos(self) -> Position:
        return Position(self.file, self.line, self.col)

    def __repr__(self) -> str:
        return f"YSeq({len(self.items)} items at {self.line}:{self.col})"


YNode: TypeAlias = YScalar | YMap | YSeq


def type_name(node: YNode) -> str:
    """How a user would call what they wrote: 'a mapping', 'a list', 'the number 3'."""
    if isinstance(node, YMap):
        return "a mapping"
    if isinstance(node, YSeq):
        return "a list"
    v = node.value
    if v is None:
        return "nothing (null)"
    if isinstance(v, bool):
        return f"the boolean {str(v).lower()}"
    if isinstance(v, int | float):
        return f"the number {v}"
    s = str(v)
    return f"the text {s[:40]!r}" if len(s) <= 40 else f"the text {s[:37] + '...'!r}"


# --------------------------------------------------------------------------
# YAML 1.2 core schema scalar resolution

_NULL = {"", "~", "null", "Null", "NULL"}
_TRUE = {"true", "True", "TRUE"}
_FALSE = {"false", "False", "FALSE"}
_INT = re.compile(r"^[-+]?[0-9]+$")
_OCT = re.compile(r"^0o[0-7]+$")
_HEX = re.compile(r"^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_INF = {".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"}
_NINF = {"-.inf", "-.Inf", "-.INF"}
_NAN = {".nan", ".NaN", ".NAN"}


def resolve_plain(s: str) -> object:
    """A plain (unquoted) scalar's value under the YAML 1.2 core schema."""
    if s in _NULL:
        return None
    c = s[0]
    if c in "tTfF":
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
        return s
    if c.isdigit() or c in "+-.":
        if _INT.match(s):
            return int(s)
        if _HEX.match(s):
            return int(s[2:], 16)
        if _OCT.match(s):
            return int(s[2:], 8)
        if _FLOAT.match(s):
            return float(s)
        if s in _INF:
            return math.inf
        if s in _NINF:
            return -math.inf
        if s in _NAN:
            return math.nan
    return s


# --------------------------------------------------------------------------
# Reading a file


def _pos_at(file: str, text: str, index: int) -> Position:
    line = text.count("\n", 0, index) + 1
    col = index - (text.rfind("\n", 0, index) + 1) + 1
    return Position(file, line, col)


_BAD_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]")


def decode(file: str, data: bytes, out: list[Diagnostic]) -> str | None:
    """Bytes -> text, or None with a diagnostic (not UTF-8, binary content)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        head = data[: e.start].decode("utf-8", errors="replace")
        out.append(Diagnostic(
            "K104", "error", f"the file is not UTF-8 text (byte 0x{data[e.start]:02x})",
            _pos_at(file, head, len(head)), hint="save it as UTF-8",
        ))
        return None
    m = _BAD_CHARS.search(text)
    if m:
        out.append(Diagnostic(
            "K104", "error", f"the file contains a control character (U+{ord(m.group()):04X}); is it binary?",
            _pos_at(file, text, m.start()), hint="a rules file is plain UTF-8 text",
        ))
        return None
    return text


def read_yaml(path: Path, file: str, out: list[Diagnostic]) -> YNode | None:
    """Read one YAML file into a positioned tree; None when it is empty or unusable.

    ``file`` is the name positions carry. Findings are appended to ``out``.
    """
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
            out.append(Diagnostic("K100", "error", "not a regular file", Position(file, 1, 1)))
            return None
        size = st.st_size
        if size > MAX_FILE_BYTES:
            out.append(Diagnostic(
                "K103", "error",
                f"the file is too large ({size / 1048576:.1f} MB; at most {MAX_FILE_BYTES // 1048576} MB)",
                Position(file, 1, 1), hint="split it into several files",
            ))
            return None
        data = path.read_bytes()[: MAX_FILE_BYTES + 1]
    except OSError as e:
        out.append(Diagnostic("K100", "error", f"cannot read the file: {e.strerror or e}", Position(file, 1, 1)))
        return None
    text = decode(file, data, out)
    if text is None:
        return None
    return parse_text(text, file, out)


def parse_text(text: str, file: str, out: list[Diagnostic]) -> YNode | None:
    """Compose YAML text and convert it to the positioned tree."""
    if len(text.encode("utf-8", errors="ignore")) > MAX_FILE_BYTES:
        out.append(Diagnostic("K103", "error", "the text is too large", Position(file, 1, 1)))
        return None
    try:
        return _LineReader(file, text).build()
    except (_Declined, ValueError):  # ValueError: an integer too long to read; libyaml's path says so
        pass
    if _CLoader is not None:
        try:
            return _EventBuilder(file, text).build(out)
        except _Aliased:
            pass  # the composer and the converter below know aliases
        except Exception as e:
            if type(e).__module__.startswith(("yaml", "ruamel")):  # a YAMLError with marks
                out.append(_syntax_diagnostic(e, text, file))
                return None
            out.append(Diagnostic("K101", "error", f"cannot parse the YAML: {e}", Position(file, 1, 1)))
            return None
    return _by_composer(text, file, out)


def _by_composer(text: str, file: str, out: list[Diagnostic]) -> YNode | None:
    """The composer's node graph, converted: files with anchors and aliases, and
    every file without libyaml."""
    try:
        node = _compose(text)
    except RecursionError:
        out.append(Diagnostic("K105", "error", "the YAML is nested too deeply", Position(file, 1, 1)))
        return None
    except Exception as e:  # a parser bug must not take the server down
        if type(e).__module__.startswith(("yaml", "ruamel")):  # a YAMLError with marks
            out.append(_syntax_diagnostic(e, text, file))
            return None
        out.append(Diagnostic("K101", "error", f"cannot parse the YAML: {e}", Position(file, 1, 1)))
        return None
    if node is None:
        return None
    try:
        return _Converter(file, out, max(ALIAS_BUDGET, 2 * len(text))).convert(node)
    except RecursionError:  # aliases into very deep structures
        out.append(Diagnostic("K105", "error", "the YAML is nested too deeply", Position(file, 1, 1)))
        return None


def _compose(text: str) -> Any:
    if _CLoader is not None:
        loader = _CLoader(text)
        try:
            return loader.get_single_node()
        finally:
            loader.dispose()
    from ruamel.yaml import YAML  # only without libyaml: a slow, pure-Python composer

    return YAML(typ="safe", pure=True).compose(text)


#: a time of day written without quotes after a key (``after: 07:00``, ``at: 6:30``)
_UNQUOTED_TIME = re.compile(r"""(?<=[:\s{,])\s*(?<!["'])\b(\d{1,2}:\d{2})\b(?!["':\d])""")


def _syntax_diagnostic(e: BaseException, text: str, file: str) -> Diagnostic:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = str(getattr(e, "problem", None) or "")
    context = str(getattr(e, "context", None) or "")
    if mark is not None:
        line, col = int(mark.line) + 1, int(mark.column) + 1
    elif hasattr(e, "position") and isinstance(getattr(e, "position", None), int):
        p = _pos_at(file, text, int(e.position))
        line, col = p.line, p.col
    else:
        line, col = 1, 1
    lines = text.split("\n")
    src = lines[line - 1] if 0 < line <= len(lines) else ""
    pos = Position(file, line, col)
    if "\t" in problem or "'\\t'" in problem or (src[: col].lstrip(" ").startswith("\t")):
        tab_line = line
        # the tab is usually at the start of this line or the next
        for i in range(max(0, line - 2), min(len(lines), line + 1)):
            if lines[i].lstrip(" ").startswith("\t") or "\t" in lines[i][: len(lines[i]) - len(lines[i].lstrip())]:
                tab_line = i + 1
                break
        tl = lines[tab_line - 1] if 0 < tab_line <= len(lines) else ""
        return Diagnostic(
            "K102", "error", "a tab character in the indentation",
            Position(file, tab_line, max(1, tl.find("\t") + 1)),
            hint="YAML indents with spaces, not tabs",
        )
    if "expected a single document" in problem or "expected a single document" in context:
        return Diagnostic(
            "K106", "error", "more than one YAML document in this file", pos,
            hint="remove the '---' separator or split the file",
        )
    if "nesting depth" in problem or "nesting depth" in context:
        return Diagnostic("K105", "error", "the YAML is nested too deeply", pos)
    msg = problem or str(e).split("\n")[0] or "invalid YAML"
    cmark = getattr(e, "context_mark", None)
    if context and context not in msg:
        where = ""
        if cmark is not None and (cmark.line + 1, cmark.column + 1) != (line, col):
            where = f" that starts at line {cmark.line + 1}, column {cmark.column + 1}"
        msg = f"{msg} ({context}{where})"
    hint = ""
    clock = _UNQUOTED_TIME.search(src)
    if clock is not None and ("found unexpected ':'" in msg or clock.start() <= col <= clock.end() + 1):
        # {after: 07:00} in flow style: a colon inside a plain scalar is a syntax error
        t = clock.group(1)
        return Diagnostic("K101", "error", f"YAML syntax error: an unquoted time {t}: {msg}", pos,
                          hint=f'quote the time: "{t}"')
    if any(s in msg for s in ("mapping values are not allowed", "did not find expected key",
                               "expected <block end>", "could not find expected ':'",
                               "did not find expected '-' indicator")):
        hint = "check this line's indentation against the lines above; " \
               "a value containing ': ' needs quotes"
    elif "found undefined alias" in msg or "found undefined alias" in context:
        hint = "an alias *name needs an anchor &name earlier in the same file"
    elif "found character" in msg and ("'@'" in msg or "'`'" in msg):
        hint = "quote values starting with @ or `"
    return Diagnostic("K101", "error", f"YAML syntax error: {msg}", pos, hint=hint)


_MISS = object()


def _duplicate_key(file: str, key: str, klc: tuple[int, int], first: tuple[int, int]) -> Diagnostic:
    """K107: ``key`` again at ``klc`` in a mapping that had it at ``first``."""
    return Diagnostic("K107", "error", f"duplicate key {key!r}", Position(file, *klc),
                      hint="a key may appear once per mapping; the later one is ignored",
                      related=Position(file, *first))


def _merge(values: dict[str, Any], keylc: dict[str, tuple[int, int]], merges: list[Any]) -> None:
    """``<<`` merge keys: what the merged mappings have and the mapping lacks."""
    for mm in merges:
        for key, v in mm.values.items():
            if key not in values:
                values[key] = v
                keylc[key] = mm.keylc[key]


def _merged_maps(v: Any) -> list[Any]:
    """The mappings a ``<<`` value names: one, or a list of them."""
    if isinstance(v, YMap):
        return [v]
    if isinstance(v, YSeq):
        return [i for i in v.items if isinstance(i, YMap)]
    return []


class _Converter:
    """Composer nodes -> YMap/YSeq/YScalar, checking duplicate keys and aliases."""

    def __init__(self, file: str, out: list[Diagnostic], budget: int = ALIAS_BUDGET) -> None:
        self.file = file
        self.out = out
        self.seen: dict[int, YNode] = {}  # id(composer node) -> converted (alias reuse)
        self.limit = budget
        self.budget = budget
        self.size: dict[int, int] = {}
        self.failed_alias = False
        self.plain: dict[str, object] = {}

    def pos(self, node: Any) -> Position:
        m = node.start_mark
        return Position(self.file, m.line + 1, m.column + 1)

    def convert(self, node: Any) -> YNode | None:
        return self._node(node, 0, set())

    def _expanded_size(self, node: Any, active: set[int]) -> int:
        """Nodes an alias to ``node`` stands for; -1 for a cycle."""
        k = id(node)
        if k in self.size:
            return self.size[k]
        if k in active:
            return -1
        active.add(k)
        n = 1
        v = node.value
        if isinstance(v, list):
            for item in v:
                subs = item if isinstance(item, tuple) else (item,)
                for s in subs:
                    c = self._expanded_size(s, active)
                    if c < 0:
                        active.discard(k)
                        return -1
                    n += c
                    if n > self.limit:
                        break
        active.discard(k)
        self.size[k] = n
        return n

    def _node(self, node: Any, depth: int, path: set[int]) -> YNode | None:
        k = id(node)
        if k in self.seen:  # an alias (or a node reached twice)
            n = self._expanded_size(node, set())
            if n < 0 or k in path:
                self._alias_error(node, "an alias refers to a node that contains it")
                return None
            self.budget -= n
            if self.budget < 0:
                self._alias_error(node, f"aliases expand to more than {self.limit} nodes")
                return None
            return self.seen[k]
        if depth > MAX_DEPTH:
            if not self.failed_alias:
                self.failed_alias = True
                self.out.append(Diagnostic(
                    "K105", "error", f"the YAML is nested more than {MAX_DEPTH} levels deep", self.pos(node)))
            return None
        kind = node.id
        m = node.start_mark
        line, col = m.line + 1, m.column + 1
        if kind == "scalar":
            style = node.style
            if style:
                value: object = node.value
            else:
                raw = node.value
                value = self.plain.get(raw, _MISS)
                if value is _MISS:
                    value = self.plain[raw] = resolve_plain(raw)
            y: YNode = YScalar(value, self.file, line, col, bool(style))
            self.seen[k] = y
            return y
        path.add(k)
        try:
            if kind == "sequence":
                seq = YSeq(self.file, line, col)
                self.seen[k] = seq
                for item in node.value:
                    c = self._node(item, depth + 1, path)
                    if c is not None:
                        seq.items.append(c)
                return seq
            ymap = YMap(self.file, line, col)
            self.seen[k] = ymap
            keylc = ymap.keylc
            values = ymap.values
            merges: list[YMap] = []
            for knode, vnode in node.value:
                if knode.id != "scalar":
                    self.out.append(Diagnostic(
                        "K202", "error", "a key must be a plain name, not a list or mapping",
                        self.pos(knode)))
                    continue
                key = str(knode.value)
                if key == "<<" and not knode.style:
                    merges.extend(_merged_maps(self._node(vnode, depth + 1, path)))
                    continue
                km = knode.start_mark
                klc = (km.line + 1, km.column + 1)
                if key in keylc:
                    self.out.append(_duplicate_key(self.file, key, klc, keylc[key]))
                    continue
                v = self._node(vnode, depth + 1, path)
                if v is None:
                    continue
                keylc[key] = klc
                values[key] = v
            _merge(values, keylc, merges)
            return ymap
        finally:
            path.discard(k)

    def _alias_error(self, node: Any, why: str) -> None:
        if self.failed_alias:
            return
        self.failed_alias = True
        self.out.append(Diagnostic(
            "K105", "error", f"refused YAML aliases: {why}", self.pos(node),
            hint="write the values out, or use fewer anchors (&) and aliases (*)",
        ))


class _Aliased(Exception):
    """The file has an anchor or an alias: the composer reads it (``_by_composer``)."""


class _EventBuilder:
    """libyaml's events -> YMap/YSeq/YScalar, with no composer nodes in between
    (a third of the time on a large file). Gives what ``_Converter`` gives over the
    composer's nodes: the same tree, the same findings in the same order (kept
    back until the whole stream parsed: a syntax error reports alone, as when the
    composer fails). Raises ``_Aliased`` at the first anchor or alias."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.loader = _CLoader(text)
        self.next = self.loader.get_event
        self.found: list[Diagnostic] = []
        self.too_deep = False
        self.plain: dict[str, object] = {}

    def build(self, out: list[Diagnostic]) -> YNode | None:
        try:
            nxt = self.next
            nxt()  # stream start
            if type(nxt()) is StreamEndEvent:  # else the document's start
                return None
            start = nxt()
            root = self._node(start, 0)
            nxt()  # document end
            extra = nxt()
            if type(extra) is not StreamEndEvent:
                raise ComposerError("expected a single document in the stream", start.start_mark,
                                    "but found another document", extra.start_mark)
        finally:
            self.loader.dispose()
        out.extend(self.found)
        return root

    def _node(self, ev: Any, depth: int) -> YNode | None:
        cls = type(ev)
        if cls is AliasEvent or ev.anchor is not None:
            raise _Aliased
        m = ev.start_mark
        if depth > MAX_DEPTH:
            if not self.too_deep:
                self.too_deep = True
                self.found.append(Diagnostic(
                    "K105", "error", f"the YAML is nested more than {MAX_DEPTH} levels deep",
                    Position(self.file, m.line + 1, m.column + 1)))
            self._skip(ev)
            return None
        file, line, col = self.file, m.line + 1, m.column + 1
        if cls is ScalarEvent:
            style = ev.style
            if style:
                return YScalar(ev.value, file, line, col, True)
            raw = ev.value
            value = self.plain.get(raw, _MISS)
            if value is _MISS:
                value = self.plain[raw] = resolve_plain(raw)
            return YScalar(value, file, line, col, False)
        nxt = self.next
        if cls is SequenceStartEvent:
            seq = YSeq(file, line, col)
            items = seq.items
            while True:
                e = nxt()
                if type(e) is SequenceEndEvent:
                    return seq
                c = self._node(e, depth + 1)
                if c is not None:
                    items.append(c)
        ymap = YMap(file, line, col)
        keylc = ymap.keylc
        values = ymap.values
        merges: list[YMap] = []
        while True:
            k = nxt()
            kcls = type(k)
            if kcls is MappingEndEvent:
                break
            if kcls is not ScalarEvent:
                if kcls is AliasEvent or k.anchor is not None:
                    raise _Aliased
                km = k.start_mark
                self.found.append(Diagnostic(
                    "K202", "error", "a key must be a plain name, not a list or mapping",
                    Position(file, km.line + 1, km.column + 1)))
                self._skip(k)
                self._skip(nxt())
                continue
            if k.anchor is not None:
                raise _Aliased
            key = k.value
            if key == "<<" and not k.style:
                merges.extend(_merged_maps(self._node(nxt(), depth + 1)))
                continue
            km = k.start_mark
            klc = (km.line + 1, km.column + 1)
            if key in keylc:
                self.found.append(_duplicate_key(file, key, klc, keylc[key]))
                self._skip(nxt())
                continue
            v = self._node(nxt(), depth + 1)
            if v is None:
                continue
            keylc[key] = klc
            values[key] = v
        _merge(values, keylc, merges)
        return ymap

    def _skip(self, ev: Any) -> None:
        """Read past the node ``ev`` starts (its findings are not reported)."""
        open_ = 0
        while True:
            cls = type(ev)
            if cls is AliasEvent or (cls is not SequenceEndEvent and cls is not MappingEndEvent
                                     and ev.anchor is not None):
                raise _Aliased
            if cls is SequenceStartEvent or cls is MappingStartEvent:
                open_ += 1
            elif cls is SequenceEndEvent or cls is MappingEndEvent:
                open_ -= 1
            if open_ == 0:
                return
            ev = self.next()


# --------------------------------------------------------------------------
# The common shapes without libyaml's events


class _Declined(Exception):
    """Not a shape ``_LineReader`` knows: libyaml reads the file (``_EventBuilder``)."""


# a plain scalar: words separated by spaces; no word starts with '#' (a comment), a
# ':' inside a word is followed by a non-space (': ' and a final ':' end it); the
# first character is no indicator (a '-' only before a non-space)
_FIRST = r"(?:[^\s\-?:,\[\]{}#&*!|>'\"%@`]|-(?=\S))"
_WORD = r"[^\s:]*(?::+[^\s:]+)*"
_PLAIN = rf"{_FIRST}{_WORD}(?: +(?:[^\s#:]|:+[^\s:]){_WORD})*"
#: ``key: value`` in a block mapping: the key, then a plain value (group 2), or
#: whatever else follows (group 3: a flow collection, a quoted scalar, a comment)
_KEY_LINE = re.compile(rf"({_PLAIN}):(?: *$| +(?:({_PLAIN})(?: +#.*| *)$|(.*)))")
#: a whole block value: a plain scalar, then nothing or a comment
_PLAIN_VALUE = re.compile(rf"({_PLAIN})(?: +#.*| *)$")
#: what only libyaml reads: a document marker, a directive
_DOCUMENT = re.compile(r"^(?:---|\.\.\.|%)", re.M)
_END = re.compile(r" *$| +#.*$")
#: flow context, one token: punctuation, a quoted scalar (one line, no escapes), a plain
#: scalar (it stops at , [ ] { } : # ?; libyaml ends it at '?' too, a ':' or '#' in it is declined)
_FLOW_TOKEN = re.compile(r""" *(?:([{}\[\],])|("[^"\\]*")|('[^']*')(?!')|"""
                         r"""((?:[^\s\-?:,\[\]{}#&*!|>'"%@`]|-(?=[\w.]))[^,\[\]{}:#?]*))""")

#: a flow mapping of plain words (no spaces, quotes or indicators) with ', ' and ': ':
#: ``{sensor: s1.t, above: 25}``, read by splitting (most flow mappings are these)
_SIMPLE = r"-?[A-Za-z0-9_./~+][A-Za-z0-9_./~+\-]*"
_FLAT = rf"\{{{_SIMPLE}: {_SIMPLE}(?:, {_SIMPLE}: {_SIMPLE})*\}}"
_FLAT_MAP = re.compile(_FLAT)
#: ... alone on a line, or a flow sequence of them: ``[{actuator: a1.relay, set: on}]``
_FLAT_LINE = re.compile(rf"({_FLAT}|\[{_FLAT}(?:, {_FLAT})*\])(?: *| +#.*)$")


class _LineReader:
    """The block mappings and sequences, one-line flow collections and one-line
    scalars that rules files are made of -> the tree ``_EventBuilder`` gives, a
    regular expression a line instead of a Python event object a scalar (twice as
    fast on 10,000 rules). Raises ``_Declined`` at anything else (anchors, tags,
    block and multi-line scalars, escapes, empty values, duplicate keys, '<<',
    documents, tabs, non-ASCII text, anything libyaml would refuse): only files
    it reads completely are read this way, and a test compares the two."""

    def __init__(self, file: str, text: str) -> None:
        if not text.isascii() or "\t" in text or "\r" in text or _BAD_CHARS.search(text) or _DOCUMENT.search(text):
            raise _Declined
        self.file = file
        # significant lines: [line number, indentation, content (trailing spaces kept)]
        rows: list[list[Any]] = []
        append = rows.append
        for n, raw in enumerate(text.split("\n"), 1):
            content = raw.lstrip(" ")
            if content and content[0] != "#":
                append([n, len(raw) - len(content), content])
        self.rows = rows
        self.plain: dict[str, object] = {}

    def build(self) -> YNode | None:
        rows = self.rows
        if not rows:
            raise _Declined  # empty or only comments: libyaml says which
        node, i = self._block(0, rows[0][1], 0)
        if i != len(rows):
            raise _Declined
        return node

    def _block(self, i: int, indent: int, depth: int) -> tuple[YNode, int]:
        """The block collection whose first row is ``i`` (at ``indent``)."""
        if depth > MAX_DEPTH - 4:
            raise _Declined
        content = self.rows[i][2]
        if content[0] == "-" and (len(content) == 1 or content[1] == " "):
            return self._sequence(i, indent, depth)
        return self._mapping(i, indent, depth)

    def _mapping(self, i: int, indent: int, depth: int, m: re.Match[str] | None = None) -> tuple[YNode, int]:
        """The block mapping from row ``i`` (``m``: its first row's ``_KEY_LINE`` match, if known)."""
        rows, file = self.rows, self.file
        n, _, _ = rows[i]
        ymap = YMap(file, n, indent + 1)
        values, keylc = ymap.values, ymap.keylc
        key_line = _KEY_LINE.match
        plain = self.plain
        end = len(rows)
        while i < end:
            n, ind, content = rows[i]
            if ind != indent:
                if ind < indent:
                    break
                raise _Declined
            if m is None:
                m = key_line(content)
            if m is None:
                if content[0] == "-" and (len(content) == 1 or content[1] == " "):
                    break  # the sequence this mapping is a value of (an indentless one) goes on
                raise _Declined
            key, raw, rest = m.groups()
            if key in keylc or key == "<<" or len(key) > 1000:
                raise _Declined
            i += 1
            if raw is not None or (rest and rest[0] != "#"):
                if raw is not None:
                    v = plain.get(raw, _MISS)
                    if v is _MISS:
                        v = plain[raw] = resolve_plain(raw)
                    value: YNode = YScalar(v, file, n, indent + 1 + m.start(2), False)
                else:
                    value = self._inline(rest, n, indent + 1 + m.start(3))
                if i < end and rows[i][1] > indent:
                    raise _Declined  # a continued scalar
            else:
                if i == end:
                    raise _Declined  # an empty value
                ind2, c2 = rows[i][1], rows[i][2]
                if ind2 > indent:
                    value, i = self._block(i, ind2, depth + 1)
                elif ind2 == indent and c2[0] == "-" and (len(c2) == 1 or c2[1] == " "):
                    value, i = self._sequence(i, indent, depth + 1)
                else:
                    raise _Declined
            keylc[key] = (n, indent + 1)
            values[key] = value
            m = None
        return ymap, i

    def _sequence(self, i: int, indent: int, depth: int) -> tuple[YNode, int]:
        rows, file = self.rows, self.file
        seq = YSeq(file, rows[i][0], indent + 1)
        items = seq.items
        end = len(rows)
        while i < end:
            row = rows[i]
            n, ind, content = row
            if ind != indent:
                if ind < indent:
                    break
                raise _Declined
            if content[0] != "-" or (len(content) > 1 and content[1] != " "):
                break  # the mapping this sequence is an (indentless) value of goes on
            rest = content[1:].lstrip(" ")
            if not rest or rest[0] == "#":
                raise _Declined
            col = indent + len(content) - len(rest)  # 0-based column of the item
            m = _KEY_LINE.match(rest)
            if m is not None:
                row[1], row[2] = col, rest  # the item's mapping starts on this row
                item, i = self._mapping(i, col, depth + 1, m)
            elif rest[0] == "-" and (len(rest) == 1 or rest[1] == " "):
                raise _Declined
            else:
                item = self._inline(rest, n, col + 1)
                i += 1
                if i < end and rows[i][1] > indent:
                    raise _Declined
            items.append(item)
        return seq, i

    def _inline(self, text: str, line: int, col: int) -> YNode:
        """A value on one line from ``col`` (1-based): a scalar or a flow collection."""
        c = text[0]
        if c == "{" or c == "[":
            flat = _FLAT_LINE.match(text)
            if flat is not None:
                if c == "{":
                    return self._flat(flat.group(1)[1:-1], line, col)
                seq = YSeq(self.file, line, col)
                at = col + 1
                for body in flat.group(1)[2:-2].split("}, {"):
                    seq.items.append(self._flat(body, line, at))
                    at += len(body) + 4
                return seq
            node, p = self._flow(text, 0, line, col, 0)
        elif c == '"' or c == "'":
            node, p = self._flow(text, 0, line, col, 0)
        else:
            m = _PLAIN_VALUE.match(text)
            if m is None:
                raise _Declined
            return YScalar(self._resolve(m.group(1)), self.file, line, col, False)
        if not _END.match(text, p):
            raise _Declined
        return node

    def _flat(self, body: str, line: int, at: int) -> YMap:
        """The flow mapping ``{body}`` matched by ``_FLAT``, its '{' at column ``at``."""
        file, plain = self.file, self.plain
        ymap = YMap(file, line, at)
        values, keylc = ymap.values, ymap.keylc
        kat = at + 1
        for pair in body.split(", "):
            key, raw = pair.split(": ")
            if key in keylc or key == "<<":
                raise _Declined
            value = plain.get(raw, _MISS)
            if value is _MISS:
                value = plain[raw] = resolve_plain(raw)
            keylc[key] = (line, kat)
            values[key] = YScalar(value, file, line, kat + len(key) + 2, False)
            kat += len(pair) + 2
        return ymap

    def _resolve(self, raw: str) -> object:
        value = self.plain.get(raw, _MISS)
        if value is _MISS:
            value = self.plain[raw] = resolve_plain(raw)
        return value

    def _flow(self, text: str, p: int, line: int, col: int, depth: int) -> tuple[YNode, int]:
        """The flow node at ``text[p:]`` (after spaces) and where it ends; ``col`` is
        the 1-based column of ``text[0]``."""
        if depth > 16:
            raise _Declined
        token = _FLOW_TOKEN.match
        m = token(text, p)
        if m is None:
            raise _Declined
        punct, dq, sq, plain = m.groups()
        if plain is not None:
            return YScalar(self._resolve(plain.rstrip(" ")), self.file, line, col + m.start(4), False), m.end()
        if dq is not None:
            return YScalar(dq[1:-1], self.file, line, col + m.start(2), True), m.end()
        if sq is not None:
            return YScalar(sq[1:-1], self.file, line, col + m.start(3), True), m.end()
        at = col + m.start(1)
        p = m.end()
        if punct == "[":
            seq = YSeq(self.file, line, at)
            m = token(text, p)
            if m is not None and m.group(1) == "]":
                return seq, m.end()
            while True:
                item, p = self._flow(text, p, line, col, depth + 1)
                seq.items.append(item)
                m = token(text, p)
                if m is None or m.group(1) not in ("]", ","):
                    raise _Declined  # [a: 1] (a pair) or anything else
                p = m.end()
                if m.group(1) == "]":
                    return seq, p
                m = token(text, p)
                if m is None or m.group(1) in (",", "]"):
                    raise _Declined  # a trailing or doubled comma
        if punct != "{":
            raise _Declined
        flat = _FLAT_MAP.match(text, p - 1)
        if flat is not None:
            return self._flat(flat.group()[1:-1], line, at), flat.end()
        ymap = YMap(self.file, line, at)
        values, keylc = ymap.values, ymap.keylc
        m = token(text, p)
        if m is not None and m.group(1) == "}":
            return ymap, m.end()
        while True:
            if m is None or m.group(4) is None:
                raise _Declined  # only plain keys
            key = m.group(4)
            p = m.end()
            if key[-1] == " " or key in keylc or key == "<<" or not text.startswith(": ", p):
                raise _Declined
            value, p = self._flow(text, p + 2, line, col, depth + 1)
            keylc[key] = (line, col + m.start(4))
            values[key] = value
            m = token(text, p)
            if m is None or m.group(1) not in ("}", ","):
                raise _Declined
            p = m.end()
            if m.group(1) == "}":
                return ymap, p
            m = token(text, p)
