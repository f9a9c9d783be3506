"""kaiser.toml: defaults, paths, environment, and errors that name their line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.config.settings import Settings, load_settings, parse_settings
from engine.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "kaiser.toml"
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


def errors(tmp_path: Path, text: str) -> list[tuple[str, int, str]]:
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, text))
    return [(d.code, d.pos.line, d.message) for d in e.value.diagnostics]


def test_no_file_means_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(None)
    assert s.kaiser.id == "god" and s.kaiser.tz == "UTC" and s.kaiser.rules == Path("rules")
    assert s.mqtt.url == "mqtt://127.0.0.1:1883" and (s.mqtt.host, s.mqtt.port) == ("127.0.0.1", 1883)
    assert s.mqtt.client_id == "god-kaiser" and s.mqtt.username == ""
    assert s.store.path == "kaiser.duckdb" and s.store.flush_interval == 1.0
    assert s.store.retention == 90 * 86400
    assert s.websocket.listen == "127.0.0.1:8765" and s.websocket.port == 8765
    assert s.websocket.token_env == "KAISER_WS_TOKEN" and s.websocket.max_clients == 100
    with pytest.raises(AttributeError):
        s.kaiser.id = "x"  # type: ignore[misc]


def test_none_reads_kaiser_toml_in_the_working_directory(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, '[kaiser]\nid = "north"\n')
    monkeypatch.chdir(tmp_path)
    assert load_settings(None).kaiser.id == "north"


def test_full_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAISER_MQTT_PASSWORD", "s3cret")
    monkeypatch.setenv("MY_TOKEN", "tok")
    p = write(tmp_path, """\
        [kaiser]
        id = "house1"
        rules = "conf/rules"
        tz = "Europe/Berlin"

        [mqtt]
        url = "mqtts://broker.example:8884"
        client_id = "k1"
        username = "kaiser"

        [store]
        path = ":memory:"
        flush_interval = "500ms"
        retention = "30d"

        [websocket]
        listen = "0.0.0.0:9000"
        token_env = "MY_TOKEN"
        max_clients = 5
        """)
    s = load_settings(p)
    assert isinstance(s, Settings) and s.path == p
    assert s.kaiser.rules == tmp_path.resolve() / "conf/rules"
    assert s.kaiser.tz == "Europe/Berlin"
    assert (s.mqtt.host, s.mqtt.port, s.mqtt.tls) == ("broker.example", 8884, True)
    assert s.mqtt.password == "s3cret" and "s3cret" not in repr(s)
    assert s.store.path == ":memory:" and s.store.flush_interval == 0.5 and s.store.retention == 30 * 86400
    assert (s.websocket.host, s.websocket.port, s.websocket.max_clients) == ("0.0.0.0", 9000, 5)
    assert s.websocket.token == "tok"


def test_store_path_relative_to_the_toml_and_embedded_broker(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, '[mqtt]\nurl = "embedded"\n[store]\npath = "data/k.duckdb"\n'))
    assert s.mqtt.embedded and s.store.path == str(tmp_path.resolve() / "data/k.duckdb")


def test_unknown_keys_and_sections_name_their_line(tmp_path: Path) -> None:
    got = errors(tmp_path, """\
        [kaiser]
        id = "god"
        rulez = "rules"

        [mqtt]
        password = "no"

        [extra]
        x = 1
        """)
    assert got[0][:2] == ("K802", 3) and "rulez" in got[0][2]
    assert got[1][:2] == ("K802", 6) and "password" in got[1][2]
    assert got[2][:2] == ("K802", 8) and "[extra]" in got[2][2]


def test_hints(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, '[kaiser]\nrulez = "r"\n[mqtt]\npassword = "x"\n[store]\nlisten = "x"\n'))
    hints = [d.hint for d in e.value.diagnostics]
    assert hints[0] == "did you mean 'rules'?"
    assert "KAISER_MQTT_PASSWORD" in hints[1]
    assert hints[2] == "'listen' belongs in [websocket]"


def test_wrong_types_and_values(tmp_path: Path) -> None:
    got = errors(tmp_path, """\
        [kaiser]
        id = 7
        tz = "Mars/Olympus"
        [mqtt]
        url = "http://broker"
        [store]
        flush_interval = "soon"
        [websocket]
        listen = "localhost"
        max_clients = "many"
        """)
    assert [(c, line) for c, line, _ in got] == [
        ("K803", 2), ("K804", 3), ("K804", 5), ("K803", 7), ("K804", 9), ("K803", 10)]
    text = [m for _, _, m in got]
    assert "kaiser.id must be a string" in text[0]
    assert "time zone" in text[1]


def test_query_limits_and_named_tokens(tmp_path: Path) -> None:
    w = parse_settings("").websocket
    assert (w.query_timeout, w.query_workers, w.tokens_env) == (10.0, 2, "KAISER_WS_TOKENS")
    w = load_settings(write(tmp_path, """\
        [websocket]
        query_timeout = "30s"
        query_workers = 4
        tokens_env = "GREENHOUSE_KEYS"
        """)).websocket
    assert (w.query_timeout, w.query_workers, w.tokens_env) == (30.0, 4, "GREENHOUSE_KEYS")
    assert errors(tmp_path, """\
        [websocket]
        query_timeout = "0s"
        query_workers = 0
        tokens_env = "not a name"
        token_env = "X-Y"
        """) == [
        ("K804", 2, "websocket.query_timeout must be longer than 0 and at most 1h"),
        ("K804", 3, "websocket.query_workers must be 1 to 64"),
        ("K804", 4, "websocket.tokens_env 'not a name' is not an environment variable name"),
        ("K804", 5, "websocket.token_env 'X-Y' is not an environment variable name"),
    ]


def test_the_store_memory_limit_is_a_size(tmp_path: Path) -> None:
    assert parse_settings("").store.memory_limit == 64_000_000
    for text, size in (('"128MB"', 128_000_000), ('"1GiB"', 2**30), ('"256 mib"', 256 * 2**20), ("0", 0),
                       ("100000000", 100_000_000), ('"1.5GB"', 1_500_000_000)):
        assert parse_settings(f"[store]\nmemory_limit = {text}\n").store.memory_limit == size, text
    assert errors(tmp_path, """\
        [store]
        memory_limit = "lots"
        """) == [("K803", 2, "store.memory_limit: expected a size like 64MB, 512MiB or 1GB, got 'lots'")]
    assert errors(tmp_path, """\
        [store]
        memory_limit = "1MB"
        """) == [("K804", 2, "store.memory_limit must be 0 (DuckDB's default) or at least 16MB")]
    assert [(c, line) for c, line, _ in errors(tmp_path, "[store]\nmemory_limit = true\n")] == [("K803", 2)]


def test_the_mqtt_client_is_one_of_four(tmp_path: Path) -> None:
    assert parse_settings("").mqtt.client == "auto"
    for c in ("auto", "mqtt5", "aiomqtt", "process"):
        assert parse_settings(f'[mqtt]\nclient = "{c}"\n').mqtt.client == c
    got = errors(tmp_path, '[mqtt]\nclient = "paho"\n')
    assert [(c, line) for c, line, _ in got] == [("K804", 2)]
    assert "auto, mqtt5, aiomqtt, process" in got[0][2]


def test_mqtt_lanes_are_a_small_whole_number(tmp_path: Path) -> None:
    assert parse_settings("").mqtt.lanes == 3
    assert parse_settings("[mqtt]\nlanes = 0\n").mqtt.lanes == 0
    assert errors(tmp_path, "[mqtt]\nlanes = 17\n") == [("K804", 2, "mqtt.lanes must be 0 to 16")]
    assert [(c, line) for c, line, _ in errors(tmp_path, '[mqtt]\nlanes = "many"\n')] == [("K803", 2)]


def test_toml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    got = errors(tmp_path, '[kaiser]\nid = god\n')
    assert got[0][:2] == ("K801", 2)


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(tmp_path / "nope.toml")
    assert e.value.diagnostics[0].code == "K805"


def test_error_text_format(tmp_path: Path) -> None:
    p = write(tmp_path, '[kaiser]\nrulez = "r"\n')
    with pytest.raises(ConfigError) as e:
        load_settings(p)
    assert e.value.diagnostics[0].text() == \
        f"{p}:2:1: K802 unknown key 'rulez' in [kaiser] (did you mean 'rules'?)"


@settings(max_examples=200)
@given(st.lists(st.sampled_from([
    "[kaiser]", "[mqtt]", "[store]", "[websocket]", "[[kaiser]]", "[kaiser.x]", "id", "rules", "tz",
    "url", "listen", "max_clients", "retention", " = ", "=", '"', "'", "1", "-5", "1.5", "true",
    "[]", "{}", "\n", " ", "#", "\"embedded\"", "\"5m\"", "\"x:1\"", "\x00", "\\",
]), max_size=40).map("".join))
def test_any_text_gives_settings_or_config_error(text: str) -> None:
    try:
        s = parse_settings(text, "kaiser.toml")
    except ConfigError as e:
        assert e.diagnostics and all(d.pos.line >= 1 for d in e.diagnostics)
    else:
        assert isinstance(s, Settings)


def test_the_store_writer_is_a_process_or_a_thread(tmp_path: Path) -> None:
    assert parse_settings("").store.writer == "process"
    assert parse_settings('[store]\nwriter = "thread"\n').store.writer == "thread"
    got = errors(tmp_path, '[store]\nwriter = "fork"\n')
    assert [(c, line) for c, line, _ in got] == [("K804", 2)]
    assert "process, thread" in got[0][2]
