"""Errors with messages a user can act on: they name the file or parameter, what was expected and found."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

_REFERENCE = re.compile(r"\[\[([a-z][a-z0-9_]*)\]\]")
"""How a message refers to a user-facing parameter: ``[[value_max]]`` (see :func:`param_ref`)."""


def param_ref(name: str) -> str:
    """A reference to the user-facing parameter ``name`` inside an error message (the command-line flag, ``_`` for
    ``-``). Each front door renders it in its own words: the CLI as the flag (``--value-max``), the QGIS
    algorithms as the dialog field's label, the Python API as the keyword argument (``'value_max'``)."""
    return f"[[{name}]]"


def cli_flag(name: str) -> str:
    """How the command line names a parameter: ``value_max`` → ``--value-max``."""
    return "--" + name.replace("_", "-")


def python_keyword(name: str) -> str:
    """How the Python API names a parameter: the keyword argument of the same name, quoted (``'value_max'``)."""
    return f"'{name}'"


class PmtlError(Exception):
    """Base class for every error the engine raises on purpose (bad input, bad config, missing data).

    Its message may name parameters with :func:`param_ref`; ``str()`` renders them as command-line flags, or as
    keyword arguments when a public Python function raised it (:func:`python_api`), :meth:`render` in any other
    front door's words."""

    words: Callable[[str], str] | None = None
    """How ``str()`` names parameters; None: as command-line flags."""

    @property
    def template(self) -> str:
        """The message with its parameter references unrendered."""
        return str(self.args[0]) if self.args else ""

    @property
    def params(self) -> list[str]:
        """The parameters the message names, in order."""
        return _REFERENCE.findall(self.template)

    def render(self, words: Callable[[str], str] = cli_flag) -> str:
        """The message with each parameter reference replaced by ``words(name)``."""
        return render_message(self.template, words)

    def __str__(self) -> str:
        return self.render(self.words or cli_flag)


def render_message(template: str, words: Callable[[str], str] = cli_flag) -> str:
    """``template`` (an error message, e.g. an engine child's error event) with its parameter references rendered."""
    return _REFERENCE.sub(lambda match: words(match.group(1)), template)


class InputError(PmtlError, ValueError):
    """Bad user input: a file, folder or raster that is missing, malformed or inconsistent."""


class ConfigError(PmtlError, ValueError):
    """A config value or CLI parameter that does not validate."""


class ParamWords(logging.Filter):
    """A log handler's filter that renders the parameter references in each message with ``words``."""

    def __init__(self, words: Callable[[str], str] = cli_flag) -> None:
        super().__init__()
        self.words = words

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "[[" in message:
            record.msg, record.args = render_message(message, self.words), ()
        return True


@contextlib.contextmanager
def log_params_as_flags() -> Iterator[None]:
    """Around a CLI's run, after ``logging.basicConfig``: log messages name parameters as command-line flags. The
    filters go when the run ends (a CLI called in-process, e.g. by a test, leaves the Python API's words alone)."""
    handlers, words = list(logging.getLogger().handlers), ParamWords()
    for handler in handlers:
        handler.addFilter(words)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(words)


def _front_door_renders() -> bool:
    """True when a front door names parameters in its own words: a handler on the ``engine`` logger (the QGIS
    plugin's, while an algorithm runs) or a CLI's :func:`log_params_as_flags` filter on the root handlers."""
    if logging.getLogger("engine").handlers:
        return True
    return any(isinstance(f, ParamWords) for handler in logging.getLogger().handlers for f in handler.filters)


class KeywordNames(ParamWords):
    """A filter on an engine logger that a public Python function logs on: with no front door rendering
    parameters in its own words, each message names them as the function's keyword arguments."""

    def __init__(self) -> None:
        super().__init__(python_keyword)

    def filter(self, record: logging.LogRecord) -> bool:
        return True if _front_door_renders() else super().filter(record)


def keyword_logger(name: str) -> logging.Logger:
    """The engine logger ``name`` with a :class:`KeywordNames` filter (added once): for a Python caller, its
    warnings name parameters as keyword arguments, never as ``[[name]]`` templates."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, KeywordNames) for f in logger.filters):
        logger.addFilter(KeywordNames())
    return logger


@contextlib.contextmanager
def python_api() -> Iterator[None]:
    """Around the body of a public Python function: the :class:`PmtlError` it raises names parameters as its
    keyword arguments in ``str()`` (front doors keep rendering ``error.template`` in their own words)."""
    try:
        yield
    except PmtlError as error:
        error.words = python_keyword
        raise


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


def error_event(error: BaseException) -> dict[str, str]:
    """The fields of a CLI's JSON ``error`` event: the message as the CLI prints it and, for a front door that
    renders parameters in its own words (the QGIS plugin), the unrendered ``template``."""
    return {"message": cli_message(error), "template": error.template if isinstance(error, PmtlError) else str(error)}


def cli_message(error: BaseException) -> str:
    """The error as a CLI prints it: parameters named as command-line flags, whoever raised it."""
    return error.render(cli_flag) if isinstance(error, PmtlError) else str(error)
