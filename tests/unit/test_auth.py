"""Control keys: odd tokens never raise, names come from the key, the token file is private."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import auth
from engine.auth import Keyring
from engine.errors import ConfigError

KEYS = Keyring.of({"shared": "s3cret", "alice": "A" * 20, "pump-room": "tök\u00e9n-with-ümlauts"})

odd = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5,
)


@given(odd)
def test_identify_never_raises_and_only_a_key_opens(given_token: object) -> None:
    name = KEYS.identify(given_token)
    assert name is None or given_token in ("s3cret", "A" * 20, "tök\u00e9n-with-ümlauts")


@pytest.mark.parametrize("token", ["\ud800", "s3cret\udfff", "x" * 10_000_000, "s3cret ", "S3CRET", "s3cre"])
def test_surrogates_huge_and_near_misses_are_refused(token: str) -> None:
    assert KEYS.identify(token) is None


def test_each_key_has_its_name() -> None:
    assert [KEYS.identify(t) for t in ("s3cret", "A" * 20, "tök\u00e9n-with-ümlauts")] == \
        ["shared", "alice", "pump-room"]


@pytest.mark.parametrize(("login", "recorded"), [
    (None, "local"), ("alice", "local (alice)"), (42, "local"), ("", "local"), ("local", "local"),
    ("eve)\n(admin", "local (eveadmin)"), ("x" * 200, "local (" + "x" * 64 + ")"),
])
def test_the_operator_is_the_key_plus_a_cleaned_login(login: object, recorded: str) -> None:
    assert auth.operator("local", login) == recorded


def test_named_tokens_from_the_environment() -> None:
    env = {"KAISER_WS_TOKEN": "short",
           "KAISER_WS_TOKENS": "alice=0123456789abcdef, bob=fedcba9876543210;\n ops.room=zzzzzzzzzzzzzzzzzzzz"}
    keys = auth.configured_keys("KAISER_WS_TOKEN", "KAISER_WS_TOKENS", env)
    assert keys is not None and keys.names == ["shared", "alice", "bob", "ops.room"]
    assert keys.identify("fedcba9876543210") == "bob" and keys.identify("short") == "shared"
    assert auth.configured_keys("KAISER_WS_TOKEN", "KAISER_WS_TOKENS", {}) is None


@pytest.mark.parametrize(("text", "says"), [
    ("alice", "entry 1 is not NAME=TOKEN"),
    ("=0123456789abcdef", "entry 1 is not NAME=TOKEN"),
    ("alice=short", "16 to 1024 printable ASCII"),
    ("alice=0123456789abcdeé", "16 to 1024 printable ASCII"),
    ("alice=0123456789abcdef alice=fedcba9876543210", "'alice' is named twice"),
    ("alice=0123456789abcdef bob=0123456789abcdef", "the same token"),
    ("shared=0123456789abcdef", "clashes"),
])
def test_bad_named_tokens_are_config_errors_that_show_no_token(text: str, says: str) -> None:
    with pytest.raises(ConfigError) as e:
        auth.configured_keys("T", "TS", {"T": "x" * 16, "TS": text})
    assert says in str(e.value) and "0123456789abcdef" not in str(e.value)


def test_the_token_file_sits_beside_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert auth.token_path(str(tmp_path / "kaiser.duckdb"), 8765) == tmp_path / "kaiser.token"
    assert auth.token_path(str(tmp_path / "data" / "store"), 8765) == tmp_path / "data" / "store.token"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    assert auth.token_path(":memory:", 9000) == tmp_path / "run" / "kaiser" / "kaiser-9000.token"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert auth.token_path(":memory:", 9000) == tmp_path / "state" / "kaiser" / "kaiser-9000.token"


def test_the_token_file_is_private_and_a_planted_symlink_is_replaced(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    path = tmp_path / "new" / "kaiser.token"
    path.parent.mkdir(mode=0o755)
    path.symlink_to(victim)
    keys = auth.local_key(path)
    token = auth.read_token(path)
    assert token is not None and keys.identify(token) == "local" and keys.names == ["local"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and not path.is_symlink()
    assert victim.read_text() == "keep me\n"
    assert [p.name for p in path.parent.iterdir()] == ["kaiser.token"]  # no temp file left
    again = auth.local_key(path)  # a new key at every start
    assert auth.read_token(path) != token and again.identify(token) is None
    made = tmp_path / "made" / "deeper" / "kaiser.token"
    auth.local_key(made)
    assert stat.S_IMODE(made.parent.stat().st_mode) == 0o700


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_token_file_leaves_control_closed_not_open(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    keys = auth.local_key(ro / "kaiser.token")
    assert keys.names == ["local"] and keys.identify("") is None
    assert "cannot write the control key" in caplog.text


def test_an_unwritable_token_file_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    caplog.set_level(logging.ERROR)
    keys = auth.local_key(blocker / "kaiser.token")  # its directory is a file
    assert keys.names == ["local"] and "cannot write the control key" in caplog.text


@pytest.mark.parametrize("content", ["", "short\n", "x" * 2000, "t\u00f6ken-0123456789abcdef"])
def test_a_token_file_without_a_token_reads_as_none(tmp_path: Path, content: str) -> None:
    p = tmp_path / "kaiser.token"
    p.write_text(content, encoding="utf-8")
    assert auth.read_token(p) is None
    assert auth.read_token(tmp_path / "missing.token") is None
