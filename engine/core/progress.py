"""The one progress/cancel protocol shared by the CLIs, the Python API and the QGIS algorithms.

Every long engine function takes ``progress: Progress | None``. It calls ``progress.report(fraction, message)``
(fraction in [0, 1], or ``None`` when unknown) and calls :func:`check_cancel` at safe points, which raises
:class:`Cancelled`. Adapters: :class:`TqdmProgress` for terminals, ``pmtl_qgis`` wraps ``QgsProcessingFeedback``.
"""

from __future__ import annotations

import sys
from typing import Protocol, runtime_checkable


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


class TqdmProgress:
    """Terminal progress bar for the ``python -m engine.<stage>`` CLIs."""

    def __init__(self, description: str = "", total: int = 1000, disable: bool | None = None) -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            total=total,
            desc=description,
            file=sys.stderr,
            disable=disable,
            leave=True,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}",
        )
        self._total = total

    def report(self, fraction: float | None, message: str = "") -> None:
        if fraction is not None:
            target = round(max(0.0, min(1.0, fraction)) * self._total)
            self._bar.update(target - self._bar.n)
        if message:
            self._bar.set_postfix_str(message, refresh=False)
        self._bar.refresh()

    def is_canceled(self) -> bool:
        return False

    def close(self) -> None:
        self._bar.close()


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
        import time

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
