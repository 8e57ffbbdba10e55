"""Preview of a chip dataset: the first picture a user sees after chipping (``make demo``).

Randomly chosen chips of one split, each as a pair of panels — the (false-)colour imagery with its detection boxes,
and the same imagery with its class mask blended in the ISPRS colours — so a user checks at a glance that the
labels sit on the right objects and what the imagery really looks like under them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from engine.core.errors import ConfigError, InputError
from engine.data.chipstore import open_chip_dataset
from engine.viz.render import (
    band_label,
    boxes_text,
    class_legend,
    det_colors_of,
    display_bands,
    draw_boxes,
    save_figure,
    seg_colors_of,
    show_chip,
    to_display,
)

PANEL_INCHES = 2.45
PAIR_ALPHA = 0.55
"""Mask opacity in the right panel of a pair: the left panel already shows the bare imagery."""


def pairs_per_row(count: int) -> int:
    """Chips per grid row when each chip takes two panels side by side (figure about 4:3 landscape)."""
    return max(1, min(count, round(math.sqrt(0.65 * count))))


def format_gsd(gsd: Any) -> str:
    """0.09 → '9 cm', 0.3 → '30 cm', 2.5 → '2.5 m'; '?' when unknown."""
    try:
        metres = float(gsd)
    except (TypeError, ValueError):
        return "?"
    return f"{metres * 100:.3g} cm" if metres < 1 else f"{metres:.3g} m"


def dataset_heading(manifest: Mapping[str, Any]) -> str:
    """'Vaihingen · 9 cm GSD · NIR-R-G (false colour …) · 320² px chips' for figure titles."""
    _, colour_text = display_bands(manifest["bands"])
    scaling = manifest.get("value_scaling", {})
    depth = f", {scaling.get('dtype')} / {scaling.get('max'):g}" if scaling.get("dtype") == "uint16" else ""
    return (
        f"{str(manifest.get('dataset', 'chips')).capitalize()} · {format_gsd(manifest.get('gsd'))} GSD · "
        f"{band_label(manifest['bands'])} ({colour_text}{depth}) · {manifest.get('chip_size', '?')}² px chips"
    )


def _chip_title(chip: Mapping[str, Any], index: int, n_boxes: int) -> str:
    x, y, w, h = (list(chip.get("window") or []) + ["?"] * 4)[:4]
    return f"{chip.get('tile', '?')}  #{index} · {boxes_text(n_boxes)}\nwindow x {x}, y {y}, {w}×{h} px"


def pick_chips(total: int, count: int, seed: int) -> list[int]:
    """``min(count, total)`` distinct random chip rows, sorted (the same for the same seed)."""
    return np.sort(np.random.default_rng(seed).choice(total, size=min(count, total), replace=False)).tolist()


def preview_figure(chip_root: str | os.PathLike[str], split: str = "train", count: int = 12, seed: int = 0) -> Figure:
    """The figure of :func:`preview_chips`, not saved (tests and notebooks inspect or embed it)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"preview_chips: 'count' must be a positive integer, found {count!r}")
    dataset = open_chip_dataset(chip_root)
    if dataset.splits.get(split, 0) < 1:
        raise InputError(
            f"{Path(chip_root) / 'manifest.json'}: expected chips in split {split!r}, found splits {dataset.splits}"
        )
    manifest = dataset.manifest
    total = dataset.splits[split]
    picks = pick_chips(total, count, seed)
    rgb = to_display([np.asarray(dataset.images(split)[i]) for i in picks], manifest)
    masks, boxes, chips = dataset.masks(split), dataset.boxes(split), dataset.chips(split)
    seg_colors, det_colors = seg_colors_of(manifest), det_colors_of(manifest)

    per_row = pairs_per_row(len(picks))
    rows = math.ceil(len(picks) / per_row)
    top, bottom, side = 1.0, 0.75, 0.15  # inches: heading, legend, margins
    fig = Figure(figsize=(per_row * (2 * PANEL_INCHES + 0.25) + 2 * side, rows * (PANEL_INCHES + 0.42) + top + bottom))
    width, height = fig.get_figwidth(), fig.get_figheight()
    outer = fig.add_gridspec(
        rows,
        per_row,
        left=side / width,
        right=1 - side / width,
        top=1 - top / height,
        bottom=bottom / height,
        wspace=0.07,
        hspace=0.32,
    )
    for slot, (index, image) in enumerate(zip(picks, rgb)):
        inner = outer[slot // per_row, slot % per_row].subgridspec(1, 2, wspace=0.03)
        left, right = fig.add_subplot(inner[0]), fig.add_subplot(inner[1])
        show_chip(left, image, None, seg_colors, dataset.ignore_index)
        drawn = draw_boxes(left, *boxes[index], dataset.det_classes, det_colors)
        show_chip(right, image, np.asarray(masks[index]), seg_colors, dataset.ignore_index, alpha=PAIR_ALPHA)
        a, b = left.get_position(), right.get_position()
        fig.text(
            (a.x0 + b.x1) / 2,
            a.y1 + 0.04 / height,
            _chip_title(chips[index], index, drawn),
            ha="center",
            va="bottom",
            fontsize=7.5,
        )
    n_boxes = sum(len(labels) for _, labels in boxes)
    fig.suptitle(
        f"{dataset_heading(manifest)}\n"
        f"split '{split}': {len(picks)} of {total} chips shown (seed {seed}), {n_boxes} boxes in the split · "
        "each chip: imagery + detection boxes | class mask",
        fontsize=10.5,
        y=1 - 0.12 / height,
        va="top",
    )
    class_legend(fig, manifest)
    return fig


def preview_chips(
    chip_root: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    split: str = "train",
    count: int = 12,
    seed: int = 0,
) -> Path:
    """Write a PNG of ``count`` random chips of ``split`` and return its path (written atomically).

    Each chip is a pair of panels: the imagery (false colour for NIR-R-G, true colour when R, G, B exist) with its
    detection boxes, and the imagery with its class mask blended in the ISPRS colours (unlabelled pixels clear),
    titled by source tile and window; the heading names dataset, GSD and bands, a legend explains the colours.
    """
    return save_figure(preview_figure(chip_root, split, count, seed), out_png)
