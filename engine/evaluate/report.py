"""Metric reports: JSON written atomically, a short text table for terminals and logs, and shared helpers.

Undefined values (a class absent from the ground truth) are ``None`` in the metric dicts and ``null`` in the JSON,
never NaN, so every report is strict JSON.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from engine.core.atomic import write_json_atomic


def mean_defined(values: Sequence[float | None]) -> float | None:
    """Mean of the values that are defined (not ``None``); ``None`` if there are none."""
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def gather_distributed(obj: Any) -> list[Any] | None:
    """Every torch.distributed rank's ``obj`` (picklable, CPU), or ``None`` when no process group is running.

    With NCCL the caller must have set its CUDA device first (as DDP training does).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def to_jsonable(value: Any) -> Any:
    """Plain-JSON copy of ``value``: numpy/torch scalars and arrays become numbers/lists, NaN/inf become None."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report(path: str | os.PathLike[str], metrics: Mapping[str, Any]) -> None:
    """Write ``metrics`` as strict JSON (NaN → null), atomically so a crash never leaves half a report."""
    write_json_atomic(path, to_jsonable(metrics))


def _num(value: Any, width: int = 6) -> str:
    return f"{value:{width}.4f}" if isinstance(value, (int, float)) else f"{'n/a':>{width}}"


def _segmentation_table(m: Mapping[str, Any]) -> list[str]:
    lines = [
        f"segmentation: mIoU {_num(m.get('miou'))}  OA {_num(m.get('oa'))}  mean F1 {_num(m.get('mean_f1'))}"
        f"  ({m.get('num_pixels', '?')} px)",
        f"  {'class':<16}{'IoU':>8}{'F1':>8}",
    ]
    for name in m.get("classes", list(m.get("iou", {}))):
        lines.append(f"  {name:<16}  {_num(m['iou'].get(name))}  {_num(m.get('f1', {}).get(name))}")
    return lines


def _detection_table(m: Mapping[str, Any]) -> list[str]:
    lines = [
        f"detection: mAP@[.5:.95] {_num(m.get('map'))}  AP50 {_num(m.get('ap50'))}  AP75 {_num(m.get('ap75'))}"
        f"  ({m.get('num_images', '?')} images)",
        f"  {'class':<16}{'mAP':>8}{'AP50':>8}{'AP75':>8}{'#gt':>7}{'#pred':>7}",
    ]
    for name, c in m["per_class"].items():
        lines.append(
            f"  {name:<16}  {_num(c.get('map'))}  {_num(c.get('ap50'))}  {_num(c.get('ap75'))}"
            f"{c.get('num_gt', 0):>7}{c.get('num_pred', 0):>7}"
        )
    return lines


def _table_lines(metrics: Mapping[str, Any], title: str = "") -> list[str]:
    if "miou" in metrics and "iou" in metrics:
        lines = _segmentation_table(metrics)
    elif "map" in metrics and "per_class" in metrics:
        lines = _detection_table(metrics)
    else:
        lines = []
        for key, value in metrics.items():
            if isinstance(value, Mapping):
                lines += _table_lines(value, f"{title}/{key}" if title else str(key))
        return lines
    if title:
        lines[0] = f"[{title}] {lines[0]}"
    return lines


def format_table(metrics: Mapping[str, Any]) -> str:
    """Short human summary of a segmentation or detection metrics dict, or of a dict nesting several of them."""
    lines = _table_lines(metrics)
    return "\n".join(lines) if lines else "(no metrics)"
