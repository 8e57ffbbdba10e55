"""Streaming a child Python process into Processing feedback, and stopping it cleanly on cancel."""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import pytest
from qgis_helpers import CapturingFeedback

from pmtl_qgis.engine_process import describe_event, parse_event, run_streaming

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


def test_cancel_sends_sigint_and_the_child_keeps_its_checkpoint(qgis_app, tmp_path):
    checkpoint = tmp_path / "last.pt"
    command = _script(
        tmp_path,
        f"""
        import json, time
        try:
            for step in range(1000):
                print(json.dumps({{"event": "progress", "progress": step / 1000, "message": f"step {{step}}"}}))
                time.sleep(0.02)
        except KeyboardInterrupt:
            open({str(checkpoint)!r}, "w").write("saved")
            print("stopped cleanly")
            raise SystemExit(130)
        """,
    )
    feedback = CapturingFeedback(cancel_on="step 5")
    start = time.monotonic()
    result = run_streaming(command, feedback)
    assert result.canceled and result.returncode == 130
    assert checkpoint.read_text() == "saved"
    assert "stopped cleanly" in feedback.console
    assert time.monotonic() - start < 10


def test_a_child_that_ignores_sigint_is_terminated_after_the_grace_period(qgis_app, tmp_path):
    command = _script(
        tmp_path,
        """
        import signal, time
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(60)
        """,
    )
    feedback = CapturingFeedback(cancel_on="ready")
    start = time.monotonic()
    result = run_streaming(command, feedback, interrupt_grace_s=0.5, terminate_grace_s=0.5)
    assert result.canceled and result.returncode == -15  # SIGTERM
    assert time.monotonic() - start < 10
