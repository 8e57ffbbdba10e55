"""Checkpoints: written atomically, read with ``weights_only=True`` (never unpickle arbitrary objects).

A checkpoint is a dict of tensors and plain values: ``model_config``, ``model`` (state dict), ``ema`` (state dict
of the averaged weights, or None), ``optimizer``, ``scaler``, ``rng``, ``epoch`` (epochs completed), ``step``,
``best``, ``config`` (the effective training config), ``metadata`` (classes, bands, normalisation, metrics, …).
Export and inference take the EMA weights when present.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.core.atomic import atomic_path
from engine.core.errors import InputError, filesystem_full, output_error


def capture_rng() -> dict[str, Any]:
    """Every RNG the training loop touches, as tensors and plain values (weights_only-safe)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
    }
    return state  # the loop draws no global CUDA randomness (augmentation has its own generator)


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    keys = state["numpy"]["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy"]["pos"], 0, 0.0))


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` under a temporary name, then rename: a crash never leaves a truncated checkpoint."""
    with atomic_path(path) as tmp:
        try:
            torch.save(payload, tmp)
        except (OSError, RuntimeError) as exc:  # torch reports a full disk as 'file write failed'
            raise output_error(path, exc, filesystem_full(tmp)) from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely; a clear error when the file is missing or is not a pmtl checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint '{path}' does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise InputError(f"checkpoint '{path}' could not be read as a torch checkpoint (weights only): {exc}") from exc
    if not isinstance(payload, dict) or "model" not in payload or "model_config" not in payload:
        found = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise InputError(
            f"checkpoint '{path}': expected a pmtl checkpoint with 'model' and 'model_config', found {found}"
        )
    return payload


def inference_state(payload: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights to use for evaluation/export: the EMA when the run kept one."""
    ema = payload.get("ema")
    return ema["module"] if ema else payload["model"]


def model_from_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained network (EMA weights when kept) in eval mode, plus the checkpoint payload."""
    from engine.models import build_model, load_model_config

    payload = load_checkpoint(path)
    net = build_model(load_model_config(payload["model_config"]))
    net.load_state_dict(inference_state(payload))
    meta = payload.get("metadata") or {}
    net.normalization = meta.get("normalization", "dataset")  # how its inputs were scaled
    net.input_normalization = (meta["mean"], meta["std"]) if "mean" in meta and "std" in meta else None
    net.input_bands = list(meta["bands"]) if meta.get("bands") else None  # names, in the order it reads them
    return net.eval().to(device), payload
