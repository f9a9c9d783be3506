"""The DuckDB store: batched writes, read-only queries, state, retention."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import duckdb
import pytest

from engine.adapters.query import open_sealed
from engine.adapters.store import Store, check_read_only
from engine.errors import StoreError
from engine.model import Allowed, Blocked, Code, Command, Event, Reading, RuleRun

T0 = 1_790_000_000.0


@pytest.mark.parametrize("chunk_rows", [999, 2000, 50_000])  # 6, 3 and 1 batches a flush
def test_batched_readings_land_in_the_file_and_latest_per_sensor(tmp_path: Path, chunk_rows: int) -> None:
    path = str(tmp_path / "k.duckdb")
    with Store(path, flush_interval=0.05, chunk_rows=chunk_rows) as store:
        for i in range(5000):
            store.reading(Reading(f"north.s{i % 10}", float(i), T0 + i), esp_id="ESP_AAAAAA", gpio=4)
        store.flush()
        res = store.query("SELECT count(*) FROM readings")
        assert res.rows == [(5000,)]
        latest = {r.sensor: r.value for r in store.latest_readings()}
        assert latest["north.s0"] == 4990.0
        assert latest["north.s9"] == 4999.0
    # closed: a fresh read-only connection sees everything
    con = duckdb.connect(path, read_only=True)
    assert con.execute("SELECT count(*) FROM readings").fetchone() == (5000,)


def test_commands_sent_and_blocked_with_reason_rule_and_version(tmp_path: Path) -> None:
    with Store(str(tmp_path / "k.duckdb")) as store:
        cmd = Command("north.fan", 1.0, 600.0, rule="vent-when-hot", reason="hot")
        store.command(T0, Allowed(cmd), "ESP_AAAAAA", 5, "v1")
        store.command(T0 + 1, Blocked(cmd, Code.MIN_OFF, "off for only 10 s"), "ESP_AAAAAA", 5, "v1")
        store.flush()
        rows = store.query(
            "SELECT outcome, rule, code, block_reason, config_version FROM commands ORDER BY ts"
        ).rows
    assert rows == [
        ("sent", "vent-when-hot", None, None, "v1"),
        ("blocked", "vent-when-hot", "MIN_OFF", "off for only 10 s", "v1"),
    ]


def test_runs_events_and_state_round_trip(tmp_path: Path) -> None:
    path = str(tmp_path / "k.duckdb")
    with Store(path) as store:
        store.rule_run(RuleRun("r1", T0, {"north.t": 29.0}, ("north.fan on",), "ran", "v1"), 3.5)
        store.event(Event(T0, "malformed", "warning", "ESP_AAAAAA", "bad json", {"topic": "x"}))
        store.put_state("pipeline", {"timers": [1, 2]})
        assert store.get_state("pipeline") == {"timers": [1, 2]}  # before the flush too
    with Store(path) as again:
        assert again.get_state("pipeline") == {"timers": [1, 2]}
        assert again.query("SELECT rule, outcome, trigger->>'$.\"north.t\"' FROM rule_runs").rows == [
            ("r1", "ran", "29.0")
        ]
        assert again.query("SELECT kind, subject FROM events").rows == [("malformed", "ESP_AAAAAA")]


def test_json_columns_hold_what_rules_and_events_carry(tmp_path: Path) -> None:
    """orjson writes the JSON columns: what json.dumps(default=str) wrote reads back
    the same (datetimes as their str(), tuples as lists, int keys as strings),
    mappings of any kind as objects, NaN (no JSON number) as null, and what orjson
    cannot write (an integer past 64 bits) still lands."""
    import datetime
    from types import MappingProxyType

    when = datetime.datetime(2026, 12, 1, 6, 30, tzinfo=datetime.UTC)
    with Store(str(tmp_path / "k.duckdb")) as store:
        store.rule_run(RuleRun("r1", T0, {"nord.temp": 21.5, "größe": float("nan")}, ("fan on", "vent 0.6"),
                               "ran", "v1"), 1.0)
        store.event(Event(T0, "reload", "info", "", "ok", {"at": when, "ids": (1, 2), 3: "three",
                                                        "inner": MappingProxyType({"a": 1})}))
        store.event(Event(T0 + 1, "big", "info", "", "ok", {"n": 2**70}))
        store.flush()
        run = store.query("SELECT trigger, actions FROM rule_runs").rows[0]
        data = [r[0] for r in store.query("SELECT data FROM events ORDER BY ts").rows]
    import json
    assert json.loads(run[0]) == {"nord.temp": 21.5, "größe": None}
    assert json.loads(run[1]) == ["fan on", "vent 0.6"]
    assert json.loads(data[0]) == {"at": str(when), "ids": [1, 2], "3": "three", "inner": {"a": 1}}
    assert json.loads(data[1]) == {"n": 2**70}


@pytest.mark.parametrize(
    "sql", ["DELETE FROM readings", "DROP TABLE readings", "SELECT 1; INSERT INTO state VALUES ('a','1',now())",
            "COPY readings TO 'x.csv'", "ATTACH 'x.db'"],
)
def test_query_refuses_writes(sql: str) -> None:
    with pytest.raises(StoreError):
        check_read_only(sql)


def test_read_only_query_while_the_writer_runs(tmp_path: Path) -> None:
    with Store(str(tmp_path / "k.duckdb"), flush_interval=0.01) as store:
        stop = threading.Event()

        def produce() -> None:
            i = 0
            while not stop.is_set():
                store.reading(Reading("north.t", float(i), T0 + i))
                i += 1
                if i % 100 == 0:
                    time.sleep(0.001)

        th = threading.Thread(target=produce)
        th.start()
        seen = []
        for _ in range(20):
            seen.append(store.query("SELECT count(*) FROM readings").rows[0][0])
        stop.set()
        th.join()
        store.flush()
        total = store.query("SELECT count(*) FROM readings").rows[0][0]
    assert seen == sorted(seen)
    assert total >= seen[-1]


def test_retention_drops_old_rows_only(tmp_path: Path) -> None:
    with Store(str(tmp_path / "k.duckdb"), retention=86400) as store:
        store.reading(Reading("north.t", 1.0, T0 - 2 * 86400))
        store.reading(Reading("north.t", 2.0, T0))
        store.flush()
        assert store.apply_retention(T0) == 1
        assert store.query("SELECT value FROM readings").rows == [(2.0,)]


def test_a_second_writer_is_refused_with_a_store_error(tmp_path: Path) -> None:
    path = str(tmp_path / "k.duckdb")
    # same process, different configuration: DuckDB refuses; other processes get a lock error
    with Store(path), pytest.raises(StoreError):
        Store(path, read_only=True)


def test_latest_readings_keep_the_newest_even_when_an_old_one_arrives_late(tmp_path: Path) -> None:
    path = str(tmp_path / "k.duckdb")
    with Store(path) as store:
        store.reading(Reading("north.t", 21.0, T0 + 10))
        store.flush()
        store.reading(Reading("north.t", 15.0, T0, retained=True))  # a broker replay, older
        store.reading(Reading("south.t", 18.0, T0 + 5))
        store.flush()
        latest = {r.sensor: r.value for r in store.latest_readings()}
    assert latest == {"north.t": 21.0, "south.t": 18.0}
    # a store written by an earlier version (a view, not a table) is upgraded and backfilled
    con = duckdb.connect(path)
    con.execute("DROP TABLE latest_readings")
    con.execute("CREATE VIEW latest_readings AS SELECT 1 AS x")
    con.close()
    with Store(path) as again:
        assert {r.sensor: r.value for r in again.latest_readings()} == latest


def _setting(store: Store, name: str) -> object:
    return store._select(f"SELECT value FROM duckdb_settings() WHERE name = '{name}'").rows[0][0]  # /query refuses it


def test_the_memory_limit_reaches_duckdb_and_cannot_loosen_the_sandbox(tmp_path: Path) -> None:
    with Store(str(tmp_path / "k.duckdb"), memory_limit=64_000_000) as store:
        assert _setting(store, "memory_limit") == "61.0 MiB"  # DuckDB shows MiB
        assert _setting(store, "allocator_background_threads") == "true"
        assert _setting(store, "checkpoint_threshold") == "3.8 MiB"  # 4 MB
    with Store(":memory:", memory_limit=64_000_000) as store:  # its rows are its memory: not limited
        assert _setting(store, "memory_limit") != "61.0 MiB"
    con = open_sealed(str(tmp_path / "o.duckdb"), options={"enable_external_access": True, "threads": 1})
    try:
        assert con.execute("SELECT current_setting('enable_external_access'), current_setting('threads')"
                           ).fetchall() == [(False, 1)]
    finally:
        con.close()


def test_a_crash_with_more_rows_than_the_memory_limit_loses_only_what_was_not_flushed(tmp_path: Path) -> None:
    path = tmp_path / "k.duckdb"
    # a server killed after a flush, with ~30 MB of rows and a 1 MB state rewritten at
    # every flush through a 16 MB DuckDB (it spills to disk and checkpoints as it
    # goes): reopened under the same limit (what the WAL holds is replayed within
    # it), the flushed rows and state are back, the later ones (less than
    # flush_interval's worth) are gone
    child = textwrap.dedent(f"""
        import os, signal
        from engine.adapters.store import Store
        from engine.model import Reading
        store = Store({str(path)!r}, flush_interval=3600, memory_limit=16_000_000)
        for i in range(260_000):
            store.reading(Reading(f"house{{i % 500}}.air_temp", i / 7, {T0} + i / 1000), "ESP_AAAAAA", 4, float(i))
            if i % 10_000 == 9_999:
                store.put_state("pipeline", {{"flushed": i, "rules": {{f"rule-{{r}}": "x" * 100 for r in range(10_000)}}}})
                store.flush()
        store.reading(Reading("north.air_temp", 20.0, {T0} + 400.0))
        store.put_state("pipeline", {{"flushed": -1}})
        os.kill(os.getpid(), signal.SIGKILL)
        """)
    proc = subprocess.run([sys.executable, "-c", child], cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    with Store(str(path), memory_limit=16_000_000) as again:
        assert again.query("SELECT count(*), sum(raw), count(DISTINCT sensor) FROM readings").rows == [
            (260_000, float(sum(range(260_000))), 500)]
        assert again.query("SELECT count(*) FROM latest_readings").rows == [(500,)]
        assert again.get_state("pipeline")["flushed"] == 259_999
        assert again.errors == 0
