"""Chipping from vector labels against the ISPRS raster-label path, in one run (ratio of throughputs).

Writes ISPRS-sized Vaihingen-layout tiles (as bench_chip), then the same scenes' buildings, trees and cars as a
polygon GeoPackage in WGS 84 (GDAL polygonize of the label; a class field) — the shape OSM or cadastre footprints
come in. Times (a) ``engine.chip.chip_dataset`` on the ISPRS layout and (b) ``engine.chip.userdata.chip_images``
on the same orthophotos with the polygons (task both: reprojection, rasterisation, envelope boxes, block split).
Both write every chip of every tile. Throughput is tile megapixels per second; the ratio is vector / raster.
Run: ``python -m bench.bench_labels [--tiles 4 --width 2500 --height 2000 --stride 320]``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
from osgeo import gdal, ogr, osr

from bench.bench_chip import emit, machine_record, make_tiles, tile_parser, tile_record, work_folder
from engine.chip import chip_dataset
from engine.chip.splits import SplitPlan
from engine.chip.userdata import LabelSource, chip_images
from engine.core.classes import DET_CLASSES, DET_TO_SEG
from engine.data.isprs import read_label

gdal.UseExceptions()
ogr.UseExceptions()


def write_polygons(root: Path, out: Path) -> int:
    """Polygons of every detection-class blob of every label tile, in WGS 84 with a 'class' field; their count."""
    utm = gdal.GetDriverByName("Memory").Create("", 0, 0, 0, gdal.GDT_Unknown)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32632)
    layer = utm.CreateLayer("objects", srs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("value", ogr.OFTInteger))
    for label in sorted((root / "gts_for_participants").glob("*.tif")):
        mask = read_label(label, boundary_is_ignore=False).mask
        objects = np.where(np.isin(mask, DET_TO_SEG), mask, 0).astype(np.uint8)
        source = gdal.Open(str(label))
        raster = gdal.GetDriverByName("MEM").Create("", mask.shape[1], mask.shape[0], 1, gdal.GDT_Byte)
        raster.SetGeoTransform(source.GetGeoTransform())
        raster.SetProjection(source.GetProjection())
        raster.GetRasterBand(1).WriteArray(objects)
        band = raster.GetRasterBand(1)
        gdal.Polygonize(band, band, layer, 0)  # the band as its own mask: background (0) gives no polygon
    names = {seg: name for seg, name in zip(DET_TO_SEG, DET_CLASSES)}
    layer.CreateField(ogr.FieldDefn("class", ogr.OFTString))
    for feature in layer:
        feature.SetField("class", names[feature.GetField("value")])
        layer.SetFeature(feature)
    gdal.VectorTranslate(str(out), utm, format="GPKG", dstSRS="EPSG:4326", layerName="objects")
    ds = ogr.Open(str(out))
    return ds.GetLayer(0).GetFeatureCount()


def main(argv: list[str] | None = None) -> dict:
    args = tile_parser("python -m bench.bench_labels", __doc__, tiles=4, repeat=2).parse_args(argv)
    with work_folder(args.workdir, "bench_labels_") as work:
        root, polygons = work / "vaihingen", work / "objects.gpkg"
        make_tiles(root, args.tiles, args.width, args.height)
        features = write_polygons(root, polygons)
        images = sorted((root / "top").glob("*.tif"))
        spec = LabelSource("both", str(polygons), class_field="class")
        raster_times, vector_times, summary = [], [], None
        for _ in range(args.repeat):  # alternate, so load from other processes hits both
            shutil.rmtree(work / "raster", ignore_errors=True)
            start = time.perf_counter()
            chip_dataset("vaihingen", root, work / "raster", args.size, args.stride)
            raster_times.append(time.perf_counter() - start)
            shutil.rmtree(work / "vector", ignore_errors=True)
            start = time.perf_counter()
            summary = chip_images(images, work / "vector", spec, size=args.size, stride=args.stride,
                                  plan=SplitPlan("tile", val=0.5))  # fmt: skip
            vector_times.append(time.perf_counter() - start)
        megapixels = summary.megapixels
        result = {
            **tile_record(args, megapixels), "polygons": features,
            "vector_chips": sum(summary.chips_per_split.values()),
            "vector_boxes": sum(summary.boxes_per_class.values()),
            "raster_s": round(min(raster_times), 3), "vector_s": round(min(vector_times), 3),
            "raster_mpx_per_s": round(megapixels / min(raster_times), 1),
            "vector_mpx_per_s": round(megapixels / min(vector_times), 1),
            "ratio_vector_over_raster": round(min(raster_times) / min(vector_times), 3),
            **machine_record(),
        }  # fmt: skip
    summary = (
        f"chipping {result['megapixels']} Mpx: vector labels ({result['polygons']} polygons in WGS 84) "
        f"{result['vector_mpx_per_s']} Mpx/s, ISPRS raster labels {result['raster_mpx_per_s']} Mpx/s; ratio "
        f"{result['ratio_vector_over_raster']}; load average {result['load_avg_1min']} on {result['cores']} cores"
    )
    return emit(summary, result)


if __name__ == "__main__":
    main()
