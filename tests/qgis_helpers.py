"""Helpers for the QGIS provider tests: capture feedback, write tiny GeoTIFFs, run algorithms and qgis_process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from osgeo import gdal, osr
from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingFeedback, QgsProject

from engine.core.classes import PALETTE

REPO = Path(__file__).resolve().parent.parent
QGIS_PROCESS = "/usr/bin/qgis_process.bin"
VENV_PYTHON = REPO / ".venv" / "bin" / "python"


class CapturingFeedback(QgsProcessingFeedback):
    """Keeps everything an algorithm reports; optionally asks to cancel once a log line contains a text."""

    def __init__(self, cancel_on: str | None = None) -> None:
        super().__init__()
        self.infos: list[str] = []
        self.warnings: list[str] = []
        self.errors: list[str] = []
        self.console: list[str] = []
        self.status: list[str] = []
        self.progress_values: list[float] = []
        self.progressChanged.connect(self.progress_values.append)
        self._cancel_on = cancel_on

    def _maybe_cancel(self, text: str) -> None:
        if self._cancel_on is not None and self._cancel_on in text:
            self.cancel()

    def pushInfo(self, info: str) -> None:
        self.infos.append(info)
        self._maybe_cancel(info)

    def pushWarning(self, warning: str) -> None:
        self.warnings.append(warning)

    def reportError(self, error: str, fatalError: bool = False) -> None:
        self.errors.append(error)

    def setProgressText(self, text: str) -> None:
        self.status.append(text)

    def pushConsoleInfo(self, info: str) -> None:
        self.console.append(info)
        self._maybe_cancel(info)

    def text(self) -> str:
        return "\n".join(self.infos + self.warnings + self.errors + self.console)


def ensure_provider() -> Any:
    """Register the pmtl provider once in this process (as the plugin's initProcessing does) and return it."""
    registry = QgsApplication.processingRegistry()
    provider = registry.providerById("pmtl")
    if provider is None:
        from pmtl_qgis.plugin import PmtlPlugin

        plugin = PmtlPlugin(None)
        plugin.initProcessing()
        ensure_provider.plugin = plugin  # keep the Python object alive for the session
        provider = registry.providerById("pmtl")
    return provider


def run_algorithm(alg_id: str, parameters: dict[str, Any], feedback: QgsProcessingFeedback | None = None) -> dict:
    """``processing.run`` with a fresh context; raises QgsProcessingException as Processing does."""
    import processing

    ensure_provider()
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    return processing.run(alg_id, parameters, feedback=feedback or CapturingFeedback(), context=context)


def write_geotiff(
    path: Path,
    bands: np.ndarray,
    gsd: float = 0.09,
    origin: tuple[float, float] = (500000.0, 5400000.0),
    epsg: int = 32632,
) -> Path:
    """Write a (bands, H, W) array (uint8, uint16, …) as a georeferenced GeoTIFF (north-up, square pixels)."""
    from osgeo import gdal_array

    count, height, width = bands.shape
    kind = gdal_array.NumericTypeCodeToGDALTypeCode(bands.dtype)
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), width, height, count, kind)
    dataset.SetGeoTransform((origin[0], gsd, 0.0, origin[1], 0.0, -gsd))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    dataset.SetProjection(srs.ExportToWkt())
    for index in range(count):
        dataset.GetRasterBand(index + 1).WriteArray(bands[index])
    dataset.FlushCache()
    dataset = None
    return path


def label_rgb(mask: np.ndarray) -> np.ndarray:
    """ISPRS RGB coding (3, H, W) of a class-index mask."""
    return np.stack([np.asarray(PALETTE, dtype=np.uint8)[mask][..., c] for c in range(3)])


def scene(size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A tiny scene: low vegetation ground, one building block, one tree disc, one car; (image, mask)."""
    mask = np.full((size, size), 2, np.uint8)
    mask[10:40, 8:44] = 1
    yy, xx = np.mgrid[:size, :size]
    mask[(yy - 66) ** 2 + (xx - 64) ** 2 < 14**2] = 3
    mask[70:78, 12:32] = 4
    levels = np.array([[200, 60, 90, 40, 230, 150], [190, 80, 160, 120, 220, 60], [185, 90, 70, 60, 40, 60]], np.uint8)
    return levels[:, mask], mask


def qgis_process(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``qgis_process.bin ARGS`` (the Debian wrapper script is broken) and capture its output."""
    return subprocess.run([QGIS_PROCESS, *args], env=env, capture_output=True, text=True, timeout=timeout)


def installed_plugin_env(tmp: Path, python: Path | None) -> dict[str, str]:
    """Build the plugin zip, install it into a fresh profile under ``tmp`` and enable it with qgis_process.

    ``python``: the environment recorded for the plugin (None: QGIS's own Python, i.e. no torch).
    """
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import package_plugin
    finally:
        sys.path.remove(str(REPO / "scripts"))
    data_home = tmp / "xdg"
    profile = data_home / "QGIS" / "QGIS3" / "profiles" / "default"
    zip_path = package_plugin.build_zip(tmp / "dist" / "pmtl_qgis.zip")
    package_plugin.install(zip_path, profile, python, enable=False)
    # A clean QGIS: no custom config path (pytest-qgis sets one), no plugin path, no Python path from outside.
    env = {k: v for k, v in os.environ.items() if not k.startswith("QGIS_") and k not in ("PMTL_PYTHON", "PYTHONPATH")}
    env.update(QT_QPA_PLATFORM="offscreen", XDG_DATA_HOME=str(data_home), XDG_RUNTIME_DIR=str(tmp))
    enabled = qgis_process(["plugins", "enable", "pmtl_qgis"], env)
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr
    return env


PIPELINE_MODEL = REPO / "models" / "examples" / "pmtl_pipeline.model3"


def build_pipeline_model() -> Any:
    """The example graphical model: generate → chip → train → export → detect_segment → render_map.

    Kept as code so the .model3 can be regenerated: ``build_pipeline_model().toFile(str(PIPELINE_MODEL))``.
    """
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelParameter,
        QgsProcessingParameterEnum,
        QgsProcessingParameterNumber,
        QgsProcessingParameterString,
    )
    from qgis.core import QgsProcessingModelChildParameterSource as Source
    from qgis.PyQt.QtCore import QPointF

    ensure_provider()
    model = QgsProcessingModelAlgorithm("pmtl pipeline (synthetic demo)", "pmtl examples", "pmtl_pipeline")
    model.setHelpContent(
        {
            "ALG_DESC": "Generates a small synthetic ISPRS-like dataset, chips it, trains a tiny detection + "
            "segmentation network on it, exports it to ONNX, runs it on a held-out tile and renders the result "
            "as a PNG map. Leave an output empty to keep it as a temporary file.",
            "ALG_CREATOR": "pmtl",
        }
    )
    number = QgsProcessingParameterNumber
    inputs = [
        QgsProcessingParameterEnum("DOMAIN", "Domain", ["vaihingen", "potsdam"], defaultValue=0),
        number("SEED", "Random seed", number.Integer, 0, False, 0),
        number("TILES", "Number of tiles", number.Integer, 4, False, 2),
        number("TILE_SIZE_M", "Tile side (metres)", number.Double, 20.0, False, 6.0),
        number("CHIP_SIZE", "Chip size (px)", number.Integer, 128, False, 32),
        number("EPOCHS", "Epochs", number.Integer, 3, False, 1),
        QgsProcessingParameterString("TRAIN_OVERRIDES", "Training config overrides", "", optional=True),
    ]
    for index, parameter in enumerate(inputs):
        model.addModelParameter(parameter, QgsProcessingModelParameter(parameter.name()))
        model.parameterComponent(parameter.name()).setPosition(QPointF(120, 60 + 70 * index))

    def child(child_id: str, alg_id: str, x: float, y: float, sources: dict[str, Any]) -> Any:
        step = QgsProcessingModelChildAlgorithm(alg_id)
        step.setChildId(child_id)
        step.setDescription(child_id.replace("_", " "))
        step.setPosition(QPointF(x, y))
        for name, source in sources.items():
            step.addParameterSources(name, [source])
        return step

    param, out, static = Source.fromModelParameter, Source.fromChildOutput, Source.fromStaticValue
    steps = [
        child(
            "generate",
            "pmtl:generate_synthetic",
            420,
            80,
            {name: param(name) for name in ("DOMAIN", "SEED", "TILES", "TILE_SIZE_M")},
        ),
        child(
            "chip",
            "pmtl:chip_isprs",
            420,
            200,
            {
                "INPUT_FOLDER": out("generate", "OUTPUT"),
                "DATASET": param("DOMAIN"),
                "SIZE": param("CHIP_SIZE"),
                "STRIDE": param("CHIP_SIZE"),
            },
        ),
        child(
            "train",
            "pmtl:train",
            420,
            320,
            {
                "DET_DATA": out("chip", "OUTPUT"),
                "SEG_DATA": out("chip", "OUTPUT"),
                "MODEL": static(1),
                "KD": static(1),
                "EPOCHS": param("EPOCHS"),
                "OVERRIDES": param("TRAIN_OVERRIDES"),
            },
        ),
        child("export", "pmtl:export_onnx", 420, 440, {"CHECKPOINT": out("train", "CHECKPOINT")}),
        child(
            "detect",
            "pmtl:detect_segment",
            420,
            560,
            {"INPUT": out("generate", "IMAGE"), "MODEL": out("export", "OUTPUT")},
        ),
        child(
            "render",
            "pmtl:render_map",
            420,
            680,
            {
                "INPUT": out("generate", "IMAGE"),
                "CLASS_MAP": out("detect", "OUTPUT_RASTER"),
                "DETECTIONS": out("detect", "OUTPUT_DETECTIONS"),
            },
        ),
    ]
    outputs = {
        "generate": {"OUTPUT": ("dataset", "Synthetic dataset")},
        "chip": {"OUTPUT": ("chips", "Chip dataset")},
        "train": {"OUTPUT": ("checkpoints", "Checkpoints")},
        "export": {"OUTPUT": ("onnx_model", "ONNX model")},
        "detect": {"OUTPUT_RASTER": ("class_map", "Class map"), "OUTPUT_DETECTIONS": ("detections", "Detections")},
        "render": {"OUTPUT": ("map", "Map image (PNG)")},
    }
    add_steps(model, steps, outputs)
    return model


def add_steps(model: Any, steps: list[Any], outputs: dict[str, dict[str, tuple[str, str]]]) -> None:
    """Add child algorithms to ``model`` with their model outputs (child id → {child output: (name, description)});
    every mandatory input a step was given no source for gets the algorithm's default as a static value, as the
    modeler's dialog does (a model without them does not validate)."""
    from qgis.core import QgsProcessingModelChildParameterSource, QgsProcessingModelOutput
    from qgis.PyQt.QtCore import QPointF

    for step in steps:
        algorithm = QgsApplication.processingRegistry().algorithmById(step.algorithmId())
        for definition in algorithm.parameterDefinitions():
            optional = definition.flags() & definition.FlagOptional
            if definition.isDestination() or optional or definition.name() in step.parameterSources():
                continue
            default = QgsProcessingModelChildParameterSource.fromStaticValue(definition.defaultValue())
            step.addParameterSources(definition.name(), [default])
        for index, (child_output, (name, description)) in enumerate(outputs.get(step.childId(), {}).items()):
            output = QgsProcessingModelOutput(name, description)
            output.setChildId(step.childId())
            output.setChildOutputName(child_output)
            output.setPosition(QPointF(700 + 60 * index, step.position().y() + 40 * index))
            step.setModelOutputs({**step.modelOutputs(), name: output})
        model.addChildAlgorithm(step)
    model.updateDestinationParameters()


MANY_RASTERS_MODEL = REPO / "models" / "examples" / "pmtl_detect_many_rasters.model3"


def build_many_rasters_model() -> Any:
    """The example model for many rasters: a virtual mosaic of the rasters (GDAL) → detect_segment over it, so the
    detections of neighbouring rasters are merged across their seams. Regenerate the .model3 with
    ``build_many_rasters_model().toFile(str(MANY_RASTERS_MODEL))``."""
    from qgis.core import (
        QgsProcessing,
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelParameter,
        QgsProcessingParameterFile,
        QgsProcessingParameterMultipleLayers,
    )
    from qgis.core import QgsProcessingModelChildParameterSource as Source
    from qgis.PyQt.QtCore import QPointF

    ensure_provider()
    model = QgsProcessingModelAlgorithm("pmtl: detect over many rasters", "pmtl examples", "pmtl_detect_many_rasters")
    model.setHelpContent(
        {
            "ALG_DESC": "Runs an exported pmtl model over many orthophoto tiles at once: GDAL builds a virtual "
            "mosaic of the rasters (no copy of the pixels), 'Detect and segment' runs over it, so there is one class "
            "map and one detections layer, and objects cut by tile edges are reported once. For a separate result "
            "per raster, use Batch Processing on 'Detect and segment' instead.",
            "ALG_CREATOR": "pmtl",
        }
    )
    inputs = [
        QgsProcessingParameterMultipleLayers("RASTERS", "Orthophoto tiles", QgsProcessing.TypeRaster),
        QgsProcessingParameterFile("MODEL", "ONNX model", fileFilter="ONNX models (*.onnx)"),
    ]
    for index, parameter in enumerate(inputs):
        model.addModelParameter(parameter, QgsProcessingModelParameter(parameter.name()))
        model.parameterComponent(parameter.name()).setPosition(QPointF(120, 60 + 80 * index))
    mosaic = QgsProcessingModelChildAlgorithm("gdal:buildvirtualraster")
    mosaic.setChildId("mosaic")
    mosaic.setDescription("Virtual mosaic of the tiles")
    mosaic.setPosition(QPointF(420, 80))
    mosaic.addParameterSources("INPUT", [Source.fromModelParameter("RASTERS")])
    mosaic.addParameterSources("SEPARATE", [Source.fromStaticValue(False)])  # one band per colour, not per file
    detect = QgsProcessingModelChildAlgorithm("pmtl:detect_segment")
    detect.setChildId("detect")
    detect.setDescription("Detect and segment")
    detect.setPosition(QPointF(420, 220))
    detect.addParameterSources("INPUT", [Source.fromChildOutput("mosaic", "OUTPUT")])
    detect.addParameterSources("MODEL", [Source.fromModelParameter("MODEL")])
    outputs = {
        "detect": {"OUTPUT_RASTER": ("class_map", "Class map"), "OUTPUT_DETECTIONS": ("detections", "Detections")}
    }
    add_steps(model, [mosaic, detect], outputs)
    return model


def tiny_onnx_model(
    path: Path,
    seg_classes: tuple[str, ...] = ("impervious", "building", "low_vegetation", "tree", "car", "clutter"),
    det_classes: tuple[str, ...] = ("building", "tree", "car"),
    seg_colors: list[list[int]] | None = None,
    det_colors: list[list[int]] | None = None,
    tile: int = 32,
    datasets: dict[str, Any] | None = None,
) -> Path:
    """A small untrained network with both heads exported through the real exporter (a second or so), with the
    given class colours in its metadata (default: the engine's colours for the names) and, when given, the training
    ``datasets`` it records (task → {dataset, gsd, bands})."""
    import torch
    from torch import nn

    from engine.core.modelio import class_colors
    from engine.export.onnx_export import export_onnx

    class TinyNet(nn.Module):
        """Per-pixel seg logits from a 1×1 conv; one anchor every 8 px with per-class scores from a pooled conv."""

        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.seg = nn.Conv2d(3, len(seg_classes), 1)
            self.det = nn.Conv2d(3, len(det_classes), 1)

        def anchors_for(self, image_hw: tuple[int, int], device: str | None = None) -> torch.Tensor:
            h, w = image_hw
            ys, xs = torch.meshgrid(torch.arange(h // 8) * 8.0, torch.arange(w // 8) * 8.0, indexing="ij")
            return torch.stack([xs, ys, xs + 8, ys + 8], dim=-1).reshape(-1, 4)

        def forward(self, images: torch.Tensor) -> dict[str, Any]:
            cls = nn.functional.avg_pool2d(self.det(images), 8).flatten(2).transpose(1, 2)
            return {
                "features": [],
                "cls_logits": cls,
                "box_deltas": torch.zeros(*cls.shape[:2], 4),
                "seg_logits": self.seg(images),
            }

    describe = {
        "bands": ["red", "green", "blue"],
        "value_scaling": {"dtype": "uint8", "max": 255.0},
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "gsd": 0.09,
        "seg_classes": list(seg_classes),
        "palette": seg_colors or [list(c) for c in class_colors(seg_classes)],
        "det_classes": list(det_classes),
        **({"det_palette": det_colors} if det_colors else {}),
        **({"datasets": datasets} if datasets else {}),
    }
    export_onnx(TinyNet(), path, describe, tile, overlap=4, score_thresh=0.5)
    return path
