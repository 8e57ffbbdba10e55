"""Fine-tuning inputs: the starting checkpoint (or the ONNX model naming it), the rasters at the model's GSD, the
area where labels are complete, and the chip dataset cut from them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.chip.splits import SplitPlan
from engine.chip.userdata import LabelSource, chip_images, find_images
from engine.core.errors import InputError
from engine.core.progress import Progress
from engine.finetune.options import FinetuneOptions
from engine.models.checkpoint import load_checkpoint

GSD_TOLERANCE = 0.05
"""Rasters within 5 % of the model's GSD are chipped as they are; others are resampled."""


def onnx_checkpoint(path: Path) -> Path:
    """The checkpoint an exported pmtl model names in its metadata (``provenance.checkpoint``)."""
    import onnx

    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        named = json.loads(props.get("provenance", "{}")).get("checkpoint")
    except Exception as exc:  # any unreadable file: one line naming it
        raise InputError(
            f"--checkpoint {path}: expected an ONNX model with pmtl metadata, could not read it: {exc}"
        ) from None
    if not named:
        raise InputError(f"--checkpoint {path}: expected its metadata to name the checkpoint it was exported from "
                         "(provenance.checkpoint), found none; give the best.pt instead")  # fmt: skip
    found = Path(named) if Path(named).is_absolute() else path.parent / named
    if not found.is_file():
        raise InputError(f"--checkpoint {path}: its metadata names the checkpoint {named}, which does not exist")
    return found


def resolve_checkpoint(path: str) -> tuple[Path, dict[str, Any]]:
    """(checkpoint path, its payload) for ``--checkpoint``: a pmtl checkpoint, or an ONNX model naming one."""
    where = Path(path)
    if where.suffix.lower() == ".onnx":
        where = onnx_checkpoint(where)
    payload = load_checkpoint(where)
    if not (payload.get("metadata") or {}).get("bands"):
        raise InputError(f"--checkpoint {where}: expected a pmtl training checkpoint with metadata (bands, classes), "
                         "found none")  # fmt: skip
    return where, payload


def extent_aoi(labels: str, out_path: Path) -> Path:
    """A GeoPackage with one rectangle: the envelope of every label feature, in the labels' CRS."""
    from osgeo import ogr

    from engine.chip.sources import read_vector

    vector = read_vector(labels)
    if not len(vector):
        raise InputError(f"--labels {labels}: expected polygons, found no usable feature")
    envelopes = [g.GetEnvelope() for g in vector.geometries]  # (minx, maxx, miny, maxy)
    x0, x1 = min(e[0] for e in envelopes), max(e[1] for e in envelopes)
    y0, y1 = min(e[2] for e in envelopes), max(e[3] for e in envelopes)
    ring = ogr.Geometry(ogr.wkbLinearRing)
    for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)):
        ring.AddPoint_2D(x, y)
    polygon = ogr.Geometry(ogr.wkbPolygon)
    polygon.AddGeometry(ring)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(out_path))
    layer = ds.CreateLayer("labelled_extent", vector.srs, ogr.wkbPolygon)
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetGeometry(polygon)
    layer.CreateFeature(feature)
    del feature, layer, ds  # flush and close
    return out_path


def at_gsd(image: Path, gsd: float, work: Path) -> Path:
    """``image`` itself when within :data:`GSD_TOLERANCE` of ``gsd``, else a warped VRT at ``gsd`` (averaged when
    coarser, bilinear when finer)."""
    from osgeo import gdal

    from engine.chip.sources import image_grid

    grid = image_grid(image)
    native = grid.gsd
    if abs(native - gsd) <= GSD_TOLERANCE * gsd:
        return image
    work.mkdir(parents=True, exist_ok=True)
    out = work / f"{image.stem}_{gsd:g}m.vrt"
    ratio = gsd / native  # the same ratio in CRS units (degrees for a geographic CRS)
    x_res, y_res = abs(grid.geotransform[1]) * ratio, abs(grid.geotransform[5]) * ratio
    options = gdal.WarpOptions(format="VRT", xRes=x_res, yRes=y_res, resampleAlg="average" if ratio > 1 else "bilinear")
    if gdal.Warp(str(out), str(image), options=options) is None:
        raise InputError(f"--image {image}: GDAL could not resample it to {gsd:g} m ({gdal.GetLastErrorMsg()})")
    return out


def chip_labels(
    opts: FinetuneOptions, gsd: float, size: int, class_name: str | None, progress: Progress | None
) -> tuple[Path, dict[str, Any]]:
    """The chip dataset of the labels at ``gsd`` (train / val = held-out blocks) in OUT/chips; (folder, summary)."""
    out = Path(opts.out)
    rasters = [at_gsd(p, gsd, out / "resampled") for p in find_images(opts.images)]
    aoi = opts.aoi or str(extent_aoi(opts.labels, out / "labelled_extent.gpkg"))
    labels = LabelSource(opts.task, opts.labels, opts.class_field, class_name, None, aoi)
    plan = SplitPlan("block", opts.holdout, 0.0, opts.seed, 2 * size)
    summary = chip_images(
        [str(r) for r in rasters], out / "chips", labels, size=size, stride=max(1, size // 2), plan=plan,
        dataset="finetune", scale_max=opts.scale_max, overwrite=True, progress=progress,
    )  # fmt: skip
    splits = summary.chips_per_split
    if not splits.get("train") or not splits.get("val"):
        raise InputError(
            f"--labels {opts.labels}: the labelled area gave {splits} chips of {size} px at {gsd:g} m; fine-tuning "
            "needs chips to train on and held-out chips to score (label a larger area, or lower --size)"
        )
    return out / "chips", summary.to_dict()
