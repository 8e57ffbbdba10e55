"""Networks: ResNet backbones, FPN/PAFPN necks, anchors + box coder + assignment, heads, post-processing.

Contract (docs/ARCHITECTURE.md, "Model interface"): ``build_model(cfg) -> MultiTaskNet``; ``forward(images)``
returns "features" (P3..P6), "cls_logits" (B, A, C), "box_deltas" (B, A, 4), "seg_logits" (B, C, H, W);
``anchors_for((H, W))`` gives the (A, 4) xyxy anchors in the same order.
"""

from engine.models.adapters import FeatureAdapters
from engine.models.anchors import IGNORE, NEGATIVE, AnchorGenerator, Assignment, assign, decode, encode
from engine.models.config import ModelConfig, load_model_config
from engine.models.network import MultiTaskNet, build_model, count_parameters, parameter_counts
from engine.models.postprocess import postprocess_detections

__all__ = [
    "IGNORE",
    "NEGATIVE",
    "AnchorGenerator",
    "Assignment",
    "FeatureAdapters",
    "ModelConfig",
    "MultiTaskNet",
    "assign",
    "build_model",
    "count_parameters",
    "decode",
    "encode",
    "load_model_config",
    "parameter_counts",
    "postprocess_detections",
]
