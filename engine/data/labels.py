"""ISPRS label colours ↔ class indices, and the boundary erosion the ``noBoundary`` files apply.

Decoding goes through a 2**24-entry lookup table indexed by the packed RGB value, so a 6000² Potsdam label decodes
in a fraction of a second. Off-palette colours (real Potsdam labels hold a few) are mapped to the nearest palette
colour and counted; the counts are returned and logged with the file name, never silently zeroed.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

import numpy as np

from engine.core.classes import BOUNDARY_COLOR, IGNORE_INDEX, PALETTE

log = logging.getLogger(__name__)

_UNKNOWN = 254
"""Lookup-table marker for a colour that is not in the palette (never a class index or IGNORE_INDEX)."""

_PALETTE = np.asarray(PALETTE, dtype=np.int64)
_CHUNK = 1 << 18


@dataclass
class DecodedLabel:
    """A decoded label: class indices plus what had to be guessed."""

    mask: np.ndarray
    """(H, W) uint8 class index, IGNORE_INDEX where undefined."""
    off_palette_pixels: int = 0
    """Pixels whose colour was not in the palette (mapped to the nearest palette colour)."""
    off_palette_colors: dict[tuple[int, int, int], int] = field(default_factory=dict)
    """Each off-palette RGB colour found and its pixel count."""


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """Pack an (..., 3) uint8 RGB array into uint32 codes r | g << 8 | b << 16 (the lookup-table index)."""
    rgb = np.asarray(rgb)
    return rgb[..., 0].astype(np.uint32) | (rgb[..., 1].astype(np.uint32) << 8) | (rgb[..., 2].astype(np.uint32) << 16)


def _unpack(code: int) -> tuple[int, int, int]:
    return code & 0xFF, (code >> 8) & 0xFF, (code >> 16) & 0xFF


@functools.lru_cache(maxsize=2)
def _lookup_table(boundary_is_ignore: bool) -> np.ndarray:
    table = np.full(1 << 24, _UNKNOWN, dtype=np.uint8)
    for index, color in enumerate(PALETTE):
        table[int(pack_rgb(np.asarray(color, np.uint8)))] = index
    if boundary_is_ignore:
        table[int(pack_rgb(np.asarray(BOUNDARY_COLOR, np.uint8)))] = IGNORE_INDEX
    table.flags.writeable = False
    return table


def nearest_palette_index(colors: np.ndarray) -> np.ndarray:
    """Index of the nearest palette colour (Euclidean RGB; ties go to the lower class index) of each (N, 3) colour."""
    diff = np.asarray(colors, np.int64)[:, None, :] - _PALETTE[None, :, :]
    return np.argmin((diff * diff).sum(axis=2), axis=1).astype(np.uint8)


class LabelDecoder:
    """Decodes a label block of rows at a time into one preallocated mask, counting off-palette colours.

    Block-wise decoding lets a reader decode each block right after reading it (in cache, no full-size packed
    buffer). Black is IGNORE_INDEX when ``boundary_is_ignore`` (eroded ``noBoundary`` labels); in a full label it
    is off-palette like any other foreign colour. ``source`` names the file in the warning of :meth:`finish`.
    """

    def __init__(self, height: int, width: int, *, boundary_is_ignore: bool, source: str = "label") -> None:
        self.mask = np.empty((height, width), np.uint8)
        self.table = _lookup_table(boundary_is_ignore)
        self.source = source
        self.found: dict[tuple[int, int, int], int] = {}

    def decode(self, row: int, codes: np.ndarray) -> None:
        """Decode packed RGB codes (see :func:`pack_rgb`) of the rows starting at ``row``."""
        codes = np.ascontiguousarray(codes, np.uint32)
        out = self.mask[row : row + len(codes)]
        flat_codes, flat_out = codes.reshape(-1), out.reshape(-1)
        for i in range(0, flat_codes.size, _CHUNK):  # chunks keep numpy's index temporaries in cache
            np.take(self.table, flat_codes[i : i + _CHUNK], out=flat_out[i : i + _CHUNK])
        unknown = out == _UNKNOWN
        if not unknown.any():
            return
        foreign, counts = np.unique(codes[unknown], return_counts=True)
        colors = np.array([_unpack(int(c)) for c in foreign], dtype=np.int64).reshape(-1, 3)
        out[unknown] = nearest_palette_index(colors)[np.searchsorted(foreign, codes[unknown])]
        for color, n in zip(colors, counts):
            key = (int(color[0]), int(color[1]), int(color[2]))
            self.found[key] = self.found.get(key, 0) + int(n)

    def finish(self) -> DecodedLabel:
        """The decoded mask; logs a warning naming the file if any colour was off-palette."""
        total = sum(self.found.values())
        if total:
            worst = sorted(self.found.items(), key=lambda item: -item[1])[:5]
            log.warning(
                "%s: %d off-palette label pixels (%.4f%%, %d colours, most frequent %s) mapped to the nearest "
                "palette colour",
                self.source,
                total,
                100.0 * total / self.mask.size,
                len(self.found),
                ", ".join(f"{c}×{n}" for c, n in worst),
            )
        return DecodedLabel(self.mask, total, dict(self.found))


def decode_codes(codes: np.ndarray, *, boundary_is_ignore: bool, source: str = "label") -> DecodedLabel:
    """Decode an (H, W) array of packed RGB codes (see :func:`pack_rgb`) to class indices (see LabelDecoder)."""
    decoder = LabelDecoder(*np.shape(codes), boundary_is_ignore=boundary_is_ignore, source=source)
    decoder.decode(0, codes)
    return decoder.finish()


def decode_rgb_label(rgb: np.ndarray, *, boundary_is_ignore: bool, source: str = "label") -> DecodedLabel:
    """Decode an (H, W, 3) RGB palette label to an (H, W) uint8 class-index mask (see :func:`decode_codes`)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"{source}: expected an (H, W, 3) RGB label, found shape {rgb.shape}")
    return decode_codes(pack_rgb(rgb), boundary_is_ignore=boundary_is_ignore, source=source)


def encode_rgb_label(mask: np.ndarray) -> np.ndarray:
    """(H, W) class indices → (H, W, 3) uint8 ISPRS colours; IGNORE_INDEX (and anything unknown) becomes black."""
    colors = np.zeros((256, 3), np.uint8)
    colors[: len(PALETTE)] = PALETTE
    colors[IGNORE_INDEX] = BOUNDARY_COLOR
    return colors[np.asarray(mask, np.uint8)]


def disc(radius: int) -> np.ndarray:
    """Boolean disc footprint of the given radius (2r+1 square)."""
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (xx * xx + yy * yy) <= radius * radius


def erode_mask(mask: np.ndarray, radius: int = 3) -> np.ndarray:
    """Mark class boundaries as IGNORE_INDEX like the ISPRS ``noBoundary`` labels (disc of ``radius`` px).

    A pixel keeps its class only if every pixel within ``radius`` has the same value; tile borders are not
    boundaries (the edge is replicated). For datasets that ship no eroded labels.

    How: the disc is 4-connected, so its pixels all agree exactly when no two 4-neighbours inside it differ. The
    differing neighbour pairs (edges) are found once; a pixel is a boundary pixel when some edge lies wholly inside
    its disc, i.e. an OR of the edge maps shifted by each offset that keeps both ends in the disc. This equals a
    min/max filter over the disc with the border replicated (an edge between replicated pixels is always also one
    between the real border pixels, nearer to the centre), at a fraction of its cost.
    """
    mask = np.asarray(mask, np.uint8)
    if radius <= 0:
        return mask.copy()
    footprint = disc(radius)
    bad = np.zeros(mask.shape, bool)
    height, width = mask.shape
    for edges, (sy, sx) in ((mask[:, 1:] != mask[:, :-1], (0, 1)), (mask[1:, :] != mask[:-1, :], (1, 0))):
        if not edges.any():
            continue
        for dy, dx in zip(*np.nonzero(footprint)):
            oy, ox = dy - radius, dx - radius  # edge (p, p + s) inside the disc around c = p - (oy, ox)
            y2, x2 = dy + sy, dx + sx
            if y2 >= footprint.shape[0] or x2 >= footprint.shape[1] or not footprint[y2, x2]:
                continue
            eh, ew = edges.shape
            # c = p - o for every edge start p; keep the c inside the image
            c_y0, c_y1 = max(0, -oy), min(height, eh - oy)
            c_x0, c_x1 = max(0, -ox), min(width, ew - ox)
            if c_y0 < c_y1 and c_x0 < c_x1:
                bad[c_y0:c_y1, c_x0:c_x1] |= edges[c_y0 + oy : c_y1 + oy, c_x0 + ox : c_x1 + ox]
    return np.where(bad, np.uint8(IGNORE_INDEX), mask)
