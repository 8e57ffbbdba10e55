"""Training set-up does not grow with the run's length (issue 18): a run of 10⁶ iterations per epoch reaches its
first optimizer step in seconds, with loader workers (the stream sampler is lazy, nothing is laid out up front)."""

from __future__ import annotations

import time

import pytest

from engine.core.progress import Cancelled
from engine.train.config import load_config
from engine.train.loop import train
from tests.chipfixtures import write_chip_dataset


class StopAfterFirstStep:
    """Progress that records when the first step reported, then cancels the run."""

    def __init__(self) -> None:
        self.first_step_at: float | None = None

    def report(self, fraction: float | None, message: str = "") -> None:
        if self.first_step_at is None and fraction is not None and fraction > 0:
            self.first_step_at = time.perf_counter()

    def emit(self, event: str, **fields: object) -> None:
        pass

    def is_canceled(self) -> bool:
        return self.first_step_at is not None


def test_a_million_iterations_reach_the_first_step_in_seconds(tmp_path):
    base = tmp_path / "chips"
    det = write_chip_dataset(base / "det", {"train": 4, "val": 2}, size=64, seed=1)
    seg = write_chip_dataset(base / "seg", {"train": 4, "val": 2}, size=64, seed=2)
    cfg = load_config(
        None,
        [
            "data.batch_size=2",
            "data.num_workers=1",
            "optim.epochs=1",
            "optim.iters_per_epoch=1000000",
            "runtime.log_every=1",
            "runtime.amp=false",
            "ema.enabled=false",
            f"data.det={det}",
            f"data.seg={seg}",
            f"runtime.out={tmp_path / 'run'}",
        ],
    )
    progress = StopAfterFirstStep()
    started = time.perf_counter()
    with pytest.raises(Cancelled):
        train(cfg, progress)
    assert progress.first_step_at is not None
    assert progress.first_step_at - started < 30.0  # 8 min at 100,000 iterations when the stream was laid out
