"""The CLI's control key: $KAISER_WS_TOKEN when set, else the server's token file."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import auth
from engine.commands import _cli_token
from engine.config.settings import parse_settings


def test_the_cli_reads_the_token_file_beside_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAISER_WS_TOKEN", raising=False)
    settings = parse_settings('[store]\npath = "k.duckdb"\n', base=tmp_path)
    assert _cli_token(settings) == (None, str(tmp_path / "k.token"))  # no server ever ran here
    keys = auth.local_key(tmp_path / "k.token")
    token, source = _cli_token(settings)
    assert token is not None and keys.identify(token) == "local" and source == str(tmp_path / "k.token")
    monkeypatch.setenv("KAISER_WS_TOKEN", "from-the-environment")
    assert _cli_token(settings) == ("from-the-environment", "$KAISER_WS_TOKEN")


def test_a_memory_store_keeps_its_token_in_the_state_dir_by_port(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAISER_WS_TOKEN", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    settings = parse_settings('[store]\npath = ":memory:"\n[websocket]\nlisten = "127.0.0.1:9100"\n')
    keys = auth.local_key(auth.token_path(":memory:", 9100))
    token, source = _cli_token(settings)
    assert keys.identify(token) == "local" and source == str(tmp_path / "kaiser" / "kaiser-9100.token")
