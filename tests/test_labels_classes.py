"""User class tables: manifest → training metadata → ONNX metadata → ModelInfo → predict outputs (names, colours)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import torch
from osgeo import gdal, ogr
from testmodels import anchors_every_4px, bright_square_score
from torch import Tensor, nn

from engine.core.classes import ISPRS_DET, ISPRS_SEG, PALETTE, ClassTable, tables_from_manifest
from engine.export.onnx_export import export_onnx
from engine.predict import predict_raster
from engine.predict.model import OnnxModel
from engine.train.loop import class_metadata
from engine.train.setup import head_sizes
from tests.test_predict import GSD, TILE, read_detections, scene, write_tif

gdal.UseExceptions()

SEG = ClassTable(("background", "roof"), ((200, 200, 200), (180, 30, 40)), (None, "roof"))
DET = ClassTable(("shed", "house"), ((10, 20, 30), (250, 128, 0)))
SEG_MANIFEST = {"task": "seg", "seg_classes": list(SEG.names), "palette": [list(c) for c in SEG.colors],
                "det_classes": []}  # fmt: skip
DET_MANIFEST = {"task": "det", "seg_classes": [], "palette": [], "det_classes": list(DET.names),
                "det_palette": [list(c) for c in DET.colors]}  # fmt: skip


class HouseNet(nn.Module):
    """Known answers for two user classes: 'house' fires on bright 16 px squares, seg says 'roof' on bright pixels."""

    def anchors_for(self, image_hw: tuple[int, int], device: str | None = None) -> Tensor:
        return anchors_every_4px(image_hw)

    def forward(self, images: Tensor) -> dict[str, Tensor | list[Tensor]]:
        bright = images.mean(dim=1, keepdim=True)
        house = bright_square_score(bright)
        cls = torch.cat([torch.full_like(house, -20.0), house], dim=-1)
        seg = torch.cat([torch.zeros_like(bright), 20.0 * (bright - 0.5)], 1)
        return {"features": [], "cls_logits": cls, "box_deltas": torch.zeros(*cls.shape[:2], 4), "seg_logits": seg}


def test_class_table_records_round_trip_and_isprs_fallbacks():
    assert ClassTable.from_records(SEG.to_records()) == SEG
    seg, det = tables_from_manifest({"seg_classes": list(ISPRS_SEG.names), "palette": [list(c) for c in PALETTE],
                                     "det_classes": list(ISPRS_DET.names)})  # fmt: skip
    # an ISPRS manifest written before det_palette existed: detection colours are those of the same-named class
    assert det.colors == ISPRS_DET.colors == (PALETTE[1], PALETTE[3], PALETTE[4])
    assert seg.names == ISPRS_SEG.names
    assert tables_from_manifest(DET_MANIFEST)[1] == DET


def test_heads_and_checkpoint_classes_come_from_each_tasks_manifest():
    manifests = {"det": DET_MANIFEST, "seg": SEG_MANIFEST}
    assert head_sizes(manifests) == {"num_det_classes": 2, "num_seg_classes": 2}
    assert head_sizes({"det": DET_MANIFEST}) == {"num_det_classes": 2}
    meta = class_metadata(manifests)
    assert meta == {
        "seg_classes": ["background", "roof"],
        "seg_colors": [[200, 200, 200], [180, 30, 40]],
        "det_classes": ["shed", "house"],
        "det_colors": [[10, 20, 30], [250, 128, 0]],
    }


def test_user_classes_reach_onnx_metadata_and_every_predict_output(tmp_path: Path):
    description = {
        "bands": ["pan"],
        "value_scaling": {"dtype": "uint16", "max": 2047.0},
        "mean": [0.0],
        "std": [1.0],
        "gsd": GSD,
        **class_metadata({"det": DET_MANIFEST, "seg": SEG_MANIFEST}),
    }
    model = tmp_path / "house.onnx"
    export_onnx(HouseNet(), model, description, TILE, overlap=16, score_thresh=0.5)
    props = {p.key: json.loads(p.value) for p in onnx.load(str(model)).metadata_props}
    assert props["seg"]["classes"] == ["background", "roof"]
    assert props["seg"]["colors"] == [[200, 200, 200], [180, 30, 40]]
    assert props["det"]["classes"] == ["shed", "house"]
    assert props["det"]["colors"] == [[10, 20, 30], [250, 128, 0]]
    assert props["class_names"] == {"0": "background", "1": "roof"}  # Deepness
    info = OnnxModel(model).info
    assert info.head("seg").colors == ((200, 200, 200), (180, 30, 40)) and info.head("det").colors == (
        (10, 20, 30),
        (250, 128, 0),
    )

    image = scene(96, 100, [(20, 24), (60, 60)], bands=1).astype(np.uint16) * 8  # 1-band uint16 "pan"
    src = write_tif(tmp_path / "pan.tif", image)
    predict_raster(model, src, tmp_path / "seg.tif", tmp_path / "det.gpkg", out_polygons=tmp_path / "poly.gpkg")
    detections = ogr.Open(str(tmp_path / "det.gpkg"))
    layer_meta = detections.GetLayer(0).GetMetadata()
    assert json.loads(layer_meta["CLASS_NAMES"]) == ["shed", "house"]
    assert json.loads(layer_meta["CLASS_COLORS"]) == [[10, 20, 30], [250, 128, 0]]
    rows, _ = read_detections(tmp_path / "det.gpkg")
    assert sorted((r["class"], r["class_id"]) for r in rows) == [("house", 1), ("house", 1)]
    seg_ds = gdal.Open(str(tmp_path / "seg.tif"))
    band = seg_ds.GetRasterBand(1)
    table = band.GetRasterColorTable()
    assert [table.GetColorEntry(i)[:3] for i in range(2)] == [(200, 200, 200), (180, 30, 40)]
    assert json.loads(band.GetMetadataItem("CLASS_NAMES")) == ["background", "roof"]
    assert int((band.ReadAsArray() == 1).sum()) == 2 * 16 * 16
    polygons = ogr.Open(str(tmp_path / "poly.gpkg"))
    assert {f.GetField("class") for f in polygons.GetLayer(0)} == {"background", "roof"}
