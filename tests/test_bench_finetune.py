"""The fine-tuning benchmark's inputs: the deepforest crops turned into a GeoTIFF + box layer with a nominal
georeference, and the areas that train and score (west/east halves of one raster, or the whole of another)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, ogr

from bench.bench_finetune import areas, main, training_summary
from bench.prepare_deepforest import prepare

gdal.UseExceptions()
ogr.UseExceptions()

VOC = """<annotation><object><name>Tree</name><bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax>
</bndbox></object><object><name>Dead</name><bndbox><xmin>0</xmin><ymin>0</ymin><xmax>4</xmax><ymax>2</ymax></bndbox>
</object></annotation>"""


def write_crop(folder: Path, name: str, width: int = 40, height: int = 30) -> None:
    mem = gdal.GetDriverByName("MEM").Create("", width, height, 3, gdal.GDT_Byte)
    for band in range(3):
        mem.GetRasterBand(band + 1).WriteArray(np.full((height, width), 10 * band, np.uint8))
    gdal.GetDriverByName("PNG").CreateCopy(str(folder / name), mem)
    (folder / name).with_suffix(".xml").write_text(VOC.format(10, 5, 30, 25))


def envelopes(gpkg: Path) -> list[tuple[tuple[float, ...], str]]:
    ds = ogr.Open(str(gpkg))
    layer = ds.GetLayer(0)
    assert layer.GetSpatialRef().GetAuthorityCode(None) == "32612"
    return [(f.GetGeometryRef().GetEnvelope(), f.GetField("class")) for f in layer]


def test_crops_get_the_nominal_georeference_of_their_neon_tile(tmp_path):
    write_crop(tmp_path, "2019_YELL_2_541000_4977000_image_crop.png")
    write_crop(tmp_path, "SOAP_061.png")
    written = prepare(tmp_path, tmp_path / "out", ["2019_YELL_2_541000_4977000_image_crop.png", "SOAP_061.png"])
    assert [n for _, _, n in written] == [2, 2]
    tif, gpkg, _ = written[0]
    raster = gdal.Open(str(tif))
    # lower-left corner at the tile's south-west corner: top = 4977000 + 30 rows × 0.1 m
    assert raster.GetGeoTransform() == pytest.approx((541000.0, 0.1, 0.0, 4977003.0, 0.0, -0.1))
    assert raster.RasterCount == 3 and raster.GetRasterBand(3).ReadAsArray()[0, 0] == 20
    boxes = envelopes(gpkg)  # (minx, maxx, miny, maxy): px 10..30 → +1..3 m east, px 5..25 → 0.5..2.5 m below top
    assert boxes[0][0] == pytest.approx((541001.0, 541003.0, 4977000.5, 4977002.5))
    assert boxes[0][1] == "tree" and boxes[1][1] == "tree"  # 'Dead' crowns are trees too
    fallback = gdal.Open(str(written[1][0])).GetGeoTransform()
    assert fallback[0] == pytest.approx(500000.0 + 40 * 0.1) and fallback[3] == pytest.approx(3.0)  # second crop
    assert not list((tmp_path / "out").glob("*.tmp.*"))


def test_another_raster_scores_whole_and_the_training_raster_trains_on_its_labels(tmp_path):
    write_crop(tmp_path, "2019_YELL_2_541000_4977000_image_crop.png")
    (tif, gpkg, _), *_ = prepare(tmp_path, tmp_path / "data", ["2019_YELL_2_541000_4977000_image_crop.png"])
    args = argparse.Namespace(out=tmp_path / "run", image=tif, labels=gpkg, train_half="west", eval_image=None)
    args.out.mkdir()
    train_aoi, other, image, _, test_aoi = areas(args)
    assert other == "east" and image == tif
    assert envelopes_of(Path(train_aoi)) == pytest.approx((541000.0, 541002.0, 4977000.0, 4977003.0))
    assert envelopes_of(test_aoi) == pytest.approx((541002.0, 541004.0, 4977000.0, 4977003.0))
    args.eval_image, args.eval_labels = tif, gpkg
    train_aoi, other, image, labels, test_aoi = areas(args)
    assert train_aoi is None and (other, labels) == (tif.stem, gpkg)  # None: engine.finetune's labelled extent
    assert envelopes_of(test_aoi) == pytest.approx((541000.0, 541004.0, 4977000.0, 4977003.0))


def envelopes_of(aoi: Path) -> tuple[float, ...]:
    ds = ogr.Open(str(aoi))  # the data source and feature kept alive while their geometry is read
    feature = ds.GetLayer(0).GetNextFeature()
    return tuple(feature.GetGeometryRef().GetEnvelope())


def test_an_eval_image_needs_its_labels(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--checkpoint", "x.pt", "--image", "a.tif", "--labels", "a.gpkg", "--out", str(tmp_path),
              "--eval-image", "b.tif"])  # fmt: skip
    assert stop.value.code == 2 and "--eval-labels" in capsys.readouterr().err


def test_training_summary_reads_the_last_metrics_line(tmp_path):
    steps = [{"step": 1, "det_cls": 0.86, "det_box": 1.5921}, {"step": 150, "det_cls": 0.3214, "det_box": 1.15}]
    lines = [{"epoch": 0, "steps": []}, {"train_img_per_s": 0.7756, "det_ap50": 0.25, "steps": steps}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    assert training_summary(tmp_path) == {
        "train_img_per_s": 0.776, "own_val_ap50": 0.25,
        "loss_first_last": {"det_cls": [0.86, 0.321], "det_box": [1.592, 1.15]},
    }  # fmt: skip
