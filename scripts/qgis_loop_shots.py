"""The correct-and-retrain loop of the QGIS user guide, as screenshots (docs/img/loop_*.png): detect → edit the
Detections layer → 'Improve a model with corrected labels' → detect again. Used by qgis_screenshots.py
(``--loop-model CKPT``): :func:`prepare` runs outside QGIS in the venv, :class:`LoopSteps` inside QGIS.

The scene is a synthetic Potsdam-like tile, so the edits follow its ground truth: the detection that overlaps no
object of its class is deleted, an object no box found is drawn, a box whose object is of another class gets that
class. The edits are made through the QGIS API on the layer in edit mode, as the map tools would make them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent if "__file__" in globals() else Path(".")
LOOP_STEPS = 10
"""Fine-tuning steps shown in the pictures: enough to run the loop, not to improve a model."""
LOOP_CHIP = 96
"""Chip side of the fine-tuning in the pictures: the tile is small (64 m), 96 px chips leave some to hold out."""
SCORE = 0.3
"""One score threshold for both detections layers, so that the two pictures compare (else each model shows its
boxes at the thresholds recorded in it)."""
ORTHO_NAME = "ortho (R-G-B, Potsdam-like)"


def prepare(checkpoint: Path, work: Path) -> dict[str, str]:
    """Outside QGIS: a Potsdam-like tile, the model's ONNX (its metadata names ``checkpoint``) and the tile's true
    boxes in map coordinates (truth.json); returns the environment the steps inside QGIS read."""
    from engine.export.onnx_export import export_checkpoint

    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "engine.synth", "--domain", "potsdam", "--out", str(work / "potsdam"), "--seed", "3",
         "--tiles", "1", "--tile-size-m", "64"],
        cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    ortho = next((work / "potsdam").rglob("2_Ortho_RGB/*.tif"))
    label = next((work / "potsdam").rglob("5_Labels_all/*.tif"))
    model = work / "model.onnx"
    export_checkpoint(checkpoint.resolve(), model, tile_size=256)
    (work / "truth.json").write_text(json.dumps(true_boxes(label)))
    return {"PMTL_LOOP_ORTHO": str(ortho), "PMTL_LOOP_MODEL": str(model), "PMTL_LOOP_WORK": str(work)}


def true_boxes(label: Path) -> list[dict[str, Any]]:
    """The label raster's objects as map-coordinate boxes ``{"class", "box": [x0, y0, x1, y1]}``."""
    from osgeo import gdal

    from engine.core.classes import DET_CLASSES
    from engine.data.boxes import boxes_from_mask
    from engine.data.isprs import read_label

    x, dx, _, y, _, dy = gdal.Open(str(label)).GetGeoTransform()
    boxes, classes = boxes_from_mask(read_label(label, boundary_is_ignore=False).mask)
    return [
        {"class": DET_CLASSES[int(c)], "box": [x + b[0] * dx, y + b[3] * dy, x + b[2] * dx, y + b[1] * dy]}
        for b, c in zip(boxes.tolist(), classes)
    ]


def iou(a: list[float], b: list[float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def plan_edits(detections: list[dict[str, Any]], truth: list[dict[str, Any]]) -> dict[str, Any]:
    """What a user would correct: ``delete`` (id of the lowest-scored box on no object of its class), ``draw`` (the
    largest object no box overlaps, else None), ``reclass`` ((id, class) of a box on an object of another class)."""
    best = {d["id"]: max(truth, key=lambda t: iou(d["box"], t["box"]), default=None) for d in detections}
    false = [d for d in detections if not best[d["id"]] or iou(d["box"], best[d["id"]]["box"]) < 0.3]
    delete = min(false or detections, key=lambda d: d["score"])["id"] if detections else None
    missed = [t for t in truth if all(iou(t["box"], d["box"]) < 0.1 for d in detections)]
    draw = max(missed, key=lambda t: (t["class"] == "building", _area(t["box"])), default=None)
    wrong = [
        (d["id"], best[d["id"]]["class"])
        for d in detections
        if d["id"] != delete and best[d["id"]] and iou(d["box"], best[d["id"]]["box"]) >= 0.3
        and best[d["id"]]["class"] != d["class"]
    ]  # fmt: skip
    return {"delete": delete, "draw": draw, "reclass": wrong[0] if wrong else None}


def _area(box: list[float]) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


class LoopSteps:
    """Inside QGIS: the loop's steps, each a method the screenshot driver calls on its timer."""

    def __init__(self, iface: Any, out: Path, env: dict[str, str]) -> None:
        self.iface, self.out = iface, out
        self.ortho, self.model, self.work = env["PMTL_LOOP_ORTHO"], env["PMTL_LOOP_MODEL"], Path(env["PMTL_LOOP_WORK"])
        self.detections: Any = None

    def steps(self) -> list[Any]:
        return [self.load, self.detect, lambda: self.shoot_map("loop_1_detections"), self.edit,
                lambda: self.shoot_map("loop_2_edited"), self.commit, self.open_finetune, self.shoot_finetune,
                self.improve, lambda: self.shoot_map("loop_4_detections_improved")]  # fmt: skip

    def load(self) -> None:
        from qgis.core import QgsProject

        root = QgsProject.instance().layerTreeRoot()
        for layer in QgsProject.instance().mapLayers().values():
            root.findLayer(layer.id()).setItemVisibilityChecked(False)
        layer = self.iface.addRasterLayer(self.ortho, ORTHO_NAME)
        self.iface.mapCanvas().setExtent(layer.extent())

    def detect(self, model: str | None = None, name: str = "Detections") -> None:
        """'Detect and segment' on the ortho; the Detections layer joins the map (the class map stays unloaded)."""
        import processing
        from qgis.core import QgsProject

        from pmtl_qgis.styling import apply_detection_style

        tag = "improved" if model else "start"
        result = processing.run(
            "pmtl:detect_segment",
            {"INPUT": self._ortho_layer().id(), "MODEL": model or self.model,
             "OUTPUT_RASTER": str(self.work / f"classes_{tag}.tif"),
             "OUTPUT_DETECTIONS": str(self.work / f"detections_{tag}.gpkg"), "SCORE_THRESHOLD": SCORE},
        )  # fmt: skip
        if self.detections is not None:
            QgsProject.instance().layerTreeRoot().findLayer(self.detections.id()).setItemVisibilityChecked(False)
        self.detections = self.iface.addVectorLayer(result["OUTPUT_DETECTIONS"], name, "ogr")
        apply_detection_style(self.detections)
        self.iface.setActiveLayer(self.detections)

    def _ortho_layer(self) -> Any:
        from qgis.core import QgsProject

        return QgsProject.instance().mapLayersByName(ORTHO_NAME)[0]

    def edit(self) -> None:
        """Start editing; delete the false box, draw the missed object, change a wrong class (printed)."""
        layer = self.detections
        truth = json.loads((self.work / "truth.json").read_text())
        boxes = [{"id": f.id(), "class": f["class"], "score": f["score"], "box": _bounds(f.geometry())}
                 for f in layer.getFeatures()]  # fmt: skip
        edits = plan_edits(boxes, truth)
        print(f"loop edits on {len(boxes)} detections: {edits}", file=sys.stderr)
        layer.startEditing()
        if edits["delete"] is not None:
            layer.deleteFeature(edits["delete"])
        if edits["reclass"]:
            fid, name = edits["reclass"]
            layer.changeAttributeValue(fid, layer.fields().indexOf("class"), name)
            layer.selectByIds([fid])
        if edits["draw"]:
            self._draw(layer, edits["draw"])
        self.iface.mapCanvas().refresh()

    def _draw(self, layer: Any, target: dict[str, Any]) -> None:
        from qgis.core import QgsFeature, QgsGeometry, QgsRectangle

        feature = QgsFeature(layer.fields())
        feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(*target["box"])))
        feature["class"] = target["class"]
        layer.addFeature(feature)

    def commit(self) -> None:
        self.detections.commitChanges()
        self.detections.removeSelection()

    def open_finetune(self) -> None:
        import processing

        self.dialog = processing.createAlgorithmDialog("pmtl:finetune", self._finetune_parameters())
        self.dialog.resize(980, 720)
        self.dialog.show()

    def _finetune_parameters(self) -> dict[str, Any]:
        return {"INPUT": self._ortho_layer().id(), "LABELS": self.detections.id(), "CLASS_FIELD": "class",
                "MODEL": self.model, "STEPS": LOOP_STEPS, "SIZE": LOOP_CHIP,
                "OUTPUT": str(self.work / "improved")}  # fmt: skip

    def shoot_finetune(self) -> None:
        from qgis_desktop import grab

        grab(self.dialog, self.out / "loop_3_improve_dialog.png")
        self.dialog.close()

    def improve(self) -> None:
        """Run the fine-tuning (the engine subprocess), then 'Detect and segment' with the improved model."""
        import processing

        result = processing.run("pmtl:finetune", self._finetune_parameters())
        print(f"loop: improved model {result['OUTPUT_MODEL']}, scores {result['SCORES']}", file=sys.stderr)
        self.detect(result["OUTPUT_MODEL"], "Detections (improved model)")

    def shoot_map(self, name: str) -> None:
        """The main window with the map, once the canvas has redrawn."""
        from qgis.PyQt.QtCore import QTimer
        from qgis_desktop import grab

        canvas = self.iface.mapCanvas()
        canvas.setExtent(self._ortho_layer().extent())  # the whole tile, whatever the window's size was at load
        canvas.refreshAllLayers()
        QTimer.singleShot(1500, lambda: grab(self.iface.mainWindow(), self.out / f"{name}.png"))


def _bounds(geometry: Any) -> list[float]:
    box = geometry.boundingBox()
    return [box.xMinimum(), box.yMinimum(), box.xMaximum(), box.yMaximum()]
