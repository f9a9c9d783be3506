"""Watch the rules directory: call back (debounced) when a YAML file changes. Decides nothing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger("kaiser.watch")

YAML_SUFFIXES = (".yaml", ".yml")


def _is_rules_file(path: str) -> bool:
    name = Path(path).name
    return name.endswith(YAML_SUFFIXES) and not name.startswith((".", "#")) and not name.endswith("~")


async def watch_rules(
    rules_dir: Path, on_change: Callable[[list[str]], Awaitable[None]], *, debounce_ms: int = 300
) -> None:
    """Run until cancelled: ``on_change(paths)`` after YAML files under ``rules_dir`` change.

    Editors write files in several steps; changes within ``debounce_ms`` come as one call.
    """
    from watchfiles import awatch  # imported here: only `kaiser run` needs it

    try:
        async for changes in awatch(rules_dir, debounce=debounce_ms, recursive=True):
            paths = sorted({p for _, p in changes if _is_rules_file(p)})
            if not paths:
                continue
            try:
                await on_change(paths)
            except Exception:
                log.exception("reload after a file change failed")
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # e.g. the directory vanished: SIGHUP still reloads
        log.warning("watching %s stopped: %s (SIGHUP still reloads)", rules_dir, exc)
