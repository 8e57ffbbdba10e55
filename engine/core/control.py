"""Cancel requests for the engine CLIs, the same on every OS.

A terminal user presses Ctrl+C (SIGINT) or a scheduler sends SIGTERM. A parent program (the QGIS plugin) starts the
CLI with ``--control-stdin`` and writes the line ``cancel`` on the child's stdin: signals cannot do that portably
(on Windows a child without a console receives no CTRL_BREAK, and Python there has no SIGTERM handler). End of
stdin counts as a cancel too: the parent is gone, so nobody waits for the result. The job then stops at its next
safe point (training: after the current step, its checkpoints intact); a parent that waits longer than its grace
period terminates the child, and a signal that comes after a cancel stops the job where it is (as a second Ctrl+C).

A child started with ``--control-stdin`` also stops when its parent is gone while its stdin stays open (another
process inherited the pipe): :class:`ParentWatch` sees the parent process change (POSIX: the orphan is adopted by
init or a subreaper; on Windows, where a venv's python.exe launcher is the parent and the pid is kept, end of stdin
is the sign). Nobody waits for the result then, so a job that reaches no safe point within a grace period is
interrupted where it is (cleanup handlers run: no partial output under a final name), and after as long again the
process exits without cleanup (temporaries keep their hidden names; the next write of that output removes them).
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from engine.core.cli import EXIT_CANCELLED

CANCEL_LINE = "cancel"
STDIN_FLAG = "--control-stdin"
PARENT_POLL_S = 0.5
"""Seconds between two looks at whether the parent process is still there."""
PARENT_GRACE_S = 5.0
"""Once the parent is gone: seconds for the job to reach a safe point before it is interrupted where it is, and as
many again before the process exits without cleanup."""
STARTED_BY = os.getppid()
"""The parent process as this module was imported (a CLI imports it as it starts)."""


def parent_changed(parent: int) -> bool:
    """True when this process's parent is no longer ``parent`` (POSIX). Windows keeps a dead parent's id, and a
    venv's launcher sits in between: there end of stdin tells (:class:`CancelWatch`)."""
    return os.name != "nt" and os.getppid() != parent


def _leave() -> None:
    with contextlib.suppress(OSError):  # stderr may be a pipe nobody reads any more
        print("the parent process is gone and the job did not stop: exiting", file=sys.stderr, flush=True)
    os._exit(EXIT_CANCELLED)


class ParentWatch:
    """A daemon thread that cancels the job through ``cancel(reason)`` once the parent process is gone (its pid
    changed, or :attr:`gone` was set, e.g. on end of stdin), then, if the process still runs ``grace_s`` later,
    interrupts the main thread (as Ctrl+C would), and ``grace_s`` after that exits. :meth:`close` ends the watch."""

    def __init__(
        self,
        cancel: Callable[[str], None],
        parent: int = STARTED_BY,
        grace_s: float = PARENT_GRACE_S,
        poll_s: float = PARENT_POLL_S,
        interrupt: Callable[[], None] = _thread.interrupt_main,
        leave: Callable[[], None] = _leave,
    ) -> None:
        self.gone = threading.Event()
        self._closed = threading.Event()
        self._cancel, self._parent, self._grace_s, self._poll_s = cancel, parent, grace_s, poll_s
        self._steps = (interrupt, leave)
        threading.Thread(target=self._run, name="pmtl-parent", daemon=True).start()

    def _run(self) -> None:
        while not self.gone.wait(self._poll_s):
            if self._closed.is_set():
                return
            if parent_changed(self._parent):
                self.gone.set()
        if self._closed.is_set():
            return
        self._cancel("the parent process is gone")
        for step in self._steps:
            if self._closed.wait(self._grace_s):
                return
            step()

    def close(self) -> None:
        """The job is over: no cancel, interrupt or exit from here on."""
        self._closed.set()


class CancelWatch:
    """Wraps a progress reporter: ``is_canceled()`` turns True on SIGINT/SIGTERM or, when ``stdin`` is given, on a
    ``cancel`` line or end of that stream. ``interrupt`` also raises KeyboardInterrupt in the main thread, for jobs
    with no safe points to poll at (an ONNX export): cleanup handlers still run, so no partial output is left. A
    signal after a cancel raises KeyboardInterrupt too (the job is stopped where it is). ``watch_parent`` adds a
    :class:`ParentWatch` (end of stdin is its sign too)."""

    def __init__(
        self, inner: Any, stdin: TextIO | None = None, interrupt: bool = False, watch_parent: bool = False
    ) -> None:
        self.inner = inner
        self.reason = ""
        self._event = threading.Event()
        self._interrupt = interrupt
        self._parent = ParentWatch(self._cancel) if watch_parent else None
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._on_signal)
            if hasattr(signal, "SIGTERM"):
                signal.signal(signal.SIGTERM, self._on_signal)
        if stdin is not None:
            threading.Thread(target=self._listen, args=(stdin,), name="pmtl-cancel", daemon=True).start()

    def _on_signal(self, signum: int, frame: Any) -> None:
        insisted = self._event.is_set()  # a cancel was asked for already: stop where the job is
        self._cancel(f"signal {signum}")
        if self._interrupt or insisted:
            raise KeyboardInterrupt(self.reason)

    def _listen(self, stream: TextIO) -> None:
        for line in _lines(stream):
            if line.strip() == CANCEL_LINE:
                self._cancel("cancel requested by the parent process")
                return
        self._cancel("the parent process closed stdin")
        if self._parent is not None:
            self._parent.gone.set()

    def _cancel(self, reason: str) -> None:
        if self._event.is_set():
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
        if self._parent is not None:
            self._parent.close()
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
    """The CLIs' cancel watch: signals always; stdin lines and the parent's end when started with
    ``--control-stdin``."""
    return CancelWatch(inner, sys.stdin if control_stdin else None, interrupt, watch_parent=control_stdin)
