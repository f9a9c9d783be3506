"""The DuckDB store: batched writes, read-only queries, state, retention."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import duckdb
import pytest

from engine.adapters.store import Store, check_read_only
from engine.errors import StoreError
from engine.model import Allowed, Blocked, Code, Command, Event, Reading, RuleRun

T0 = 1_790_000_000.0


def test_batched_readings_land_in_the_file_and_latest_per_sensor(tmp_path: Path) -> None:
    path = str(tmp_path / "k.duckdb")
    with Store(path, flush_interval=0.05) as store:
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
