"""Shared test settings."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# Machines are 2 cores and noisy: Hypothesis must not fail on timing.
settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", deadline=None, max_examples=2000, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("KAISER_HYPOTHESIS_PROFILE", "default"))
