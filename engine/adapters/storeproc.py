"""The store in a process of its own (``[store] writer = "process"``, the default).
Moves data, decides nothing.

Why: DuckDB's work on a thread of the server's process delays the event loop even
though it releases the GIL. Measured here (docs/performance.md, "The tail"): with
the writer thread flushing every second, the reading-to-command p99 at 1,000
readings/s was 1.4-2.2 ms; with no flush, 0.5 ms, the echo floor's. A busy thread
of the same process (even a C loop without the GIL) is woken onto the event
loop's core and keeps it for a scheduler tick; a busy process does not. So
DuckDB runs in a child process (``python -m engine.adapters.storeproc``), and
the server keeps only the buffers.

How: :class:`StoreClient` has the :class:`~engine.adapters.store.Store` API.
Appends go to the same column buffers (:class:`~engine.adapters.store.Buffered`).
Every ``flush_interval`` its sender thread hands them to the child over a socket
pair (``multiprocessing.connection``, pickled in chunks of ``CHUNK`` rows so the
GIL is never held long; JSON values and state snapshots as objects, which the
child turns into text). The child writes them with a plain ``Store`` and
answers ``ack``. Reads (``query``, ``get_state``, ``latest_readings``, the HTTP
port's query pool) are calls answered by the child; a call sent after a flush
sees its rows, as the child handles messages in order.

A flush the child has not acknowledged is kept. When the child dies, it is started
again and those flushes are sent again: rows are written at least once (a child
killed in the middle of a flush may have written part of it). While it restarts,
calls fail with StoreError and appends wait in the buffers. The child ignores
SIGINT and SIGTERM (a Ctrl-C or a service stop reaches the whole process group:
the server's last flush must still find it) and exits when the server closes it
or its socket closes (the server died: it writes what it has first).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from engine.adapters.query import (
    DEFAULT_TIMEOUT,
    MAX_ROWS,
    QueryCancelled,
    QueryPool,
    QueryResult,
    _Job,
    run_query,
)
from engine.adapters.store import CHUNK, TABLES, Buffered, Store, json_column
from engine.errors import StoreError
from engine.model import Reading

log = logging.getLogger("kaiser.store")

#: seconds the child may take to open the store (imports included)
OPEN_TIMEOUT = 60.0
#: seconds a flush or a call waits for the child before StoreError
CALL_TIMEOUT = 60.0
#: seconds between two restarts of a child that keeps dying
RESTART_BACKOFF = 1.0

_JSON = {t: [i for i, (_c, dtype, _a) in enumerate(cols) if dtype == "JSON"] for t, cols in TABLES.items()}


class StoreClient(Buffered):
    """The store, run by a child process (see the module doc). Same arguments,
    appends and reads as :class:`~engine.adapters.store.Store`; raises StoreError
    when the child cannot open the file."""

    def __init__(
        self,
        path: str,
        flush_interval: float = 1.0,
        retention: float = 90 * 86400.0,
        *,
        now: Callable[[], float] = time.time,
        memory_limit: int = 0,
    ) -> None:
        super().__init__()
        self.path = path
        self.flush_interval = max(0.01, float(flush_interval))
        self.retention = float(retention)
        self.memory_limit = memory_limit
        self.read_only = False
        self._now = now
        self._send_lock = threading.RLock()  # one sender at a time: messages keep their order
        self._seq = itertools.count(1)
        self._ids = itertools.count(1)
        #: flush seq -> its messages, until the child acknowledged it
        self._unacked: dict[int, list[tuple[Any, ...]]] = {}
        self._unacked_rows: dict[int, int] = {}
        self._acked = threading.Condition()
        self._last_acked = 0
        self._calls: dict[int, Future[Any]] = {}
        self._stats: dict[str, Any] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._closing = False
        self._sender: threading.Thread | None = None
        self.restarts = 0
        self._local_errors = 0
        self._local_error = ""
        self._conn, self._proc = self._spawn()
        self._receiver = threading.Thread(target=self._receive, name="kaiser-store-replies", daemon=True)
        self._receiver.start()

    # ------------------------------------------------------------------ the child
    def _spawn(self) -> tuple[Connection, subprocess.Popen[bytes]]:
        ours, theirs = socket.socketpair()
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        try:
            proc = subprocess.Popen([sys.executable, "-m", "engine.adapters.storeproc", str(theirs.fileno())],
                                    pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
        finally:
            theirs.close()
        conn = Connection(ours.detach())
        try:
            conn.send(("open", {"path": self.path, "flush_interval": self.flush_interval,
                                "retention": self.retention, "memory_limit": self.memory_limit}))
            if not conn.poll(OPEN_TIMEOUT):
                raise StoreError(f"cannot open store {self.path}: its process did not answer in {OPEN_TIMEOUT:.0f} s")
            kind, detail = conn.recv()
        except (OSError, EOFError) as exc:
            proc.kill()
            raise StoreError(f"cannot open store {self.path}: its process ended ({exc or 'no answer'})") from exc
        except StoreError:
            proc.kill()
            raise
        if kind != "opened":
            proc.wait(5)
            raise StoreError(str(detail))
        self._stats = dict(detail)
        return conn, proc

    @property
    def pid(self) -> int:
        """The store process's id."""
        return self._proc.pid

    def _receive(self) -> None:
        """Replies from the child; starts it again when it dies."""
        while True:
            conn = self._conn
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                if self._closing:
                    return
                self._restart()
                continue
            kind = msg[0]
            if kind == "ack":
                _, seq, stats = msg
                self._stats = stats
                with self._acked:
                    for s in [s for s in self._unacked if s <= seq]:
                        del self._unacked[s]
                        self._unacked_rows.pop(s, None)
                    self._last_acked = max(self._last_acked, seq)
                    self._acked.notify_all()
            elif kind in ("ret", "err"):
                _, call_id, value = msg
                fut = self._calls.pop(call_id, None)
                if fut is not None and not fut.done():
                    if kind == "ret":
                        fut.set_result(value)
                    else:
                        fut.set_exception(value if isinstance(value, StoreError) else StoreError(str(value)))
            elif kind == "closed":
                return

    def _restart(self) -> None:
        code = self._proc.poll()
        if code is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self._proc.wait(5)
        self._note(f"the store process ended (exit code {code}); starting it again")
        for call_id in list(self._calls):
            fut = self._calls.pop(call_id, None)
            if fut is not None and not fut.done():
                fut.set_exception(StoreError("the store process ended; try again"))
        while not self._closing:
            try:
                conn, proc = self._spawn()
            except StoreError as exc:
                self._note(f"cannot start the store process again: {exc}")
                time.sleep(RESTART_BACKOFF)
                continue
            with self._send_lock:
                self._conn, self._proc = conn, proc
                self.restarts += 1
                with self._acked:
                    again = [m for seq in sorted(self._unacked) for m in self._unacked[seq]]
                try:
                    for m in again:  # what it had not acknowledged, in order
                        conn.send(m)
                except OSError:
                    continue  # it died again: the receiver finds out
            log.warning("store process %d started; %d unacknowledged messages sent again", proc.pid, len(again))
            return

    def _note(self, what: str) -> None:
        self._local_errors += 1
        self._local_error = what
        log.error("store: %s", what)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the sender thread (idempotent)."""
        if self._sender is None:
            self._sender = threading.Thread(target=self._run, name="kaiser-store", daemon=True)
            self._sender.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self._send_pending()
            except Exception as exc:  # keep sending; the rows stay unacknowledged
                self._note(f"sending a flush failed: {exc}")

    def close(self) -> None:
        """Write everything buffered, stop the child, wait for it."""
        self._stop.set()
        self._wake.set()
        if self._sender is not None:
            self._sender.join(timeout=30)
            self._sender = None
        try:
            self.flush()
        except StoreError as exc:
            log.error("store: the last flush failed: %s", exc)
        self._closing = True
        with self._send_lock, contextlib.suppress(OSError):
            self._conn.send(("close",))
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            log.error("store: its process did not close in 30 s; killed")
            self._proc.kill()
        self._receiver.join(timeout=5)
        self._conn.close()

    def __enter__(self) -> StoreClient:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writes
    def _send_pending(self) -> int:
        """Hand everything buffered to the child; returns the flush's number (0: nothing).

        The rows go as they were appended, JSON values and state as objects: the
        child makes their text. Here only ``pickle`` runs, a C call a chunk, so the
        event loop never waits long for the GIL (Python-level JSON of a second's
        rule runs, or of a state snapshot, kept it waiting up to a switch interval
        at a time)."""
        with self._send_lock:
            batches, state, extra = self._take()
            if not (batches or state or extra):
                return 0
            seq = next(self._seq)
            msgs: list[tuple[Any, ...]] = []
            rows = 0
            for table, cols in batches.items():
                n = len(cols[0])
                rows += n
                for i in range(0, n, CHUNK):
                    msgs.append(("rows", table, cols if n <= CHUNK else [c[i:i + CHUNK] for c in cols]))
            msgs.append(("end", seq, state, extra, self._now()))
            with self._acked:
                self._unacked[seq] = msgs
                self._unacked_rows[seq] = rows
            try:
                for i, m in enumerate(msgs):
                    try:
                        self._conn.send(m)
                    except (pickle.PicklingError, TypeError, AttributeError):
                        msgs[i] = m = self._as_text(m)  # a value pickle cannot take: as JSON, as before
                        self._conn.send(m)
                    time.sleep(0)  # let the event loop in between chunks
            except OSError:
                pass  # the child died: the receiver starts it again and sends these again
            return seq

    def _as_text(self, msg: tuple[Any, ...]) -> tuple[Any, ...]:
        if msg[0] == "rows":
            _, table, cols = msg
            return ("rows", table, [json_column(c) if i in _JSON[table] else c for i, c in enumerate(cols)])
        _, seq, state, extra, now = msg
        texts = {}
        for key, value in state.items():
            text = value if isinstance(value, str) else self._encode_state_retrying(key, value)
            if text is not None:
                texts[key] = text
        return ("end", seq, texts, extra, now)

    def flush(self) -> None:
        """Write everything buffered so far; returns once it is in the file. Raises
        StoreError when the store process does not confirm it in CALL_TIMEOUT s."""
        seq = self._send_pending()
        with self._acked:
            target = max(seq, max(self._unacked, default=0))
            if not self._acked.wait_for(lambda: self._last_acked >= target or not self._unacked, CALL_TIMEOUT):
                raise StoreError(f"the store process did not confirm a flush in {CALL_TIMEOUT:.0f} s")

    def pending(self) -> int:
        with self._acked:
            waiting = sum(self._unacked_rows.values())
        return super().pending() + waiting

    # ------------------------------------------------------------------ reads
    def _start_call(self, kind: str, *args: Any) -> tuple[int, Future[Any]]:
        call_id = next(self._ids)
        fut: Future[Any] = Future()
        self._calls[call_id] = fut
        with self._send_lock:
            try:
                self._conn.send((kind, call_id, *args))
            except OSError as exc:
                self._calls.pop(call_id, None)
                raise StoreError(f"the store process is not running: {exc}") from exc
        return call_id, fut

    def _call(self, method: str, *args: Any, timeout: float = CALL_TIMEOUT) -> Any:
        """``method(*args)`` on the child's store; raises what it raised (StoreError)."""
        self._send_pending()  # a read sees every row appended before it
        call_id, fut = self._start_call("call", method, args)
        try:
            return fut.result(timeout)
        except TimeoutError as exc:
            self._calls.pop(call_id, None)
            raise StoreError(f"the store process did not answer {method} in {timeout:.0f} s") from exc

    def query(self, sql: str, params: Sequence[object] | None = None, max_rows: int = MAX_ROWS,
              timeout: float = DEFAULT_TIMEOUT) -> QueryResult:
        """As Store.query: read-only SQL in the sandbox, interrupted after ``timeout`` s."""
        return self._call("query", sql, list(params) if params else None, max_rows, timeout,
                          timeout=timeout + CALL_TIMEOUT)

    def query_pool(self, timeout: float = DEFAULT_TIMEOUT, workers: int = 2, backlog: int = 8) -> QueryPool:
        """The HTTP port's query pool; the queries run in the store's process."""
        def submit(sql: str) -> tuple[Future[QueryResult], Callable[[str], None]]:
            self._send_pending()
            call_id, fut = self._start_call("query_job", sql, timeout, MAX_ROWS, workers)

            def cancel(why: str) -> None:
                with self._send_lock, contextlib.suppress(OSError):
                    self._conn.send(("cancel", call_id, why))
            return fut, cancel
        return QueryPool(None, submit=submit, timeout=timeout, workers=workers, backlog=backlog)

    def get_state(self, key: str) -> Any:
        """The JSON value stored under ``key``, or None."""
        return self._call("get_state", key)

    def latest_readings(self) -> list[Reading]:
        return self._call("latest_readings")

    def readings_since(self, since: float, sensor: str | None = None) -> list[Reading]:
        return self._call("readings_since", since, sensor)

    def counts(self) -> Mapping[str, int]:
        return self._call("counts")

    def apply_retention(self, now: float) -> int:
        return self._call("apply_retention", now)

    # ------------------------------------------------------------------ the child's counters
    @property
    def rows_written(self) -> int:
        return int(self._stats.get("rows_written", 0))

    @property
    def flushes(self) -> int:
        return int(self._stats.get("flushes", 0))

    @property
    def errors(self) -> int:
        return int(self._stats.get("errors", 0)) + self._local_errors

    @property
    def last_error(self) -> str:
        return self._local_error or str(self._stats.get("last_error", ""))


# ---------------------------------------------------------------------- child side
_CALLS = ("get_state", "latest_readings", "readings_since", "counts", "apply_retention")


class _Child:
    """The store process: writes flushes in the order they come, answers calls on
    threads (a long query never holds up a flush)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.send_lock = threading.Lock()
        self.now = time.time()
        self.store: Store | None = None
        self.calls = ThreadPoolExecutor(2, thread_name_prefix="kaiser-store-call")
        self.queries: ThreadPoolExecutor | None = None
        self.jobs: dict[int, _Job] = {}

    def send(self, msg: tuple[Any, ...]) -> None:
        with self.send_lock, contextlib.suppress(OSError):
            self.conn.send(msg)

    def stats(self) -> dict[str, Any]:
        s = self.store
        assert s is not None
        return {"rows_written": s.rows_written, "flushes": s.flushes, "errors": s.errors,
                "last_error": s.last_error}

    def serve(self) -> None:
        kind, options = self.conn.recv()
        assert kind == "open"
        try:
            self.store = Store(options["path"], options["flush_interval"], options["retention"],
                               now=lambda: self.now, memory_limit=options["memory_limit"])
        except StoreError as exc:
            self.send(("failed", str(exc)))
            return
        self.send(("opened", self.stats()))
        try:
            self._loop()
        finally:
            self.calls.shutdown(wait=False, cancel_futures=True)
            for job in list(self.jobs.values()):
                job.cancel("the server is shutting down")
            if self.queries is not None:
                self.queries.shutdown(wait=False, cancel_futures=True)
            self.store.close()  # writes what it was given
            self.send(("closed",))

    def _loop(self) -> None:
        store = self.store
        assert store is not None
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                return  # the server is gone
            kind = msg[0]
            if kind == "rows":
                _, table, cols = msg
                with store._lock:
                    for col, values in zip(store._buf[table], cols, strict=True):
                        col.extend(values)
            elif kind == "end":
                _, seq, state, extra, now = msg
                self.now = now
                with store._lock:
                    store._state.update(state)
                    store._extra.extend(extra)
                store._write()
                store._maybe_retain()
                self.send(("ack", seq, self.stats()))
            elif kind == "call":
                _, call_id, method, args = msg
                self.calls.submit(self._answer, call_id, method, args)
            elif kind == "query_job":
                _, call_id, sql, timeout, max_rows, workers = msg
                if self.queries is None:
                    self.queries = ThreadPoolExecutor(workers, thread_name_prefix="kaiser-query")
                job = self.jobs[call_id] = _Job(timeout)
                self.queries.submit(self._query_job, call_id, job, sql, max_rows)
            elif kind == "cancel":
                _, call_id, why = msg
                running = self.jobs.get(call_id)
                if running is not None:
                    running.cancel(why)
            elif kind == "close":
                return

    def _answer(self, call_id: int, method: str, args: Sequence[Any]) -> None:
        store = self.store
        assert store is not None
        try:
            if method == "query":
                sql, params, max_rows, timeout = args
                value: Any = store.query(sql, params, max_rows=max_rows, timeout=timeout)
            elif method in _CALLS:
                value = getattr(store, method)(*args)
            else:
                raise StoreError(f"unknown store call {method!r}")
        except StoreError as exc:
            self.send(("err", call_id, exc))
        except Exception as exc:  # DuckDB's own errors need not pickle: their text does
            self.send(("err", call_id, StoreError(f"{type(exc).__name__}: {exc}")))
        else:
            self.send(("ret", call_id, value))

    def _query_job(self, call_id: int, job: _Job, sql: str, max_rows: int) -> None:
        store = self.store
        assert store is not None
        try:
            if job.why is not None:  # cancelled while it waited for a worker
                raise QueryCancelled(f"the query was interrupted: {job.why}")
            value = run_query(store._con.cursor, sql, max_rows=max_rows, job=job)
        except StoreError as exc:
            self.send(("err", call_id, exc))
        except Exception as exc:
            self.send(("err", call_id, StoreError(f"{type(exc).__name__}: {exc}")))
        else:
            self.send(("ret", call_id, value))
        finally:
            self.jobs.pop(call_id, None)


def main(argv: Sequence[str]) -> int:
    """``python -m engine.adapters.storeproc FD``: serve the store on socket FD."""
    # the server decides when this process ends: a Ctrl-C or a service stop that
    # reaches the process group must not take the store away before its last flush
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from engine import logs

    logs.setup()
    conn = Connection(int(argv[0]))
    _Child(conn).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
