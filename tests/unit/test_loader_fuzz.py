"""The loader never raises, whatever bytes it is given, and always answers with
positioned findings."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.config import load_deployment
from engine.config.source import parse_text
from engine.diagnostics import Diagnostic

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = "\n".join(p.read_text(encoding="utf-8") for p in sorted((REPO / "rules").glob("*.yaml"))
                    if "rules:" in p.read_text(encoding="utf-8"))[:6000]
YAMLISH = st.sampled_from([*":-[]{},&*!|>'\"#%@` \t\n?0123456789.onoffyes",
    "sensor", "above", "when", "then", "while", "hold", "rules", "devices", "safety", "tests",
    "all", "any", "not", "actuator", "set", "for", "  ", "\n  - ", ": ", "&a ", "*a", "<<: ",
])


def _check(tmp: Path, data: bytes) -> None:
    f = tmp / "f.yaml"
    f.write_bytes(data)
    _, diags = load_deployment(f)
    for d in diags:
        assert d.pos.file == str(f) and d.pos.line >= 0 and d.pos.col >= 0
        assert d.code.startswith("K") and d.text()
        assert d.code != "K199", d.text()  # an internal loader error


@settings(max_examples=150)
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        _check(Path(d), data)


@settings(max_examples=200)
@given(st.lists(YAMLISH, max_size=80).map("".join))
def test_yaml_like_text(text: str) -> None:
    out: list[Diagnostic] = []
    parse_text(text, "f.yaml", out)
    for d in out:
        assert d.pos.line >= 1


@settings(max_examples=150)
@given(st.integers(0, len(EXAMPLE)), st.integers(0, 40), st.text(max_size=12))
def test_mutated_example(start: int, length: int, insert: str) -> None:
    import tempfile

    text = EXAMPLE[:start] + insert + EXAMPLE[start + length:]
    with tempfile.TemporaryDirectory() as d:
        _check(Path(d), text.encode("utf-8", errors="surrogatepass"))


def _shape(node: object) -> object:
    """A tree as plain data: every value, its type, position and quoting."""
    from engine.config.source import YMap, YScalar, YSeq

    if isinstance(node, YScalar):
        v = node.value
        return ("scalar", repr(v), type(v).__name__, node.line, node.col, node.quoted)
    if isinstance(node, YSeq):
        return ("seq", node.line, node.col, [_shape(i) for i in node.items])
    if isinstance(node, YMap):
        return ("map", node.line, node.col, [(k, node.keylc[k], _shape(v)) for k, v in node.values.items()])
    return node


def _both_ways(text: str) -> None:
    from engine.config import source

    fast: list[Diagnostic] = []
    slow: list[Diagnostic] = []
    a = parse_text(text, "f.yaml", fast)  # libyaml's events straight into the tree
    b = source._by_composer(text, "f.yaml", slow)  # the composer's nodes, converted
    assert _shape(a) == _shape(b)
    assert [(d.text(), d.related) for d in fast] == [(d.text(), d.related) for d in slow]


NESTED = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.sampled_from(["on", "0x1F", "1e3", "~", "x y", ""])),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(["a", "b", "<<", "when", "1"]), inner, max_size=4)),
    max_leaves=20,
)


def _emit(v: object, indent: int, flow: bool) -> str:
    """YAML text for ``v``; flow style or block style, keys sometimes repeated."""
    pad = " " * indent
    if isinstance(v, dict):
        if flow or not v:
            return "{" + ", ".join(f"{k}: {_emit(x, 0, True)}" for k, x in v.items()) + "}"
        return "\n" + "\n".join(f"{pad}{k}: {_emit(x, indent + 2, False)}" for k, x in v.items())
    if isinstance(v, list):
        if flow or not v:
            return "[" + ", ".join(_emit(x, 0, True) for x in v) + "]"
        return "\n" + "\n".join(f"{pad}- {_emit(x, indent + 2, True)}" for x in v)
    if v is None:
        return "null"
    return str(v).lower() if isinstance(v, bool) else (repr(v) if v == "" else str(v))


@settings(max_examples=200)
@given(NESTED, st.booleans(), st.integers(0, 3))
def test_the_event_builder_and_the_composer_read_the_same(v: object, flow: bool, dups: int) -> None:
    """Without anchors libyaml's events become the tree directly; the composer path
    (which files with anchors take) must give the same tree and findings: duplicate
    keys, '<<' merges, non-scalar keys, nesting too deep, several documents, syntax errors."""
    text = "top:" + (" " if flow else "") + _emit(v, 2, flow) + "\n"
    text += "top: again\n" * dups
    _both_ways(text)
    _both_ways("a: " + "[" * (60 + dups * 3) + "1" + "]" * (60 + dups * 3) + "\n")
    _both_ways("? [a, b]\n: 1\nb: {[c]: 2, d: 3}\n")
    _both_ways(text + "---\nmore: 1\n")
    _both_ways(text[: len(text) // 2] + "]: {\n")


@settings(max_examples=200)
@given(st.lists(YAMLISH, max_size=80).map("".join))
def test_the_event_builder_and_the_composer_agree_on_any_text(text: str) -> None:
    _both_ways(text)


def test_deep_nesting_without_anchors_is_a_finding_not_a_crash() -> None:
    """The composer recurses once a level in C (50,000 levels crashed the process);
    the event builder skips what lies below MAX_DEPTH without recursing."""
    out: list[Diagnostic] = []
    node = parse_text("a:\n  " + "- " * 100_000 + "x\n", "f.yaml", out)
    assert node is not None
    assert [d.text() for d in out] == ["f.yaml:2:131: K105 the YAML is nested more than 64 levels deep"]


def _fast_or_declined(text: str) -> bool:
    """The line reader reads ``text`` as libyaml's events do, or declines it; True
    when it read it."""
    from engine.config import source

    try:
        fast = source._LineReader("f.yaml", text).build()
    except (source._Declined, ValueError):
        return False
    out: list[Diagnostic] = []
    slow = source._EventBuilder("f.yaml", text).build(out)
    assert _shape(fast) == _shape(slow), text
    assert out == [], text  # what it reads has no findings of its own
    return True


#: the start of the example deployment's first ASCII file (the line reader reads it)
PLAIN_EXAMPLE = next(t for t in (p.read_text(encoding="utf-8") for p in sorted((REPO / "rules").glob("*.yaml")))
                     if t.isascii() and "rules:" in t)
PLAIN_EXAMPLE = PLAIN_EXAMPLE[:PLAIN_EXAMPLE.rfind("\n", 0, 6000) + 1]
FLOWISH = st.sampled_from([*"{}[],:#'\" -?&*!|>%@`", "a", "b", "s1.t", "25", "-5", "on", "x y", ": ", ", ",
                           "{a: 1}", "[{a: b, c: d}]", "{a: b, c: d}", "#c", "''", '""'])


@settings(max_examples=300)
@given(st.lists(YAMLISH, max_size=80).map("".join))
def test_the_line_reader_reads_as_libyaml_or_declines(text: str) -> None:
    _fast_or_declined(text)


@settings(max_examples=300)
@given(st.sampled_from(["k: ", "- ", "k:\n  x: ", "k:\n- ", "- a: 1\n  k: ", "k: [", "k: {a: "]),
       st.lists(FLOWISH, max_size=12).map("".join), st.sampled_from(["", "\n", " \n", "\nz: 1\n", "\n  z: 1\n"]))
def test_the_line_reader_reads_one_line_values_as_libyaml_or_declines(head: str, value: str, tail: str) -> None:
    _fast_or_declined(head + value + tail)


@settings(max_examples=200)
@given(NESTED, st.booleans(), st.integers(0, 2))
def test_the_line_reader_reads_nested_values_as_libyaml_or_declines(v: object, flow: bool, indent: int) -> None:
    text = "top:" + (" " if flow else "") + _emit(v, 2 + indent, flow) + "\n"
    _fast_or_declined(text)
    _fast_or_declined("- " + text.replace("\n", "\n  ").rstrip(" "))


@settings(max_examples=150)
@given(st.integers(0, len(PLAIN_EXAMPLE)), st.integers(0, 40),
       st.text(alphabet=" \n-:#{}[],'\"ab1?", max_size=12))
def test_the_line_reader_reads_a_mutated_example_as_libyaml_or_declines(start: int, length: int, insert: str) -> None:
    _fast_or_declined(PLAIN_EXAMPLE[:start] + insert + PLAIN_EXAMPLE[start + length:])


def test_the_line_reader_reads_the_usual_shapes() -> None:
    """Block mappings and lists, one-line flow collections, quoted and plain scalars
    and comments are read without libyaml's events (the 10,000-rule files are these)."""
    text = (
        "# greenhouse\n"
        "devices:\n"
        "  north:   # the north house\n"
        "    esp_id: ESP_00000001\n"
        "    sensors:\n"
        "      t: {gpio: 34, type: DS18B20}\n"
        "      h: { gpio: 35 , type: 'sht31' }\n"
        "rules:\n"
        "- name: hot one\n"
        "  when: {sensor: north.t, above: -2.5e1}\n"
        "  then: [{actuator: north.fan, set: on}, {notify: \"too hot: #1\"}]\n"
        "  at: 07:00\n"
        "  tags: [a, b c, []]\n"
        "  note: it's 5 o'clock, more or less # a comment\n"
    )
    assert _fast_or_declined(text)
    assert _fast_or_declined(PLAIN_EXAMPLE)
    for declined in ("a: &x 1\nb: *x\n", "a: |\n  text\n", "a:\n", "a: 1\na: 2\n", "a: b\n  c\n",
                     "a: {b: 07:00}\n", "a: 'it''s'\n", 'a: "\\t"\n', "a: caf\u00e9\n", "---\na: 1\n"):
        assert not _fast_or_declined(declined), declined
