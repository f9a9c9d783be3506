"""The DuckDB store (SPEC section 6). Moves data, decides nothing.

Writes are cheap appends to in-memory buffers from any thread: one list per
column (a row adds its values to the lists, no tuple per row, so the rows waiting
for a flush are not thousands of objects for the garbage collector to walk). One
writer thread turns each table's columns into a pyarrow batch every
``flush_interval`` seconds (vectorised: pyarrow converts whole lists, time stamps
included, in C) and appends it with ``INSERT ... SELECT FROM batch`` (one INSERT
per row manages ~870 rows/s, an Arrow batch ~500,000 rows/s). At most
``flush_interval`` of data is lost on a crash. A batch DuckDB refuses is logged
and counted and costs no other table its rows; one it has no memory for (a
query may hold all of ``memory_limit``) and a state value that cannot be
encoded yet are tried again at the next flush. Retention (default 90 days) is
applied once a day by the same thread.

Memory (docs/performance.md, "Memory and scale"): ``memory_limit`` bounds
DuckDB's buffer pool, which otherwise keeps every block written since the start
(up to 80 % of RAM); beyond it DuckDB evicts those blocks and spills to
``<path>.tmp``. Its allocator (a jemalloc of its own) returns freed pages to the
system from background threads, one second after they were freed, instead of
keeping them in the arena of the thread that freed them until that thread
allocates again. It checkpoints every 4 MB of WAL (``CHECKPOINT_WAL``), and the
state is replaced by delete and insert (``_replace_state``).

Tables (all times ``TIMESTAMPTZ`` in UTC, appended in time order so DuckDB's
min/max zone maps prune time ranges; ``latest_readings`` holds one row a sensor,
upserted by every flush):

``readings`` ``device_status`` ``actuator_status`` ``commands`` (sent and blocked)
``command_responses`` ``rule_runs`` ``events`` ``notifications`` ``config_versions``
``state`` (key/value JSON: the pipeline snapshot lives here).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from engine.adapters.query import (
    DEFAULT_TIMEOUT,
    MAX_ROWS,
    QueryPool,
    QueryResult,
    check_read_only,
    open_sealed,
    run_query,
)
from engine.errors import StoreError
from engine.model import Allowed, Blocked, Event, Notification, Reading, RuleRun

log = logging.getLogger("kaiser.store")

#: drains an iterator in C (``deque(it, 0)``): the column appends of one row
_consume = deque

_TS = pa.timestamp("us", tz="UTC")

# table -> ordered (column, duckdb type, arrow type). "ts" columns take Unix seconds.
TABLES: dict[str, tuple[tuple[str, str, pa.DataType], ...]] = {
    "readings": (
        ("ts", "TIMESTAMPTZ", _TS),
        ("sensor", "VARCHAR", pa.string()),
        ("value", "DOUBLE", pa.float64()),
        ("quality", "VARCHAR", pa.string()),
        ("unit", "VARCHAR", pa.string()),
        ("esp_id", "VARCHAR", pa.string()),
        ("gpio", "SMALLINT", pa.int16()),
        ("raw", "DOUBLE", pa.float64()),
        ("retained", "BOOLEAN", pa.bool_()),
    ),
    "device_status": (
        ("ts", "TIMESTAMPTZ", _TS),
        ("device", "VARCHAR", pa.string()),
        ("esp_id", "VARCHAR", pa.string()),
        ("status", "VARCHAR", pa.string()),  # online | offline | discovered | pending_approval
        ("reason", "VARCHAR", pa.string()),
        ("uptime", "BIGINT", pa.int64()),
        ("heap_free", "BIGINT", pa.int64()),
        ("wifi_rssi", "INTEGER", pa.int32()),
    ),
    "actuator_status": (
        ("ts", "TIMESTAMPTZ", _TS),
        ("actuator", "VARCHAR", pa.string()),
        ("esp_id", "VARCHAR", pa.string()),
        ("gpio", "SMALLINT", pa.int16()),
        ("state", "BOOLEAN", pa.bool_()),
        ("value", "DOUBLE", pa.float64()),
        ("runtime_ms", "BIGINT", pa.int64()),
        ("emergency", "VARCHAR", pa.string()),
    ),
    "commands": (
        ("ts", "TIMESTAMPTZ", _TS),
        ("actuator", "VARCHAR", pa.string()),
        ("esp_id", "VARCHAR", pa.string()),
        ("gpio", "SMALLINT", pa.int16()),
        ("outcome", "VARCHAR", pa.string()),  # sent | blocked
        ("value", "DOUBLE", pa.float64()),
        ("duration", "DOUBLE", pa.float64()),
        ("source", "VARCHAR", pa.string()),
        ("rule", "VARCHAR", pa.string()),
        ("priority", "INTEGER", pa.int32()),
        ("reason", "VARCHAR", pa.string()),  # why it was requested
        ("code", "VARCHAR", pa.string()),  # guard code when blocked
        ("block_reason", "VARCHAR", pa.string()),
        ("config_version", "VARCHAR", pa.string()),
    ),
    "command_responses": (
        ("ts", "TIMESTAMPTZ", _TS),
        ("actuator", "VARCHAR", pa.string()),
        ("esp_id", "VARCHAR", pa.string()),
        ("gpio", "SMALLINT", pa.int16()),
        ("command", "VARCHAR", pa.string()),
        ("value", "DOUBLE", pa.float64()),
        ("duration", "DOUBLE", pa.float64()),
        ("success", "BOOLEAN", pa.bool_()),
        ("message", "VARCHAR", pa.string()),
    ),
    "rule_runs": (
        ("ts", "TIMESTAMPTZ", _TS),
        ("rule", "VARCHAR", pa.string()),
        ("trigger", "JSON", pa.string()),
        ("actions", "JSON", pa.string()),
        ("outcome", "VARCHAR", pa.string()),
        ("latency_ms", "DOUBLE", pa.float64()),
        ("config_version", "VARCHAR", pa.string()),
    ),
    "events": (
        ("ts", "TIMESTAMPTZ", _TS),
        ("kind", "VARCHAR", pa.string()),
        ("severity", "VARCHAR", pa.string()),
        ("subject", "VARCHAR", pa.string()),
        ("message", "VARCHAR", pa.string()),
        ("data", "JSON", pa.string()),
    ),
    "notifications": (
        ("ts", "TIMESTAMPTZ", _TS),
        ("level", "VARCHAR", pa.string()),
        ("text", "VARCHAR", pa.string()),
        ("rule", "VARCHAR", pa.string()),
    ),
}

_DDL_EXTRA = (
    """CREATE TABLE IF NOT EXISTS config_versions (
        version VARCHAR, hash VARCHAR, git_commit VARCHAR, loaded_at TIMESTAMPTZ,
        path VARCHAR, files JSON, ok BOOLEAN, errors JSON)""",
    """CREATE TABLE IF NOT EXISTS state (
        key VARCHAR PRIMARY KEY, value JSON, updated_at TIMESTAMPTZ)""",
    # pull mode (docs/gitops.md) names who made a commit and why; stores from
    # before it gain the columns, empty for their rows
    "ALTER TABLE config_versions ADD COLUMN IF NOT EXISTS author VARCHAR",
    "ALTER TABLE config_versions ADD COLUMN IF NOT EXISTS message VARCHAR",
)

#: the newest reading of every sensor, kept up to date by every flush (one row a
#: sensor: "latest values" never scans the history)
_LATEST_DDL = """CREATE TABLE latest_readings (
    sensor VARCHAR PRIMARY KEY, value DOUBLE, ts TIMESTAMPTZ, quality VARCHAR, unit VARCHAR)"""
_LATEST_UPSERT = """INSERT INTO latest_readings
    SELECT sensor, arg_max(value, ts), max(ts), arg_max(quality, ts), arg_max(unit, ts)
    FROM {src} GROUP BY sensor
    ON CONFLICT (sensor) DO UPDATE SET value = excluded.value, ts = excluded.ts,
        quality = excluded.quality, unit = excluded.unit
    WHERE excluded.ts >= latest_readings.ts"""

#: tables that retention trims (config_versions and state are kept)
RETAINED_TABLES = tuple(TABLES)

CHUNK = 2000  # rows per Arrow batch: the writer thread hands the GIL back between them
#: rows per Arrow batch in the store's own process, where no event loop waits for the
#: GIL: a second's rows in one transaction a table. DuckDB's cost a statement made
#: 2,000-row batches cost a third more CPU a row (12,000 readings/s)
PROCESS_CHUNK = 50_000

#: flushes in a row that may find DuckDB out of memory before the rows they keep are
#: given up (5 minutes at the default flush interval)
MAX_NO_ROOM = 300

#: WAL size that makes DuckDB checkpoint (its default: 16 MiB). Rows not checkpointed
#: yet wait in memory, and a checkpoint rewrites the row groups it appends to: with
#: the server's writes DuckDB peaked at 61 MB with 16 MiB, 47 MB with 4 MB (and the
#: WAL a crash leaves to replay is smaller)
CHECKPOINT_WAL = "4MB"

__all__ = ["QueryResult", "Store", "check_read_only"]  # the query types live in engine.adapters.query


def _plain(v: object) -> object:
    if isinstance(v, Mapping):
        return dict(v)
    if isinstance(v, tuple):
        return list(v)
    return v


_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))  # json.dumps with options builds one per call
# orjson as json.dumps(default=str) would write it (datetimes and dataclasses as
# str() makes them), except that non-ASCII text stays UTF-8 and NaN is null: a
# JSON column cannot hold NaN. 5-10x faster: the rule runs' JSON was a third of
# the store's CPU at 12,000 readings/s
_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def _orjson_default(v: object) -> object:
    return dict(v) if isinstance(v, Mapping) else str(v)


def _dumps(v: object) -> str:
    try:
        return orjson.dumps(v, default=_orjson_default, option=_ORJSON_OPTIONS).decode()
    except TypeError:  # what orjson cannot write (an int past 64 bits, nesting past 254 levels)
        return _ENCODER.encode(_plain(v))


def _dumps_in_pieces(v: object, depth: int = 3) -> str:
    """``_dumps(v)``, the same text, for a big state snapshot: dicts with string keys
    (down to ``depth`` levels) are encoded entry by entry, so no single C call holds
    the GIL for long (one ``json.dumps`` of a 300 KB snapshot holds it ~10 ms, and
    the event loop's readings would wait that long behind the writer thread)."""
    if depth <= 0 or not isinstance(v, dict) or (depth < 2 and len(v) < 32) \
            or not all(type(k) is str for k in v):
        return _dumps(v)
    parts = [_dumps(k) + ":" + _dumps_in_pieces(x, depth - 1) for k, x in v.items()]
    return "{" + ",".join(parts) + "}"


def _memory_options(path: str, memory_limit: int) -> dict[str, str | bool]:
    """DuckDB options that bound the store's memory (see the module doc)."""
    options: dict[str, str | bool] = {
        # process-wide, and DuckDB turns them off again when any other database of this
        # process closes: the server opens no other
        "allocator_background_threads": True,
        "checkpoint_threshold": CHECKPOINT_WAL,
    }
    if memory_limit > 0 and path != ":memory:":
        options["memory_limit"] = f"{memory_limit}B"
    return options


class _NoRoom(Exception):
    """DuckDB had no memory for a statement of a flush, which it rolled back."""


def _in_transaction(cur: duckdb.DuckDBPyConnection, *statements: tuple[str, Sequence[object] | None]) -> None:
    """Run ``statements`` (SQL, parameters) as one transaction. Raises _NoRoom when
    one of them is out of memory (nothing was written), or DuckDB's error."""
    committing = False
    try:
        cur.execute("BEGIN TRANSACTION")
        for sql, params in statements:
            cur.execute(sql, params)
        committing = True
        cur.execute("COMMIT")
    except BaseException as exc:
        with contextlib.suppress(duckdb.Error):
            cur.execute("ROLLBACK")
        # a failed COMMIT is not _NoRoom: the rows may be in the WAL already
        if isinstance(exc, duckdb.OutOfMemoryException) and not committing:
            raise _NoRoom(str(exc).partition("\n")[0]) from exc
        raise


def _empty(table: str) -> list[list[Any]]:
    return [[] for _ in TABLES[table]]


def json_column(values: Sequence[Any]) -> list[str | None]:
    """A JSON column's values as text (a value already text is kept as it is)."""
    return [v if v is None or isinstance(v, str) else _dumps(v) for v in values]


class Buffered:
    """The append side of the store, shared by :class:`Store` (its writer thread
    writes the buffers) and ``engine.adapters.storeproc.StoreClient`` (which hands
    them to the store's own process): appends from any thread are cheap.

    ``put_state(immediate=True)`` calls ``flush()``, which subclasses provide.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: table -> one list per column (TABLES order)
        self._buf: dict[str, list[list[Any]]] = {t: _empty(t) for t in TABLES}
        self._state: dict[str, object] = {}
        self._extra: list[tuple[str, tuple[Any, ...]]] = []
        self.state_seconds = 0.0  # CPU time the last state serialisation took

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _take(self) -> tuple[dict[str, list[list[Any]]], dict[str, object], list[tuple[str, tuple[Any, ...]]]]:
        """Everything buffered so far (tables with rows, state, extra statements),
        the buffers emptied."""
        with self._lock:
            return self._take_locked()

    def _take_locked(self) -> tuple[dict[str, list[list[Any]]], dict[str, object], list[tuple[str, tuple[Any, ...]]]]:
        """``_take`` for a caller holding ``_lock``."""
        batches = {t: cols for t, cols in self._buf.items() if cols[0]}
        for t in batches:
            self._buf[t] = _empty(t)
        state, self._state = self._state, {}
        extra, self._extra = self._extra, []
        return batches, state, extra

    def pack(self) -> None:
        """Called by the event loop between batches of messages: a store that hands
        its rows to another process prepares them here (StoreClient); this one has
        nothing to do."""

    # ------------------------------------------------------------------ appends
    def _add(self, table: str, row: tuple[Any, ...]) -> None:
        # the writer swaps the lists under the lock: without it a row appended to a
        # list the writer already took would be lost
        with self._lock:
            cols = self._buf[table]
            if len(cols) != len(row):
                raise ValueError(f"{table}: {len(row)} values for {len(cols)} columns")
            _consume(map(list.append, cols, row), 0)  # one append a column, looped in C

    def pending(self) -> int:
        return sum(len(cols[0]) for cols in self._buf.values())

    def reading(self, r: Reading, esp_id: str = "", gpio: int | None = None, raw: float | None = None) -> None:
        # the hot path (every reading): the columns by hand
        with self._lock:
            ts, sensor, value, quality, unit, esp, pin, raw_, retained = self._buf["readings"]
            ts.append(r.ts)
            sensor.append(r.sensor)
            value.append(r.value)
            quality.append(r.quality)
            unit.append(r.unit)
            esp.append(esp_id)
            pin.append(gpio)
            raw_.append(raw)
            retained.append(r.retained)

    def device_status(
        self,
        ts: float,
        device: str,
        esp_id: str,
        status: str,
        reason: str = "",
        uptime: int | None = None,
        heap_free: int | None = None,
        wifi_rssi: int | None = None,
    ) -> None:
        self._add("device_status", (ts, device, esp_id, status, reason, uptime, heap_free, wifi_rssi))

    def actuator_status(
        self,
        ts: float,
        actuator: str,
        esp_id: str,
        gpio: int | None,
        state: bool,
        value: float,
        runtime_ms: int | None = None,
        emergency: str = "normal",
    ) -> None:
        self._add("actuator_status", (ts, actuator, esp_id, gpio, state, value, runtime_ms, emergency))

    def command(
        self,
        ts: float,
        verdict: Allowed | Blocked,
        esp_id: str = "",
        gpio: int | None = None,
        config_version: str = "",
    ) -> None:
        c = verdict.command
        if isinstance(verdict, Blocked):
            outcome, code, why = "blocked", str(verdict.code), verdict.reason
        else:
            outcome, code, why = "sent", None, None
        self._add(
            "commands",
            (ts, c.actuator, esp_id, gpio, outcome, c.value, c.duration, c.source, c.rule,
             c.priority, c.reason, code, why, config_version),
        )

    def command_response(
        self,
        ts: float,
        actuator: str,
        esp_id: str,
        gpio: int | None,
        command: str,
        value: float | None,
        duration: float | None,
        success: bool,
        message: str,
    ) -> None:
        self._add("command_responses", (ts, actuator, esp_id, gpio, command, value, duration, success, message))

    def rule_run(self, run: RuleRun, latency_ms: float | None = None, config_version: str = "") -> None:
        """``config_version``: used when the run carries none."""
        self._add(
            "rule_runs",
            (run.ts, run.rule, run.trigger, run.actions, run.outcome, latency_ms,
             run.config_version or config_version),
        )

    def event(self, ev: Event) -> None:
        self._add("events", (ev.ts, ev.kind, ev.severity, ev.subject, ev.message, ev.data))

    def notification(self, n: Notification) -> None:
        self._add("notifications", (n.ts, n.level, n.text, n.rule))

    def config_version(
        self,
        version: str,
        hash_: str,
        git_commit: str | None,
        loaded_at: float,
        path: str,
        files: Sequence[str],
        ok: bool,
        errors: Sequence[str] = (),
        *,
        author: str = "",
        message: str = "",
    ) -> None:
        """``author`` and ``message``: of the git commit (pull mode), else empty."""
        self._extra.append((
            "INSERT INTO config_versions (version, hash, git_commit, loaded_at, path, files, ok, errors, author, "
            "message) VALUES (?, ?, ?, to_timestamp(?), ?, ?, ?, ?, ?, ?)",
            (version, hash_, git_commit, loaded_at, path, _dumps(list(files)), ok, _dumps(list(errors)),
             author or None, message or None),
        ))

    def put_state(self, key: str, value: object, immediate: bool = False) -> None:
        """Keep ``value`` (JSON-able; not changed afterwards) under ``key``; written at
        the next flush, or now."""
        with self._lock:
            self._state[key] = value
        if immediate:
            self.flush()

    def flush_state(self) -> None:
        """Serialise pending state values now (the caller pays the JSON cost, e.g. to
        measure it); they are written at the next flush."""
        with self._lock:
            pending = list(self._state.items())
        done = [(k, v, self._encode_state(v)) for k, v in pending if not isinstance(v, str)]
        with self._lock:
            for k, v, text in done:
                if self._state.get(k) is v:  # not replaced meanwhile
                    self._state[k] = text

    def _encode_state(self, value: object) -> str:
        t = time.thread_time()
        text = _dumps_in_pieces(value)
        self.state_seconds = time.thread_time() - t
        return text

    def _encode_state_retrying(self, key: str, value: object) -> str | None:
        """The JSON of a state value; None, and the value kept for the next flush, when
        its owner changed it while it was being encoded (``RuntimeError``: a dict
        changed size during iteration)."""
        for _ in range(3):
            try:
                return self._encode_state(value)
            except RuntimeError:
                time.sleep(0)
        with self._lock:
            self._state.setdefault(key, value)  # unless a newer one came meanwhile
        log.debug("state %s changed while it was encoded; tried again at the next flush", key)
        return None


class Store(Buffered):
    """Batched DuckDB writer plus read helpers.

    ``path``: a file or ``":memory:"``. ``flush_interval``: seconds between batch
    writes. ``retention``: seconds of history kept (0 = forever). ``memory_limit``:
    bytes DuckDB may use (0 = DuckDB's default, 80 % of RAM; a ``":memory:"``
    store is not limited: its rows are that memory). Raises StoreError when the
    file cannot be opened (e.g. another process writes it).
    """

    def __init__(
        self,
        path: str,
        flush_interval: float = 1.0,
        retention: float = 90 * 86400.0,
        *,
        read_only: bool = False,
        now: Callable[[], float] = time.time,
        memory_limit: int = 0,
        chunk_rows: int = CHUNK,
    ) -> None:
        self.path = path
        self.chunk_rows = chunk_rows
        self.flush_interval = max(0.01, float(flush_interval))
        self.retention = float(retention)
        self.read_only = read_only
        self._now = now
        try:
            # sealed: no files, URLs or extensions, configuration locked (these settings
            # belong to the database, and /query reads it: engine/adapters/query.py)
            self._con = open_sealed(path, read_only=read_only, options=_memory_options(path, memory_limit))
        except duckdb.Error as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        if not read_only:
            self._create()
        super().__init__()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_lock = threading.Lock()  # one flush at a time
        self._last_retention = 0.0
        self._no_room: dict[str, int] = {}  # table -> flushes in a row DuckDB had no memory for
        self.rows_written = 0
        self.flushes = 0
        self.errors = 0
        self.last_error = ""  # the latest failure, kept after the store recovered
        self.failing = False  # the latest flush failed (``/health`` store.ok, metric store_ok)

    # ------------------------------------------------------------------ lifecycle
    def _create(self) -> None:
        for table, cols in TABLES.items():
            body = ", ".join(f"{c} {t}" for c, t, _ in cols)
            self._con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({body})")
        for ddl in _DDL_EXTRA:
            self._con.execute(ddl)
        kinds = dict(self._con.execute(
            "SELECT table_name, table_type FROM information_schema.tables WHERE table_name = 'latest_readings'"
        ).fetchall())
        if kinds.get("latest_readings") != "BASE TABLE":
            if kinds.get("latest_readings") == "VIEW":  # a store from an earlier version
                self._con.execute("DROP VIEW latest_readings")
            self._con.execute(_LATEST_DDL)
            self._con.execute(_LATEST_UPSERT.format(src="readings"))

    def start(self) -> None:
        """Start the writer thread (idempotent)."""
        if self._thread is None and not self.read_only:
            self._thread = threading.Thread(target=self._run, name="kaiser-store", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Flush everything buffered, stop the writer, close the file."""
        if self.read_only:
            self._con.close()
            return
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self._write()
        self._con.close()

    # ------------------------------------------------------------------ writer
    def flush(self) -> None:
        """Write everything buffered so far; returns once it is in the file."""
        if not self.read_only:
            self._write()  # serialised with the writer thread by _write_lock

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            self._write()
            self._maybe_retain()

    def _write(self) -> None:
        with self._write_lock:
            batches, state, extra = self._take()
            if not (batches or state or extra):
                return
            cur = self._con.cursor()
            ok = True
            try:
                for table, cols in batches.items():
                    n = len(cols[0])
                    step = self.chunk_rows
                    for i in range(0, n, step):
                        chunk = cols if n <= step else [c[i:i + step] for c in cols]
                        try:
                            ok = self._try(f"writing {table}", self._append, cur, table, chunk) and ok
                        except _NoRoom as exc:
                            ok = False
                            self._keep(table, [c[i:] for c in cols], exc)
                            break
                        # hand the GIL to the event loop between chunks: readings must
                        # not wait for a whole flush
                        time.sleep(0)
                    else:
                        self._no_room.pop(table, None)
                for sql, params in extra:
                    ok = self._try("writing config_versions", cur.execute, sql, params) and ok
                now = self._now()
                for key, value in state.items():
                    text = value if isinstance(value, str) else self._encode_state_retrying(key, value)
                    if text is not None:
                        try:
                            ok = self._try(f"writing state {key}", self._replace_state, cur, key, text, now) and ok
                        except _NoRoom as exc:
                            ok = False
                            self._count(f"writing state {key}: kept for the next flush", exc, logging.WARNING)
                            with self._lock:
                                self._state.setdefault(key, text)  # unless a newer one came meanwhile
                if ok:
                    self.flushes += 1
                self.failing = not ok
            finally:
                cur.close()

    def _try(self, what: str, fn: Callable[..., object], *args: Any) -> bool:
        """Run one part of a flush; a failure is logged and counted and spares the rest
        (``_NoRoom`` is the caller's)."""
        try:
            fn(*args)
        except _NoRoom:
            raise
        except Exception as exc:  # keep serving; the next flush writes new data
            self._count(f"{what} failed", exc)
            return False
        return True

    def _count(self, what: str, exc: Exception, level: int = logging.ERROR) -> None:
        self.errors += 1
        self.last_error = f"{what}: {exc}"
        log.log(level, "store flush: %s: %s", what, exc)

    def _keep(self, table: str, rows: list[list[Any]], exc: _NoRoom) -> None:
        """Rows DuckDB had no memory for (a query may hold all of ``memory_limit``) go
        back to the head of their buffer for the next flush; after ``MAX_NO_ROOM``
        flushes in a row they are given up, as a batch DuckDB refuses is."""
        tries = self._no_room[table] = self._no_room.get(table, 0) + 1
        if tries > MAX_NO_ROOM:
            del self._no_room[table]
            self._count(f"writing {table}: {len(rows[0])} rows given up, DuckDB out of memory {tries} "
                        "flushes in a row", exc)
            return
        with self._lock:
            for col, kept in zip(self._buf[table], rows, strict=True):
                col[:0] = kept
        self._count(f"writing {table}: {len(rows[0])} rows kept for the next flush", exc, logging.WARNING)

    @staticmethod
    def _replace_state(cur: duckdb.DuckDBPyConnection, key: str, text: str, now: float) -> None:
        # deleted and inserted, not INSERT OR REPLACE: an update in place keeps every
        # old value in memory DuckDB can neither evict nor spill, in an arena that
        # doubles, until the next checkpoint (the pipeline snapshot is ~1 MB for 1,000
        # rules, written every second: 30 MB, and a 64 MB memory_limit ran out); a
        # deleted row's text waits in blocks that can be spilled
        _in_transaction(cur, ("DELETE FROM state WHERE key = ?", (key,)),
                        ("INSERT INTO state VALUES (?, ?, to_timestamp(?))", (key, text, now)))

    def _append(self, cur: duckdb.DuckDBPyConnection, table: str, columns: list[list[Any]]) -> None:
        cols = TABLES[table]
        arrays = []
        for (_col, dtype, typ), values in zip(cols, columns, strict=True):
            if typ == _TS:  # Unix seconds -> microseconds (truncated, as int() would), vectorised
                us = pc.multiply(pa.array(values, pa.float64()), 1_000_000)
                arrays.append(pc.cast(us, pa.int64(), safe=False).cast(_TS))
            elif dtype == "JSON":
                # serialised here, in the writer thread, not on the message path
                arrays.append(pa.array(json_column(values), typ))
            else:
                arrays.append(pa.array(values, typ))
        cur.register("kaiser_batch", pa.Table.from_arrays(arrays, names=[c[0] for c in cols]))
        try:
            # one transaction: a batch refused for lack of memory is tried again whole
            _in_transaction(cur, (f"INSERT INTO {table} SELECT * FROM kaiser_batch", None),
                            *([(_LATEST_UPSERT.format(src="kaiser_batch"), None)] if table == "readings" else []))
        finally:
            cur.unregister("kaiser_batch")
        self.rows_written += len(columns[0])

    def _maybe_retain(self) -> None:
        now = self._now()
        if self.retention <= 0 or now - self._last_retention < 86400:
            return
        self._last_retention = now
        self.apply_retention(now)

    def apply_retention(self, now: float) -> int:
        """Delete rows older than ``retention`` seconds; returns how many went."""
        if self.retention <= 0:
            return 0
        cutoff = now - self.retention
        gone = 0
        cur = self._con.cursor()
        try:
            for table in RETAINED_TABLES:
                r = cur.execute(f"DELETE FROM {table} WHERE ts < to_timestamp(?)", (cutoff,)).fetchone()
                gone += int(r[0]) if r else 0
        finally:
            cur.close()
        if gone:
            log.info("retention: deleted %d rows older than %.0f days", gone, self.retention / 86400)
        return gone

    # ------------------------------------------------------------------ reads
    def query(self, sql: str, params: Sequence[object] | None = None, max_rows: int = MAX_ROWS,
              timeout: float = DEFAULT_TIMEOUT) -> QueryResult:
        """Run untrusted read-only SQL in the sandbox (engine/adapters/query.py) on a
        connection of its own, interrupted after ``timeout`` seconds. Raises
        StoreError (QueryRefused, QueryTimeout, or DuckDB's error)."""
        return run_query(self._con.cursor, sql, params=params, timeout=timeout, max_rows=max_rows)

    def query_pool(self, timeout: float = DEFAULT_TIMEOUT, workers: int = 2, backlog: int = 8) -> QueryPool:
        """The pool that runs the HTTP port's queries (each sees what was appended
        before it: the store is flushed first). Close it before the store."""
        return QueryPool(self._con.cursor, timeout=timeout, workers=workers, backlog=backlog, before=self.flush)

    def _select(self, sql: str, params: Sequence[object] | None = None, max_rows: int = 10_000) -> QueryResult:
        cur = self._con.cursor()
        try:
            cur.execute(sql, list(params) if params else None)
            columns = [d[0] for d in (cur.description or [])]
            rows = cur.fetchmany(max_rows + 1) if columns else []
        except duckdb.Error as exc:
            raise StoreError(str(exc)) from exc
        finally:
            cur.close()
        return QueryResult(columns, [tuple(r) for r in rows[:max_rows]], len(rows) > max_rows)

    def get_state(self, key: str) -> Any:
        """The JSON value stored under ``key``, or None."""
        pending = self._state.get(key)
        if pending is not None:
            return json.loads(pending) if isinstance(pending, str) else json.loads(_dumps(pending))
        r = self._select("SELECT value FROM state WHERE key = ?", (key,)).rows
        return json.loads(r[0][0]) if r else None

    def latest_readings(self) -> list[Reading]:
        """The newest stored reading of every sensor (oldest first)."""
        rows = self._select(
            "SELECT sensor, value, epoch(ts), quality, unit FROM latest_readings ORDER BY ts", max_rows=1_000_000
        ).rows
        return [Reading(s, float(v), float(t), q or "good", u or "", retained=True) for s, v, t, q, u in rows]

    def readings_since(self, since: float, sensor: str | None = None) -> list[Reading]:
        sql = "SELECT sensor, value, epoch(ts), quality, unit, retained FROM readings WHERE ts >= to_timestamp(?)"
        params: list[object] = [since]
        if sensor is not None:
            sql += " AND sensor = ?"
            params.append(sensor)
        rows = self._select(sql + " ORDER BY ts", params, max_rows=10_000_000).rows
        return [Reading(s, float(v), float(t), q or "good", u or "", bool(r)) for s, v, t, q, u, r in rows]

    def counts(self) -> Mapping[str, int]:
        out: dict[str, int] = {}
        for t in (*TABLES, "config_versions"):
            r = self._select(f"SELECT count(*) FROM {t}").rows
            out[t] = int(r[0][0]) if r else 0
        return out
