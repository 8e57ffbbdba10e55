"""The one CLI entry (engine/core/cli.py) and progress in a log file (engine/core/progress.py)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.core.cli import EXIT_CANCELLED, EXIT_ERROR, run_cli
from engine.core.errors import InputError, param_ref
from engine.core.progress import Cancelled, LineProgress, TqdmProgress

REPO = Path(__file__).resolve().parents[1]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Closable:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def test_a_log_gets_one_line_every_interval_and_the_end() -> None:
    stream, clock = io.StringIO(), FakeClock()
    progress = LineProgress("train demo", stream, interval_s=5.0, clock=clock)
    for step in range(120):  # 12 s of steps every 0.1 s
        clock.now = step / 10
        progress.report((step + 1) / 121, f"step {step + 1}")
    clock.now = 12.4
    progress.report(1.0, "done")
    progress.close()
    lines = stream.getvalue().splitlines()
    # written at t = 5 and 10 (steps 51 and 101 of 121: 42 %, 83 %) and at the end: 3 lines, no carriage return
    assert lines == [
        "train demo:  42 % (5 s) step 51",
        "train demo:  83 % (10 s) step 101",
        "train demo: 100 % (12 s) done",
    ]
    assert "\r" not in stream.getvalue()


def test_a_short_job_writes_only_its_end_with_the_last_message() -> None:
    stream, clock = io.StringIO(), FakeClock()
    progress = LineProgress("chipping", stream, interval_s=5.0, clock=clock)
    progress.report(0.5, "tile 1/2")
    clock.now = 1.0
    progress.report(None, "")
    progress.report(1.0)
    progress.close()
    assert stream.getvalue().splitlines() == ["chipping: 100 % (1 s) tile 1/2"]
    failed = io.StringIO()
    stopped = LineProgress("chipping", failed, interval_s=5.0, clock=clock)
    stopped.report(0.3, "tile 1/3")
    stopped.close()  # an error or a cancel: the CLI's one line says why, no progress line before it
    assert failed.getvalue() == ""


def test_cli_progress_writes_lines_not_bar_redraws_to_a_file(tmp_path: Path) -> None:
    with open(tmp_path / "log.txt", "w") as log:
        progress = TqdmProgress("predict", stream=log)
        for k in range(200):
            progress.report(k / 200, "tile")
        progress.report(1.0, "done")
        progress.close()
    text = (tmp_path / "log.txt").read_text()
    assert "\r" not in text and text.startswith("predict: 100 %") and len(text.splitlines()) == 1
    with open(tmp_path / "quiet.txt", "w") as log:
        quiet = TqdmProgress("rank 1", disable=True, stream=log)
        quiet.report(0.5, "tile")
        quiet.close()
    assert (tmp_path / "quiet.txt").read_text() == ""


def test_the_plugins_children_keep_their_logs_free_of_progress(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TQDM_DISABLE", "1")  # what pmtl_qgis.environment sets for an engine subprocess
    with open(tmp_path / "log.txt", "w") as log:
        progress = TqdmProgress("evaluate", stream=log)
        progress.report(1.0, "done")
        progress.close()
    assert (tmp_path / "log.txt").read_text() == ""


def _raise(exc: BaseException) -> None:
    raise exc


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [
        (InputError("input raster 'a.tif': expected 3 bands, found 1"), EXIT_ERROR, "error: input raster 'a.tif'"),
        (PermissionError(13, "Permission denied", "/root/x.tif"), EXIT_ERROR, "error: [Errno 13] Permission denied"),
        (Cancelled("cancelled by the caller"), EXIT_CANCELLED, "chipping interrupted"),
        (KeyboardInterrupt(), EXIT_CANCELLED, "chipping interrupted"),
    ],
)
def test_run_cli_turns_each_outcome_into_one_line_and_an_exit_code(exc, code, line, capsys) -> None:
    progress = Closable()
    assert run_cli(lambda: _raise(exc), cancelled="chipping interrupted", progress=progress) == code
    err = capsys.readouterr().err
    assert err.startswith(line) and len(err.splitlines()) == 1 and "Traceback" not in err
    assert progress.closed == 1


def test_run_cli_passes_the_jobs_status_and_says_what_a_cancel_kept(capsys) -> None:
    assert run_cli(lambda: None) == 0
    assert run_cli(lambda: {"miou": 0.5}) == 0
    assert run_cli(lambda: 3) == 3
    assert run_cli(lambda: _raise(Cancelled()), cancelled=lambda: "run/last.pt is kept") == EXIT_CANCELLED
    assert capsys.readouterr().err == "run/last.pt is kept\n"


def test_json_errors_reach_the_parent_as_an_event(capsys) -> None:
    assert run_cli(lambda: _raise(InputError("bad")), json_errors=True) == EXIT_ERROR
    out = capsys.readouterr().out
    assert json.loads(out) == {"event": "error", "message": "bad", "template": "bad"}


def test_a_parent_program_gets_the_parameters_to_name_in_its_own_words(capsys) -> None:
    error = InputError(f"{param_ref('bands')} [1, 2]: expected 3 band numbers")
    assert run_cli(lambda: _raise(error), json_errors=True) == EXIT_ERROR
    captured = capsys.readouterr()
    assert captured.err == "error: --bands [1, 2]: expected 3 band numbers\n"  # the command line's words
    assert json.loads(captured.out)["template"] == "[[bands]] [1, 2]: expected 3 band numbers"
    cancelled = f"last.pt is kept (resume with {param_ref('resume')})"
    assert run_cli(lambda: _raise(Cancelled()), cancelled=cancelled) == EXIT_CANCELLED
    assert capsys.readouterr().err == "last.pt is kept (resume with --resume)\n"
    assert run_cli(lambda: _raise(Cancelled()), cancelled=cancelled, json_errors=True) == EXIT_CANCELLED
    assert capsys.readouterr().err == "last.pt is kept (resume with [[resume]])\n"  # QGIS renders its own words


def test_synth_cancelled_exits_130_with_one_line(monkeypatch, tmp_path: Path, capsys) -> None:
    """``engine.synth`` used to let a cancel (Ctrl-C, SIGTERM) escape as a traceback."""
    import engine.synth.__main__ as synth_main

    monkeypatch.setattr(synth_main, "generate", lambda *a, **k: _raise(Cancelled("cancelled by the caller")))
    assert synth_main.main(["--domain", "vaihingen", "--out", str(tmp_path / "v")]) == EXIT_CANCELLED
    assert capsys.readouterr().err.splitlines()[-1].startswith("synthesis cancelled")


def test_every_engine_cli_uses_the_one_entry() -> None:
    mains = sorted((REPO / "engine").glob("*/__main__.py"))
    assert len(mains) >= 7
    assert [p.parent.name for p in mains if "run_cli(" not in p.read_text()] == []


def test_synth_cli_in_a_log_file(tmp_path: Path) -> None:
    """A real run with stderr to a file: progress lines, no bar redraws; a bad argument: one line, exit 2."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = tmp_path / "synth.log"
    cmd = [sys.executable, "-m", "engine.synth", "--domain", "vaihingen", "--out", str(tmp_path / "v"), "--tiles", "1"]
    with open(log, "w") as err:
        done = subprocess.run([*cmd, "--tile-size-m", "12"], stderr=err, stdout=subprocess.PIPE, env=env, cwd=REPO)
    assert done.returncode == 0, log.read_text()
    assert "\r" not in log.read_text() and "synth vaihingen: 100 %" in log.read_text()
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    assert again.returncode == EXIT_ERROR
    assert again.stderr.strip().splitlines()[-1].startswith("error: output folder")
    assert "Traceback" not in again.stderr


@pytest.mark.parametrize("json_errors, expected", [(False, "set --value-max"), (True, "set [[value_max]]")])
def test_a_cli_names_parameters_in_warnings_as_flags_and_leaves_them_to_a_parent(json_errors, expected) -> None:
    """A CLI process (no logging configured: Python's last-resort handler would print the raw template)."""
    code = (
        "import logging\n"
        "from engine.core.cli import run_cli\n"
        "from engine.core.errors import param_ref\n"
        "job = lambda: logging.getLogger('engine.chip').warning('scaled by 65535; set %s', param_ref('value_max'))\n"
        f"raise SystemExit(run_cli(job, json_errors={json_errors}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert expected in done.stderr
