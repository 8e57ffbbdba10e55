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

import pytest

from engine.core.control import CancelWatch, ParentWatch
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


@pytest.fixture
def signal_handlers():
    """CancelWatch sets this process's SIGINT/SIGTERM handlers: put pytest's back after the test."""
    saved = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


def test_a_signal_after_a_cancel_stops_the_job_where_it_is(signal_handlers):
    """The first SIGTERM (or Ctrl+C) asks for the next safe point; one more, e.g. the parent's terminate after its
    grace period, interrupts the job where it is (a phase without safe points would otherwise ignore it)."""
    watch = CancelWatch(NullProgress())
    signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    assert watch.is_canceled() and watch.reason == f"signal {int(signal.SIGTERM)}"
    with pytest.raises(KeyboardInterrupt):
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    assert watch.reason == f"signal {int(signal.SIGTERM)}"  # the first reason is kept


def _steps_of(**options) -> tuple[ParentWatch, list[str]]:
    steps: list[str] = []
    parent = ParentWatch(
        lambda reason: steps.append(reason),
        grace_s=0.05,
        poll_s=0.01,
        interrupt=lambda: steps.append("interrupt"),
        leave=lambda: steps.append("exit"),
        **options,
    )
    return parent, steps


@pytest.mark.skipif(os.name == "nt", reason="Windows keeps a dead parent's pid: end of stdin is the sign there")
def test_a_gone_parent_cancels_then_interrupts_then_exits():
    _, steps = _steps_of(parent=-1)  # not this process's parent: as after the parent died and init adopted us
    end = time.monotonic() + 5
    while len(steps) < 3 and time.monotonic() < end:
        time.sleep(0.01)
    assert steps == ["the parent process is gone", "interrupt", "exit"]


def test_end_of_stdin_is_the_sign_and_a_finished_job_is_left_alone():
    parent, steps = _steps_of(parent=os.getppid())
    time.sleep(0.1)
    assert steps == []  # the parent is there
    parent.gone.set()  # what the stdin listener does at end of stdin
    end = time.monotonic() + 5
    while not steps and time.monotonic() < end:
        time.sleep(0.01)
    parent.close()  # the job ended meanwhile: no interrupt, no exit
    time.sleep(0.2)
    assert steps == ["the parent process is gone"]


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (an exited child of another parent may linger as a zombie until reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_a_training_whose_parent_is_killed_stops_and_keeps_last_pt(tmp_path):
    """The plugin's command line (``--json-progress --control-stdin``); its parent is killed (SIGKILL) while the
    child's stdin stays open (another process holds the pipe: here, this test) and its output goes to a file, so
    nothing but the parent's end tells the child. It stops within seconds, last.pt intact, no partial file."""
    from engine.models.checkpoint import load_checkpoint
    from tests.chipfixtures import write_chip_dataset
    from tests.test_labels_train import TINY

    chips = write_chip_dataset(tmp_path / "chips", {"train": 4, "val": 2}, size=64, seed=1)
    model = tmp_path / "small.yaml"
    model.write_text("{backbone: resnet18, neck: fpn, channels: 16, seg_channels: 16}\n")
    run, log = tmp_path / "run", tmp_path / "child.log"
    overrides = [o for o in TINY if not o.startswith(("optim.epochs", "optim.iters"))] + [
        "optim.epochs=1000", "optim.iters_per_epoch=1", f"model={model}", f"data.det={chips}", f"data.seg={chips}",
        f"runtime.out={run}",
    ]  # fmt: skip
    parent_script = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-u', '-m', 'engine.train', '--json-progress', '--control-stdin',"
        f" *{overrides!r}], stdout=open({str(log)!r}, 'w'), stderr=subprocess.STDOUT)\n"
        "print(child.pid, flush=True)\n"
        "child.wait()\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: steps stay short on a busy machine
    command = [sys.executable, "-c", parent_script]
    parent = subprocess.Popen(command, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        deadline = time.monotonic() + 240
        while '"metrics"' not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
            time.sleep(0.2)  # the first epoch ended: last.pt is written
        assert (run / "last.pt").is_file(), log.read_text()
        parent.kill()
        parent.wait(timeout=10)
        killed = time.monotonic()
        while _alive(child) and time.monotonic() - killed < 30:  # seconds; never, before the fix
            time.sleep(0.1)
        assert not _alive(child), f"the engine child outlived its parent:\n{log.read_text()[-1500:]}"
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
        parent.stdin.close()
        parent.stdout.close()
    assert f"training cancelled; {run / 'last.pt'} is kept" in log.read_text()
    assert load_checkpoint(run / "last.pt")["step"] >= 1  # whole epochs: a resume continues from there
    assert not [p.name for p in run.iterdir() if ".partial" in p.name]
