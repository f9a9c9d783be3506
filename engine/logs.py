"""Kaiser's log output: text for people, one JSON object per line for log shippers
(``kaiser run --log-format json``, or ``KAISER_LOG_FORMAT=json``).

A JSON line carries ``ts`` (ISO 8601, UTC), ``level``, ``logger``, ``message`` and,
for a failure, ``exc``: journald, Loki/Promtail, Vector or Fluent Bit take it as is.
``KAISER_LOG`` sets the level (default INFO); the ``kaiser.commands`` logger (one
line per command sent or blocked) can be set on its own with
``KAISER_LOG_COMMANDS=WARNING``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from typing import TextIO

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, one line each (newlines in messages escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def setup(fmt: str | None = None, stream: TextIO | None = None) -> None:
    """Configure the root logger once for ``kaiser run``: ``fmt`` text|json (default
    ``$KAISER_LOG_FORMAT`` or text), level ``$KAISER_LOG`` (default INFO)."""
    fmt = (fmt or os.environ.get("KAISER_LOG_FORMAT") or "text").lower()
    # the server's child processes (the store's, the ingest reader) log to the same
    # stream: in the same format
    os.environ["KAISER_LOG_FORMAT"] = fmt
    level = os.environ.get("KAISER_LOG", "INFO").upper()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level, logging.INFO))
    commands = os.environ.get("KAISER_LOG_COMMANDS")
    if commands:
        logging.getLogger("kaiser.commands").setLevel(getattr(logging, commands.upper(), logging.INFO))
    # websockets logs every HTTP GET (/health, /query) as a "rejected" handshake
    logging.getLogger("websockets").setLevel(logging.WARNING)
