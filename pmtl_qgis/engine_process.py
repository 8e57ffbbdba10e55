"""Run an engine CLI (``python -m engine.train ...``) as a child process, streaming its output into Processing.

Training runs outside QGIS's process: a crash or an out-of-memory kill of PyTorch cannot take QGIS down, QGIS
stays responsive, and cancel is a signal. The child prints JSON event lines (``{"event": ..., "progress": 0.4,
"message": ...}``) that move the progress bar; every other line goes to the log as console output. On cancel the
child gets SIGINT (it finishes the step and keeps its last checkpoint), then SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qgis.core import QgsProcessingFeedback


@dataclass
class ProcessResult:
    """What happened to the child: exit code, whether it was cancelled, its events and last output lines."""

    returncode: int
    canceled: bool
    events: list[dict[str, Any]] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)


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


def _pump(stream: Any, lines: queue.Queue[str | None]) -> None:
    try:
        for line in iter(stream.readline, ""):
            lines.put(line.rstrip("\r\n"))
    finally:
        lines.put(None)


def _interrupt(process: subprocess.Popen[str]) -> None:
    if os.name == "nt":
        process.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
    else:
        process.send_signal(signal.SIGINT)


def run_streaming(
    command: Sequence[str],
    feedback: QgsProcessingFeedback | None,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    interrupt_grace_s: float = 60.0,
    terminate_grace_s: float = 15.0,
    tail_lines: int = 40,
) -> ProcessResult:
    """Run ``command``, forward its output to ``feedback`` and stop it cleanly when the user cancels."""
    flags = subprocess.CREATE_NEW_PROCESS_GROUP if os.name == "nt" else 0  # type: ignore[attr-defined]
    process = subprocess.Popen(
        list(command),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
        env=env,
        cwd=None if cwd is None else str(cwd),
        creationflags=flags,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True)
    reader.start()
    result = ProcessResult(returncode=0, canceled=False)
    tail: deque[str] = deque(maxlen=tail_lines)
    stop_stage, stop_time, stream_open = 0, 0.0, True
    while stream_open or process.poll() is None:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            line = ""
        if line is None:
            stream_open = False
        elif line:
            tail.append(line)
            _forward(line, feedback, result)
        if feedback is not None and feedback.isCanceled() and process.poll() is None:
            now = time.monotonic()
            if stop_stage == 0:
                result.canceled = True
                if feedback is not None:
                    feedback.pushInfo("Cancel requested: asking the engine to stop after the current step…")
                _interrupt(process)
                stop_stage, stop_time = 1, now
            elif stop_stage == 1 and now - stop_time > interrupt_grace_s:
                process.terminate()
                stop_stage, stop_time = 2, now
            elif stop_stage == 2 and now - stop_time > terminate_grace_s:
                process.kill()
                stop_stage = 3
        if not stream_open and process.poll() is None:
            time.sleep(0.05)
    reader.join(timeout=5)
    result.returncode = process.wait()
    if process.stdout is not None:
        process.stdout.close()
    result.tail = list(tail)
    return result


def _forward(line: str, feedback: QgsProcessingFeedback | None, result: ProcessResult) -> None:
    event = parse_event(line)
    if event is None:
        if feedback is not None:
            feedback.pushConsoleInfo(line)
        return
    result.events.append(event)
    if feedback is None:
        return
    progress = event.get("progress")
    if isinstance(progress, (int, float)):
        feedback.setProgress(100.0 * max(0.0, min(1.0, float(progress))))
    feedback.pushInfo(describe_event(event))
