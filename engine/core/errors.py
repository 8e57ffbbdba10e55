"""Errors with messages a user can act on: they name the file or parameter, what was expected and found."""

from __future__ import annotations

import errno
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class PmtlError(Exception):
    """Base class for every error the engine raises on purpose (bad input, bad config, missing data)."""


class InputError(PmtlError, ValueError):
    """Bad user input: a file, folder or raster that is missing, malformed or inconsistent."""


class ConfigError(PmtlError, ValueError):
    """A config value or CLI parameter that does not validate."""


class OutputError(PmtlError, OSError):
    """An output that cannot be written (full disk, no permission); the message names the file."""


_DISK_FULL = ("no space left on device", "disk is full", "disk full", "not enough space")
"""How a full disk reads in OSError, GDAL (libtiff) and SQLite (GeoPackage) messages."""


def is_disk_full(error: BaseException | str) -> bool:
    """True when ``error`` (an exception or a message) says the disk is full."""
    if isinstance(error, OSError) and getattr(error, "errno", None) == errno.ENOSPC:
        return True
    text = str(error).lower()
    return any(marker in text for marker in _DISK_FULL)


def filesystem_full(path: str | os.PathLike[str], margin: int = 1 << 20) -> list[str]:
    """``["No space left on device"]`` when the filesystem holding ``path`` has (almost) no free space left: the
    cause behind writers whose own message only says 'write failed' (torch.save). Call it before the partial file
    is removed."""
    try:
        free = shutil.disk_usage(Path(path).parent).free
    except OSError:
        return []
    return ["No space left on device"] if free < margin else []


def output_error(path: str | os.PathLike[str], error: BaseException | str, context: Sequence[str] = ()) -> OutputError:
    """One line for a failed write of ``path``: a full disk as such (also when only ``context``, e.g. earlier GDAL
    messages, says so), else the first line of the cause."""
    if is_disk_full(error) or any(is_disk_full(text) for text in context):
        return OutputError(f"No space left on device writing '{path}'")
    cause = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return OutputError(f"cannot write '{path}': {cause}")


def quiet_gdal_close_errors() -> None:
    """For the CLI processes only (never inside QGIS): with exceptions on, GDAL's Python bindings raise from a
    dataset's destructor when a file whose write already failed is closed; Python prints that as a traceback after
    the one-line error was reported. Drop those duplicates; every other unraisable error is printed as before."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        name = getattr(unraisable.object, "__name__", "")
        if isinstance(unraisable.exc_value, RuntimeError) and name.startswith("delete_"):
            return
        previous(unraisable)

    sys.unraisablehook = hook
