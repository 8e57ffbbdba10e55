"""Sliding-window grid and streaming logit blending whose memory does not grow with the raster's area.

Tiles run in raster order. Each tile's output is weighted by a separable ramp window (linear over the overlap, a
partition of unity between neighbours) and accumulated; a pixel is final once every tile covering it has run. Only
two carries are kept: the right ``overlap`` columns of the previous tile (C, T, o) and the bottom ``overlap`` rows
of the previous strip (C, o, W). So memory is O(C·(T² + o·W)), not O(C·H·W); the sum of window weights is
separable and computed analytically (two 1-D arrays) instead of being accumulated.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from engine.core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class TileGrid:
    """Tile origins over a ``width`` × ``height`` raster; the last row/column may run past the edge (padded)."""

    width: int
    height: int
    tile: int
    overlap: int

    def __post_init__(self) -> None:
        if not 0 <= self.overlap <= self.tile // 2:
            raise ConfigError(f"overlap must be within [0, {self.tile // 2}] px (half the tile), found {self.overlap}")

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    def _origins(self, size: int) -> list[int]:
        count = max(1, -(-(size - self.overlap) // self.stride))
        return [k * self.stride for k in range(count)]

    @functools.cached_property
    def xs(self) -> list[int]:
        return self._origins(self.width)

    @functools.cached_property
    def ys(self) -> list[int]:
        return self._origins(self.height)

    @property
    def padded_width(self) -> int:
        return self.xs[-1] + self.tile

    def __len__(self) -> int:
        return len(self.xs) * len(self.ys)

    def tiles(self) -> list[tuple[int, int]]:
        """(row, column) tile indices in raster order (the order :class:`Blender` needs)."""
        return [(i, j) for i in range(len(self.ys)) for j in range(len(self.xs))]

    def origin(self, i: int, j: int) -> tuple[int, int]:
        """Pixel (x, y) of tile (i, j)'s top-left corner."""
        return self.xs[j], self.ys[i]


def ramp(tile: int, overlap: int) -> np.ndarray:
    """1-D blending weights: linear over the first/last ``overlap`` px, 1 inside; neighbours' ramps sum to 1."""
    if overlap == 0:
        return np.ones(tile, np.float32)
    u = np.arange(tile, dtype=np.float32) + 0.5
    return np.minimum(1.0, np.minimum(u, tile - u) / overlap).astype(np.float32)


@dataclasses.dataclass
class FinalBlock:
    """Blended values of pixels no later tile touches: ``data`` (C, h, w) at pixel (x, y); ``rows``/``cols`` are
    the matching extents inside the tile that produced it (for its validity mask). Clipped to the raster."""

    x: int
    y: int
    data: np.ndarray
    rows: int
    cols: int


class Blender:
    """Accumulates weighted tile outputs in raster order and hands back final blocks as soon as they are done."""

    def __init__(self, grid: TileGrid, channels: int, first_row: int = 0) -> None:
        """``first_row``: the tile row to start at (a window of the grid; that row's own output is incomplete, as
        the rows above it never ran, and is for the caller to drop)."""
        self.grid = grid
        t, o = grid.tile, grid.overlap
        self.window = ramp(t, o)
        self.window2d = self.window[:, None] * self.window[None, :]  # one multiply per tile instead of two
        weights_x = np.zeros(grid.padded_width, np.float32)
        for x in grid.xs:
            weights_x[x : x + t] += self.window
        weights_y = np.zeros(grid.ys[-1] + t, np.float32)
        for y in grid.ys:
            weights_y[y : y + t] += self.window
        self.norm_x, self.norm_y = weights_x, weights_y
        self.bottom = np.zeros((channels, o, grid.padded_width), np.float32)
        self.right = np.zeros((channels, t, o), np.float32)
        self.channels = channels
        self._next = first_row * len(grid.xs)

    def add(self, i: int, j: int, values: np.ndarray | None) -> FinalBlock | None:
        """Add tile (i, j)'s (C, T, T) output (None: skipped tile, contributes nothing); tiles must come in order."""
        grid, t, o, s = self.grid, self.grid.tile, self.grid.overlap, self.grid.stride
        ny, nx = len(grid.ys), len(grid.xs)
        if (i, j) != divmod(self._next, nx):
            raise ValueError(f"tiles must be added in raster order: expected {divmod(self._next, nx)}, got {(i, j)}")
        self._next += 1
        x, y = grid.origin(i, j)
        if values is None:
            acc = np.zeros((self.channels, t, t), np.float32)
        else:
            acc = np.multiply(values, self.window2d[None], dtype=np.float32)
        if o:
            if j > 0:
                acc[:, :, :o] += self.right
            if i > 0:
                acc[:, :o, :] += self.bottom[:, :, x : x + t]
                self.bottom[:, :, x : x + t] = 0.0  # consumed: columns shared with tile j+1 travel on in `right`
        rows = t if i == ny - 1 else s
        cols = t if j == nx - 1 else s
        if o:
            if j < nx - 1:
                self.right = acc[:, :, s:].copy()
            if i < ny - 1:
                self.bottom[:, :, x : x + cols] = acc[:, s:, :cols]
        rows = min(rows, grid.height - y)
        cols = min(cols, grid.width - x)
        if rows <= 0 or cols <= 0:
            return None
        data = acc[:, :rows, :cols]
        data *= 1.0 / (self.norm_y[y : y + rows, None] * self.norm_x[None, x : x + cols])
        return FinalBlock(x, y, data, rows, cols)
