"""Kept so code written against the old path still imports; the checkpoint format lives in
:mod:`engine.models.checkpoint` (a lower layer that evaluate, export and train all read)."""

from engine.models.checkpoint import (
    capture_rng,
    inference_state,
    load_checkpoint,
    model_from_checkpoint,
    restore_rng,
    save_checkpoint,
)

__all__ = [
    "capture_rng",
    "inference_state",
    "load_checkpoint",
    "model_from_checkpoint",
    "restore_rng",
    "save_checkpoint",
]
