"""One synthetic tile: lay out, render, label (pure arrays), and write it in the domain's ISPRS layout."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.core.classes import SEG_CLASSES
from engine.synth.canvas import Canvas
from engine.synth.domains import POTSDAM_VARIANTS, DomainSpec, image_paths, label_paths, tile_grid_index
from engine.synth.geotiff import write_geotiff
from engine.synth.layout import layout_scene
from engine.synth.render import class_map, erode_boundaries, label_rgb, reflectance, sensor

ALL_BANDS: dict[str, tuple[str, ...]] = {
    "vaihingen": ("nir", "red", "green"),
    "potsdam": ("red", "green", "blue", "nir"),
}
"""Bands each domain renders (Potsdam needs NIR for its IRRG and RGBIR variants)."""


@dataclass
class TileArrays:
    """Everything one tile consists of, before it is written."""

    bands: dict[str, np.ndarray]
    label: np.ndarray
    eroded: np.ndarray

    def image(self, order: tuple[str, ...]) -> np.ndarray:
        """(h, w, len(order)) uint8 image with bands in ``order``."""
        return np.stack([self.bands[b] for b in order], axis=-1)


def tile_rng(domain: str, tile: str, seed: int) -> np.random.Generator:
    """Random generator of one tile: depends on (seed, domain, tile name) only, not on which other tiles run."""
    key = [int(seed) & 0xFFFFFFFF, zlib.crc32(domain.encode()), zlib.crc32(tile.encode())]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(key)))


def make_tile(spec: DomainSpec, tile: str, seed: int, size_px: int) -> TileArrays:
    """Lay out and render one square tile of ``size_px`` pixels (deterministic in its arguments)."""
    rng = tile_rng(spec.name, tile, seed)
    canvas = Canvas(size_px, size_px, spec.gsd)
    sun = layout_scene(canvas, spec.style, rng)
    refl = reflectance(canvas, sun, ALL_BANDS[spec.file_layout], rng, season=spec.season)
    bands = sensor(refl, spec, rng)
    label = class_map(canvas)
    return TileArrays(bands=bands, label=label, eroded=erode_boundaries(label, radius=3))


def geotransform(spec: DomainSpec, tile: str, size_px: int) -> tuple[float, ...]:
    """North-up geotransform at the domain GSD; tiles sit on a grid with 20 m gaps, so origins differ."""
    row, col = tile_grid_index(spec, tile)
    step = size_px * spec.gsd + 20.0
    x0 = spec.origin[0] + col * step
    y0 = spec.origin[1] - row * step
    return (x0, spec.gsd, 0.0, y0, 0.0, -spec.gsd)


def write_tile(spec: DomainSpec, root: Path, tile: str, arrays: TileArrays, transform: tuple[float, ...]) -> None:
    """Write image variant(s), label and eroded label of one tile under ``root`` (each file atomically)."""
    images = image_paths(spec, root, tile)
    if spec.file_layout == "potsdam":
        for variant, path in images.items():
            order = POTSDAM_VARIANTS[variant][1]
            write_geotiff(path, arrays.image(order), transform, order)
    else:
        write_geotiff(images["IRRG"], arrays.image(spec.bands), transform, spec.bands)
    label_path, eroded_path = label_paths(spec, root, tile)
    write_geotiff(label_path, label_rgb(arrays.label), transform, ("red", "green", "blue"))
    write_geotiff(eroded_path, label_rgb(arrays.eroded), transform, ("red", "green", "blue"))


def generate_tile(spec: DomainSpec, root: Path, tile: str, seed: int, size_px: int) -> np.ndarray:
    """Make and write one tile; returns its pixel count per class (for the summary's class shares)."""
    arrays = make_tile(spec, tile, seed, size_px)
    write_tile(spec, root, tile, arrays, geotransform(spec, tile, size_px))
    return np.bincount(arrays.label.ravel(), minlength=len(SEG_CLASSES))
