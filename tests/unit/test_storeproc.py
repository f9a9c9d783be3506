"""The store in a process of its own (engine/adapters/storeproc.py): the same rows
as the in-process store, reads that see every append, a child that dies is
started again without losing a flush, and one that outlives the server writes
what it got."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from engine.adapters.query import QueryCancelled, QueryRefused, QueryTimeout
from engine.adapters.store import TABLES, Store
from engine.adapters.storeproc import StoreClient
from engine.errors import StoreError
from engine.model import Allowed, Blocked, Code, Command, Event, Notification, Reading, RuleRun

T0 = 1_790_000_000.0


def _append_everything(store: Store | StoreClient, n: int) -> None:
    for i in range(n):
        store.reading(Reading(f"north.s{i % 7}", float(i), T0 + i, "good", "C"), esp_id="ESP_AAAAAA", gpio=4,
                      raw=float(i * 16))
    cmd = Command("north.fan", 1.0, 600.0, rule="vent-when-hot", reason="hot")
    store.command(T0, Allowed(cmd), "ESP_AAAAAA", 5, "v1")
    store.command(T0 + 1, Blocked(cmd, Code.MIN_OFF, "off for only 10 s"), "ESP_AAAAAA", 5, "v1")
    store.rule_run(RuleRun("r1", T0, {"north.t": 29.0, "north.h": None}, ("north.fan on",), "ran", "v1"), 3.5)
    store.event(Event(T0, "malformed", "warning", "ESP_AAAAAA", "bad json", {"topic": "x", "n": (1, 2)}))
    class Odd:  # a local class: pickle cannot take it, JSON writes its str()
        def __str__(self) -> str:
            return "odd"
    store.event(Event(T0, "odd", "info", "", "a value pickle cannot take", {"what": Odd()}))
    store.notification(Notification(T0, "warning", "North is hot: 29 °C", "r1"))
    store.device_status(T0, "north", "ESP_AAAAAA", "online", "", 100, 180000, -60)
    store.actuator_status(T0, "north.fan", "ESP_AAAAAA", 5, True, 1.0, 1200, "normal")
    store.command_response(T0, "north.fan", "ESP_AAAAAA", 5, "ON", 1.0, 0.0, True, "Command executed")
    store.config_version("v1", "abc", None, T0, "rules", ["a.yaml"], True)
    store.put_state("pipeline", {"timers": [1, 2], "latches": {"r1": True}})


def _tables(path: str) -> dict[str, list[tuple[object, ...]]]:
    con = duckdb.connect(path, read_only=True)
    try:
        out = {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in TABLES}
        out["config_versions"] = con.execute("SELECT * EXCLUDE (loaded_at) FROM config_versions").fetchall()
        out["state"] = con.execute("SELECT key, value FROM state").fetchall()
        return out
    finally:
        con.close()


def test_the_same_rows_as_the_store_in_this_process(tmp_path: Path) -> None:
    here, there = str(tmp_path / "thread.duckdb"), str(tmp_path / "process.duckdb")
    with Store(here, flush_interval=0.05, now=lambda: T0) as s:
        _append_everything(s, 5000)
    with StoreClient(there, flush_interval=0.05, now=lambda: T0) as c:
        assert c.pid != os.getpid()
        _append_everything(c, 5000)
        c.flush()
        assert c.query("SELECT count(*) FROM readings").rows == [(5000,)]
        assert c.pending() == 0 and c.rows_written == 5000 + 9
    a, b = _tables(here), _tables(there)
    assert a == b
    assert len(b["readings"]) == 5000 and b["state"][0][1] == '{"timers":[1,2],"latches":{"r1":true}}'


def test_reads_see_every_append_before_them(tmp_path: Path) -> None:
    with StoreClient(str(tmp_path / "k.duckdb"), flush_interval=3600) as c:
        c.reading(Reading("north.t", 21.5, T0), esp_id="ESP_AAAAAA", gpio=4)
        c.put_state("k", {"a": 1})
        # no flush asked for: the flush interval is an hour
        assert [(r.sensor, r.value) for r in c.latest_readings()] == [("north.t", 21.5)]
        assert c.get_state("k") == {"a": 1}
        assert [r.value for r in c.readings_since(T0 - 1, "north.t")] == [21.5]
        assert c.counts()["readings"] == 1
        with pytest.raises(QueryRefused):
            c.query("DELETE FROM readings")
        with pytest.raises(StoreError, match="does_not_exist"):
            c.query("SELECT * FROM does_not_exist")


def test_the_query_pool_runs_in_the_store_process(tmp_path: Path) -> None:
    with StoreClient(str(tmp_path / "k.duckdb"), flush_interval=3600) as c:
        c.reading(Reading("north.t", 21.5, T0), esp_id="ESP_AAAAAA", gpio=4)

        async def main() -> None:
            pool = c.query_pool(timeout=0.3, workers=1, backlog=1)
            assert (await pool.run("SELECT sensor, value FROM readings")).rows == [("north.t", 21.5)]
            with pytest.raises(QueryRefused):
                await pool.run("INSERT INTO readings (sensor) VALUES ('x')")
            slow = "SELECT count(*) FROM range(100000000000) a"
            with pytest.raises(QueryTimeout):
                await pool.run(slow)
            with pytest.raises(QueryCancelled):
                await pool.run(slow, gone=lambda: True)
            assert pool.done == 1 and pool.timeouts == 1 and pool.cancelled == 1
            await pool.aclose()
        asyncio.run(main())


def test_a_store_process_that_dies_is_started_again_and_gets_every_row(tmp_path: Path) -> None:
    path = str(tmp_path / "k.duckdb")
    with StoreClient(path, flush_interval=3600) as c:
        first = c.pid
        for i in range(3000):
            c.reading(Reading("north.t", float(i), T0 + i), esp_id="ESP_AAAAAA", gpio=4)
        os.kill(first, signal.SIGKILL)
        c._proc.wait(10)
        for i in range(3000, 4000):
            c.reading(Reading("north.t", float(i), T0 + i), esp_id="ESP_AAAAAA", gpio=4)
        c.flush()
        assert c.pid != first and c.restarts == 1
        assert "store process ended" in c.last_error and c.errors >= 1
        assert c.query("SELECT count(*), count(DISTINCT value) FROM readings").rows == [(4000, 4000)]


def test_rows_the_event_loop_packed_land_in_order_with_the_rest(tmp_path: Path) -> None:
    """``pack`` (the server calls it between batches) pickles every table with
    PACK_ROWS rows waiting; a flush sends those bytes first, then what came after:
    every row arrives once, in the order appended, and a JSON value pickle cannot
    take is written as text, as on the sender's path."""
    class Odd:  # a local class: pickle cannot take it, JSON writes its str()
        def __str__(self) -> str:
            return "odd"

    with StoreClient(str(tmp_path / "k.duckdb"), flush_interval=3600) as c:
        for i in range(1300):
            c.reading(Reading(f"north.s{i % 7}", float(i), T0 + i), esp_id="ESP_AAAAAA", gpio=4)
            c.event(Event(T0 + i, "odd", "info", "", f"event {i}", {"what": Odd(), "i": i}))
            if i % 50 == 49:
                c.pack()
        assert len(c._packed) == 4  # two tables, at 500 and 1000 rows
        assert c.pending() == 2600  # packed rows are pending too
        c.flush()
        assert c.pending() == 0
        assert c.query("SELECT value FROM readings ORDER BY rowid").rows == [(float(i),) for i in range(1300)]
        events = c.query("SELECT message, data FROM events WHERE kind = 'odd' ORDER BY rowid").rows
        assert [m for m, _ in events] == [f"event {i}" for i in range(1300)]
        assert events[0][1] == '{"what":"odd","i":0}' and events[-1][1] == '{"what":"odd","i":1299}'


def test_packed_rows_a_store_process_never_acknowledged_are_sent_again(tmp_path: Path) -> None:
    """A flush of packed bytes the child never answered (stopped, then killed): the
    child started again gets those bytes again, and every row is written once."""
    with StoreClient(str(tmp_path / "k.duckdb"), flush_interval=3600) as c:
        first = c.pid
        for i in range(2000):
            c.reading(Reading("north.t", float(i), T0 + i), esp_id="ESP_AAAAAA", gpio=4)
            if i % 100 == 99:
                c.pack()
        os.kill(first, signal.SIGSTOP)
        try:
            c._send_pending()  # into the socket; no answer can come
            assert c._unacked and any(m.__class__ is bytes for msgs in c._unacked.values() for m in msgs)
        finally:
            os.kill(first, signal.SIGKILL)
        c._proc.wait(10)
        c.flush()
        assert c.pid != first and c.restarts == 1
        assert c.query("SELECT count(*), count(DISTINCT value) FROM readings").rows == [(2000, 2000)]


def test_the_store_process_ignores_a_stop_meant_for_the_server(tmp_path: Path) -> None:
    path = str(tmp_path / "k.duckdb")
    c = StoreClient(path, flush_interval=3600)
    c.start()
    os.kill(c.pid, signal.SIGTERM)
    os.kill(c.pid, signal.SIGINT)
    c.reading(Reading("north.t", 1.0, T0), esp_id="ESP_AAAAAA", gpio=4)
    time.sleep(0.3)
    assert c._proc.poll() is None
    c.close()  # the last flush still finds it
    assert c._proc.returncode == 0
    assert _tables(path)["readings"][0][1:3] == ("north.t", 1.0)


def test_a_store_process_whose_server_died_writes_what_it_got(tmp_path: Path) -> None:
    path = str(tmp_path / "k.duckdb")
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from engine.adapters.storeproc import StoreClient
        from engine.model import Reading
        c = StoreClient({path!r}, flush_interval=3600)
        for i in range(2500):
            c.reading(Reading("north.t", float(i), {T0} + i), esp_id="ESP_AAAAAA", gpio=4)
        c._send_pending()           # handed over, not confirmed
        print(c.pid, flush=True)
        os._exit(9)                 # the server dies at once
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    child = int(out.stdout.split()[0])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the store process outlived its server")
    assert len(_tables(path)["readings"]) == 2500


def test_a_file_another_process_holds_is_a_clear_error(tmp_path: Path) -> None:
    path = str(tmp_path / "k.duckdb")
    with Store(path), pytest.raises(StoreError, match="cannot open store"):
        StoreClient(path)


def test_state_goes_in_parts_and_comes_back_the_same(tmp_path: Path) -> None:
    from engine.adapters.storeproc import _assemble, _parts

    snap = {"engine": {"readings": {f"s{i}.t": [float(i), T0, "good"] for i in range(100)}, "holds": {},
                       "version": 3}, "guard": {"latched": ["all"]}, "start": T0, "empty": {}}
    parts = _parts(snap)
    assert 3 < len(parts) < 10  # the readings in one part of their own
    assert _parts([1, 2]) == [(None, [1, 2])]
    assert _assemble(parts) == snap and list(_assemble(parts)) == list(snap)

    class Odd:
        def __str__(self) -> str:
            return "odd"
    with StoreClient(str(tmp_path / "k.duckdb"), flush_interval=3600) as c:
        c.put_state("pipeline", snap)
        c.put_state("devices", {"sent": {"ESP_A": {"x": Odd()}}, "serial": 4})
        c.flush()
        assert c.get_state("pipeline") == snap
        assert c.get_state("devices") == {"sent": {"ESP_A": {"x": "odd"}}, "serial": 4}


def test_a_store_started_without_waiting_says_at_start_that_the_file_is_held(tmp_path: Path) -> None:
    path = str(tmp_path / "k.duckdb")
    with Store(path):
        c = StoreClient(path, wait=False)  # returns at once: the server loads its rules meanwhile
        with pytest.raises(StoreError, match="cannot open store"):
            c.start()
        c.close()  # nothing to write, nothing hangs
    with StoreClient(path, wait=False) as c:
        c.reading(Reading("north.t", 1.0, T0), esp_id="ESP_AAAAAA", gpio=4)
    assert len(_tables(path)["readings"]) == 1
