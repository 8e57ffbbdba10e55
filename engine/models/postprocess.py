"""Detection post-processing, outside ``forward`` (and outside the ONNX graph): decode, score filter, NMS."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image

from engine.models.anchors import DEFAULT_VARIANCES, decode


def postprocess_detections(
    cls_logits: Tensor,
    box_deltas: Tensor,
    anchors: Tensor,
    image_hw: tuple[int, int] | None = None,
    score_threshold: float = 0.05,
    iou_threshold: float = 0.5,
    pre_nms_top_k: int | None = None,
    max_detections: int | None = None,
    variances: tuple[float, float] = DEFAULT_VARIANCES,
) -> list[dict[str, Tensor]]:
    """Per image {"boxes" (N, 4) xyxy px float32, "scores" (N,), "labels" (N,) long}, sorted by score.

    Each (anchor, class) pair scoring at least ``score_threshold`` is a candidate (sigmoid scores: one anchor may
    yield several classes); ``pre_nms_top_k`` keeps the best candidates before NMS (speed), per-class NMS at
    ``iou_threshold``, then at most ``max_detections`` (None = no cap, the evaluation protocol of REFERENCE §2).
    Boxes are clipped to ``image_hw`` when given.
    """
    num_classes = cls_logits.shape[-1]
    scores_all = torch.sigmoid(cls_logits.float())
    results: list[dict[str, Tensor]] = []
    for scores_img, deltas_img in zip(scores_all, box_deltas):
        flat = scores_img.reshape(-1)
        keep = torch.nonzero(flat >= score_threshold).squeeze(1)
        scores = flat[keep]
        if pre_nms_top_k is not None and scores.numel() > pre_nms_top_k:
            scores, order = scores.topk(pre_nms_top_k)
            keep = keep[order]
        anchor_idx = torch.div(keep, num_classes, rounding_mode="floor")
        labels = keep % num_classes
        boxes = decode(deltas_img[anchor_idx], anchors[anchor_idx], variances)
        if image_hw is not None:
            boxes = clip_boxes_to_image(boxes, (int(image_hw[0]), int(image_hw[1])))
        kept = batched_nms(boxes, scores, labels, iou_threshold)  # sorted by decreasing score
        if max_detections is not None:
            kept = kept[:max_detections]
        results.append({"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept]})
    return results
