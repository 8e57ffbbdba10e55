"""Convert the NEON tree-crown crops shipped in the ``deepforest`` wheel into a GeoTIFF and a box layer per crop, so
that ``bench.bench_finetune`` can train on one crop and score another (issue 21).

Where the files come from: the ``deepforest`` 2.1.0 wheel on PyPI (``pip download deepforest==2.1.0 --no-deps``,
unzip) ships, under ``deepforest/data/``, NEON RGB aerial crops at 10 cm (``2019_YELL_2_541000_4977000_image_crop.png``
with 279 hand-drawn tree crowns, ``2019_YELL_2_528000_4978000_image_crop2.png`` with 574, ``OSBS_029.png``,
``SOAP_061.png``) with their boxes as Pascal VOC XML in pixel coordinates. They are not in this repository.

The PNGs carry no georeference. Each GeoTIFF gets a **nominal** one: 0.1 m pixels in EPSG:32612 (UTM 12N, the
zone of Yellowstone), the crop's lower-left corner at the easting/northing of its NEON tile name (the south-west
corner of that 1 km tile; where in the tile the crop was cut is not recorded); crops without an easting/northing
in their name are placed at (500000, 0), one crop's width apart. Only the GSD and the relative positions of boxes
and pixels are real. The GeoPackage holds each box as a rectangle in the same CRS, with ``class`` = ``tree``
(the VOC names ``Tree``, ``Alive`` and ``Dead`` are all tree crowns).

``python -m bench.prepare_deepforest --data DEEPFOREST_DATA_DIR --out DIR [NAME.png ...]`` writes ``DIR/NAME.tif``
and ``DIR/NAME.gpkg`` (default: the two Yellowstone crops).
"""

from __future__ import annotations

import argparse
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

GSD = 0.1
"""Nominal pixel size of the NEON crops, in metres."""
EPSG = 32612
CLASS = "tree"
YELLOWSTONE = ("2019_YELL_2_541000_4977000_image_crop.png", "2019_YELL_2_528000_4978000_image_crop2.png")
TILE_NAME = re.compile(r"_(\d{6})_(\d{7})_")


def read_boxes(xml_path: Path) -> list[tuple[float, float, float, float]]:
    """(xmin, ymin, xmax, ymax) in pixels of every object of a Pascal VOC annotation."""
    boxes = []
    for box in ET.parse(xml_path).getroot().iter("bndbox"):
        boxes.append(tuple(float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")))
    return boxes


def nominal_origin(name: str, height: int, fallback_x: float) -> tuple[float, float]:
    """Upper-left corner (x, y) in EPSG:32612: the crop's lower-left corner at its NEON tile's south-west corner."""
    match = TILE_NAME.search(name)
    x, y = (float(match.group(1)), float(match.group(2))) if match else (fallback_x, 0.0)
    return x, y + height * GSD


def write_geotiff(png: Path, out: Path, origin: tuple[float, float]) -> None:
    """The PNG's bands as a GeoTIFF with the nominal georeference (temporary name, renamed when complete)."""
    from osgeo import gdal, osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(EPSG)
    tmp = out.with_suffix(".tmp.tif")
    mem = gdal.Translate("", str(png), format="MEM")
    mem.SetGeoTransform((origin[0], GSD, 0.0, origin[1], 0.0, -GSD))
    mem.SetProjection(srs.ExportToWkt())
    gdal.Translate(str(tmp), mem, format="GTiff", creationOptions=["COMPRESS=DEFLATE", "TILED=YES"])
    del mem
    tmp.replace(out)


def write_boxes(boxes: list[tuple[float, ...]], out: Path, origin: tuple[float, float]) -> None:
    """The boxes as polygons in EPSG:32612 with a ``class`` field (temporary name, renamed when complete)."""
    from osgeo import ogr, osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(EPSG)
    tmp = out.with_suffix(".tmp.gpkg")
    tmp.unlink(missing_ok=True)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(tmp))
    layer = ds.CreateLayer(out.stem, srs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("class", ogr.OFTString))
    x0, y0 = origin
    for xmin, ymin, xmax, ymax in boxes:
        ring = ogr.Geometry(ogr.wkbLinearRing)
        for px, py in ((xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax), (xmin, ymin)):
            ring.AddPoint_2D(x0 + px * GSD, y0 - py * GSD)
        polygon = ogr.Geometry(ogr.wkbPolygon)
        polygon.AddGeometry(ring)
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetField("class", CLASS)
        feature.SetGeometry(polygon)
        layer.CreateFeature(feature)
    del layer, ds
    tmp.replace(out)


def prepare(data: Path, out: Path, names: list[str]) -> list[tuple[Path, Path, int]]:
    """(GeoTIFF, GeoPackage, box count) of each crop ``names`` of ``data``, written into ``out``."""
    from osgeo import gdal

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, name in enumerate(names):
        png, xml_path = data / name, (data / name).with_suffix(".xml")
        for needed in (png, xml_path):
            if not needed.is_file():
                raise SystemExit(f"--data {data}: expected {needed.name} (deepforest/data of the wheel), not found")
        info = gdal.Info(str(png), format="json")
        width, height = info["size"]
        origin = nominal_origin(name, height, 500000.0 + i * width * GSD)
        boxes = read_boxes(xml_path)
        tif, gpkg = out / f"{png.stem}.tif", out / f"{png.stem}.gpkg"
        write_geotiff(png, tif, origin)
        write_boxes(boxes, gpkg, origin)
        written.append((tif, gpkg, len(boxes)))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.prepare_deepforest", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the wheel's deepforest/data folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("names", nargs="*", default=list(YELLOWSTONE), help="crop PNGs (default: the YELL crops)")
    args = parser.parse_args(argv)
    for tif, gpkg, count in prepare(args.data, args.out, args.names):
        print(f"{tif}  {gpkg}  {count} boxes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
