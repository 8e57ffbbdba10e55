"""One Processing algorithm per module; ALGORITHMS lists them for the provider."""

from .chip_tiles import ChipTiles
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
    ChipTiles,
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
    "ChipTiles",
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
