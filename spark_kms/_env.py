"""Settings read from the environment: one parser, one error for a bad value."""

from __future__ import annotations

import os

from spark_kms.errors import ConfigurationError

__all__ = ["seconds_from_env"]


def seconds_from_env(env: str, default: float) -> float:
    """``$env`` as a number of seconds >= 0 (``default`` when unset or empty); a ConfigurationError naming the
    variable otherwise."""
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"${env} must be a number of seconds, got {raw!r}") from None
    if not value >= 0:
        raise ConfigurationError(f"${env} must not be negative, got {raw!r}")
    return value
