"""Loading and checking a deployment: YAML with positions, kaiser.toml, schemas, lint.

Public API: ``load_deployment(path, tz="UTC") -> (Deployment, list[Diagnostic])``
(best-effort model plus every finding; never raises) and
``engine.config.settings.load_settings(path) -> Settings``.
"""

from __future__ import annotations

from engine.config.loader import load_deployment

__all__ = ["load_deployment"]
