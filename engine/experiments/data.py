"""Chip datasets for the tables: synthetic twin (or the user's ISPRS folders), with a held-out validation split.

The standard ISPRS "val" tiles become our ``test`` split (what the tables report); a share of the training tiles is
held out as ``val`` for choosing the best epoch, so no number in a table was selected on the data it reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.core.errors import InputError


def holdout_splits(tiles: list[Any], val_fraction: float = 0.2) -> dict[str, str]:
    """Tile name → split: standard train → train/val (every k-th tile, at least one), standard val → test."""
    train = [t.name for t in tiles if t.split == "train"]
    if len(train) < 2:
        raise InputError(f"need at least 2 training tiles to hold one out for validation, found {len(train)}")
    step = max(2, round(1 / val_fraction))
    held = set(train[step - 1 :: step]) or {train[-1]}
    return {t.name: "test" if t.split == "val" else ("val" if t.name in held else "train") for t in tiles}


LABEL_DIR_MARKERS = ("gts", "Labels")
"""ISPRS layout folders holding label rasters (resampled with nearest neighbour, never averaged)."""


def resample_layout(src_root: Path, dst_root: Path, gsd: float) -> Path:
    """Copy an ISPRS-layout folder at ``gsd`` metres: images averaged, labels nearest; reused when complete.

    A working GSD coarser than the sensor's lets small chips hold whole objects (a 96 px chip at 5 cm is 4.8 m,
    less than a house) and makes CPU training affordable; ``engine.predict`` resamples any ortho to the model's
    GSD, so a model trained this way runs on full-resolution orthos.
    """
    from osgeo import gdal

    if (dst_root / ".complete").is_file():
        return dst_root
    if not gsd > 0:
        raise InputError(f"chips.gsd: expected a positive number of metres, found {gsd!r}")
    for src in sorted(src_root.rglob("*.tif")):
        dst = dst_root / src.relative_to(src_root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        is_label = any(marker in part for part in src.relative_to(src_root).parts[:-1] for marker in LABEL_DIR_MARKERS)
        options = gdal.WarpOptions(
            xRes=gsd, yRes=gsd, resampleAlg="near" if is_label else "average", creationOptions=["COMPRESS=DEFLATE"]
        )
        if gdal.Warp(str(dst), str(src), options=options) is None:
            raise InputError(f"{src}: GDAL could not resample it to {gsd} m ({gdal.GetLastErrorMsg()})")
    (dst_root / ".complete").write_text("ok\n")
    return dst_root


def chip_geometry(chips_cfg: dict[str, Any], dataset: str) -> tuple[int, int]:
    """(size, stride) in px for ``dataset``: ``chips.<dataset>: {size, stride}`` where the preset sets one, else
    ``chips.size`` / ``chips.stride`` (a domain whose objects are larger gets larger chips, so whole objects fit)."""
    own = chips_cfg.get(dataset) or {}
    if not isinstance(own, dict) or set(own) - {"size", "stride"}:
        raise InputError(f"preset key 'chips.{dataset}': expected a mapping with size and/or stride, found {own!r}")
    size, stride = own.get("size", chips_cfg["size"]), own.get("stride", chips_cfg["stride"])
    if not (isinstance(size, int) and isinstance(stride, int) and size > 0 and stride > 0):
        raise InputError(f"preset key 'chips.{dataset}': expected positive integer size and stride, found {own!r}")
    return size, stride


def prepare_chips(preset: dict[str, Any], data_dir: Path, roots: dict[str, Path | None]) -> dict[str, Path]:
    """Chip both datasets (generating the synthetic twin where no real root is given); reuse finished ones.

    Finished chip datasets are used as they are, without importing GDAL: prepare them on a machine with GDAL
    (``--data-only``), copy ``DIR/data/chips`` to a GPU machine that has none, and run the same command there.
    """
    chips_cfg = preset["chips"]
    out: dict[str, Path] = {}
    for dataset in ("vaihingen", "potsdam"):
        chip_root = data_dir / "chips" / dataset
        out[dataset] = chip_root
        if (chip_root / "manifest.json").is_file():
            continue
        from engine import synth  # GDAL from here on
        from engine.chip import chip_dataset
        from engine.data.isprs import find_isprs_tiles

        root = roots.get(dataset)
        if root is None:
            root = data_dir / "synthetic" / dataset
            if not (root / ".complete").is_file():
                synth.generate(dataset, root, seed=0, overwrite=True, **preset["synthetic"][dataset])
                (root / ".complete").write_text("ok\n")
        if chips_cfg.get("gsd"):
            root = resample_layout(root, data_dir / f"resampled_{chips_cfg['gsd']:g}m" / dataset, chips_cfg["gsd"])
        bands = chips_cfg.get("potsdam_bands", "RGB") if dataset == "potsdam" else None
        splits = holdout_splits(find_isprs_tiles(dataset, root, bands))
        size, stride = chip_geometry(chips_cfg, dataset)
        chip_dataset(dataset, root, chip_root, size, stride, bands=bands, splits=splits, overwrite=True)
    return out
