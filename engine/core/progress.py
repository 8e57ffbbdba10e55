"""The one progress/cancel protocol shared by the CLIs, the Python API and the QGIS algorithms.

Every long engine function takes ``progress: Progress | None``. It calls ``progress.report(fraction, message)``
(fraction in [0, 1], or ``None`` when unknown) and calls :func:`check_cancel` at safe points, which raises
:class:`Cancelled`. Adapters: :class:`TqdmProgress` for the CLIs (a bar on a terminal, :class:`LineProgress` lines
in a log), ``pmtl_qgis`` wraps ``QgsProcessingFeedback``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO, runtime_checkable


class Cancelled(RuntimeError):
    """Raised inside the engine when the caller asked to stop; outputs in flight are discarded."""


@runtime_checkable
class Progress(Protocol):
    def report(self, fraction: float | None, message: str = "") -> None:
        """Tell the caller how far the job is (fraction in [0, 1] or None) and what it is doing."""

    def is_canceled(self) -> bool:
        """True once the caller wants the job to stop."""


class NullProgress:
    """Reports nowhere and never cancels."""

    def report(self, fraction: float | None, message: str = "") -> None:
        pass

    def is_canceled(self) -> bool:
        return False


LINE_INTERVAL_S = 5.0
"""Seconds between two progress lines when the output is a file or a pipe, not a terminal."""


def is_terminal(stream: TextIO) -> bool:
    """True when ``stream`` is an interactive terminal (a bar can redraw in place)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False


class LineProgress:
    """Progress for a log file or a pipe: one plain line every ``interval_s`` seconds, and one when the job is done.

    A bar redrawn with carriage returns fills a log with every redraw; this writes ``description: 42 % (63 s)
    message`` lines instead. A job shorter than the interval that fails writes nothing but its error."""

    def __init__(
        self,
        description: str = "",
        stream: TextIO | None = None,
        interval_s: float = LINE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._description = description
        self._stream = stream or sys.stderr
        self._interval_s = interval_s
        self._clock = clock
        self._started = clock()
        self._written = self._started
        self._fraction: float | None = None
        self._message = ""

    def report(self, fraction: float | None, message: str = "") -> None:
        self._fraction = self._fraction if fraction is None else max(0.0, min(1.0, fraction))
        self._message = message or self._message
        done = fraction is not None and fraction >= 1.0
        if done or self._clock() - self._written >= self._interval_s:
            self._write()

    def _write(self) -> None:
        now = self._clock()
        shown = "" if self._fraction is None else f" {100 * self._fraction:3.0f} %"
        head = f"{self._description}:{shown} ({now - self._started:.0f} s)".lstrip(": ")
        self._stream.write(f"{head} {self._message}".rstrip() + "\n")
        self._stream.flush()
        self._written = now

    def is_canceled(self) -> bool:
        return False

    def close(self) -> None:
        """Nothing to flush: the end was written when the job reported it; an early stop says why elsewhere."""


class TqdmProgress:
    """Progress for the ``python -m engine.<stage>`` CLIs: a tqdm bar on a terminal; on a file or a pipe (a log, the
    QGIS plugin, a scheduler) :class:`LineProgress` lines instead of bar redraws. ``disable=True`` writes nothing."""

    def __init__(
        self, description: str = "", total: int = 1000, disable: bool | None = None, stream: TextIO | None = None
    ) -> None:
        stream = stream or sys.stderr
        disable = disable or _env_flag("TQDM_DISABLE")  # tqdm's own switch, set by the QGIS plugin for its children
        self._lines = None if disable or is_terminal(stream) else LineProgress(description, stream)
        self._bar = None if self._lines is not None else _tqdm_bar(description, total, bool(disable), stream)
        self._total = total

    def report(self, fraction: float | None, message: str = "") -> None:
        if self._lines is not None:
            self._lines.report(fraction, message)
            return
        if fraction is not None:
            target = round(max(0.0, min(1.0, fraction)) * self._total)
            self._bar.update(target - self._bar.n)
        if message:
            self._bar.set_postfix_str(message, refresh=False)
        self._bar.refresh()

    def is_canceled(self) -> bool:
        return False

    def close(self) -> None:
        if self._lines is not None:
            self._lines.close()
        else:
            self._bar.close()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _tqdm_bar(description: str, total: int, disable: bool, stream: TextIO) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=description,
        file=stream,
        disable=disable,
        leave=True,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}",
    )


class ScaledProgress:
    """Maps a sub-task's [0, 1] onto [start, end] of a parent's progress (for multi-step jobs)."""

    def __init__(self, parent: Progress | None, start: float, end: float) -> None:
        self._parent = parent or NullProgress()
        self._start = start
        self._end = end

    def report(self, fraction: float | None, message: str = "") -> None:
        scaled = None if fraction is None else self._start + (self._end - self._start) * fraction
        self._parent.report(scaled, message)

    def is_canceled(self) -> bool:
        return self._parent.is_canceled()


def check_cancel(progress: Progress | None) -> None:
    """Raise :class:`Cancelled` if the caller asked to stop."""
    if progress is not None and progress.is_canceled():
        raise Cancelled("cancelled by the caller")


class JsonLinesProgress:
    """Machine-readable progress on stdout (one JSON object a line) for a parent process such as QGIS.

    Lines look like ``{"event": "progress", "progress": 0.42, "message": "epoch 3/10"}``; other events
    (``metrics``, ``done``, ``error``) are written with :meth:`emit`. A report without a message (a training step)
    is written at most every ``min_interval_s`` seconds, so per-step progress costs the parent nothing. Cancel comes
    from the parent through :mod:`engine.core.control`.
    """

    def __init__(self, stream=None, min_interval_s: float = 0.25) -> None:
        self._stream = stream or sys.stdout
        self._min_interval_s = min_interval_s
        self._last = float("-inf")

    def report(self, fraction: float | None, message: str = "") -> None:
        now = time.monotonic()
        if not message and fraction is not None and fraction < 1.0 and now - self._last < self._min_interval_s:
            return
        self._last = now
        self.emit("progress", progress=fraction, message=message)

    def emit(self, event: str, **fields: object) -> None:
        import json

        self._stream.write(json.dumps({"event": event, **fields}, default=str) + "\n")
        self._stream.flush()

    def is_canceled(self) -> bool:
        return False
