"""A scene canvas in metres, rasterised at one GSD: material, height, shading and object-layer maps.

Shapes are rasterised on their bounding-box window only (vectorised numpy on pixel centres), so painting
hundreds of objects costs little more than the full-tile passes. Class pixel counts are kept up to date while
painting, so the layout can stop adding objects of a class once its target share is met.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from engine.core.classes import SEG_CLASSES
from engine.synth.materials import MATERIAL_CLASS, M


class Layer(IntEnum):
    """What placed a pixel: lets later steps avoid roads, buildings or paved areas."""

    GROUND = 0
    SOIL = 1
    ROAD = 2
    BUILDING = 3
    PAVED = 4
    CAR = 5
    TREE = 6
    CLUTTER = 7


@dataclass
class Footprint:
    """A shape rasterised on a window: ``inside`` mask and local coordinates (metres) of the window's pixels."""

    rows: slice
    cols: slice
    inside: np.ndarray
    u: np.ndarray
    v: np.ndarray

    @property
    def window(self) -> tuple[slice, slice]:
        return self.rows, self.cols


class Canvas:
    """Material / height / shade / layer maps of one tile, ``height_px`` × ``width_px`` pixels at ``gsd`` metres."""

    def __init__(self, height_px: int, width_px: int, gsd: float, ground: M = M.GRASS) -> None:
        self.h, self.w, self.gsd = height_px, width_px, gsd
        self.size_m = (width_px * gsd, height_px * gsd)
        self.mat = np.full((height_px, width_px), int(ground), dtype=np.uint8)
        self.height = np.zeros((height_px, width_px), dtype=np.float32)
        self.shade = np.ones((height_px, width_px), dtype=np.float32)
        self.layer = np.zeros((height_px, width_px), dtype=np.uint8)
        self.counts = np.zeros(len(SEG_CLASSES), dtype=np.int64)
        self.counts[MATERIAL_CLASS[int(ground)]] = height_px * width_px

    @property
    def n_pixels(self) -> int:
        return self.h * self.w

    def share(self, class_id: int) -> float:
        """Current fraction of the tile's pixels labelled ``class_id``."""
        return float(self.counts[class_id]) / self.n_pixels

    def _window(self, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
        g = self.gsd
        c0, c1 = max(math.floor(x0 / g - 0.5), 0), min(math.ceil(x1 / g - 0.5) + 1, self.w)
        r0, r1 = max(math.floor(y0 / g - 0.5), 0), min(math.ceil(y1 / g - 0.5) + 1, self.h)
        if c0 >= c1 or r0 >= r1:
            return None
        xs = ((np.arange(c0, c1, dtype=np.float32) + 0.5) * g)[None, :]
        ys = ((np.arange(r0, r1, dtype=np.float32) + 0.5) * g)[:, None]
        return slice(r0, r1), slice(c0, c1), xs, ys

    def rect(self, cx: float, cy: float, length: float, width: float, angle: float) -> Footprint | None:
        """Rotated rectangle: ``length`` along direction ``angle`` (radians, image x right / y down)."""
        c, s = math.cos(angle), math.sin(angle)
        ex = 0.5 * (abs(length * c) + abs(width * s))
        ey = 0.5 * (abs(length * s) + abs(width * c))
        win = self._window(cx - ex, cx + ex, cy - ey, cy + ey)
        if win is None:
            return None
        rows, cols, xs, ys = win
        dx, dy = xs - np.float32(cx), ys - np.float32(cy)
        u = dx * np.float32(c) + dy * np.float32(s)
        v = dy * np.float32(c) - dx * np.float32(s)
        inside = (np.abs(u) <= 0.5 * length) & (np.abs(v) <= 0.5 * width)
        return Footprint(rows, cols, inside, u, v)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0) -> Footprint | None:
        """Rotated ellipse; ``u``/``v`` are normalised so that u² + v² ≤ 1 inside."""
        r = max(rx, ry)
        win = self._window(cx - r, cx + r, cy - r, cy + r)
        if win is None:
            return None
        rows, cols, xs, ys = win
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = xs - np.float32(cx), ys - np.float32(cy)
        u = (dx * np.float32(c) + dy * np.float32(s)) / np.float32(rx)
        v = (dy * np.float32(c) - dx * np.float32(s)) / np.float32(ry)
        inside = u * u + v * v <= 1.0
        return Footprint(rows, cols, inside, u, v)

    def layer_at(self, x: float, y: float) -> int | None:
        """Layer of the pixel containing point (x, y) in metres, None outside the tile (a cheap first test)."""
        col, row = math.floor(x / self.gsd), math.floor(y / self.gsd)
        if 0 <= row < self.h and 0 <= col < self.w:
            return int(self.layer[row, col])
        return None

    def touches(self, fp: Footprint, layers: tuple[Layer, ...]) -> bool:
        """True if any pixel inside ``fp`` belongs to one of ``layers`` (rejection test for new objects)."""
        region = self.layer[fp.window][fp.inside]
        return bool(np.isin(region, [int(layer) for layer in layers]).any())

    def paint(
        self,
        fp: Footprint,
        material: M | np.ndarray,
        layer: Layer,
        height: float | np.ndarray | None = None,
        shade: float | np.ndarray = 1.0,
        where: np.ndarray | None = None,
    ) -> int:
        """Paint ``material`` where ``fp.inside`` (and ``where``); returns the number of pixels painted.

        ``height``/``shade``/``material`` may be scalars or arrays over the window; ``height=None`` keeps the
        height map (flat paint such as paving or soil).
        """
        mask = fp.inside if where is None else fp.inside & where
        n = int(np.count_nonzero(mask))
        if n == 0:
            return 0
        win = fp.window
        mat_win = self.mat[win]
        old = MATERIAL_CLASS[mat_win[mask]]
        self.counts -= np.bincount(old, minlength=self.counts.size)
        new_mat = material[mask] if isinstance(material, np.ndarray) else np.full(n, int(material), np.uint8)
        self.counts += np.bincount(MATERIAL_CLASS[new_mat], minlength=self.counts.size)
        mat_win[mask] = new_mat
        self.layer[win][mask] = int(layer)
        if height is not None:
            self.height[win][mask] = height[mask] if isinstance(height, np.ndarray) else height
        self.shade[win][mask] = shade[mask] if isinstance(shade, np.ndarray) else shade
        return n


def cast_shadows(height: np.ndarray, gsd: float, azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """Boolean map of pixels in a cast shadow: something towards the sun rises above the sun ray.

    A pixel is shadowed if ``height(p + t·d) > height(p) + t·tan(elev)`` for some distance ``t`` towards the sun
    ``d``. Computed with log-doubling max-propagation of the "shadow height" along the sun direction, so it
    costs ~log2(longest shadow in px) full-array passes instead of one pass per pixel of shadow length.
    """
    tan_e = math.tan(math.radians(elevation_deg))
    az = math.radians(azimuth_deg)
    dx, dy = math.sin(az), -math.cos(az)  # towards the sun, image coordinates (north up)
    max_len_px = float(height.max()) / max(tan_e, 1e-3) / gsd
    levels = max(1, math.ceil(math.log2(max_len_px + 1.0)))
    top = height.copy()
    h, w = height.shape
    for j in range(levels):
        k = 2**j
        sx, sy = round(k * dx), round(k * dy)
        if abs(sx) >= w or abs(sy) >= h:
            break
        drop = np.float32(math.hypot(sx, sy) * gsd * tan_e)
        src = (slice(max(sy, 0), h + min(sy, 0)), slice(max(sx, 0), w + min(sx, 0)))
        dst = (slice(max(-sy, 0), h + min(-sy, 0)), slice(max(-sx, 0), w + min(-sx, 0)))
        shifted = top[src] - drop
        np.maximum(top[dst], shifted, out=top[dst])
    return top > height + np.float32(0.15)
