"""The store's write path: a failing part of a flush costs no other part its rows,
a state value changed while it was encoded is written at the next flush, and rows
DuckDB had no memory for wait for the next one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest

from engine.adapters.store import Store
from engine.model import Event, Reading

T0 = 1_790_000_000.0


def test_a_state_value_changed_while_encoded_costs_no_reading_and_is_written_next_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(str(tmp_path / "k.duckdb"), flush_interval=60)
    real = store._encode_state
    failures = [3]

    def racing(value: object) -> str:
        if failures[0]:
            failures[0] -= 1
            raise RuntimeError("dictionary changed size during iteration")
        return real(value)

    monkeypatch.setattr(store, "_encode_state", racing)
    store.reading(Reading("north.air_temp", 21.5, T0 + 0.25), esp_id="ESP_AAAAAA", gpio=4)
    store.put_state("devices", {"ESP_AAAAAA": {"config": 1}})
    store.flush()
    assert store.query("SELECT sensor, value, epoch_us(ts) FROM readings").rows == [
        ("north.air_temp", 21.5, int((T0 + 0.25) * 1_000_000))]
    assert store.query("SELECT count(*) FROM state").rows == [(0,)]
    store.flush()
    assert store.get_state("devices") == {"ESP_AAAAAA": {"config": 1}}
    assert store.errors == 0
    store.close()


def test_a_batch_duckdb_refuses_spares_the_other_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(str(tmp_path / "k.duckdb"), flush_interval=60)
    real = store._append

    def refuse_events(cur: Any, table: str, columns: list[list[Any]]) -> None:
        if table == "events":
            raise ValueError("refused")
        real(cur, table, columns)

    monkeypatch.setattr(store, "_append", refuse_events)
    store.event(Event(T0, "device", "info", "north", "north is online"))
    for i in range(3):
        store.reading(Reading("north.air_temp", 20.0 + i, T0 + i), esp_id="ESP_AAAAAA", gpio=4)
    store.flush()
    assert store.query("SELECT value FROM readings ORDER BY ts").rows == [(20.0,), (21.0,), (22.0,)]
    assert store.errors == 1 and "events" in store.last_error
    store.close()


def test_rows_appended_while_a_flush_runs_wait_for_the_next_one(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "k.duckdb"), flush_interval=60)
    for i in range(5):
        store.reading(Reading(f"north.s{i}", float(i), T0 + i), esp_id="ESP_AAAAAA", gpio=4, raw=float(i) * 16)
    assert store.pending() == 5
    store.flush()
    assert store.pending() == 0
    store.reading(Reading("north.s9", 9.0, T0 + 9, retained=True), esp_id="ESP_AAAAAA", gpio=None)
    assert store.pending() == 1
    store.flush()
    rows = store.query("SELECT sensor, gpio, raw, retained FROM readings ORDER BY ts").rows
    assert rows[0] == ("north.s0", 4, 0.0, False) and rows[-1] == ("north.s9", None, None, True)
    assert len(rows) == 6
    store.close()


class _NoMemoryFor:
    """A cursor: DuckDB has no memory for the statements starting with ``prefix``
    whose number (counted from 1 in ``calls[0]``) is in ``refused``, as when a query
    holds all of memory_limit."""

    def __init__(self, cur: Any, prefix: str, calls: list[int], refused: set[int]) -> None:
        self._cur, self._prefix, self._calls, self._refused = cur, prefix, calls, refused

    def execute(self, sql: Any, *args: Any) -> Any:
        if isinstance(sql, str) and sql.startswith(self._prefix):
            self._calls[0] += 1
            if self._calls[0] in self._refused:
                raise duckdb.OutOfMemoryException("Out of Memory Error: could not allocate block of size 256.0 KiB")
        return self._cur.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)


def test_rows_duckdb_has_no_memory_for_wait_for_the_next_flush(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(str(tmp_path / "k.duckdb"), flush_interval=60, memory_limit=64_000_000)
    con, calls = store._con, [0]
    monkeypatch.setattr(store, "_con", type("Con", (), {
        "cursor": lambda self: _NoMemoryFor(con.cursor(), "INSERT INTO readings", calls, {2, 3}),
        "close": lambda self: con.close()})())
    for i in range(5000):  # three chunks: the second is refused
        store.reading(Reading(f"north.s{i % 7}", float(i), T0 + i), esp_id="ESP_AAAAAA", gpio=4)
    store.put_state("pipeline", {"timers": [1]})
    store.flush()
    store.reading(Reading("north.s0", 5000.0, T0 + 5000), esp_id="ESP_AAAAAA", gpio=4)
    assert store.errors == 1 and "3000 rows kept for the next flush" in store.last_error
    assert store.pending() == 3001
    assert store.get_state("pipeline") == {"timers": [1]}  # the other parts of the flush went on
    store.flush()  # refused again: still kept, in order
    assert store.errors == 2 and store.pending() == 3001 and store.failing
    store.flush()
    assert store.pending() == 0
    assert not store.failing and "kept for the next flush" in store.last_error  # /health ok again, the cause kept
    rows = store.query("SELECT count(*), min(value), max(value), count(DISTINCT value) FROM readings").rows
    assert rows == [(5001, 0.0, 5000.0, 5001)]  # each row once
    assert store.query("SELECT value FROM readings ORDER BY rowid LIMIT 3 OFFSET 2000").rows == [
        (2000.0,), (2001.0,), (2002.0,)]  # appended in time order
    assert {r.sensor: r.value for r in store.latest_readings()}["north.s0"] == 5000.0
    store.close()


def test_rows_are_given_up_after_duckdb_had_no_memory_for_them_too_long(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(str(tmp_path / "k.duckdb"), flush_interval=60)
    monkeypatch.setattr("engine.adapters.store.MAX_NO_ROOM", 2)
    con, calls = store._con, [0]
    monkeypatch.setattr(store, "_con", type("Con", (), {
        "cursor": lambda self: _NoMemoryFor(con.cursor(), "INSERT INTO events", calls, {1, 2, 3}),
        "close": lambda self: con.close()})())
    store.event(Event(T0, "device", "info", "north", "north is online"))
    for _ in range(3):
        store.flush()
    assert store.pending() == 0 and "1 rows given up" in store.last_error
    store.event(Event(T0 + 1, "device", "info", "north", "north is offline"))
    store.flush()
    assert store.query("SELECT message FROM events").rows == [("north is offline",)]
    store.close()
