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
