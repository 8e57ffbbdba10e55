"""The train algorithm with the real engine in its child process: per-step progress, cancel, truthful messages."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from qgis.core import QgsApplication, QgsProcessingException
from qgis_helpers import CapturingFeedback, ensure_provider, run_algorithm

pytestmark = pytest.mark.qgis

FAST = "data.num_workers=0 data.max_val_chips=2 optim.warmup_iters=1 optim.lr=0.002 runtime.log_every=1000"
"""No loader workers, a tiny validation, and log lines only at the end of an epoch: the bar must move anyway."""


class CancelWhen(CapturingFeedback):
    """Cancels once the bar passes ``progress`` percent or a log line contains ``text``; records when."""

    def __init__(self, progress: float | None = None, text: str | None = None) -> None:
        super().__init__(cancel_on=text)
        self.cancelled_at: float | None = None
        self._threshold = progress
        self.progressChanged.connect(self._on_progress)

    def _on_progress(self, value: float) -> None:
        if self._threshold is not None and value > self._threshold:
            self.cancel()

    def cancel(self) -> None:
        if self.cancelled_at is None:
            self.cancelled_at = time.monotonic()
        super().cancel()


@pytest.fixture(scope="module")
def chips(qgis_processing, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("training")
    synth = run_algorithm(
        "pmtl:generate_synthetic", {"DOMAIN": 0, "TILES": 2, "TILE_SIZE_M": 12.0, "OUTPUT": str(root / "synth")}
    )
    out = run_algorithm(
        "pmtl:chip_isprs", {"INPUT_FOLDER": synth["OUTPUT"], "SIZE": 64, "STRIDE": 64, "OUTPUT": str(root / "chips")}
    )
    return Path(out["OUTPUT"])


def _params(chips: Path, out: Path, epochs: int, iters: int) -> dict:
    return {
        "SEG_DATA": str(chips),
        "EPOCHS": epochs,
        "ITERS_PER_EPOCH": iters,
        "BATCH_SIZE": 2,
        "DEVICE": 1,
        "OVERRIDES": FAST,
        "OUTPUT": str(out),
    }


def test_cancel_in_the_first_epoch_stops_the_engine_and_says_nothing_is_kept(chips, tmp_path):
    feedback = CancelWhen(progress=0.0)  # the first training step
    with pytest.raises(QgsProcessingException) as raised:
        run_algorithm("pmtl:train", _params(chips, tmp_path / "run", 1, 300), feedback)
    stopped = time.monotonic()
    assert feedback.cancelled_at is not None and stopped - feedback.cancelled_at < 15
    message = str(raised.value)
    assert "cancelled before the end of its first epoch" in message and "nothing to resume" in message
    assert "is kept" not in message + feedback.text()
    assert any("no checkpoint was written yet" in line for line in feedback.console)  # the engine says so too
    assert not (tmp_path / "run" / "last.pt").exists()


def test_the_bar_moves_per_step_a_cancel_keeps_the_epoch_and_resume_finishes_the_run(chips, tmp_path):
    feedback = CancelWhen(text="metrics: epoch=1")
    results = run_algorithm("pmtl:train", _params(chips, tmp_path / "run", 3, 8), feedback)
    steps = [value for value in feedback.progress_values if 0.0 < value < 100.0 / 3]
    assert len(set(steps)) >= 3  # epoch 1 of 3: several step positions, though no log line was written
    assert results["LAST_CHECKPOINT"] == str(tmp_path / "run" / "last.pt")
    assert Path(results["LAST_CHECKPOINT"]).is_file()
    assert any("checkpoint of epoch 1 is kept" in w and "Resume" in w for w in feedback.warnings)
    assert not any(line.startswith("metrics: epoch=3") for line in feedback.infos)  # it did stop

    message = _fails("pmtl:train", _params(chips, tmp_path / "run", 3, 8))  # a new run must not overwrite it
    assert "already holds a training run" in message and "Resume" in message
    # resuming with another epoch count would bend the schedule: the engine refuses, naming the key
    message = _fails("pmtl:train", {**_params(chips, tmp_path / "run", 4, 8), "RESUME": True})
    assert "optim.epochs 3 -> 4" in message
    feedback = CapturingFeedback()
    results = run_algorithm("pmtl:train", {**_params(chips, tmp_path / "run", 3, 8), "RESUME": True}, feedback)
    epochs = [line for line in feedback.infos if line.startswith("metrics: epoch=")]
    assert [line.split()[1] for line in epochs] == ["epoch=2", "epoch=3"]  # continued, not restarted
    assert Path(results["CHECKPOINT"]).is_file()


def test_output_defaults_to_a_new_visible_folder_and_resume_needs_a_run(qgis_processing, tmp_path, monkeypatch):
    monkeypatch.setenv("PMTL_RUNS", str(tmp_path / "runs"))
    ensure_provider()
    alg = QgsApplication.processingRegistry().createAlgorithmById("pmtl:train")
    default = Path(alg.parameterDefinition("OUTPUT").defaultValue())
    assert default.parent == tmp_path / "runs" and default.name.startswith("train-")
    old = tmp_path / "runs" / "train-20260101-120000"
    old.mkdir(parents=True)
    (old / "last.pt").write_bytes(b"x")
    message = _fails("pmtl:train", {"SEG_DATA": str(tmp_path), "RESUME": True, "OUTPUT": str(tmp_path / "new")})
    assert f"{tmp_path / 'new'} holds no last.pt" in message and str(old) in message


def _fails(alg_id: str, parameters: dict) -> str:
    feedback = CapturingFeedback()
    with pytest.raises(QgsProcessingException) as raised:
        run_algorithm(alg_id, parameters, feedback)
    return "\n".join([*feedback.errors, str(raised.value)])
