"""The store's write path: a failing part of a flush costs no other part its rows,
and a state value changed while it was encoded is written at the next flush."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
