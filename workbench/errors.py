"""The one error type users see for bad input: a bad variant name, config field, setting, target or task option."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """Bad input: the message names the culprit (parameter, value) and the allowed range or choices."""
