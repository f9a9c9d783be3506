"""The /query sandbox: only plain reads pass, no escape reaches a file, the audit
tables or the settings, and a query never holds up anything else."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.adapters import query as Q
from engine.adapters.query import QueryBusy, QueryCancelled, QueryRefused, QueryTimeout
from engine.adapters.store import Store
from engine.errors import StoreError
from engine.model import Allowed, Blocked, Code, Command, Event, Reading

pytestmark = pytest.mark.anyio

T0 = 1_790_000_000.0
FOREVER = "SELECT count(*) FROM range(1000000000000) a"  # minutes of work: only an interrupt ends it


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, Path]]:
    """A store with audit rows, a rules dir and a token file beside it."""
    root = tmp_path_factory.mktemp("site")
    (root / "rules").mkdir()
    (root / "rules" / "rules.yaml").write_text("rules: []\n")
    (root / "kaiser.token").write_text("0123456789abcdef0123456789abcdef\n")
    store = Store(str(root / "kaiser.duckdb"))
    cmd = Command("north.fan", 1.0, 600.0, rule="vent", reason="hot")
    store.command(T0, Allowed(cmd), "ESP_AAAAAA", 5, "v1")
    store.command(T0 + 1, Blocked(cmd, Code.MIN_OFF, "off for only 10 s"), "ESP_AAAAAA", 5, "v1")
    store.reading(Reading("north.t", 21.5, T0))
    store.event(Event(T0, "emergency", "critical", "north", "stop"))
    store.put_state("pipeline", {"timers": [1, 2]})
    store.flush()
    yield store, root
    store.close()


def fingerprint(store: Store, root: Path) -> tuple[Any, ...]:
    """Everything an escape could change: the audit tables, the restart snapshot,
    the settings, and every file around the store (but the database's own)."""
    tables = tuple(
        tuple(store._select(f"SELECT * FROM {t} ORDER BY ALL", max_rows=1000).rows)
        for t in ("commands", "state", "readings", "events", "config_versions"))
    catalog = tuple(store._select("SELECT table_name FROM duckdb_tables() ORDER BY 1").rows)
    config = tuple(store._select(
        "SELECT name, value FROM duckdb_settings() WHERE name IN ('enable_external_access', "
        "'lock_configuration', 'threads', 'memory_limit', 'autoload_known_extensions') ORDER BY 1").rows)
    files = tuple(sorted(
        (str(p.relative_to(root)), hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
        for p in root.rglob("*") if not p.name.startswith("kaiser.duckdb")))
    return tables, catalog, config, files


# ---------------------------------------------------------------------- what is refused

WRITES = [
    "DELETE FROM commands", "INSERT INTO commands SELECT * FROM commands",
    "UPDATE state SET value = '{}'", "DROP TABLE commands", "TRUNCATE commands",
    "CREATE TABLE forged AS SELECT 1 AS x", "ALTER TABLE commands ADD COLUMN x INTEGER",
    "CREATE VIEW v AS SELECT 1", "CREATE MACRO m(x) AS x", "CREATE SEQUENCE s",
    "MERGE INTO commands USING commands AS s ON true WHEN MATCHED THEN DELETE",
    "COPY (SELECT 1) TO '{root}/rules/x.yaml'", "COPY commands TO '{root}/out.csv'",
    "COPY commands FROM '{root}/rules/rules.yaml'", "EXPORT DATABASE '{root}/export'",
    "IMPORT DATABASE '{root}/export'", "ATTACH '{root}/other.db' AS other", "DETACH kaiser",
    "INSTALL httpfs", "LOAD httpfs", "FORCE INSTALL json", "UPDATE EXTENSIONS",
    "SET threads = 1", "SET enable_external_access = true", "SET lock_configuration = false",
    "RESET threads", "SET VARIABLE x = 1", "USE memory", "PRAGMA threads = 1", "PRAGMA version",
    "CALL checkpoint()", "CHECKPOINT", "VACUUM", "ANALYZE", "BEGIN", "COMMIT", "ROLLBACK",
    "PREPARE p AS SELECT 1", "EXECUTE p", "DEALLOCATE p", "CREATE SECRET (TYPE s3)",
    "PIVOT commands ON outcome", "COMMENT ON TABLE commands IS 'x'",
]
#: written in table position; "{root}" is the store's directory
ESCAPES = [
    "read_csv('/etc/passwd')", "read_csv_auto('/etc/passwd')", "read_text('/etc/hostname')",
    "read_text('{root}/kaiser.token')", "read_blob('/etc/passwd')", "read_blob('{root}/kaiser.duckdb')",
    "glob('/root/*')", "glob('{root}/*')", "read_json('/etc/passwd')", "read_json_auto('x.json')",
    "read_ndjson('x')", "read_parquet('x.parquet')", "parquet_metadata('x')", "parquet_schema('x')",
    "sniff_csv('/etc/passwd')", "read_json_objects('x')", "read_csv('http://127.0.0.1:1/x.csv')",
    "query('DELETE FROM commands')", "query('SELECT * FROM read_text(''/etc/hostname'')')",
    "query_table('commands')", "json_execute_serialized_sql('{{}}')", "read_duckdb('{root}/x.db')",
    "checkpoint()", "force_checkpoint()", "enable_logging()", "disable_logging()",
    "truncate_duckdb_logs()", "enable_profiling()", "disable_optimizer()", "duckdb_secrets()",
    "which_secret('s3://x', 's3')", "duckdb_extensions()", "import_database('{root}/export')",
    "arrow_scan(1, 2, 3)", "pandas_scan(1)", "python_map_function(1)", "add_parquet_key('k', 'v')",
    "system.main.read_text('/etc/hostname')", "main.glob('*')", "'x.csv'", "'/etc/passwd'",
    "'{root}/kaiser.token'", "\"{root}/rules/rules.yaml\"",
]
POSITIONS = [
    "SELECT * FROM {f}", "FROM {f}", "SELECT (SELECT count(*) FROM {f})",
    "WITH a AS (SELECT * FROM {f}) SELECT * FROM a", "SELECT * FROM commands WHERE EXISTS (FROM {f})",
    "SELECT * FROM commands, LATERAL (SELECT * FROM {f})", "SELECT 1 UNION ALL SELECT count(*) FROM {f}",
    "DESCRIBE SELECT * FROM {f}", "SUMMARIZE SELECT * FROM {f}", "EXPLAIN SELECT * FROM {f}",
    "SELECT list_transform([1], lambda x: (SELECT count(*) FROM {f}))",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r, {f} WHERE n < 2) SELECT * FROM r",
]


def _wrapped_writes() -> st.SearchStrategy[str]:
    base = st.sampled_from(WRITES)
    dml = st.sampled_from([w for w in WRITES if w.split()[0] in ("DELETE", "INSERT", "UPDATE")])
    return st.one_of(
        base,
        base.map(lambda s: "EXPLAIN " + s),
        base.map(lambda s: "EXPLAIN ANALYZE " + s),
        base.map(lambda s: "explain analyse " + s.lower()),
        base.map(lambda s: "EXPLAIN (FORMAT json) " + s),
        base.map(lambda s: "SELECT 1; " + s),
        base.map(lambda s: s + "; SELECT 1"),
        base.map(lambda s: "/* just a read */ " + s + " -- really"),
        dml.map(lambda s: f"WITH d AS ({s} RETURNING *) SELECT * FROM d"),
        dml.map(lambda s: f"EXPLAIN ANALYZE WITH d AS ({s} RETURNING *) SELECT * FROM d"),
    )


def _escapes() -> st.SearchStrategy[str]:
    return st.builds(lambda pos, f, upper: (pos.format(f=f).upper() if upper else pos.format(f=f)),
                     st.sampled_from(POSITIONS), st.sampled_from(ESCAPES), st.booleans())


def _refused(store: Store, root: Path, sql: str) -> StoreError:
    before = fingerprint(store, root)
    with pytest.raises(StoreError) as e:
        store.query(sql.replace("{root}", str(root)), timeout=5)
    assert fingerprint(store, root) == before, sql
    return e.value


def test_every_write_and_every_escape_on_its_own(site: tuple[Store, Path]) -> None:
    store, root = site
    for sql in [*WRITES, *(f"SELECT * FROM {f}" for f in ESCAPES)]:
        assert isinstance(_refused(store, root, sql), QueryRefused), sql


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_wrapped_writes())
def test_no_statement_kind_but_a_read_passes(site: tuple[Store, Path], sql: str) -> None:
    store, root = site
    err = _refused(store, root, sql)
    assert isinstance(err, QueryRefused), (sql, err)  # judged before it ran


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_escapes())
def test_no_file_url_extension_or_settings_function_works(site: tuple[Store, Path], sql: str) -> None:
    store, root = site
    err = _refused(store, root, sql)
    assert isinstance(err, QueryRefused), (sql, err)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(max_size=200),
                 st.lists(st.sampled_from(["SELECT", "FROM", "commands", "(", ")", ";", "EXPLAIN", "ANALYZE",
                                           "DELETE", "WITH", "AS", "read_csv('/etc/passwd')", "*", ",",
                                           "'x'", "--", "/*", "*/", "COPY", "TO", "INSERT", "INTO"]),
                          max_size=12).map(" ".join)))
def test_any_text_is_answered_or_refused_cleanly(site: tuple[Store, Path], sql: str) -> None:
    store, root = site
    before = fingerprint(store, root)
    with contextlib.suppress(StoreError):  # the only thing bad SQL may raise
        store.query(sql, timeout=5)
    assert fingerprint(store, root) == before, sql


@pytest.mark.parametrize("sql", [
    "SELECT count(*) FROM commands", "select outcome, code from commands order by ts",
    "WITH b AS (SELECT * FROM commands WHERE outcome = 'blocked') SELECT count(*) FROM b",
    "DESCRIBE commands", "DESCRIBE", "SHOW TABLES", "SHOW ALL TABLES", "SHOW commands", "SUMMARIZE readings",
    "EXPLAIN SELECT * FROM readings WHERE ts > now() - INTERVAL 1 DAY", "/* plan */ explain select 1",
    "FROM state", "VALUES (1, 'a')", "SELECT * FROM range(3)", "SELECT count(*) FROM duckdb_tables()",
    "SELECT * FROM commands UNION ALL SELECT * FROM commands", "TABLE commands",
    "SELECT value->>'$.timers' FROM state", "SELECT 1;", "SELECT current_setting('TimeZone')",
    "SELECT * FROM pragma_table_info('commands')",
])
def test_plain_reads_pass(site: tuple[Store, Path], sql: str) -> None:
    store, root = site
    before = fingerprint(store, root)
    res = store.query(sql)
    assert res.columns
    assert fingerprint(store, root) == before


def test_refusals_say_why(site: tuple[Store, Path]) -> None:
    store, root = site
    assert "only a plain EXPLAIN" in str(_refused(store, root, "EXPLAIN ANALYZE DELETE FROM commands"))
    assert "DELETE inside a query" in str(_refused(store, root, "WITH d AS (DELETE FROM commands RETURNING *) "
                                                                "SELECT * FROM d"))
    assert "read_csv() is not available" in str(_refused(store, root, "FROM read_csv('/etc/passwd')"))
    assert "one statement at a time" in str(_refused(store, root, "SELECT 1; SELECT 2"))
    assert "INSERT statements are not allowed" in str(_refused(store, root, "INSERT INTO state VALUES (1,2,3)"))
    assert "looks like a file" in str(_refused(store, root, "SELECT * FROM 'x.csv'"))
    assert "empty query" in str(_refused(store, root, " ; "))


# ---------------------------------------------------------------------- the walls behind the parser


def test_the_read_only_transaction_stops_writes_the_checks_would_miss(
        site: tuple[Store, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    store, root = site
    monkeypatch.setattr(Q, "judge", lambda con, sql: con.extract_statements(sql)[0])  # no checks at all
    for sql in ["DELETE FROM commands", "WITH d AS (DELETE FROM commands RETURNING *) SELECT * FROM d",
                "UPDATE state SET value = '1'", "CREATE TABLE forged(x INT)", "SELECT nextval('nope')"]:
        err = _refused(store, root, sql)
        assert not isinstance(err, QueryRefused)


def test_the_sealed_database_reaches_no_file_and_changes_no_setting(site: tuple[Store, Path]) -> None:
    store, root = site
    cur = store._con.cursor()  # no judge, no transaction: only the database's own settings
    try:
        for sql in [f"SELECT * FROM read_text('{root}/kaiser.token')", "SELECT * FROM read_csv('/etc/passwd')",
                    f"SELECT * FROM glob('{root}/*')", f"COPY (SELECT 1) TO '{root}/rules/x.yaml'",
                    f"ATTACH '{root}/other.db'", "INSTALL httpfs", "SET threads = 1",
                    "SET enable_external_access = true", "SET lock_configuration = false"]:
            with pytest.raises(duckdb.Error):
                cur.execute(sql)
    finally:
        cur.close()
    assert not (root / "rules" / "x.yaml").exists() and not (root / "other.db").exists()


def test_the_store_still_writes_and_keeps_utc(site: tuple[Store, Path]) -> None:
    store, _ = site
    assert store.query("SELECT current_setting('TimeZone')").rows[0][0] in ("UTC", "Etc/UTC")
    n = store.query("SELECT count(*) FROM readings").rows[0][0]
    store.reading(Reading("north.t", 22.0, T0 + 5))
    store.flush()
    assert store.query("SELECT count(*) FROM readings").rows[0][0] == n + 1


def test_kaiser_query_without_a_server_uses_the_same_sandbox(tmp_path: Path) -> None:
    path = str(tmp_path / "k.duckdb")
    with Store(path) as s:
        s.reading(Reading("north.t", 1.0, T0))
    ro = Store(path, read_only=True)
    try:
        assert ro.query("SELECT count(*) FROM readings").rows == [(1,)]
        with pytest.raises(QueryRefused):
            ro.query("SELECT * FROM read_text('/etc/hostname')")
        with pytest.raises(duckdb.PermissionException):  # sealed too, behind the judge
            ro._con.execute("SELECT * FROM read_text('/etc/hostname')").fetchall()
    finally:
        ro.close()


# ---------------------------------------------------------------------- time limits and the pool


def test_a_query_is_interrupted_at_its_time_limit(site: tuple[Store, Path]) -> None:
    store, _ = site
    t = time.monotonic()
    with pytest.raises(QueryTimeout, match=r"0\.3 s"):
        store.query(FOREVER, timeout=0.3)
    assert time.monotonic() - t < 3
    assert store.query("SELECT 42").rows == [(42,)]  # the store is fine afterwards


async def test_long_queries_hold_up_nothing_else(site: tuple[Store, Path]) -> None:
    store, _ = site
    pool = store.query_pool(timeout=30, workers=2, backlog=1)
    long = [asyncio.create_task(pool.run(FOREVER)) for _ in range(3)]  # two run, one waits
    await asyncio.sleep(0.3)
    assert pool.in_flight == 3
    with pytest.raises(QueryBusy):  # a full line answers at once
        await asyncio.wait_for(pool.run("SELECT 1"), 1)
    t = time.monotonic()
    store.reading(Reading("north.t", 23.0, T0 + 9))
    await asyncio.to_thread(store.flush)  # writes go on
    assert await asyncio.wait_for(asyncio.to_thread(lambda: "reload"), 2) == "reload"  # the default executor is free
    assert time.monotonic() - t < 2
    t = time.monotonic()
    await pool.aclose()  # shutdown interrupts them
    assert time.monotonic() - t < 3
    results = await asyncio.gather(*long, return_exceptions=True)
    assert all(isinstance(r, QueryCancelled) for r in results), results
    with pytest.raises(QueryCancelled):
        await pool.run("SELECT 1")


async def test_a_query_whose_client_went_away_is_interrupted(site: tuple[Store, Path]) -> None:
    store, _ = site
    pool = store.query_pool(timeout=30, workers=1, backlog=0)
    try:
        t = time.monotonic()
        with pytest.raises(QueryCancelled, match="went away"):
            await pool.run(FOREVER, gone=lambda: time.monotonic() - t > 0.3)
        async with asyncio.timeout(3):  # the worker is free again
            while pool.in_flight:
                await asyncio.sleep(0.02)
        assert (await pool.run("SELECT 7")).rows == [(7,)]
    finally:
        await pool.aclose()


async def test_the_pool_times_queries_out_and_sees_fresh_rows(site: tuple[Store, Path]) -> None:
    store, _ = site
    pool = store.query_pool(timeout=0.3, workers=1)
    try:
        with pytest.raises(QueryTimeout):
            await pool.run(FOREVER)
        store.event(Event(T0 + 99, "reload", "info", "", "fresh"))  # not flushed yet
        res = await pool.run("SELECT count(*) FROM events WHERE message = 'fresh'")
        assert res.rows == [(1,)] and pool.timeouts == 1
    finally:
        await pool.aclose()
