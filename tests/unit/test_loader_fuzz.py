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
