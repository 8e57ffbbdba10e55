"""Shape and parameter checks shared by the losses: a wrong shape fails loudly with names instead of broadcasting."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.core.errors import ConfigError, InputError


def require_dims(name: str, tensor: torch.Tensor, ndim: int, layout: str) -> None:
    """Raise InputError unless ``tensor`` has ``ndim`` dimensions (``layout`` names them for the message)."""
    if tensor.dim() != ndim:
        raise InputError(f"loss input '{name}': expected {ndim}-D {layout}, found shape {tuple(tensor.shape)}")


def require_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Raise InputError unless ``a`` and ``b`` have identical shapes (silent broadcasting would be a wrong loss)."""
    if a.shape != b.shape:
        raise InputError(
            f"loss inputs '{name_a}' and '{name_b}': expected identical shapes, "
            f"found {tuple(a.shape)} and {tuple(b.shape)}"
        )


def require_positive(name: str, value: float) -> None:
    """Raise ConfigError unless ``value`` > 0."""
    if not value > 0:
        raise ConfigError(f"loss parameter '{name}': expected a value > 0, found {value!r}")


def require_non_negative(name: str, value: float) -> None:
    """Raise ConfigError unless ``value`` >= 0."""
    if not value >= 0:
        raise ConfigError(f"loss parameter '{name}': expected a value >= 0, found {value!r}")


def require_unit_interval(name: str, value: float) -> None:
    """Raise ConfigError unless 0 <= ``value`` <= 1."""
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"loss parameter '{name}': expected a value in [0, 1], found {value!r}")


def require_level_layout(
    level_shapes: Sequence[tuple[int, int]], anchors_per_loc: int, num_anchors: int, name: str
) -> None:
    """Raise InputError unless the per-level (H, W) × anchors_per_loc add up to the anchor count of ``name``."""
    require_positive("anchors_per_loc", anchors_per_loc)
    expected = sum(int(h) * int(w) for h, w in level_shapes) * anchors_per_loc
    if expected != num_anchors:
        raise InputError(
            f"loss input '{name}': level_shapes {list(level_shapes)} × {anchors_per_loc} anchors per location give "
            f"{expected} anchors, found {num_anchors}"
        )


def fp32(tensor: torch.Tensor) -> torch.Tensor:
    """Losses are computed in float32 (float64 kept) whatever autocast produced: bf16 sums and logs lose digits."""
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()
