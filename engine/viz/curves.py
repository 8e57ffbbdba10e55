"""Training curves of one run: losses per logged step, validation metrics per epoch, both with visible points.

A run of one or two epochs has one or two validation points: drawn as lines alone they vanish, so every series
gets markers when it has few points.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

MARKERS_BELOW = 60
"""Series with fewer points than this are drawn with markers."""

VALIDATION_KEYS: tuple[str, ...] = ("det_map", "det_ap50", "seg_miou", "seg_oa")


def _marker(count: int) -> str | None:
    return "o" if count < MARKERS_BELOW else None


def loss_points(history: Sequence[dict[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """name → (steps, values): the per-step rows a run logged (``steps`` in each epoch row), else epoch means."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for row in history:
        points = row.get("steps") or [{"step": row["step"], **{k[5:]: v for k, v in row.items() if k[:5] == "loss_"}}]
        for point in points:
            for name, value in point.items():
                if name != "step":
                    xs, ys = series.setdefault(name, ([], []))
                    xs.append(int(point["step"]))
                    ys.append(float(value))
    return series


def plot_curves(history: Sequence[dict[str, Any]], path: Path) -> None:
    """Write ``path`` (PNG): losses against the optimizer step, validation metrics against the epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from engine.core.atomic import atomic_path

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    for name, (steps, values) in sorted(loss_points(history).items()):
        ax_loss.plot(steps, values, marker=_marker(len(steps)), markersize=3, label=name)
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_title("training losses (mean since the previous point)")
    ax_loss.legend(fontsize=7)
    epochs = [row["epoch"] for row in history]
    for key in VALIDATION_KEYS:
        if any(key in row for row in history):
            values = [row.get(key, float("nan")) for row in history]
            ax_val.plot(epochs, values, marker=_marker(len(epochs)), label=key)
    ax_val.set_xlabel("epoch")
    ax_val.set_xticks(epochs if len(epochs) <= 20 else ax_val.get_xticks())
    ax_val.set_title("validation (EMA weights)")
    ax_val.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
