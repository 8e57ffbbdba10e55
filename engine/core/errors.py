"""Errors with messages a user can act on: they name the file or parameter, what was expected and found."""

from __future__ import annotations


class PmtlError(Exception):
    """Base class for every error the engine raises on purpose (bad input, bad config, missing data)."""


class InputError(PmtlError, ValueError):
    """Bad user input: a file, folder or raster that is missing, malformed or inconsistent."""


class ConfigError(PmtlError, ValueError):
    """A config value or CLI parameter that does not validate."""
