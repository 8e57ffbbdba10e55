"""Surface materials: reflectance-like colours in (blue, green, red, nir) and the ISPRS class each belongs to.

Look-alikes are deliberate (REFERENCE §4): grey roofs ≈ paving, dark roofs ≈ asphalt, red brick paving ≈ red
roof tiles, tree foliage ≈ lawn (only texture and shading tell them apart), dry meadow ≈ bare soil, so colour
alone cannot classify a pixel.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from engine.core.classes import SEG_CLASSES

BAND_INDEX: dict[str, int] = {"blue": 0, "green": 1, "red": 2, "nir": 3}


class M(IntEnum):
    """Material ids stored in the material map."""

    GRASS = 0
    MEADOW = 1
    SOIL = 2
    ASPHALT = 3
    PAVING = 4
    PAVING_RED = 5
    ROOF_RED = 6
    ROOF_GREY = 7
    ROOF_DARK = 8
    ROOF_LIGHT = 9
    TREE = 10
    CAR_WHITE = 11
    CAR_SILVER = 12
    CAR_BLACK = 13
    CAR_RED = 14
    CAR_BLUE = 15
    CAR_GLASS = 16
    CLUTTER_BLUE = 17
    CLUTTER_WOOD = 18
    GRAVEL = 19


_IMP, _BLD, _LOW, _TREE, _CAR, _CLU = (SEG_CLASSES.index(n) for n in SEG_CLASSES)

# material: (class id, (blue, green, red, nir) reflectance)
_TABLE: dict[M, tuple[int, tuple[float, float, float, float]]] = {
    M.GRASS: (_LOW, (0.045, 0.090, 0.060, 0.36)),
    M.MEADOW: (_LOW, (0.080, 0.115, 0.125, 0.27)),
    M.SOIL: (_CLU, (0.095, 0.120, 0.150, 0.24)),
    M.ASPHALT: (_IMP, (0.085, 0.092, 0.100, 0.12)),
    M.PAVING: (_IMP, (0.165, 0.180, 0.195, 0.23)),
    M.PAVING_RED: (_IMP, (0.085, 0.095, 0.190, 0.33)),
    M.ROOF_RED: (_BLD, (0.075, 0.085, 0.210, 0.36)),
    M.ROOF_GREY: (_BLD, (0.160, 0.172, 0.190, 0.22)),
    M.ROOF_DARK: (_BLD, (0.082, 0.090, 0.098, 0.115)),
    M.ROOF_LIGHT: (_BLD, (0.250, 0.265, 0.280, 0.31)),
    M.TREE: (_TREE, (0.042, 0.085, 0.055, 0.36)),
    M.CAR_WHITE: (_CAR, (0.330, 0.340, 0.345, 0.36)),
    M.CAR_SILVER: (_CAR, (0.180, 0.185, 0.190, 0.22)),
    M.CAR_BLACK: (_CAR, (0.035, 0.037, 0.040, 0.05)),
    M.CAR_RED: (_CAR, (0.050, 0.050, 0.260, 0.30)),
    M.CAR_BLUE: (_CAR, (0.200, 0.090, 0.050, 0.18)),
    M.CAR_GLASS: (_CAR, (0.045, 0.045, 0.045, 0.05)),
    M.CLUTTER_BLUE: (_CLU, (0.250, 0.120, 0.060, 0.20)),
    M.CLUTTER_WOOD: (_CLU, (0.090, 0.130, 0.180, 0.28)),
    M.GRAVEL: (_IMP, (0.140, 0.150, 0.165, 0.20)),
}

N_MATERIALS = len(M)
MATERIAL_CLASS: np.ndarray = np.array([_TABLE[m][0] for m in M], dtype=np.uint8)
"""Class id of each material id (a lookup table: ``MATERIAL_CLASS[material_map]`` is the label)."""
REFLECTANCE: np.ndarray = np.array([_TABLE[m][1] for m in M], dtype=np.float32)
"""(materials, 4) reflectance in (blue, green, red, nir)."""

SHADOW_FACTOR: np.ndarray = np.array([0.36, 0.31, 0.28, 0.24], dtype=np.float32)
"""Fraction of light left in a cast shadow per band: only blue-ish sky light remains."""

CAR_PAINTS: tuple[M, ...] = (M.CAR_WHITE, M.CAR_SILVER, M.CAR_BLACK, M.CAR_RED, M.CAR_BLUE)
CAR_PAINT_P: tuple[float, ...] = (0.28, 0.27, 0.25, 0.1, 0.1)


SEASONS: dict[str, dict[M, tuple[float, float, float, float]]] = {
    "summer": {},
    "autumn": {
        M.GRASS: (0.060, 0.095, 0.105, 0.26),  # dry lawn: less chlorophyll, browner, lower NIR plateau
        M.MEADOW: (0.085, 0.110, 0.140, 0.23),
        M.TREE: (0.045, 0.095, 0.120, 0.27),  # yellowing and thinning crowns
    },
}
"""Reflectance overrides of a season (blue, green, red, nir); materials not listed keep their summer colour."""


def seasonal_reflectance(season: str) -> np.ndarray:
    """(materials, 4) reflectance table of ``season``."""
    if season not in SEASONS:
        raise ValueError(f"season: expected one of {sorted(SEASONS)}, found {season!r}")
    table = REFLECTANCE.copy()
    for material, values in SEASONS[season].items():
        table[int(material)] = values
    return table
