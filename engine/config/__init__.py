"""Loading and checking a deployment: YAML with positions, kaiser.toml, schemas, lint.

Public API: ``load_deployment(path, tz="UTC") -> (Deployment, list[Diagnostic])``
(best-effort model plus every finding; never raises) and
``engine.config.settings.load_settings(path) -> Settings``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.diagnostics import Diagnostic
    from engine.model import Deployment

__all__ = ["load_deployment"]


def load_deployment(path: str | os.PathLike[str], tz: str = "UTC") -> tuple[Deployment, list[Diagnostic]]:
    """Every *.yaml/*.yml under ``path`` (or the one file) as one Deployment, plus every
    finding sorted by position. Never raises; callers refuse the model if any finding
    is an error. See engine.config.loader."""
    # imported here: engine.conditions/actions import engine.config.fields, which
    # must not pull the loader (and them) in while they initialise
    from engine.config.loader import load_deployment as _load

    return _load(path, tz)
