"""Drawing pieces shared by the pictures: band choice, display scaling, class-mask overlay, boxes, legend, saving.

Everything draws on a plain ``matplotlib.figure.Figure`` (Agg canvas, no pyplot), so the pictures can be made from
worker threads, headless machines and QGIS without touching a global GUI backend.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from engine.core.atomic import atomic_path
from engine.core.classes import DET_CLASSES, IGNORE_INDEX, PALETTE, SEG_CLASSES, recorded
from engine.core.errors import InputError

MASK_ALPHA = 0.45
"""Opacity of the class colours laid over the image: the scene stays readable under the labels."""

STRETCH = (1.0, 99.0)
"""Percentile stretch for display only, one pair of limits for all three bands so colour balance is kept."""

_BAND_ALIASES = {"r": "red", "g": "green", "b": "blue", "ir": "nir", "nearinfrared": "nir", "near_infrared": "nir"}
_FALLBACK_COLORS = ((228, 26, 28), (55, 126, 184), (77, 175, 74), (152, 78, 163), (255, 127, 0), (166, 86, 40))


def display_bands(bands: Sequence[str]) -> tuple[list[int], str]:
    """Which bands to show as red, green, blue, and a short description for the figure title.

    R-G-B present: true colour. NIR, red and green present (Vaihingen IR-R-G): the classic colour-infrared false
    colour, NIR→red, red→green, green→blue. Anything else: the first three bands in order (one band: grey).
    """
    names = [_BAND_ALIASES.get(str(b).strip().lower(), str(b).strip().lower()) for b in bands]
    if not names:
        raise InputError("chip manifest 'bands': expected at least one band name, found an empty list")
    for wanted, text in (
        (("red", "green", "blue"), "true colour"),
        (("nir", "red", "green"), "false colour: NIR, red, green shown as R, G, B"),
    ):
        if all(w in names for w in wanted):
            return [names.index(w) for w in wanted], text
    picked = list(range(min(3, len(names))))
    picked += [picked[-1]] * (3 - len(picked))
    return picked, "bands " + ", ".join(str(bands[i]) for i in dict.fromkeys(picked)) + " shown as R, G, B"


def band_label(bands: Sequence[str]) -> str:
    """``NIR-R-G`` style short name of a band list."""
    short = {"nir": "NIR", "red": "R", "green": "G", "blue": "B"}
    return "-".join(short.get(_BAND_ALIASES.get(b.lower(), b.lower()), b) for b in bands)


def to_display(
    images: Sequence[np.ndarray], manifest: Mapping[str, Any], stretch: tuple[float, float] | None = STRETCH
) -> list[np.ndarray]:
    """(H, W, C) raw chips → (H, W, 3) float RGB in [0, 1]: raw / value_scaling.max, then a linear stretch.

    The stretch limits are percentiles over all given images and all shown bands together: dark (e.g. 12-bit in
    uint16) imagery becomes visible, chips in one picture stay comparable, and hues are not shifted (a per-band
    stretch turns grey roofs green). ``stretch=None`` shows the scaled values as they are.
    """
    picked, _ = display_bands(manifest["bands"])
    scale = float(manifest.get("value_scaling", {}).get("max") or 0) or _dtype_max(images)
    rgb = []
    for image in images:
        array = np.asarray(image)
        if array.ndim != 3 or array.shape[-1] != len(manifest["bands"]):
            raise InputError(
                f"image to display: expected (H, W, {len(manifest['bands'])}) for bands {list(manifest['bands'])}, "
                f"found shape {array.shape}"
            )
        rgb.append(array[..., picked].astype(np.float32) / scale)
    if stretch is not None and rgb:
        low, high = np.percentile(np.concatenate([r.reshape(-1) for r in rgb]), stretch)
        if high - low > 1e-6:
            rgb = [(r - low) / (high - low) for r in rgb]
    return [np.clip(r, 0.0, 1.0) for r in rgb]


def _dtype_max(images: Sequence[np.ndarray]) -> float:
    dtype = np.asarray(images[0]).dtype if len(images) else np.dtype(np.uint8)
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


def seg_colors_of(manifest: Mapping[str, Any]) -> np.ndarray:
    """(n_seg_classes, 3) float colours in [0, 1]: the manifest's ``seg_colors``, else the ISPRS ones."""
    recorded_colors = recorded(manifest, "seg_colors")
    colors = np.asarray(recorded_colors or PALETTE, dtype=np.float32) / 255.0
    n = len(manifest.get("seg_classes") or SEG_CLASSES)
    if colors.ndim != 2 or colors.shape[1] != 3 or colors.shape[0] < n:
        raise InputError(f"chip manifest 'seg_colors': expected {n} RGB triples, found {recorded_colors!r}")
    return colors[:n]


def det_colors_of(manifest: Mapping[str, Any]) -> np.ndarray:
    """(n_det_classes, 3) colours of detection classes in [0, 1]: the manifest's ``det_colors``, else the colour of
    the segmentation class of that name."""
    own = recorded(manifest, "det_colors")
    if own:
        return np.asarray(own, dtype=np.float32).reshape(-1, 3) / 255.0
    seg = list(manifest.get("seg_classes") or SEG_CLASSES)
    seg_colors = seg_colors_of(manifest)
    colors = []
    for i, name in enumerate(manifest.get("det_classes") or DET_CLASSES):
        colors.append(seg_colors[seg.index(name)] if name in seg else np.asarray(_FALLBACK_COLORS[i % 6]) / 255.0)
    return np.asarray(colors, dtype=np.float32).reshape(-1, 3)


def mask_rgba(
    mask: np.ndarray, colors: np.ndarray, ignore_index: int = IGNORE_INDEX, alpha: float = MASK_ALPHA
) -> np.ndarray:
    """(H, W) class ids → (H, W, 4) RGBA overlay; ignore pixels fully transparent."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"class mask to display: expected (H, W) class ids, found shape {mask.shape}")
    ignore = mask == ignore_index
    valid = mask[~ignore]
    if valid.size and (valid.min() < 0 or valid.max() >= len(colors)):
        raise InputError(
            f"class mask to display: expected ids 0..{len(colors) - 1} or {ignore_index} (ignore), "
            f"found {int(valid.min())}..{int(valid.max())}"
        )
    rgba = np.zeros((*mask.shape, 4), np.float32)
    ids = np.where(ignore, 0, mask).astype(np.int64)
    rgba[..., :3] = colors[ids]
    rgba[..., 3] = np.where(ignore, 0.0, alpha)
    return rgba


def boxes_text(count: int) -> str:
    """'1 box', '3 boxes'."""
    return f"{count} box" + ("" if count == 1 else "es")


def _luminance(rgb: np.ndarray) -> float:
    return float(np.dot(rgb, [0.299, 0.587, 0.114]))


def _text_colour(rgb: np.ndarray) -> str:
    return "black" if _luminance(rgb) > 0.55 else "white"


def _halo(rgb: np.ndarray, width: float) -> list[Any]:
    """Outline that makes a line of colour ``rgb`` stand out: white around dark colours (ISPRS blue), else black."""
    return [patheffects.withStroke(linewidth=width, foreground="white" if _luminance(rgb) < 0.3 else "black")]


def draw_boxes(
    ax: Axes,
    boxes: np.ndarray | None,
    labels: np.ndarray | None,
    class_names: Sequence[str],
    colors: np.ndarray,
    scores: np.ndarray | None = None,
    fontsize: float = 6.5,
) -> int:
    """Draw xyxy pixel boxes (x1/y1 exclusive) with a dark halo and a class (+ score) tag; returns how many.

    Labels of -1 (collate padding) are skipped.
    """
    if boxes is None or labels is None:
        return 0
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if labels.shape[0] != boxes.shape[0]:
        raise InputError(f"boxes to display: {boxes.shape[0]} boxes but {labels.shape[0]} labels")
    top_margin = 0.05 * abs(ax.get_ylim()[0] - ax.get_ylim()[1])  # a tag needs about this much room above a box
    drawn = 0
    for k, ((x0, y0, x1, y1), label) in enumerate(zip(boxes, labels)):
        if label < 0:
            continue
        if label >= len(class_names):
            raise InputError(f"boxes to display: label {label} outside the {len(class_names)} detection classes")
        colour = colors[label]
        rect = Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.3)
        rect.set_path_effects(_halo(colour, 2.6))
        ax.add_patch(rect)
        tag = class_names[label] if scores is None else f"{class_names[label]} {float(scores[k]):.2f}"
        inside = y0 < top_margin  # no room above the box: put the tag just inside its top edge
        ax.text(
            x0 - 0.5,
            y0 - 0.5,
            tag,
            fontsize=fontsize,
            color=_text_colour(colour),
            va="top" if inside else "bottom",
            ha="left",
            clip_on=True,
            bbox={"facecolor": colour, "edgecolor": "none", "pad": 0.8, "alpha": 0.85},
        )
        drawn += 1
    return drawn


def show_chip(
    ax: Axes,
    rgb: np.ndarray,
    mask: np.ndarray | None,
    colors: np.ndarray,
    ignore_index: int,
    title: str = "",
    alpha: float = MASK_ALPHA,
) -> None:
    """Image, optional class overlay, no ticks, small title."""
    ax.imshow(rgb, interpolation="nearest")
    if mask is not None:
        ax.imshow(mask_rgba(mask, colors, ignore_index, alpha), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("#888888")
        spine.set_linewidth(0.6)
    if title:
        ax.set_title(title, fontsize=7.5, pad=3)


def class_legend(
    fig: Figure, manifest: Mapping[str, Any], extra: Sequence[Any] = (), bottom_inches: float = 0.08
) -> None:
    """Two one-row legends under the panels: mask colours (+ 'no label'), then box colours (+ ``extra`` handles)."""
    seg_colors = seg_colors_of(manifest)
    classes: list[Any] = [
        Patch(facecolor=colour, edgecolor="#555555", linewidth=0.5, label=name.replace("_", " "))
        for name, colour in zip(manifest.get("seg_classes") or SEG_CLASSES, seg_colors)
    ]
    classes.append(Patch(facecolor="none", edgecolor="#555555", linewidth=0.5, hatch="////", label="no label"))
    boxes: list[Any] = []
    for name, colour in zip(manifest.get("det_classes") or DET_CLASSES, det_colors_of(manifest)):
        line = Line2D([], [], color=colour, linewidth=2.0, label=f"{name} box")
        line.set_path_effects(_halo(colour, 3.5))
        boxes.append(line)
    boxes.extend(extra)
    common = {"loc": "lower center", "fontsize": 8.5, "frameon": False, "handlelength": 1.8, "columnspacing": 1.3}
    height = fig.get_figheight()
    for row, handles in enumerate((boxes, classes)):
        legend = fig.legend(
            handles=handles, ncol=len(handles), bbox_to_anchor=(0.5, (bottom_inches + 0.27 * row) / height), **common
        )
        if row == 0:
            fig.add_artist(legend)


def save_figure(fig: Figure, out_png: str | os.PathLike[str], dpi: int = 110) -> Path:
    """Write ``fig`` as PNG under a temporary name, then rename (no half-written picture on a crash)."""
    out = Path(out_png)
    if out.exists() and out.is_dir():
        raise InputError(f"output picture {str(out)!r}: expected a file path, found a folder")
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, facecolor="white")
    return out
