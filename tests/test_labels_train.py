"""Partial labels on your own data, end to end: det polygons (another CRS) over one ortho, a class raster with
nodata over another → chip → teachers per task → partial-MTL + KD student → ONNX → predict with your classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from osgeo import gdal, ogr

from engine.chip.splits import SplitPlan
from engine.chip.userdata import LabelSource, chip_images
from engine.core.errors import ConfigError
from engine.export import export_checkpoint
from engine.predict import predict_raster
from engine.train.config import load_config
from engine.train.loop import train
from tests.test_labels_chip import GSD, ORIGIN, utm, write_image, write_polygons

gdal.UseExceptions()

SIZE = 128
TINY = [
    "data.batch_size=2",
    "data.num_workers=0",
    "optim.epochs=1",
    "optim.iters_per_epoch=2",
    "optim.warmup_iters=1",
    "ema.tau=2.0",
    "runtime.log_every=1",
    "runtime.device=cpu",
]
COLOURS = {"meadow": [120, 200, 60], "road": [90, 90, 90]}


def _class_raster(path: Path) -> Path:
    values = np.full((SIZE, SIZE), 1, np.uint8)  # meadow
    values[:, 50:70] = 2  # a road
    values[100:, :] = 0  # nodata
    ds = gdal.GetDriverByName("GTiff").Create(str(path), SIZE, SIZE, 1, gdal.GDT_Byte)
    ds.SetGeoTransform((ORIGIN[0], GSD, 0, ORIGIN[1], 0, -GSD))
    ds.SetProjection(utm().ExportToWkt())
    ds.GetRasterBand(1).SetNoDataValue(0)
    ds.GetRasterBand(1).WriteArray(values)
    ds = None
    return path


@pytest.fixture(scope="module")
def chips(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("own")
    det_image = write_image(base / "town.tif", seed=3, width=SIZE, height=SIZE)
    seg_image = write_image(base / "farm.tif", seed=4, width=SIZE, height=SIZE)
    rings = [[(8, 8), (30, 8), (30, 26), (8, 26)], [(70, 40), (90, 40), (90, 52), (70, 52)],
             [(20, 80), (50, 80), (50, 120), (20, 120)], [(100, 90), (120, 90), (110, 110)]]  # fmt: skip
    polygons = write_polygons(base / "buildings.gpkg", rings, ["house", "garage", "house", "garage"], field="type")
    classes = base / "classes.yaml"
    classes.write_text("\n".join(f"- {{name: {n}, value: {v}, colour: {c}}}" for v, (n, c) in
                                 enumerate(COLOURS.items(), start=1)))  # fmt: skip
    plan = SplitPlan("block", val=0.25, seed=1, block=64)
    out = {"det_image": det_image, "seg_image": seg_image}
    out["det"] = base / "det"
    chip_images([det_image], out["det"], LabelSource("det", str(polygons), "type"), size=64, stride=64, plan=plan,
                min_area=4)  # fmt: skip
    out["seg"] = base / "seg"
    chip_images([seg_image], out["seg"], LabelSource("seg", str(_class_raster(base / "landuse.tif")),
                classes_file=str(classes)), size=64, stride=64, plan=plan)  # fmt: skip
    return out


@pytest.mark.slow
def test_partial_labels_train_with_teachers_export_and_predict_with_user_classes(chips, tmp_path: Path):
    teachers = {}
    for task in ("det", "seg"):
        cfg = load_config(None, [*TINY, "model=models/student.yaml", f"tasks=[{task}]", f"data.{task}={chips[task]}",
                                 f"runtime.out={tmp_path / ('teacher_' + task)}"])  # fmt: skip
        teachers[task] = train(cfg).best_checkpoint
    cfg = load_config(
        Path("models/train/student_kd.yaml"),
        [*TINY, f"data.det={chips['det']}", f"data.seg={chips['seg']}", f"kd.det_teacher={teachers['det']}",
         f"kd.seg_teacher={teachers['seg']}", f"runtime.out={tmp_path / 'student'}"],
    )  # fmt: skip
    result = train(cfg)
    saved = torch.load(result.best_checkpoint, weights_only=True)
    assert saved["model_config"]["num_det_classes"] == 2 and saved["model_config"]["num_seg_classes"] == 2
    assert saved["metadata"]["det_classes"] == ["garage", "house"]
    assert saved["metadata"]["seg_classes"] == ["meadow", "road"]

    model = tmp_path / "own.onnx"
    export_checkpoint(result.best_checkpoint, model, tile_size=64, score_thresh=0.0)
    out = tmp_path / "pred"
    predict_raster(model, chips["det_image"], out / "classes.tif", out / "objects.gpkg")
    vector = ogr.Open(str(out / "objects.gpkg"))
    names = {f.GetField("class") for f in vector.GetLayer(0)}
    assert names and names <= {"garage", "house"}
    raster = gdal.Open(str(out / "classes.tif"))
    band = raster.GetRasterBand(1)
    assert json.loads(band.GetMetadataItem("CLASS_NAMES")) == ["meadow", "road"]
    table = band.GetRasterColorTable()
    assert [list(table.GetColorEntry(i)[:3]) for i in range(2)] == list(COLOURS.values())


def test_a_detection_chip_set_cannot_feed_the_segmentation_head(chips, tmp_path: Path):
    cfg = load_config(None, [*TINY, "tasks=[seg]", f"data.seg={chips['det']}", f"runtime.out={tmp_path}"])
    with pytest.raises(ConfigError, match=r"expected a chip dataset with seg labels, found one chipped for task .det."):
        train(cfg)
