"""One Processing algorithm per module; ALGORITHMS lists them for the provider."""

from .chip_isprs import ChipIsprs
from .chip_isprs_raster import ChipIsprsRaster
from .chip_own_labels import ChipOwnLabels
from .chip_unlabelled import ChipUnlabelled
from .detect_segment import DetectSegment
from .detect_segment_region import DetectSegmentRegion
from .evaluate import Evaluate
from .export_onnx import ExportOnnx
from .finetune import Finetune
from .generate_synthetic import GenerateSynthetic
from .install_dependencies import InstallDependencies
from .render_map import RenderMap
from .train import Train

ALGORITHMS = (
    GenerateSynthetic,
    ChipIsprs,
    ChipIsprsRaster,
    ChipOwnLabels,
    ChipUnlabelled,
    Train,
    Finetune,
    ExportOnnx,
    DetectSegment,
    DetectSegmentRegion,
    Evaluate,
    RenderMap,
    InstallDependencies,
)

__all__ = [
    "ALGORITHMS",
    "ChipIsprs",
    "ChipIsprsRaster",
    "ChipOwnLabels",
    "ChipUnlabelled",
    "DetectSegment",
    "DetectSegmentRegion",
    "Evaluate",
    "ExportOnnx",
    "Finetune",
    "GenerateSynthetic",
    "InstallDependencies",
    "RenderMap",
    "Train",
]
