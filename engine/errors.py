"""Kaiser's one exception hierarchy."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.diagnostics import Diagnostic


class KaiserError(Exception):
    """Base of every error Kaiser raises on purpose."""


class ConfigError(KaiserError):
    """The configuration (kaiser.toml or the YAML document set) has errors.

    ``diagnostics`` holds every finding (engine.diagnostics.Diagnostic).
    """

    def __init__(self, message: str, diagnostics: list[Diagnostic] | None = None) -> None:
        super().__init__(message)
        self.diagnostics = list(diagnostics or [])


class UnknownSensorType(KaiserError, KeyError):
    """A sensor type no sensor library knows. ``args[0]`` names it."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown sensor type"


class CodecError(KaiserError):
    """A message cannot be encoded (decoding never raises: it returns a Rejection)."""


class EngineError(KaiserError):
    """The rule network failed (a durable-rules error surfaced, a compile failure)."""


class SafetyError(KaiserError):
    """Misuse of the safety guard's API (never raised for a blocked command)."""


class StoreError(KaiserError):
    """The DuckDB store failed."""


class UsageError(KaiserError):
    """Bad command-line arguments (exit 2)."""
