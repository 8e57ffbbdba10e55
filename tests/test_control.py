"""engine.core.control: a cancel line on stdin (every OS), end of stdin, interrupting a job without safe points."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from engine.core.control import CancelWatch
from engine.core.progress import NullProgress

REPO = Path(__file__).resolve().parent.parent


def _wait(watch: CancelWatch, seconds: float = 5.0) -> bool:
    end = time.monotonic() + seconds
    while not watch.is_canceled() and time.monotonic() < end:
        time.sleep(0.01)
    return watch.is_canceled()


def test_a_cancel_line_cancels_and_other_lines_do_not():
    read, write = os.pipe()
    with os.fdopen(read, "r") as stream, os.fdopen(write, "w") as parent:
        watch = CancelWatch(NullProgress(), stream)
        parent.write("hello\n")
        parent.flush()
        time.sleep(0.2)
        assert not watch.is_canceled()
        parent.write("cancel\n")
        parent.flush()
        assert _wait(watch) and watch.reason == "cancel requested by the parent process"


def test_end_of_stdin_means_the_parent_is_gone():
    watch = CancelWatch(NullProgress(), io.StringIO(""))
    assert _wait(watch) and "closed stdin" in watch.reason


def test_export_cli_cancelled_from_stdin_exits_130_and_leaves_no_file(tmp_path):
    """A job without safe points (the export) is interrupted; its atomic writer removes the temporary file."""
    script = (
        "import sys, time\n"
        "from engine.core.control import watch\n"
        "from engine.core.atomic import atomic_path\n"
        "from engine.core.progress import NullProgress\n"
        "watch(NullProgress(), True, interrupt=True)\n"
        "try:\n"
        f"    with atomic_path({str(tmp_path / 'model.onnx')!r}) as tmp:\n"
        "        tmp.write_bytes(b'partial'); print('writing', flush=True)\n"
        "        while True: sum(range(1000))  # busy in Python, as torch.onnx.export is\n"
        "except KeyboardInterrupt:\n"
        "    print('cancelled', flush=True); sys.exit(130)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "writing"
    child.stdin.write("cancel\n")
    child.stdin.flush()
    out, _ = child.communicate(timeout=20)
    assert child.returncode == 130 and "cancelled" in out
    assert list(tmp_path.iterdir()) == []


def test_a_process_forked_while_listening_does_not_deadlock():
    """DataLoader workers are forked while the listener waits on stdin; multiprocessing then closes sys.stdin in the
    worker, which must not wait for a lock held by a thread that does not exist there."""
    script = (
        "import multiprocessing, time\n"
        "from engine.core.control import watch\n"
        "from engine.core.progress import NullProgress\n"
        "watch(NullProgress(), True)\n"
        "time.sleep(0.3)  # the listener is blocked reading stdin\n"
        "worker = multiprocessing.get_context('fork').Process(target=print, args=('worker ran',))\n"
        "worker.start(); worker.join(20)\n"
        "print('exit code', worker.exitcode, flush=True)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    timer = threading.Timer(30, os.killpg, (child.pid, signal.SIGKILL))  # a deadlocked worker hangs the child
    timer.start()
    out = child.stdout.read()  # stdin stays open (the listener blocked on it) until the child has finished
    child.wait()
    timer.cancel()
    child.stdin.close()
    assert "worker ran" in out and "exit code 0" in out
