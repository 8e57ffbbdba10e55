"""Class tables: the ISPRS 2D semantic labelling classes, colours and detection subset (REFERENCE §2-§3), and
the user's own classes (names, colours, label values per head) that flow from the chip manifest to the outputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SEG_CLASSES: tuple[str, ...] = (
    "impervious",
    "building",
    "low_vegetation",
    "tree",
    "car",
    "clutter",
)
"""Segmentation class names; the index in this tuple is the class id stored in masks."""

PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 255, 255),
    (0, 0, 255),
    (0, 255, 255),
    (0, 255, 0),
    (255, 255, 0),
    (255, 0, 0),
)
"""RGB colour of each segmentation class in ISPRS label tiles."""

BOUNDARY_COLOR: tuple[int, int, int] = (0, 0, 0)
"""Black: eroded boundary / undefined pixels in the ``noBoundary`` label files."""

IGNORE_INDEX: int = 255
"""Mask value for pixels that carry no label (eroded boundary, padding, nodata)."""

DET_CLASSES: tuple[str, ...] = ("building", "tree", "car")
"""Detection classes: blobs of these segmentation classes become boxes."""

DET_TO_SEG: tuple[int, ...] = tuple(SEG_CLASSES.index(name) for name in DET_CLASSES)
"""Segmentation class id of each detection class."""


ISPRS_DET_PALETTE: tuple[tuple[int, int, int], ...] = tuple(PALETTE[i] for i in DET_TO_SEG)
"""Colour of each detection class: the ISPRS colour of the segmentation class it comes from."""

_DISTINCT_COLOURS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (0, 128, 128),
    (170, 110, 40),
    (128, 0, 0),
)
"""Colours given to user classes that come without one (a qualitative palette; cycled beyond 12 classes)."""

BACKGROUND: str = "background"
"""Name of the class of labelled pixels outside every polygon (segmentation from vector labels)."""

BACKGROUND_COLOR: tuple[int, int, int] = (200, 200, 200)


def default_color(index: int) -> tuple[int, int, int]:
    """A distinct colour for the ``index``-th user class without a colour of its own."""
    return _DISTINCT_COLOURS[index % len(_DISTINCT_COLOURS)]


@dataclass(frozen=True)
class ClassTable:
    """The classes of one head: names, colors and where each comes from (raster value or attribute value).

    The index of a class in the table is its id in masks and detection labels. ``values[i]`` is what marks class
    ``i`` in the label source (a class raster's pixel value, a vector layer's attribute value), None when nothing
    does (the background of vector labels, or a table that only names classes).
    """

    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    values: tuple[int | str | None, ...] = ()

    def __post_init__(self) -> None:
        if not self.values:
            object.__setattr__(self, "values", (None,) * len(self.names))
        if not len(self.names) == len(self.colors) == len(self.values):
            raise ValueError(
                f"class table: {len(self.names)} names, {len(self.colors)} colours, {len(self.values)} values"
            )
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"class table: duplicate class names in {list(self.names)}")

    def __len__(self) -> int:
        return len(self.names)

    def index_of_value(self) -> dict[int | str, int]:
        """Label-source value → class index (classes without a value are left out)."""
        return {v: i for i, v in enumerate(self.values) if v is not None}

    def to_records(self) -> list[dict[str, Any]]:
        """JSON records ``{name, colour: [r, g, b], value}`` in class order (the manifest's ``class_tables``)."""
        return [{"name": n, "colour": list(c), "value": v} for n, c, v in zip(self.names, self.colors, self.values)]

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]]) -> ClassTable:
        return cls(
            tuple(str(r["name"]) for r in records),
            tuple(_rgb(r["colour"]) for r in records),
            tuple(r.get("value") for r in records),
        )


def _rgb(colour: Sequence[Any]) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in colour)
    return (r, g, b)


ISPRS_SEG = ClassTable(SEG_CLASSES, PALETTE, tuple(range(len(SEG_CLASSES))))
ISPRS_DET = ClassTable(DET_CLASSES, ISPRS_DET_PALETTE, DET_TO_SEG)


def det_colors_for(names: Sequence[str], seg: ClassTable | None = None) -> tuple[tuple[int, int, int], ...]:
    """Colours of detection classes without their own: the segmentation class of the same name, else distinct."""
    seg_color = dict(zip(seg.names, seg.colors)) if seg is not None else {}
    return tuple(seg_color.get(name, default_color(i)) for i, name in enumerate(names))


LEGACY_KEYS: dict[str, str] = {
    "seg_colors": "palette",
    "det_colors": "det_palette",
    "class_score_thresh": "det_score_thresholds",
}
"""Chip-manifest / checkpoint-metadata key -> the name files written before issue 22 used for it (still read)."""


def recorded(meta: Mapping[str, Any], key: str) -> Any:
    """``meta[key]``, else what older manifests and checkpoints called it (:data:`LEGACY_KEYS`); None: neither."""
    value = meta.get(key)
    return meta.get(LEGACY_KEYS[key]) if value is None and key in LEGACY_KEYS else value


def head_keys(task: str, names: Sequence[str], colors: Sequence[Sequence[int]]) -> dict[str, list]:
    """The keys one head's classes have in chip manifests and checkpoint metadata: ``{task}_classes`` and
    ``{task}_colors`` ([r, g, b] per class)."""
    return {f"{task}_classes": list(names), f"{task}_colors": [[int(v) for v in c] for c in colors]}


def tables_from_manifest(manifest: Mapping[str, Any]) -> tuple[ClassTable, ClassTable]:
    """(segmentation, detection) class tables of a chip manifest or checkpoint metadata.

    Reads ``seg_classes`` / ``seg_colors`` / ``det_classes`` / ``det_colors`` (or their older names, see
    :data:`LEGACY_KEYS`); older manifests without detection colours get those of the segmentation class of the same
    name (the ISPRS case).
    """
    seg_names = tuple(manifest.get("seg_classes") or ())
    recorded_seg = recorded(manifest, "seg_colors")
    seg_colors = (
        tuple(_rgb(c) for c in recorded_seg) if recorded_seg else tuple(default_color(i) for i in range(len(seg_names)))
    )
    seg = ClassTable(seg_names, seg_colors[: len(seg_names)])
    det_names = tuple(manifest.get("det_classes") or ())
    recorded_det = recorded(manifest, "det_colors")
    det_colors = tuple(_rgb(c) for c in recorded_det) if recorded_det else det_colors_for(det_names, seg)
    return seg, ClassTable(det_names, det_colors)
