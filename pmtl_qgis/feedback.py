"""The engine's Progress protocol on top of a QgsProcessingFeedback (progress bar, log, cancel button)."""

from __future__ import annotations

import time
from collections.abc import Callable

from qgis.core import QgsProcessingFeedback


class FeedbackProgress:
    """Implements ``engine.core.progress.Progress`` for Processing.

    ``report`` moves the progress bar (fraction × 100); a message goes to the log at most every ``log_interval_s``
    seconds (the engine may report per window) and always when it finishes a job (fraction 1); the others only
    update the status line. ``is_canceled`` is the feedback's cancel flag, so the engine stops at its next
    ``check_cancel``.
    """

    def __init__(
        self,
        feedback: QgsProcessingFeedback | None,
        log_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._feedback = feedback
        self._interval = log_interval_s
        self._clock = clock
        self._last_log = float("-inf")
        self._last_message = ""

    def report(self, fraction: float | None, message: str = "") -> None:
        if self._feedback is None:
            return
        if fraction is not None:
            self._feedback.setProgress(100.0 * max(0.0, min(1.0, float(fraction))))
        if not message:
            return
        now = self._clock()
        finished = fraction is not None and fraction >= 1.0
        if message != self._last_message and (finished or now - self._last_log >= self._interval):
            self._feedback.pushInfo(message)
            self._last_log = now
            self._last_message = message
        else:
            self._feedback.setProgressText(message)  # status line only (qgis_process would print both)

    def is_canceled(self) -> bool:
        return self._feedback is not None and self._feedback.isCanceled()
