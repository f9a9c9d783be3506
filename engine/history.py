"""Stored history for ``kaiser plan`` and ``kaiser export-history`` (docs/gitops.md):
the readings and the commands sent over a time range, read from the store in
pages, or from a Parquet file that ``export-history`` wrote, so CI can replay
production's history without access to the production store.

The file is one Parquet table, a row per reading or command (``kind``), in time
order; its key-value metadata says what it is (``kaiser.format``:
:data:`FORMAT`), where it came from and the time range it covers.

| column | reading | command |
|---|---|---|
| kind | ``reading`` | ``command`` |
| ts | timestamp (UTC, microseconds) | |
| ref | sensor ref | actuator ref |
| value | value | duty 0.0-1.0 |
| quality, unit, retained | as stored | null |
| outcome, source, rule, reason, duration | null | as stored (``sent`` or ``blocked``) |

Reading the store goes through ``query`` (the running server's ``/query``, or the
file read-only: engine.commands.run_query), a page of at most :data:`PAGE` rows at
a time, keyed on (time stamp, rowid): nothing is cut off at the query row limit,
and readings that share a time stamp keep the order they arrived in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.adapters.query import QueryResult
from engine.errors import KaiserError
from engine.model import Reading

FORMAT = "kaiser-history/1"
PAGE = 5000  # rows per query (the server's /query answers at most 10,000)


class HistoryError(KaiserError):
    """A history file that cannot be read or written, or is not one."""


@dataclass(frozen=True, slots=True)
class Sent:
    """A command from the ``commands`` table. ``ts``: Unix seconds; ``value``: duty."""

    ts: float
    actuator: str
    value: float
    source: str = ""
    reason: str = ""
    rule: str = ""
    duration: float | None = None
    outcome: str = "sent"


@dataclass(slots=True)
class History:
    """Readings and commands over [since, until) (Unix seconds), oldest first."""

    since: float
    until: float
    readings: list[Reading] = field(default_factory=list)
    commands: list[Sent] = field(default_factory=list)
    source: str = ""  # where it came from, for people

    @property
    def sent(self) -> list[Sent]:
        return [c for c in self.commands if c.outcome == "sent"]


def is_routine(source: str, reason: str, value: float) -> bool:
    """A command ``kaiser plan`` does not compare: a lease renewal (the server repeats
    a held ON) or an emergency stop's OFF (a person's stop, not the rules')."""
    if source == "lease" and value > 0:
        return True
    return source == "safety" and value <= 0 and reason.startswith("emergency stop")


# --------------------------------------------------------------------------
# the store


Query = Callable[[str], QueryResult]

_READINGS = ("SELECT epoch_us(ts) AS us, rowid AS rid, sensor, value, quality, unit, retained FROM readings "
             "WHERE ts >= to_timestamp({since}) AND ts < to_timestamp({until}) AND {after} "
             "ORDER BY us, rid LIMIT {limit}")
_COMMANDS = ("SELECT epoch_us(ts) AS us, rowid AS rid, actuator, value, outcome, source, rule, reason, duration "
             "FROM commands WHERE ts >= to_timestamp({since}) AND ts < to_timestamp({until}) AND {after} "
             "ORDER BY us, rid LIMIT {limit}")


def pages(query: Query, template: str, since: float, until: float, page: int = PAGE) -> Iterator[list[tuple[Any, ...]]]:
    """Every row of ``template`` over [since, until), in pages, each row once, in
    the order they were stored (time stamp, then insertion: readings of one
    second keep their order). Keyset paging on (time stamp in microseconds,
    rowid), the first two columns. Raises StoreError."""
    after = "TRUE"
    while True:
        res = query(template.format(since=repr(float(since)), until=repr(float(until)), after=after, limit=page))
        rows = [tuple(r) for r in res.rows]
        if rows:
            yield rows
        if len(rows) < page:
            return
        us, rid = int(rows[-1][0]), int(rows[-1][1])
        after = f"(epoch_us(ts) > {us} OR (epoch_us(ts) = {us} AND rowid > {rid}))"


def from_store(query: Query, since: float, until: float | None = None, source: str = "store") -> History:
    """Readings and commands over [since, until) from the store. Raises StoreError."""
    until = time.time() if until is None else until
    h = History(since, until, source=source)
    for rows in pages(query, _READINGS, since, until):
        h.readings.extend(Reading(s, float(v), us / 1e6, q or "good", u or "", bool(r))
                          for us, _rid, s, v, q, u, r in rows if v is not None)
    for rows in pages(query, _COMMANDS, since, until):
        h.commands.extend(Sent(us / 1e6, a, float(v), src or "", why or "", rule or "",
                               None if d is None else float(d), outcome or "sent")
                          for us, _rid, a, v, outcome, src, rule, why, d in rows)
    return h


# --------------------------------------------------------------------------
# the file


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("kind", pa.string()), ("ts", pa.timestamp("us", tz="UTC")), ("ref", pa.string()),
        ("value", pa.float64()), ("quality", pa.string()), ("unit", pa.string()), ("retained", pa.bool_()),
        ("outcome", pa.string()), ("source", pa.string()), ("rule", pa.string()), ("reason", pa.string()),
        ("duration", pa.float64()),
    ])


def write(h: History, path: Path, meta: dict[str, str] | None = None) -> None:
    """Write ``h`` as one Parquet file (atomically: a reader never sees half a file).
    Raises HistoryError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows: list[tuple[Any, ...]] = [
        ("reading", r.ts, r.sensor, r.value, r.quality, r.unit, r.retained, None, None, None, None, None)
        for r in h.readings]
    rows += [("command", c.ts, c.actuator, c.value, None, None, None, c.outcome, c.source, c.rule, c.reason,
              c.duration) for c in h.commands]
    rows.sort(key=lambda r: r[1])
    schema = _schema()
    columns: list[tuple[Any, ...]] = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
    arrays = []
    for f, values in zip(schema, columns, strict=True):
        if f.name == "ts":
            arrays.append(pa.array([round(v * 1_000_000) for v in values], pa.int64()).cast(f.type))
        else:
            arrays.append(pa.array(list(values), f.type))
    metadata = {"kaiser.format": FORMAT, "kaiser.since": repr(h.since), "kaiser.until": repr(h.until),
                "kaiser.source": h.source, **(meta or {})}
    table = pa.Table.from_arrays(arrays, schema=schema.with_metadata(metadata))
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        tmp.replace(path)
    except (OSError, pa.ArrowException) as exc:
        tmp.unlink(missing_ok=True)
        raise HistoryError(f"cannot write {path}: {exc}") from exc


def read(path: Path) -> History:
    """A file :func:`write` wrote. Raises HistoryError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise HistoryError(f"cannot read {path}: {exc}") from exc
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if meta.get("kaiser.format") != FORMAT:
        raise HistoryError(f"{path} is not a history file of `kaiser export-history` ({FORMAT})")
    missing = [f.name for f in _schema() if f.name not in table.column_names]
    if missing:
        raise HistoryError(f"{path}: columns missing: {', '.join(missing)}")
    ts = table.column("ts").cast(pa.int64()).to_pylist()
    cols = {name: table.column(name).to_pylist() for name in table.column_names if name != "ts"}
    try:
        h = History(float(meta.get("kaiser.since", "0")), float(meta.get("kaiser.until", "0")),
                    source=f"{path} ({meta.get('kaiser.source', '?')})")
    except ValueError as exc:
        raise HistoryError(f"{path}: bad time range in the metadata: {exc}") from exc
    for i, kind in enumerate(cols["kind"]):
        t, ref, value = ts[i] / 1e6, cols["ref"][i], cols["value"][i]
        if ref is None or value is None or t is None:
            continue
        if kind == "reading":
            h.readings.append(Reading(ref, float(value), t, cols["quality"][i] or "good", cols["unit"][i] or "",
                                      bool(cols["retained"][i])))
        elif kind == "command":
            d = cols["duration"][i]
            h.commands.append(Sent(t, ref, float(value), cols["source"][i] or "", cols["reason"][i] or "",
                                   cols["rule"][i] or "", None if d is None else float(d),
                                   cols["outcome"][i] or "sent"))
    return h
