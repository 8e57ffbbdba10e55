"""Cancel requests for the engine CLIs, the same on every OS.

A terminal user presses Ctrl+C (SIGINT) or a scheduler sends SIGTERM. A parent program (the QGIS plugin) starts the
CLI with ``--control-stdin`` and writes the line ``cancel`` on the child's stdin: signals cannot do that portably
(on Windows a child without a console receives no CTRL_BREAK, and Python there has no SIGTERM handler). End of
stdin counts as a cancel too: the parent is gone, so nobody waits for the result. The job then stops at its next
safe point (training: after the current step, its checkpoints intact); a parent that waits longer than its grace
period terminates the child.
"""

from __future__ import annotations

import _thread
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

CANCEL_LINE = "cancel"
STDIN_FLAG = "--control-stdin"


class CancelWatch:
    """Wraps a progress reporter: ``is_canceled()`` turns True on SIGINT/SIGTERM or, when ``stdin`` is given, on a
    ``cancel`` line or end of that stream. ``interrupt`` also raises KeyboardInterrupt in the main thread, for jobs
    with no safe points to poll at (an ONNX export): cleanup handlers still run, so no partial output is left."""

    def __init__(self, inner: Any, stdin: TextIO | None = None, interrupt: bool = False) -> None:
        self.inner = inner
        self.reason = ""
        self._event = threading.Event()
        self._interrupt = interrupt
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._on_signal)
            if hasattr(signal, "SIGTERM"):
                signal.signal(signal.SIGTERM, self._on_signal)
        if stdin is not None:
            threading.Thread(target=self._listen, args=(stdin,), name="pmtl-cancel", daemon=True).start()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._cancel(f"signal {signum}")
        if self._interrupt:
            raise KeyboardInterrupt(self.reason)

    def _listen(self, stream: TextIO) -> None:
        for line in _lines(stream):
            if line.strip() == CANCEL_LINE:
                self._cancel("cancel requested by the parent process")
                return
        self._cancel("the parent process closed stdin")

    def _cancel(self, reason: str) -> None:
        if self._event.is_set() and not self._interrupt:
            return
        self.reason = reason
        self._event.set()
        if self._interrupt and threading.current_thread() is not threading.main_thread():
            _thread.interrupt_main()  # runs _on_signal in the main thread, which raises KeyboardInterrupt there

    def report(self, fraction: float | None, message: str = "") -> None:
        self.inner.report(fraction, message)

    def emit(self, event: str, **fields: object) -> None:
        """Structured event (JSON progress); terminals get metrics as a stderr line."""
        if hasattr(self.inner, "emit"):
            self.inner.emit(event, **fields)
        elif event == "metrics":
            print(
                "metrics: "
                + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()),
                file=sys.stderr,
            )

    def is_canceled(self) -> bool:
        return self._event.is_set()

    def close(self) -> None:
        if hasattr(self.inner, "close"):
            self.inner.close()


def _lines(stream: TextIO) -> Iterator[str]:
    """Lines of ``stream``, read from its file descriptor when it has one. Not through ``sys.stdin``'s buffer: this
    thread would hold its lock while blocked, and a process forked meanwhile (a DataLoader worker) deadlocks when
    multiprocessing closes its copy of ``sys.stdin``."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        yield from iter(stream.readline, "")
        return
    pending = b""
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            yield line.decode("utf-8", "replace")
    if pending:
        yield pending.decode("utf-8", "replace")


def watch(inner: Any, control_stdin: bool, interrupt: bool = False) -> CancelWatch:
    """The CLIs' cancel watch: signals always, stdin lines when started with ``--control-stdin``."""
    return CancelWatch(inner, sys.stdin if control_stdin else None, interrupt)
