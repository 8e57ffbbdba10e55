"""Streaming a child Python process into Processing feedback, and stopping it cleanly on cancel."""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import pytest
from qgis_helpers import CapturingFeedback

from pmtl_qgis.algorithms.train import split_overrides, training_command
from pmtl_qgis.engine_process import describe_event, parse_event, popen_options, run_streaming

pytestmark = pytest.mark.qgis


def _script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "child.py"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return [sys.executable, "-u", str(path)]


def test_parse_event_is_lenient():
    assert parse_event('{"event": "progress", "progress": 0.5, "message": "epoch 1/2"}') == {
        "event": "progress",
        "progress": 0.5,
        "message": "epoch 1/2",
    }
    assert parse_event('{"event": "progress", "progress": 0.5') is None  # cut line
    assert parse_event("epoch 1 loss 0.3") is None
    assert parse_event('{"other": 1}') is None
    assert describe_event({"event": "metrics", "epoch": 2, "seg_miou": 0.123456}) == "metrics: epoch=2 seg_miou=0.1235"


def test_events_move_the_bar_and_other_lines_reach_the_log(qgis_app, tmp_path):
    command = _script(
        tmp_path,
        """
        import json, sys
        print(json.dumps({"event": "progress", "progress": 0.25, "message": "epoch 1/4"}))
        print("plain line from the engine")
        print(json.dumps({"event": "metrics", "epoch": 1, "loss": 0.5}))
        print('{"event": broken')
        print(json.dumps({"event": "progress", "progress": 1.0, "message": "done"}))
        sys.exit(3)
        """,
    )
    feedback = CapturingFeedback()
    result = run_streaming(command, feedback)
    assert result.returncode == 3 and not result.canceled
    assert [e["event"] for e in result.events] == ["progress", "metrics", "progress"]
    assert feedback.progress_values == [25.0, 100.0]
    assert feedback.infos == ["epoch 1/4", "metrics: epoch=1 loss=0.5", "done"]
    assert feedback.console == ["plain line from the engine", '{"event": broken']


def test_cancel_is_a_line_on_stdin_and_the_child_stops_cleanly(qgis_app, tmp_path):
    checkpoint = tmp_path / "last.pt"
    command = _script(
        tmp_path,
        f"""
        import json, sys, threading, time
        stop = threading.Event()
        threading.Thread(target=lambda: sys.stdin.readline() == "cancel\\n" and stop.set(), daemon=True).start()
        for step in range(1000):
            if stop.is_set():
                open({str(checkpoint)!r}, "w").write("saved")
                print("stopped cleanly")
                raise SystemExit(130)
            print(json.dumps({{"event": "progress", "progress": step / 1000, "message": f"step {{step}}"}}))
            time.sleep(0.02)
        """,
    )
    feedback = CapturingFeedback(cancel_on="step 5")
    start = time.monotonic()
    result = run_streaming(command, feedback)
    assert result.canceled and result.returncode == 130
    assert checkpoint.read_text() == "saved"
    assert "stopped cleanly" in feedback.console
    assert time.monotonic() - start < 10


def test_a_child_that_ignores_the_cancel_line_is_terminated_after_the_grace_period(qgis_app, tmp_path):
    command = _script(
        tmp_path,
        """
        import time
        print("ready", flush=True)
        time.sleep(60)
        """,
    )
    feedback = CapturingFeedback(cancel_on="ready")
    start = time.monotonic()
    result = run_streaming(command, feedback, cancel_grace_s=0.5, terminate_grace_s=0.5)
    assert result.canceled and result.returncode == -15  # SIGTERM (TerminateProcess on Windows)
    assert time.monotonic() - start < 10


def test_bare_step_events_move_the_bar_without_log_lines_and_errors_are_kept_for_the_algorithm(qgis_app, tmp_path):
    command = _script(
        tmp_path,
        """
        import json
        for step in range(1, 5):
            print(json.dumps({"event": "progress", "progress": step / 10, "message": ""}))
        print(json.dumps({"event": "error", "message": "--resume: no last.pt", "template": "[[resume]]: no last.pt"}))
        raise SystemExit(2)
        """,
    )
    feedback = CapturingFeedback()
    result = run_streaming(command, feedback)
    assert feedback.progress_values == [10.0, 20.0, 30.0, 40.0]
    assert feedback.infos == []
    assert feedback.errors == []  # the algorithm raises it once, naming parameters in the dialog's words
    assert result.error_text() == "[[resume]]: no last.pt"


def test_windows_children_get_no_console_and_keep_backslashes_in_arguments():
    assert popen_options("nt") == {"creationflags": 0x08000000}  # CREATE_NO_WINDOW
    assert popen_options("posix") == {}
    python = r"C:\Program Files\QGIS 3.22\apps\Python39\python.exe"
    overrides = split_overrides(r'data.seg=C:\Users\me\chips "runtime.out=C:\My Runs\student" optim.lr=0.01')
    assert overrides == [r"data.seg=C:\Users\me\chips", r"runtime.out=C:\My Runs\student", "optim.lr=0.01"]
    command = training_command(Path(python), r"C:\cfg\train.yaml", overrides, resume=True)
    assert command[0] == str(Path(python))
    assert command[1:] == [
        "-u", "-m", "engine.train", "--json-progress", "--control-stdin",
        "--config", r"C:\cfg\train.yaml", "--resume", *overrides,
    ]  # fmt: skip
