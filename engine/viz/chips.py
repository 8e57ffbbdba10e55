"""Preview of a chip dataset: the first picture a user sees after chipping (``make demo``).

A grid of randomly chosen chips of one split, each shown as (false-)colour imagery with its class mask blended in
the ISPRS palette and its detection boxes, so a user checks at a glance that labels sit on the right objects.
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
    MASK_ALPHA,
    band_label,
    class_legend,
    det_colours,
    display_bands,
    draw_boxes,
    palette_of,
    save_figure,
    show_chip,
    to_display,
)

PANEL_INCHES = 2.9


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, cols) of a near-square grid holding ``count`` panels, wider than tall when it cannot be square."""
    cols = math.ceil(math.sqrt(count))
    rows = cols - 1 if cols * (cols - 1) >= count else cols
    return max(rows, 1), max(cols, 1)


def format_gsd(gsd: Any) -> str:
    """0.09 → '9 cm', 0.3 → '30 cm', 2.5 → '2.5 m'; '?' when unknown."""
    try:
        metres = float(gsd)
    except (TypeError, ValueError):
        return "? GSD"
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
    window = chip.get("window") or ["?"] * 4
    x, y, w, h = (list(window) + ["?"] * 4)[:4]
    boxes = f"{n_boxes} box" + ("" if n_boxes == 1 else "es")
    return f"{chip.get('tile', '?')}  #{index}\nx {x}, y {y}, {w}×{h} px · {boxes}"


def preview_chips(
    chip_root: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    split: str = "train",
    count: int = 12,
    seed: int = 0,
) -> Path:
    """Write a PNG grid of ``count`` random chips of ``split`` (masks blended, boxes drawn); returns its path."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"preview_chips: 'count' must be a positive integer, found {count!r}")
    dataset = open_chip_dataset(chip_root)
    if split not in dataset.splits or dataset.splits[split] < 1:
        raise InputError(
            f"{Path(chip_root) / 'manifest.json'}: expected chips in split {split!r}, "
            f"found splits {dict(dataset.splits)}"
        )
    manifest = dataset.manifest
    total = dataset.splits[split]
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(total, size=min(count, total), replace=False)).tolist()
    rgb = to_display([np.asarray(dataset.images(split)[i]) for i in picks], manifest)
    masks = dataset.masks(split)
    boxes = dataset.boxes(split)
    chips = dataset.chips(split)
    palette, colours = palette_of(manifest), det_colours(manifest)

    rows, cols = grid_shape(len(picks))
    top, bottom = 0.95, 0.75  # inches for the heading and the legend
    fig = Figure(figsize=(cols * PANEL_INCHES + 0.3, rows * (PANEL_INCHES + 0.25) + top + bottom))
    fig.subplots_adjust(
        left=0.15 / fig.get_figwidth(),
        right=1 - 0.15 / fig.get_figwidth(),
        top=1 - top / fig.get_figheight(),
        bottom=bottom / fig.get_figheight(),
        wspace=0.04,
        hspace=0.28,
    )
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, index, image in zip(axes, picks, rgb):
        chip_boxes, chip_labels = boxes[index]
        show_chip(ax, image, np.asarray(masks[index]), palette, dataset.ignore_index, "")
        drawn = draw_boxes(ax, chip_boxes, chip_labels, dataset.det_classes, colours)
        ax.set_title(_chip_title(chips[index], index, drawn), fontsize=7.5, pad=3)
    for ax in axes[len(picks) :]:
        ax.set_axis_off()
    n_boxes = sum(len(b[1]) for b in boxes)
    fig.suptitle(
        f"{dataset_heading(manifest)}\n"
        f"split '{split}': {len(picks)} of {total} chips shown (seed {seed}) · {n_boxes} boxes in the split · "
        f"class colours blended at {MASK_ALPHA:.0%}",
        fontsize=10.5,
        y=1 - 0.12 / fig.get_figheight(),
        va="top",
    )
    class_legend(fig, manifest)
    return save_figure(fig, out_png)
