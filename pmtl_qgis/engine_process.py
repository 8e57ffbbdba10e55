"""Run an engine CLI (``python -m engine.train ...``) as a child process, streaming its output into Processing.

Training, evaluation and export run outside QGIS's process: a crash or an out-of-memory kill of PyTorch cannot
take QGIS down, QGIS stays responsive, and torch is never imported into QGIS. The child prints JSON event lines
(``{"event": ..., "progress": 0.4, "message": ...}``) that move the progress bar; every other line goes to the log
as console output.

Cancel works the same on every OS (see engine/core/control.py): the child is started with ``--control-stdin`` and
the plugin writes ``cancel`` on its stdin; the child stops at its next safe point (training: after the current
step, checkpoints intact). A child still running after ``cancel_grace_s`` is terminated, then killed. A child
whose QGIS is gone (killed, crashed) stops by itself: end of its stdin, or its parent pid changing (ParentWatch). On
Windows the child gets no console window (CREATE_NO_WINDOW).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qgis.core import QgsProcessingFeedback

CANCEL_LINE = "cancel\n"
"""What the child's ``--control-stdin`` watch reads as a cancel request (engine.core.control.CANCEL_LINE)."""

CREATE_NO_WINDOW = 0x08000000
"""Windows process creation flag (subprocess.CREATE_NO_WINDOW exists only on Windows builds of Python)."""


@dataclass
class ProcessResult:
    """What happened to the child: exit code, whether it was cancelled, its events and last output lines."""

    returncode: int
    canceled: bool
    events: list[dict[str, Any]] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)

    def last_event(self, name: str) -> dict[str, Any] | None:
        """The last event called ``name`` (e.g. done, error, metrics), or None."""
        found = [event for event in self.events if event.get("event") == name]
        return found[-1] if found else None

    def error_text(self) -> str:
        """The engine's error event if it sent one (unrendered: its parameters are for the caller to name), else
        its error lines, else the last lines of its output."""
        error = self.last_event("error")
        if error is not None and (error.get("template") or error.get("message")):
            return str(error.get("template") or error["message"])
        errors = [line for line in self.tail if line.startswith("error:") or "Error:" in line]
        return "\n".join(errors[-5:] or self.tail[-15:])

    def missing_module(self) -> str | None:
        """The top-level module of a ``No module named ...`` failure, or None."""
        lines = [line for line in self.tail if "No module named" in line]
        if self.returncode == 0 or not lines:
            return None
        return lines[-1].split("No module named")[-1].strip(" '\"").split(".")[0]


def engine_command(python: str | Path, module: str, arguments: Sequence[str]) -> list[str]:
    """``python -u -m MODULE --json-progress --control-stdin ARGUMENTS``: an engine CLI as the plugin runs it.

    Arguments are a list, never a shell string: Windows paths keep their backslashes."""
    return [str(python), "-u", "-m", module, "--json-progress", "--control-stdin", *map(str, arguments)]


def popen_options(os_name: str = os.name) -> dict[str, Any]:
    """Platform-specific ``subprocess.Popen`` options: no console window on Windows (QGIS is a GUI program)."""
    if os_name == "nt":
        return {"creationflags": CREATE_NO_WINDOW}
    return {}


def parse_event(line: str) -> dict[str, Any] | None:
    """The JSON object of an event line (one starting with ``{"event"``), or None for any other line."""
    text = line.strip()
    if not text.startswith('{"event"'):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def describe_event(event: dict[str, Any]) -> str:
    """A log line for an event: its message, else its fields other than event/progress as key=value."""
    message = event.get("message")
    if isinstance(message, str) and message:
        return message
    parts = []
    for key, value in event.items():
        if key in ("event", "progress"):
            continue
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return f"{event.get('event')}: " + " ".join(parts)


def _pump(stream: Any, lines: queue.Queue) -> None:
    try:
        for line in iter(stream.readline, ""):
            lines.put(line.rstrip("\r\n"))
    finally:
        lines.put(None)


def request_cancel(process: subprocess.Popen) -> None:
    """Ask the child to stop through its stdin (a child that already exited has closed the pipe: nothing to do)."""
    with contextlib.suppress(OSError, ValueError):
        process.stdin.write(CANCEL_LINE)
        process.stdin.flush()


class _Stopper:
    """The cancel sequence: a request on stdin, then terminate after a grace period, then kill."""

    def __init__(self, process: subprocess.Popen, cancel_grace_s: float, terminate_grace_s: float) -> None:
        self.process = process
        self.grace = (cancel_grace_s, terminate_grace_s)
        self.stage, self.since = 0, 0.0

    def step(self) -> None:
        now = time.monotonic()
        if self.stage == 0:
            request_cancel(self.process)
            self.stage, self.since = 1, now
        elif self.stage == 1 and now - self.since > self.grace[0]:
            self.process.terminate()
            self.stage, self.since = 2, now
        elif self.stage == 2 and now - self.since > self.grace[1]:
            self.process.kill()
            self.stage = 3


def run_streaming(
    command: Sequence[str],
    feedback: QgsProcessingFeedback | None,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    cancel_grace_s: float = 60.0,
    terminate_grace_s: float = 15.0,
    tail_lines: int = 40,
    render: Callable[[str], str] | None = None,
) -> ProcessResult:
    """Run ``command``, forward its output to ``feedback`` and stop it cleanly when the user cancels. ``render``
    rewrites the child's console lines for the log (an engine CLI with ``--json-progress`` leaves parameter
    references for its caller to name)."""
    process = subprocess.Popen(
        list(command),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
        env=env,
        cwd=None if cwd is None else str(cwd),
        **popen_options(),
    )
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True)
    reader.start()
    result = ProcessResult(returncode=0, canceled=False)
    tail: deque = deque(maxlen=tail_lines)
    stopper = _Stopper(process, cancel_grace_s, terminate_grace_s)
    stream_open = True
    while stream_open or process.poll() is None:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            line = ""
        if line is None:
            stream_open = False
        elif line:
            tail.append(line)
            _forward(line, feedback, result, render)
        if feedback is not None and feedback.isCanceled() and process.poll() is None:
            if not result.canceled:
                result.canceled = True
                feedback.pushInfo("Cancel requested: asking the engine to stop at its next safe point…")
            stopper.step()
        if not stream_open and process.poll() is None:
            time.sleep(0.05)
    reader.join(timeout=5)
    result.returncode = process.wait()
    for stream in (process.stdout, process.stdin):
        with contextlib.suppress(OSError):  # the child is gone: its end of stdin is closed
            stream.close()
    result.tail = list(tail)
    return result


def _forward(
    line: str, feedback: QgsProcessingFeedback | None, result: ProcessResult, render: Callable[[str], str] | None
) -> None:
    event = parse_event(line)
    if event is None:
        if feedback is not None:
            feedback.pushConsoleInfo(render(line) if render is not None else line)
        return
    result.events.append(event)
    if feedback is None:
        return
    progress = event.get("progress")
    if isinstance(progress, (int, float)):
        feedback.setProgress(100.0 * max(0.0, min(1.0, float(progress))))
    if event.get("event") == "error":
        return  # the algorithm raises it, in its own words (ProcessResult.error_text)
    if event.get("event") != "progress" or event.get("message"):
        feedback.pushInfo(describe_event(event))  # a bare per-step progress event only moves the bar
