"""The synthetic domains: sensor facts, default sizes, and the real ISPRS file layout of each (REFERENCE §3).

``vaihingen`` and ``potsdam`` are the ISPRS twins the method trains on. ``suburb`` is a third, held-out town for
measuring adaptation to a user's own imagery (issue 11): coarser GSD, another sensor's band balance, detached
houses with other roof styles, and autumn (dry lawns, yellowing trees). It is written in the Potsdam file layout
(RGB / IRRG / RGBIR variants) so every reader and the chipper take it unchanged; its labels are for evaluation only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.data.isprs import BAND_NAMES, POTSDAM_BANDS, STANDARD_SPLITS


def _split_tiles(dataset: str, prefix: str, split: str) -> tuple[str, ...]:
    """Full tile names of one split of the standard ISPRS split (owned by the reader, engine.data.isprs)."""
    return tuple(f"{prefix}{short}" for short, s in STANDARD_SPLITS[dataset].items() if s == split)


EPSG = 32632
"""UTM zone 32N: a real projected CRS in metres (ARCHITECTURE "Synthetic twin output")."""


@dataclass(frozen=True)
class DomainSpec:
    """What a domain looks like to a user: sensor, band order, GSD, default size, and its ISPRS tile list."""

    name: str
    gsd: float
    bands: tuple[str, ...]
    sensor: str
    style: str
    blur_sigma_px: float
    noise_dn: float
    gain: dict[str, float]
    default_tiles: int
    default_tile_size_m: float
    train_tiles: tuple[str, ...]
    val_tiles: tuple[str, ...]
    origin: tuple[float, float]
    layout: str = ""
    """ISPRS file layout written (vaihingen|potsdam); defaults to the domain's own name."""
    season: str = "summer"
    """Vegetation appearance (engine.synth.materials.SEASONS)."""

    @property
    def file_layout(self) -> str:
        return self.layout or self.name

    @property
    def max_tiles(self) -> int:
        return len(self.train_tiles) + len(self.val_tiles)


DOMAINS: dict[str, DomainSpec] = {
    "vaihingen": DomainSpec(
        name="vaihingen",
        gsd=0.09,
        bands=("nir", "red", "green"),
        sensor="Vaihingen-like colour-infrared true ortho photo (8-bit NIR-R-G, 9 cm)",
        style="village",
        blur_sigma_px=0.8,
        noise_dn=1.6,
        gain={"blue": 420.0, "green": 470.0, "red": 520.0, "nir": 430.0},
        default_tiles=6,
        default_tile_size_m=120.0,
        train_tiles=_split_tiles("vaihingen", "top_mosaic_09cm_", "train"),
        val_tiles=_split_tiles("vaihingen", "top_mosaic_09cm_", "val"),
        origin=(496_000.0, 5_420_000.0),
    ),
    "potsdam": DomainSpec(
        name="potsdam",
        gsd=0.05,
        bands=("red", "green", "blue"),
        sensor="Potsdam-like true ortho photo (8-bit R-G-B, also IR-R-G and R-G-B-IR variants, 5 cm)",
        style="city",
        blur_sigma_px=0.65,
        noise_dn=1.2,
        gain={"blue": 640.0, "green": 600.0, "red": 560.0, "nir": 400.0},
        default_tiles=6,
        default_tile_size_m=80.0,
        train_tiles=_split_tiles("potsdam", "top_potsdam_", "train"),
        val_tiles=_split_tiles("potsdam", "top_potsdam_", "val"),
        origin=(366_000.0, 5_808_000.0),
    ),
    "suburb": DomainSpec(
        name="suburb",
        gsd=0.13,
        bands=("red", "green", "blue"),
        sensor="held-out town: another camera (blue-heavy balance, softer optics, more noise), 13 cm, autumn",
        style="suburb",
        blur_sigma_px=1.0,
        noise_dn=2.2,
        gain={"blue": 860.0, "green": 650.0, "red": 560.0, "nir": 420.0},
        default_tiles=6,
        default_tile_size_m=110.0,
        train_tiles=_split_tiles("potsdam", "top_potsdam_", "train"),
        val_tiles=_split_tiles("potsdam", "top_potsdam_", "val"),
        origin=(580_000.0, 5_300_000.0),
        layout="potsdam",
        season="autumn",
    ),
}

LAYOUT_DIRS: dict[str, tuple[str, ...]] = {
    "vaihingen": ("top", "gts_for_participants", "gts_eroded_for_participants"),
    "potsdam": ("2_Ortho_RGB", "3_Ortho_IRRG", "4_Ortho_RGBIR", "5_Labels_all", "5_Labels_all_noBoundary"),
}
"""Folders each layout owns under its root (what ``--overwrite`` clears)."""

POTSDAM_VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    variant: (folder, BAND_NAMES[("potsdam", variant)]) for variant, folder in POTSDAM_BANDS.items()
}
"""Potsdam image variants: suffix -> (folder, band order)."""


def select_tiles(spec: DomainSpec, count: int) -> list[tuple[str, str]]:
    """The first ``count`` tiles of the standard split lists, train and val mixed in the real proportion.

    Returns ``(tile_name, split)`` pairs: a single tile is a train tile; from two on, at least one of each split.
    """
    n_train = max(round(count * len(spec.train_tiles) / spec.max_tiles), 1)
    if count >= 2:
        n_train = min(n_train, count - 1)
    n_train = min(n_train, len(spec.train_tiles))
    n_val = count - n_train
    if n_val > len(spec.val_tiles):
        n_val = len(spec.val_tiles)
        n_train = count - n_val
    return [(t, "train") for t in spec.train_tiles[:n_train]] + [(t, "val") for t in spec.val_tiles[:n_val]]


def tile_grid_index(spec: DomainSpec, tile: str) -> tuple[int, int]:
    """(row, col) of a tile on the synthetic map, so every tile has its own, non-overlapping origin."""
    if spec.file_layout == "potsdam":
        r, c = tile.rsplit("_", 2)[-2:]
        return int(r), int(c)
    area = int(tile.rsplit("area", 1)[1])
    return (area - 1) // 6, (area - 1) % 6


def image_paths(spec: DomainSpec, root: Path, tile: str) -> dict[str, Path]:
    """Image files of one tile: variant name -> path (Vaihingen has one, Potsdam three)."""
    if spec.file_layout == "potsdam":
        return {v: root / folder / f"{tile}_{v}.tif" for v, (folder, _) in POTSDAM_VARIANTS.items()}
    return {"IRRG": root / "top" / f"{tile}.tif"}


def label_paths(spec: DomainSpec, root: Path, tile: str) -> tuple[Path, Path]:
    """(label, eroded label) files of one tile, named as in the ISPRS downloads."""
    if spec.file_layout == "potsdam":
        return (
            root / "5_Labels_all" / f"{tile}_label.tif",
            root / "5_Labels_all_noBoundary" / f"{tile}_label_noBoundary.tif",
        )
    return (
        root / "gts_for_participants" / f"{tile}.tif",
        root / "gts_eroded_for_participants" / f"{tile}_noBoundary.tif",
    )
