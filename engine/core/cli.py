"""The one entry of every ``python -m engine.<stage>`` CLI: exit codes, one-line errors, cancel and progress.

A ``__main__`` parses its arguments, then hands the work to :func:`run_cli`:

* the job's own errors (:class:`~engine.core.errors.PmtlError`: bad input, bad config, an output that cannot be
  written) and any other ``OSError`` become one line ``error: …`` on stderr and exit status :data:`EXIT_ERROR`
  (plus an ``error`` event on stdout with ``--json-progress``, whose ``template`` leaves the parameters it names
  for the parent program to name in its own words), never a traceback;
* a cancel (:class:`~engine.core.progress.Cancelled`, ``cancel`` on stdin, the parent's end) or Ctrl-C exits with
  :data:`EXIT_CANCELLED` after one line saying what was kept; SIGTERM (a scheduler's time limit, a parent's
  terminate) does what Ctrl-C does, in every CLI, and both handlers are as they were after the job;
* the progress reporter is closed on every path, before the last line is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from engine.core.errors import PmtlError, cli_message, error_event, log_params_as_flags, render_message
from engine.core.progress import Cancelled, JsonLinesProgress, Progress, TqdmProgress

EXIT_OK = 0
EXIT_ERROR = 2
"""Bad input, bad config or an output that cannot be written (one line on stderr)."""
EXIT_CANCELLED = 130
"""Cancelled by the user or the parent process (128 + SIGINT, as shells report Ctrl-C)."""


def cli_progress(description: str, json_lines: bool = False, disable: bool | None = None) -> Progress:
    """The CLI's progress reporter: JSON lines on stdout for a parent program (``--json-progress``), else a bar on a
    terminal and a plain line every few seconds in a log file or pipe."""
    if json_lines:
        return JsonLinesProgress()
    return TqdmProgress(description, disable=disable)


def options(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The keyword arguments of the engine function a CLI calls, taken from the options of the same names."""
    return {name: getattr(args, name) for name in names}


def run_cli(
    job: Callable[[], Any],
    *,
    cancelled: str | Callable[[], str] = "cancelled",
    progress: Any = None,
    json_errors: bool = False,
) -> int:
    """Run ``job()`` and turn its outcome into an exit status: :data:`EXIT_OK` (or the int the job returns),
    :data:`EXIT_ERROR` or :data:`EXIT_CANCELLED`. ``cancelled`` is the line printed on a cancel (or a function that
    says it, e.g. which checkpoint is kept); ``progress`` is closed on every path; ``json_errors`` also writes the
    error as a JSON ``error`` event on stdout. Warnings name parameters as command-line flags, except for a parent
    program (``json_errors``), which names them in its own words."""
    with terminate_as_interrupt():
        if json_errors:
            return _outcome(job, cancelled, progress, json_errors)
        if not logging.getLogger().handlers:  # a CLI process: warnings to stderr, one line each
            logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
        with log_params_as_flags():
            return _outcome(job, cancelled, progress, json_errors)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While the job runs, SIGTERM does what SIGINT does (KeyboardInterrupt, or the job's cancel watch once it has
    one); then both handlers are put back. Only the main thread can set handlers: elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, _as_interrupt)
    try:
        yield
    finally:
        for number, handler in saved.items():
            if handler is not None:  # None: a handler set outside Python, which cannot be put back from here
                signal.signal(number, handler)


def _as_interrupt(signum: int, frame: Any) -> None:
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signum, frame)
    elif handler != signal.SIG_IGN:
        raise KeyboardInterrupt


def _outcome(job: Callable[[], Any], cancelled: str | Callable[[], str], progress: Any, json_errors: bool) -> int:
    try:
        code = job()
    except (Cancelled, KeyboardInterrupt):
        _close(progress)
        line = cancelled() if callable(cancelled) else cancelled
        _say(line if json_errors else render_message(line))  # a parent program names parameters
        return EXIT_CANCELLED
    except (PmtlError, OSError) as exc:  # OSError: what no writer named (its message has the path when known)
        _close(progress)
        _say(f"error: {cli_message(exc)}")
        if json_errors:
            with contextlib.suppress(OSError):
                JsonLinesProgress().emit("error", **error_event(exc))
        return EXIT_ERROR
    _close(progress)
    return code if isinstance(code, int) else EXIT_OK


def _say(line: str) -> None:
    """The last line on stderr; a pipe whose reader is gone (a parent that died) is no reason to fail."""
    with contextlib.suppress(OSError):
        print(line, file=sys.stderr, flush=True)


def _close(progress: Any) -> None:
    if progress is not None and hasattr(progress, "close"):
        progress.close()
