"""The store in a process of its own (``[store] writer = "process"``, the default).
Moves data, decides nothing.

Why: DuckDB's work on a thread of the server's process delays the event loop even
though it releases the GIL. Measured here (docs/performance.md, "The tail"): with
the writer thread flushing every second, the reading-to-command p99 at 1,000
readings/s was 1.4-2.2 ms; with no flush, 0.5 ms, the echo floor's. A busy thread
of the same process (even a C loop without the GIL) is woken onto the event
loop's core and keeps it for a scheduler tick; a busy process does not. So
DuckDB runs in a child process (``python -m engine.adapters.storeproc``), and
the server keeps only the buffers. The child runs at a lower priority
(``STORE_NICE``): when both want a core, the readings go first.

How: :class:`StoreClient` has the :class:`~engine.adapters.store.Store` API.
Appends go to the same column buffers (:class:`~engine.adapters.store.Buffered`).
The event loop pickles a table's rows itself once ``PACK_ROWS`` wait
(:meth:`StoreClient.pack`, between batches of messages); every ``flush_interval``
its sender thread hands those bytes and the rest to the child over a socket pair
(``multiprocessing.connection``; the rest pickled in chunks of ``SEND_CHUNK`` rows
so the GIL is never held long; JSON values and state snapshots as objects, which
the child turns into text). The child writes them with a plain ``Store`` and
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
from engine.adapters.store import PROCESS_CHUNK, TABLES, Buffered, Store, _empty, json_column
from engine.errors import StoreError
from engine.model import Reading

log = logging.getLogger("kaiser.store")

#: seconds the child may take to open the store (imports included)
OPEN_TIMEOUT = 60.0
#: seconds a flush or a call waits for the child before StoreError
CALL_TIMEOUT = 60.0
#: seconds between two restarts of a child that keeps dying
RESTART_BACKOFF = 1.0

#: niceness of the store's process (the server's + this): at 1,000 readings/s the
#: reading-to-command p99 was 1.6-2.6 ms at the server's own priority, 0.8 ms at
#: +10 (docs/performance.md, "The tail"); +10 still gets about a tenth of a busy core
STORE_NICE = 10

#: rows a message: one pickle call (~0.1 ms) holds the GIL at most this long
SEND_CHUNK = 500
#: rows of one table the event loop pickles itself (``StoreClient.pack``) as soon as
#: that many wait, between two batches of messages: the sender thread then has only
#: bytes to write. Pickling a second's rows on the sender thread at each flush (20-36
#: ms of CPU at 12,000 readings/s) made it ask for the GIL every few ms, and the
#: event loop fell 20-100 ms behind after every flush (docs/performance.md)
PACK_ROWS = SEND_CHUNK

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
        wait: bool = True,
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
        #: flush seq -> its messages (tuples, or ``pack``'s pickled bytes), until the
        #: child acknowledged it
        self._unacked: dict[int, list[Any]] = {}
        #: (rows, pickled message) made by ``pack`` and not sent yet, oldest first (the
        #: message itself when pickle refused it: the sender's fallbacks take it);
        #: guarded by ``_lock`` with the buffers, so rows keep their order
        self._packed: list[tuple[int, bytes | tuple[Any, ...]]] = []
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
        self._down = False  # the child died and is not running again yet
        self._local_errors = 0
        self._local_error = ""
        self._receiver = threading.Thread(target=self._receive, name="kaiser-store-replies", daemon=True)
        self._ready_lock = threading.Lock()
        self._conn, self._proc = self._launch()
        if wait:
            self._ready()

    # ------------------------------------------------------------------ the child
    def _ready(self) -> None:
        """Wait for the child to have opened the store (``wait=False`` leaves it to
        here: the server starts the child before it loads the rules, and the two
        overlap). Raises StoreError when it could not."""
        with self._ready_lock:
            if self._receiver.is_alive() or self._closing:
                return
            self._stats = self._handshake(self._conn, self._proc)
            self._receiver.start()

    def _spawn(self) -> tuple[Connection, subprocess.Popen[bytes]]:
        conn, proc = self._launch()
        self._stats = self._handshake(conn, proc)
        return conn, proc

    def _launch(self) -> tuple[Connection, subprocess.Popen[bytes]]:
        """Start the child and ask it to open the store; ``_handshake`` waits for it."""
        ours, theirs = socket.socketpair()
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        try:
            proc = subprocess.Popen([sys.executable, "-m", "engine.adapters.storeproc", str(theirs.fileno())],
                                    pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
        finally:
            theirs.close()
        conn = Connection(ours.detach())
        with contextlib.suppress(OSError):  # a child that died at once: the handshake says so
            conn.send(("open", {"path": self.path, "flush_interval": self.flush_interval,
                                "retention": self.retention, "memory_limit": self.memory_limit}))
        return conn, proc

    def _handshake(self, conn: Connection, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
        try:
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
        return dict(detail)

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
        self._down = True
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
                        # (a state part pickle cannot take is skipped: its "end" carries the text)
                        with contextlib.suppress(pickle.PicklingError, TypeError, AttributeError):
                            if m.__class__ is bytes:
                                conn.send_bytes(m)
                            else:
                                conn.send(m)
                except OSError:
                    continue  # it died again: the receiver finds out
            self._down = False
            log.warning("store process %d started; %d unacknowledged messages sent again", proc.pid, len(again))
            return

    def _note(self, what: str) -> None:
        self._local_errors += 1
        self._local_error = what
        log.error("store: %s", what)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the sender thread (idempotent). Raises StoreError when the store's
        process could not open the file."""
        self._ready()
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
        except StoreError as exc:  # (also a child that never opened the file: it has ended)
            log.error("store: the last flush failed: %s", exc)
        self._closing = True
        with self._send_lock, contextlib.suppress(OSError):
            self._conn.send(("close",))
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            log.error("store: its process did not close in 30 s; killed")
            self._proc.kill()
        if self._receiver.is_alive():
            self._receiver.join(timeout=5)
        self._conn.close()

    # ------------------------------------------------------------------ writes
    def pack(self) -> None:
        """Pickle every table with ``PACK_ROWS`` rows or more now, on the caller's
        thread (the event loop, between batches: about 0.1 ms a call)."""
        buf = self._buf
        for table, cols in buf.items():
            if len(cols[0]) >= PACK_ROWS:
                with self._lock:
                    cols = buf[table]  # (the sender may have taken them meanwhile)
                    if cols[0]:
                        buf[table] = _empty(table)
                        msg: bytes | tuple[Any, ...] = ("rows", table, cols)
                        with contextlib.suppress(Exception):  # never lose rows here: the sender tries again
                            msg = _pickled_rows(table, cols)
                        self._packed.append((len(cols[0]), msg))

    def _send_pending(self) -> int:
        """Hand everything buffered to the child; returns the flush's number (0: nothing).

        The rows go as they were appended, JSON values and state as objects: the
        child makes their text. Here only ``pickle`` runs, a C call for each
        ``SEND_CHUNK`` rows or each part of a state value (``_parts``), so the
        event loop never waits long for the GIL: Python-level JSON of a second's
        rule runs, or of a state snapshot, kept it waiting up to a switch interval
        at a time, and one pickle of a 1,000-rule snapshot holds the GIL ~2.5 ms."""
        with self._send_lock:
            with self._lock:
                packed, self._packed = self._packed, []
                batches, state, extra = self._take_locked()
            if not (batches or state or extra or packed):
                return 0
            seq = next(self._seq)
            msgs: list[Any] = [blob for _, blob in packed]
            rows = sum(n for n, _ in packed)
            for table, cols in batches.items():
                n = len(cols[0])
                rows += n
                for i in range(0, n, SEND_CHUNK):
                    msgs.append(("rows", table, cols if n <= SEND_CHUNK else [c[i:i + SEND_CHUNK] for c in cols]))
            texts: dict[str, str] = {}
            for key, value in state.items():
                if isinstance(value, str):
                    texts[key] = value
                else:
                    msgs.extend(("state", key, path, part) for path, part in _parts(value))
            msgs.append(("end", seq, texts, extra, self._now()))
            with self._acked:
                self._unacked[seq] = msgs
                self._unacked_rows[seq] = rows
            with contextlib.suppress(OSError):  # the child died: the receiver starts it again and sends these again
                self._send_all(msgs, state)
            return seq

    def _send_all(self, msgs: list[Any], state: Mapping[str, object]) -> None:
        """Send ``msgs`` (the last one is ``end``) in order: ``pack``'s bytes as they
        are. A value pickle cannot take goes as JSON text, as the writer thread made
        it: its rows' JSON columns, or its whole state value (the child prefers a text
        to the parts of the same key)."""
        as_text: set[str] = set()
        state_cpu = 0.0
        for i, m in enumerate(msgs[:-1]):
            if m.__class__ is bytes:
                self._conn.send_bytes(m)
                continue
            if m[0] == "state" and m[1] in as_text:
                continue
            t = time.thread_time()
            try:
                self._conn.send(m)
            except (pickle.PicklingError, TypeError, AttributeError):
                if m[0] != "rows":
                    as_text.add(m[1])
                    continue
                _, table, cols = m
                msgs[i] = m = ("rows", table, _json_as_text(table, cols))
                self._conn.send(m)
            if m[0] == "state":
                state_cpu += time.thread_time() - t
            time.sleep(0)  # let the event loop in between chunks
        if state:
            # what a state snapshot costs this process (the server's timer loop saves
            # less often when it is expensive), as the writer thread's JSON counted
            self.state_seconds = state_cpu
        if as_text:
            _, seq, texts, extra, now = msgs[-1]
            for key in as_text:
                text = self._encode_state_retrying(key, state[key])
                if text is not None:
                    texts[key] = text
            msgs[-1] = ("end", seq, texts, extra, now)
        self._conn.send(msgs[-1])

    def flush(self) -> None:
        """Write everything buffered so far; returns once it is in the file. Raises
        StoreError when the store process does not confirm it in CALL_TIMEOUT s."""
        self._ready()
        seq = self._send_pending()
        with self._acked:
            target = max(seq, max(self._unacked, default=0))
            if not self._acked.wait_for(lambda: self._last_acked >= target or not self._unacked, CALL_TIMEOUT):
                raise StoreError(f"the store process did not confirm a flush in {CALL_TIMEOUT:.0f} s")

    def pending(self) -> int:
        with self._acked:
            waiting = sum(self._unacked_rows.values())
        with self._lock:
            waiting += sum(n for n, _ in self._packed)
        return super().pending() + waiting

    # ------------------------------------------------------------------ reads
    def _start_call(self, kind: str, *args: Any) -> tuple[int, Future[Any]]:
        self._ready()
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
    def failing(self) -> bool:
        """The latest flush failed, or the store's process is down."""
        return self._down or bool(self._stats.get("failing"))

    @property
    def last_error(self) -> str:
        return self._local_error or str(self._stats.get("last_error", ""))


#: entries of a state dict a message: one pickle call holds the GIL ~0.1 ms
STATE_CHUNK = 256


def _splittable(value: object) -> bool:
    return type(value) is dict and all(type(k) is str for k in value)


def _parts(value: object, depth: int = 3, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...] | None, Any]]:
    """A state value as parts pickled one by one: (path, entries) merges ``entries``
    into the dict at ``path``; (None, value) is a value that is not a dict of
    string keys. The top level's dicts, and dicts of 32 entries or more, are split
    down to ``depth`` levels, ``STATE_CHUNK`` entries a part; ``_assemble`` puts them together in order."""
    if not _splittable(value):
        return [(None, value)]
    assert isinstance(value, dict)
    out: list[tuple[tuple[str, ...] | None, Any]] = [(path, {})]
    chunk: dict[str, Any] = {}
    for k, v in value.items():
        # the top level's dicts, and big dicts below it (not each board's two item maps)
        if depth > 1 and _splittable(v) and (len(v) >= 32 or (not path and len(v) > 1)):
            if chunk:
                out.append((path, chunk))
                chunk = {}
            out.extend(_parts(v, depth - 1, (*path, k)))
        else:
            chunk[k] = v
            if len(chunk) >= STATE_CHUNK:
                out.append((path, chunk))
                chunk = {}
    if chunk:
        out.append((path, chunk))
    return out


def _assemble(parts: list[tuple[tuple[str, ...] | None, Any]]) -> object:
    if parts and parts[0][0] is None:
        return parts[0][1]
    root: dict[str, Any] = {}
    for path, entries in parts:
        node = root
        for k in path or ():
            node = node.setdefault(k, {})
        node.update(entries)
    return root


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
                "last_error": s.last_error, "failing": s.failing}

    def serve(self) -> None:
        kind, options = self.conn.recv()
        assert kind == "open"
        try:
            self.store = Store(options["path"], options["flush_interval"], options["retention"],
                               now=lambda: self.now, memory_limit=options["memory_limit"],
                               chunk_rows=PROCESS_CHUNK)
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
        parts: dict[str, list[tuple[tuple[str, ...] | None, Any]]] = {}  # state values in parts, until "end"
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
            elif kind == "state":
                _, key, path, part = msg
                parts.setdefault(key, []).append((path, part))
            elif kind == "end":
                _, seq, texts, extra, now = msg
                self.now = now
                state = {key: _assemble(p) for key, p in parts.items() if key not in texts}
                parts.clear()
                with store._lock:
                    store._state.update(state)
                    store._state.update(texts)
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


def _pickled_rows(table: str, cols: list[list[Any]]) -> bytes:
    """One ``rows`` message as ``Connection.send`` would pickle it; the JSON columns as
    text when a value in them is one pickle cannot take."""
    try:
        return pickle.dumps(("rows", table, cols), pickle.DEFAULT_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError):
        return pickle.dumps(("rows", table, _json_as_text(table, cols)), pickle.DEFAULT_PROTOCOL)


def _json_as_text(table: str, cols: list[list[Any]]) -> list[Any]:
    """The columns with the JSON ones as text (what pickle cannot take, written as
    the writer thread would)."""
    return [json_column(c) if j in _JSON[table] else c for j, c in enumerate(cols)]


def main(argv: Sequence[str]) -> int:
    """``python -m engine.adapters.storeproc FD``: serve the store on socket FD."""
    # the server decides when this process ends: a Ctrl-C or a service stop that
    # reaches the process group must not take the store away before its last flush
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # below the server: when both want a core, the readings go first (the writes
    # wait, in the server's buffers and here); DuckDB's threads inherit it
    os.nice(STORE_NICE)
    from engine import logs

    logs.setup()
    conn = Connection(int(argv[0]))
    _Child(conn).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
