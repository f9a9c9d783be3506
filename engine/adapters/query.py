"""Read-only SQL for people and scripts: ``GET /query`` and ``kaiser query`` (SPEC
sections 5 and 6). Moves data, decides nothing.

Three walls, each of which stops the known escapes on its own:

1. **DuckDB's own parser judges the statement** (``extract_statements``,
   ``tokenize``, ``json_serialize_sql``), never a regular expression: exactly one
   statement, of DuckDB's SELECT kind (which covers ``WITH ... SELECT``,
   ``FROM t``, ``VALUES``, ``DESCRIBE``, ``SHOW`` and ``SUMMARIZE``) or a plain
   ``EXPLAIN`` of one (no ``ANALYZE``, no options). Inside it, table functions
   come from a short list of pure ones (``range``, ``unnest``, the catalog views,
   ...: :data:`TABLE_FUNCTIONS`), a table name that looks like a file is refused,
   and so is a ``DELETE``/``INSERT``/``UPDATE`` inside a ``WITH``.
2. **It runs in a READ ONLY transaction on a connection of its own**: any write
   fails inside DuckDB, whatever the statement looked like.
3. **The database is sealed** (:func:`open_sealed`): external access disabled (no
   file other than the store's own, no URL, no ``INSTALL``/``LOAD`` from disk),
   extension autoload and autoinstall off, and the configuration locked (no
   ``SET``, ``PRAGMA`` or settings function changes anything).

Each query has a time limit (``[websocket] query_timeout``): a watchdog
interrupts its connection at the deadline. :class:`QueryPool` runs the queries of
the HTTP port on threads of their own, at most ``workers`` at once with a short
waiting line (``QueryBusy`` beyond it), cancels a query whose client went away,
and interrupts them all on shutdown: reloads, store writes, shutdown and other
clients never wait for a query.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import duckdb

from engine.errors import StoreError

log = logging.getLogger("kaiser.query")

#: options of every DuckDB database Kaiser opens (the store too: these settings
#: belong to the database, not to one connection). Its own file, its WAL and its
#: temp directory stay reachable; nothing else on disk or the network is.
SANDBOX_CONFIG: dict[str, str | bool | int | float | list[str]] = {
    "enable_external_access": False,
    "autoload_known_extensions": False,
    "autoinstall_known_extensions": False,
    "allow_community_extensions": False,
}

#: table functions a query may call: computed or catalog data, no files, no
#: settings, no nested SQL (``query()`` would run a string nobody checked)
TABLE_FUNCTIONS = frozenset({
    "range", "generate_series", "unnest", "repeat", "repeat_row", "json_each", "json_tree",
    "duckdb_columns", "duckdb_constraints", "duckdb_databases", "duckdb_dependencies",
    "duckdb_functions", "duckdb_indexes", "duckdb_keywords", "duckdb_schemas", "duckdb_sequences",
    "duckdb_tables", "duckdb_types", "duckdb_views", "pragma_table_info", "table_info",
    "pragma_show", "show", "show_tables", "show_tables_expanded", "show_databases", "summary",
    "pragma_version", "version", "pragma_database_size", "database_size", "histogram",
    "histogram_values", "pg_timezone_names", "icu_calendar_names",
})

#: query nodes a SELECT may contain (a DELETE/INSERT/UPDATE inside WITH is a node too)
_READ_NODES = frozenset({"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"})
#: characters that turn a table name into a file DuckDB would read ('x.csv', '/etc/...')
_FILE_CHARS = frozenset("./\\:*?")

MAX_SQL = 100_000  # characters
MAX_ROWS = 10_000
DEFAULT_TIMEOUT = 10.0  # seconds
_ALLOWED = "only SELECT, WITH ... SELECT, DESCRIBE, SHOW and plain EXPLAIN are allowed"


class QueryRefused(StoreError):
    """The statement is not a plain read; the text says why."""


class QueryTimeout(StoreError):
    """The query ran longer than its time limit and was interrupted."""


class QueryBusy(StoreError):
    """Every query worker is busy and the waiting line is full."""


class QueryCancelled(StoreError):
    """The query was interrupted because its client went away or the server stops."""


@dataclass(frozen=True, slots=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "columns": self.columns,
            "rows": [[_jsonable(v) for v in r] for r in self.rows],
            "truncated": self.truncated,
        }


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


# ---------------------------------------------------------------------- the database


def open_sealed(path: str, read_only: bool = False,
                options: Mapping[str, str | bool | int | float] | None = None) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB database with :data:`SANDBOX_CONFIG`, time zone UTC and the
    configuration locked. ``options``: more DuckDB options, set before the lock
    (the store's memory ones); they cannot loosen the sandbox. Raises duckdb.Error."""
    con = duckdb.connect(path, read_only=read_only, config={**(options or {}), **SANDBOX_CONFIG})
    try:
        con.execute("SET TimeZone='UTC'")
        con.execute("SET lock_configuration=true")
    except BaseException:
        con.close()
        raise
    return con


# ---------------------------------------------------------------------- judging


def judge(con: duckdb.DuckDBPyConnection, sql: object) -> duckdb.Statement:
    """The one statement in ``sql`` when it only reads (see the module doc); raises
    QueryRefused otherwise, for any input at all. ``con`` parses it."""
    if not isinstance(sql, str) or not sql.strip():
        raise QueryRefused("empty query")
    if len(sql) > MAX_SQL:
        raise QueryRefused(f"the query is too long ({len(sql)} characters; at most {MAX_SQL})")
    statements = _parse(con, sql)
    if len(statements) != 1:
        raise QueryRefused(f"one statement at a time, not {len(statements)}" if statements else "empty query")
    statement = statements[0]
    kind = _kind(statement)
    if kind == "EXPLAIN":
        _check_select(con, _explained(con, statement.query))
    elif kind == "SELECT":
        _check_select(con, statement.query)
    else:
        raise QueryRefused(f"read-only: {kind} statements are not allowed; {_ALLOWED}")
    return statement


def check_read_only(sql: str) -> None:
    """Raise QueryRefused unless ``sql`` is one statement that only reads (parsed on a
    throwaway in-memory database)."""
    con = duckdb.connect(config=dict(SANDBOX_CONFIG))
    try:
        judge(con, sql)
    finally:
        con.close()


def _parse(con: duckdb.DuckDBPyConnection, sql: str) -> list[duckdb.Statement]:
    try:
        return list(con.extract_statements(sql))
    except duckdb.InterruptException:
        raise
    except Exception as exc:  # duckdb.Error, or ValueError for a statement kind the bindings lack
        raise QueryRefused(f"cannot parse the query: {_first_line(exc)}") from None


def _kind(statement: duckdb.Statement) -> str:
    try:
        return str(statement.type.name)
    except ValueError:  # a statement kind newer than the bindings' enum (UPDATE EXTENSIONS)
        return "UNKNOWN"


def _explained(con: duckdb.DuckDBPyConnection, text: str) -> str:
    """The statement after ``EXPLAIN``, when it is one plain SELECT. ``EXPLAIN
    ANALYZE`` runs what it explains and options come in parentheses: for both the
    rest does not parse as a SELECT, and is refused."""
    try:
        tokens = [t for t in duckdb.tokenize(text) if t[1] != duckdb.token_type.comment]
    except Exception as exc:
        raise QueryRefused(f"cannot parse the query: {_first_line(exc)}") from None
    if len(tokens) < 2 or text[tokens[0][0]:tokens[1][0]].strip().lower() != "explain":
        raise QueryRefused("cannot parse the EXPLAIN")
    refused = QueryRefused(f"read-only: only a plain EXPLAIN of a SELECT (no ANALYZE, no options); {_ALLOWED}")
    try:
        inner = _parse(con, text[tokens[1][0]:])
    except QueryRefused:
        raise refused from None
    if len(inner) != 1 or _kind(inner[0]) != "SELECT":
        raise refused
    return str(inner[0].query)


def _check_select(con: duckdb.DuckDBPyConnection, text: str) -> None:
    """Walk DuckDB's own syntax tree of a SELECT (``json_serialize_sql``)."""
    try:
        row = con.execute("SELECT json_serialize_sql(?::VARCHAR)", [text]).fetchone()
        tree = json.loads(row[0]) if row else None
    except duckdb.InterruptException:
        raise
    except RecursionError:
        raise QueryRefused("the query is nested too deeply") from None
    except Exception as exc:  # no json extension: refuse rather than run unchecked
        raise QueryRefused(f"cannot check the query: {_first_line(exc)}") from None
    if not isinstance(tree, dict):
        raise QueryRefused("cannot check the query")
    if tree.get("error"):
        raise QueryRefused(f"not supported here: {tree.get('error_message', 'unknown error')}")
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        kind = node.get("type")
        if kind == "TABLE_FUNCTION":
            fn = node.get("function")
            name = str(fn.get("function_name", "")) if isinstance(fn, dict) else ""
            if name.lower() not in TABLE_FUNCTIONS:
                raise QueryRefused(f"{name}() is not available here: no file, URL, extension, settings or "
                                   "nested-SQL functions (see docs/websocket.md, Security)")
        elif kind == "BASE_TABLE":
            table = str(node.get("table_name", ""))
            if _FILE_CHARS & set(table):
                raise QueryRefused(f"{table!r} looks like a file; queries read the store's tables only")
        elif isinstance(kind, str) and kind.endswith("_NODE") and kind not in _READ_NODES:
            raise QueryRefused(f"read-only: {kind.removesuffix('_QUERY_NODE').removesuffix('_NODE')} "
                               f"inside a query is not allowed; {_ALLOWED}")
        stack.extend(node.values())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# ---------------------------------------------------------------------- running


class _Job:
    """One query in flight: its connection, and a watchdog that interrupts it at the
    deadline or when cancelled (again every 50 ms until it ends: an interrupt that
    lands between two statements would be lost)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.why: str | None = None  # "timeout" | "cancelled" | "closed"
        self._lock = threading.Lock()
        self._cursor: duckdb.DuckDBPyConnection | None = None
        self._kick = threading.Event()
        self._done = threading.Event()

    def cancel(self, why: str = "cancelled") -> None:
        with self._lock:
            if self.why is None:
                self.why = why
        self._kick.set()

    def _watch(self) -> None:
        if not self._kick.wait(self.timeout):
            with self._lock:
                if self.why is None:
                    self.why = "timeout"
        while not self._done.is_set():
            with self._lock:
                if self._cursor is not None and not self._done.is_set():
                    self._cursor.interrupt()
            self._done.wait(0.05)

    def run(self, cursor: duckdb.DuckDBPyConnection, sql: str, params: Sequence[object] | None,
            max_rows: int) -> QueryResult:
        with self._lock:
            self._cursor = cursor
        watchdog = threading.Thread(target=self._watch, name="kaiser-query-watchdog", daemon=True)
        watchdog.start()
        try:
            self._raise_if_stopped()
            return _execute(cursor, sql, params, max_rows)
        except StoreError:
            self._raise_if_stopped()
            raise
        except duckdb.Error as exc:
            self._raise_if_stopped()
            raise StoreError(_message(exc)) from None
        finally:
            with self._lock:
                self._done.set()
                self._cursor = None
            self._kick.set()
            watchdog.join()

    def _raise_if_stopped(self) -> None:
        if self.why == "timeout":
            raise QueryTimeout(f"the query was interrupted after {self.timeout:g} s "
                               "(the limit is [websocket] query_timeout)")
        if self.why is not None:
            raise QueryCancelled(f"the query was interrupted: {self.why}")


def _execute(cur: duckdb.DuckDBPyConnection, sql: str, params: Sequence[object] | None,
             max_rows: int) -> QueryResult:
    cur.execute("BEGIN TRANSACTION READ ONLY")
    try:
        statement = judge(cur, sql)
        cur.execute(statement, list(params) if params else None)
        columns = [d[0] for d in (cur.description or [])]
        rows = cur.fetchmany(max_rows + 1) if columns else []
    finally:
        with contextlib.suppress(duckdb.Error):
            cur.execute("ROLLBACK")
    return QueryResult(columns, [tuple(r) for r in rows[:max_rows]], len(rows) > max_rows)


def _message(exc: duckdb.Error) -> str:
    text = str(exc).strip()
    return text if len(text) <= 2000 else text[:2000] + " ..."


def run_query(cursor: Callable[[], duckdb.DuckDBPyConnection], sql: str, *,
              params: Sequence[object] | None = None, timeout: float = DEFAULT_TIMEOUT,
              max_rows: int = MAX_ROWS, job: _Job | None = None) -> QueryResult:
    """Judge and run ``sql`` on a new connection from ``cursor()`` in a read-only
    transaction, interrupted after ``timeout`` seconds. Raises QueryRefused,
    QueryTimeout or StoreError (DuckDB's error); never anything else for bad SQL."""
    con = cursor()
    try:
        return (job or _Job(timeout)).run(con, sql, params, max_rows)
    finally:
        con.close()


class QueryPool:
    """Sandboxed queries on threads of their own (see the module doc).

    ``cursor()``: a new connection to the sealed store for each query. ``before()``:
    called on the worker before each query (the store's flush: a query sees what
    arrived before it). ``timeout``: seconds per query. ``workers``: queries at once;
    ``backlog``: queries waiting for a worker before QueryBusy.

    ``submit``: instead of ``cursor``, for a store in another process
    (engine/adapters/storeproc.py): ``submit(sql)`` starts the query there and
    returns its future and a function that interrupts it (with a reason).
    """

    def __init__(
        self,
        cursor: Callable[[], duckdb.DuckDBPyConnection] | None,
        *,
        submit: Callable[[str], tuple[Future[QueryResult], Callable[[str], None]]] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        workers: int = 2,
        backlog: int = 8,
        max_rows: int = MAX_ROWS,
        before: Callable[[], None] | None = None,
    ) -> None:
        self._cursor = cursor
        self._submit = submit
        self.timeout = float(timeout)
        self.workers = max(1, int(workers))
        self.backlog = max(0, int(backlog))
        self.max_rows = max_rows
        self._before = before
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="kaiser-query")
        self._cancels: set[Callable[[str], None]] = set()  # one for each query running or waiting
        self._running: set[asyncio.Future[QueryResult]] = set()
        self._closed = False
        self.done = 0
        self.timeouts = 0
        self.cancelled = 0
        self.refused_busy = 0

    @property
    def in_flight(self) -> int:
        """Queries running or waiting for a worker."""
        return len(self._running)

    async def run(self, sql: str, gone: Callable[[], bool] | None = None) -> QueryResult:
        """Run ``sql``; ``gone()`` is polled while it runs and True cancels it. Raises
        QueryBusy, QueryRefused, QueryTimeout, QueryCancelled or StoreError."""
        if self._closed:
            raise QueryCancelled("the server is shutting down")
        if len(self._running) >= self.workers + self.backlog:
            self.refused_busy += 1
            raise QueryBusy(f"{len(self._running)} queries are running or waiting; try again shortly")
        if self._submit is not None:
            started, cancel = self._submit(sql)
        else:
            job = _Job(self.timeout)
            started, cancel = self._executor.submit(self._work, job, sql), job.cancel
        future = asyncio.wrap_future(started)
        self._cancels.add(cancel)
        self._running.add(future)

        def finished(f: asyncio.Future[QueryResult]) -> None:
            self._running.discard(f)
            self._cancels.discard(cancel)
            exc = None if f.cancelled() else f.exception()  # retrieved: nothing logs it later
            if exc is None and not f.cancelled():
                self.done += 1
            elif isinstance(exc, QueryTimeout):
                self.timeouts += 1

        future.add_done_callback(finished)
        try:
            while True:
                done, _ = await asyncio.wait({future}, timeout=0.1 if gone is not None else None)
                if done:
                    if future.cancelled():  # dropped from the waiting line by close()
                        raise QueryCancelled("the server is shutting down")
                    return future.result()
                if gone is not None and gone():
                    cancel("the client went away")
                    self.cancelled += 1
                    raise QueryCancelled("the client went away")
        except asyncio.CancelledError:
            cancel("the request was cancelled")
            raise

    def _work(self, job: _Job, sql: str) -> QueryResult:
        if job.why is not None:  # cancelled while it waited for a worker
            raise QueryCancelled(f"the query was interrupted: {job.why}")
        if self._before is not None:
            self._before()
        assert self._cursor is not None
        return run_query(self._cursor, sql, max_rows=self.max_rows, job=job)

    def close(self) -> None:
        """Interrupt every query, drop the waiting ones; returns at once."""
        self._closed = True
        for cancel in list(self._cancels):
            cancel("the server is shutting down")
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def aclose(self, wait: float = 2.0) -> None:
        """``close()``, then give the interrupted queries up to ``wait`` seconds to
        leave DuckDB (an interrupt takes milliseconds) before the store closes."""
        self.close()
        running = list(self._running)
        if running:
            await asyncio.wait(running, timeout=wait)
