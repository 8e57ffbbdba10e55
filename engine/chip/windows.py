"""Chip windows over a tile: a real stride, the last window of each row/column flush with the tile border."""

from __future__ import annotations

from collections.abc import Sequence

from engine.core.errors import ConfigError, InputError


def axis_starts(length: int, size: int, stride: int) -> list[int]:
    """Window starts along one axis of ``length`` pixels.

    Starts step by ``stride`` (so stride < size overlaps); if the last regular window stops short of the border,
    one more window is added flush with it (no pixel dropped, no window repeated). An axis shorter than ``size``
    gets a single window at 0 (the chip is padded).
    """
    if size < 1 or stride < 1:
        raise ConfigError(f"chip size and stride: expected positive integers, found size={size}, stride={stride}")
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def chip_windows(width: int, height: int, size: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Row-major ``(x, y, w, h)`` windows covering a ``width`` × ``height`` tile; w/h < size only for a small tile."""
    xs = axis_starts(width, size, stride)
    ys = axis_starts(height, size, stride)
    w, h = min(size, width), min(size, height)
    return [(x, y, w, h) for y in ys for x in xs]


GSD_TOLERANCE = 0.05
"""Relative difference between two rasters' GSDs below which one chip dataset may hold both."""


def one_gsd(rasters: Sequence[tuple[str, float | None]], tolerance: float = GSD_TOLERANCE) -> float | None:
    """The GSD (m) that a chip dataset's rasters (path, GSD or None when unknown) share; an InputError naming the
    first raster that differs by more than ``tolerance``, with how to resample it."""
    known = [(path, gsd) for path, gsd in rasters if gsd]
    if not known:
        return None
    first_path, first = known[0]
    for path, gsd in known[1:]:
        if abs(gsd / first - 1.0) > tolerance:
            raise InputError(
                f"{path}: expected imagery at {first:.4g} m per pixel like {first_path}, found {gsd:.4g} m; resample "
                f"it first (gdalwarp -tr {first:g} {first:g} -r average IN OUT) or chip each GSD into its own dataset"
            )
    return first
