"""The project's exception hierarchy.

Every mistake a user can make (a bad name, a bad value, a missing data root, a corrupt file)
raises a subclass of :class:`LilNetXError` with a message that says what was expected and what
was received. The CLI turns these into exit code 2 and one ``error:`` line.
"""

from __future__ import annotations


class LilNetXError(Exception):
    """Base class of every error a user can cause."""


class ConfigError(LilNetXError, ValueError):
    """A bad argument or configuration value (unknown name, value out of range)."""


class DataError(LilNetXError):
    """A data set cannot be found or read."""


class FormatError(LilNetXError):
    """A compressed model file is truncated, corrupt, foreign or of an unsupported version."""


def check_nonnegative(name: str, value: float) -> float:
    """Return ``value`` as float, raising :class:`ConfigError` if it is negative or not finite."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a non-negative number, but got {value!r}") from None
    if not v >= 0 or v == float("inf"):
        raise ConfigError(f"{name} must be a non-negative finite number, but got {value!r}")
    return v


def check_positive_int(name: str, value: int) -> int:
    """Return ``value`` as int, raising :class:`ConfigError` unless it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, but got {value!r}")
    return value
