"""Sample predictions next to ground truth: one row per chip, columns image | ground truth | prediction.

Generic numpy inputs (no model, no dataset object), so evaluation, training curves and notebooks can all use it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from engine.core.classes import IGNORE_INDEX
from engine.core.errors import ConfigError, InputError
from engine.core.modelio import DEFAULT_SCORE_THRESH
from engine.viz.chips import dataset_heading
from engine.viz.render import (
    boxes_text,
    class_legend,
    det_colors_of,
    draw_boxes,
    save_figure,
    seg_colors_of,
    show_chip,
    to_display,
)

PANEL_INCHES = 2.6
COLUMNS = ("image", "ground truth", "prediction")


def _per_sample(name: str, value: Sequence[Any] | None, count: int) -> list[Any]:
    """``value`` as a list of ``count`` entries (``None`` → all None); InputError on a length mismatch."""
    if value is None:
        return [None] * count
    if len(value) != count:
        raise InputError(f"plot_predictions: '{name}' has {len(value)} entries, expected one per image ({count})")
    return list(value)


def _manifests(manifest: Mapping[str, Any] | Sequence[Mapping[str, Any]], count: int) -> list[Mapping[str, Any]]:
    if isinstance(manifest, Mapping):
        return [manifest] * count
    return _per_sample("manifest", manifest, count)


def _display_all(images: Sequence[np.ndarray], manifests: list[Mapping[str, Any]]) -> list[np.ndarray]:
    """Display RGB per image; the stretch is shared by the images of one dataset (same manifest object)."""
    out: list[np.ndarray | None] = [None] * len(images)
    groups: dict[int, list[int]] = {}
    for i, manifest in enumerate(manifests):
        groups.setdefault(id(manifest), []).append(i)
    for members in groups.values():
        shown = to_display([np.asarray(images[i]) for i in members], manifests[members[0]])
        for i, rgb in zip(members, shown):
            out[i] = rgb
    return [rgb for rgb in out if rgb is not None]


def _count(labels: Any) -> int:
    return 0 if labels is None else int((np.asarray(labels).reshape(-1) >= 0).sum())


def predictions_figure(
    images: Sequence[np.ndarray],
    gt_masks: Sequence[np.ndarray | None] | None,
    pred_masks: Sequence[np.ndarray | None] | None,
    gt_boxes: Sequence[np.ndarray | None] | None,
    gt_labels: Sequence[np.ndarray | None] | None,
    pred_boxes: Sequence[np.ndarray | None] | None,
    pred_scores: Sequence[np.ndarray | None] | None,
    pred_labels: Sequence[np.ndarray | None] | None,
    manifest: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    score_min: float = DEFAULT_SCORE_THRESH,
    titles: Sequence[str] | None = None,
    heading: str | None = None,
) -> Figure:
    """One row per image: image | GT mask + boxes | predicted mask + boxes (score ≥ ``score_min``).

    ``images`` are (H, W, C) raw chips as stored (scaled for display by the manifest's ``value_scaling``); masks
    (H, W) class ids with ``ignore_index`` transparent; boxes (K, 4) xyxy pixels, labels (K,) detection-class ids
    (-1 = padding, skipped). Any per-sample argument may be None (task not available) as a whole or per entry.
    ``manifest`` is the chip manifest of the samples, or one per sample when they come from several datasets;
    ``titles`` label the rows, ``heading`` tops the figure. :func:`plot_predictions` writes it as a PNG.
    """
    count = len(images)
    if count == 0:
        raise InputError("plot_predictions: 'images' is empty, expected at least one chip")
    if not 0.0 <= score_min <= 1.0:
        raise ConfigError(f"plot_predictions: 'score_min' must be in [0, 1], found {score_min}")
    manifests = _manifests(manifest, count)
    gt_m, pr_m = _per_sample("gt_masks", gt_masks, count), _per_sample("pred_masks", pred_masks, count)
    gt_b, gt_l = _per_sample("gt_boxes", gt_boxes, count), _per_sample("gt_labels", gt_labels, count)
    pr_b, pr_s = _per_sample("pred_boxes", pred_boxes, count), _per_sample("pred_scores", pred_scores, count)
    pr_l = _per_sample("pred_labels", pred_labels, count)
    row_titles = _per_sample("titles", titles, count) if titles is not None else [f"#{i}" for i in range(count)]
    rgb = _display_all(images, manifests)

    lines = [heading] if heading else []
    lines += list(dict.fromkeys(dataset_heading(m) for m in manifests))
    top, bottom, left = 0.45 + 0.2 * len(lines), 0.75, 0.35
    fig = Figure(figsize=(3 * PANEL_INCHES + left + 0.15, count * (PANEL_INCHES + 0.3) + top + bottom))
    width, height = fig.get_figwidth(), fig.get_figheight()
    fig.subplots_adjust(
        left=left / width, right=1 - 0.15 / width, top=1 - top / height, bottom=bottom / height, wspace=0.04, hspace=0.2
    )
    axes = fig.subplots(count, 3, squeeze=False)
    for i in range(count):
        meta = manifests[i]
        seg_colors, det_colors = seg_colors_of(meta), det_colors_of(meta)
        ignore = int(meta.get("ignore_index", IGNORE_INDEX))
        names = list(meta["det_classes"])
        scores = None if pr_s[i] is None else np.asarray(pr_s[i], dtype=np.float64).reshape(-1)
        boxes, labels = pr_b[i], pr_l[i]
        shown = total = 0
        if boxes is not None and labels is not None:
            total = len(np.asarray(labels).reshape(-1))
            keep = np.ones(total, bool) if scores is None else scores >= score_min
            boxes, labels = np.asarray(boxes).reshape(-1, 4)[keep], np.asarray(labels).reshape(-1)[keep]
            scores = None if scores is None else scores[keep]
        show_chip(axes[i, 0], rgb[i], None, seg_colors, ignore)
        show_chip(axes[i, 1], rgb[i], gt_m[i], seg_colors, ignore)
        draw_boxes(axes[i, 1], gt_b[i], gt_l[i], names, det_colors)
        show_chip(axes[i, 2], rgb[i], pr_m[i], seg_colors, ignore)
        shown = draw_boxes(axes[i, 2], boxes, labels, names, det_colors, scores)
        axes[i, 0].set_ylabel(str(row_titles[i]), fontsize=8)
        gt_text = "no mask" if gt_m[i] is None else "mask"
        gt_text += f" + {boxes_text(_count(gt_l[i]))}" if gt_b[i] is not None else ""
        pred_text = "no mask" if pr_m[i] is None else "mask"
        if pr_b[i] is not None:
            pred_text += f" + {boxes_text(shown)} ≥ {score_min:.2f} (of {total})"
        for col, text in enumerate(("", gt_text, pred_text)):
            label = COLUMNS[col] if i == 0 else ""
            axes[i, col].set_title(f"{label}\n{text}" if label else text, fontsize=7.5, pad=3)
    fig.suptitle("\n".join(lines), fontsize=10, y=1 - 0.1 / height, va="top")
    class_legend(fig, manifests[0])
    return fig


def plot_predictions(out_png: str | os.PathLike[str], *samples: Any, **options: Any) -> Path:
    """Write :func:`predictions_figure` of ``samples`` and ``options`` as a PNG at ``out_png``, atomically."""
    return save_figure(predictions_figure(*samples, **options), out_png)
