"""Errors that reach the user as one clear paragraph (the CLI exits 2, no traceback)."""

from __future__ import annotations


class FedfmError(Exception):
    """Base class of every error caused by the user's input (config, files, payloads)."""


class ConfigError(FedfmError):
    """A config file or override that cannot be used as it is."""


class DataError(FedfmError):
    """A data set or partition request that cannot be satisfied."""


class PayloadError(FedfmError):
    """A message (client update, checkpoint, file) that is malformed, oversized or unsafe."""


def choices(valid) -> str:
    """Format a list of valid choices for an error message."""
    return ", ".join(sorted(str(v) for v in valid))
