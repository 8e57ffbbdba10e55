"""Evaluation metrics: segmentation confusion matrix (IoU, OA, F1) and VOC all-point detection mAP (REFERENCE §2).

Training and the ``python -m engine.evaluate`` CLI feed :class:`SegmentationMeter` / :class:`DetectionMeter` batch
by batch, then :func:`write_report` / :func:`format_table` the result of ``compute()``.
"""

from engine.evaluate.detection import DEFAULT_IOU_THRESHOLDS, DetectionMeter, all_point_ap, match_detections
from engine.evaluate.report import format_table, to_jsonable, write_report
from engine.evaluate.segmentation import SegmentationMeter

__all__ = [
    "DEFAULT_IOU_THRESHOLDS",
    "DetectionMeter",
    "SegmentationMeter",
    "all_point_ap",
    "format_table",
    "match_detections",
    "to_jsonable",
    "write_report",
]
