"""Export a MultiTaskNet (or any module with the same output dict) to ONNX with decoding in the graph + metadata.

Graph contract (also in metadata.schema.json): input ``images`` float32 (B, C, T, T), already scaled and
standardised; outputs ``seg_logits`` (B, S, T, T), ``det_scores`` (B, A, D) sigmoid, ``det_boxes`` (B, A, 4) xyxy
tile pixels (anchors baked in for the tile size T). Dynamic batch, fixed tile size (what Deepness expects too).
The ``deepness`` variant has one output ``seg_probs`` (softmax), the single-output form Deepness can load.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from engine.core import modelio as md
from engine.core.atomic import atomic_path
from engine.core.errors import ConfigError, InputError, param_ref
from engine.core.options import ChipOptions, default_of
from engine.core.progress import Progress
from engine.export.quantize import ChipSource, check_precision, convert_precision, store_metadata
from engine.models.anchors import DEFAULT_VARIANCES, decode

VARIANTS: tuple[str, ...] = ("full", "deepness")
DEFAULT_OPSET: int = 18
BATCH_DIM: str = "batch"
"""The one symbolic dimension of every input and output."""


class ExportWrapper(nn.Module):
    """Turns the training-time output dict into the graph outputs: sigmoid scores, decoded boxes, seg maps."""

    def __init__(
        self,
        model: nn.Module,
        tasks: Sequence[str],
        anchors: Tensor | None,
        variances: tuple[float, float] = DEFAULT_VARIANCES,
        variant: str = "full",
    ) -> None:
        super().__init__()
        self.model = model
        self.seg = "seg" in tasks
        self.det = "det" in tasks and variant == "full"
        self.seg_probs = variant == "deepness"
        self.variances = (float(variances[0]), float(variances[1]))
        self.register_buffer("anchors", anchors if anchors is not None else torch.zeros(0, 4), persistent=False)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out = self.model(images)
        results: list[Tensor] = []
        if self.seg:
            seg = out["seg_logits"]
            results.append(torch.softmax(seg, dim=1) if self.seg_probs else seg)
        if self.det:
            results.append(torch.sigmoid(out["cls_logits"]))
            results.append(decode(out["box_deltas"], self.anchors, self.variances))
        return tuple(results)


def output_specs(
    tasks: Sequence[str], variant: str, num_seg: int, num_det: int, tile: int, num_anchors: int
) -> dict[str, dict]:
    """The metadata ``outputs`` entry for a graph exported with these options (order = graph output order).

    Every dimension but the batch is a number: Deepness (and other readers) size their buffers from the declared
    output shapes, so a symbolic channel dimension breaks them."""
    specs: dict[str, dict] = {}
    if "seg" in tasks:
        name, kind = (md.SEG_PROBS, "probabilities") if variant == "deepness" else (md.SEG_LOGITS, "logits")
        specs[name] = {"task": "seg", "kind": kind, "shape": [BATCH_DIM, num_seg, tile, tile]}
    if "det" in tasks and variant == "full":
        shape = [BATCH_DIM, num_anchors, num_det]
        specs[md.DET_SCORES] = {"task": "det", "kind": "sigmoid_scores", "shape": shape}
        specs[md.DET_BOXES] = {"task": "det", "kind": "boxes_xyxy_px", "shape": [BATCH_DIM, num_anchors, 4]}
    return specs


def declare_output_shapes(proto: Any, specs: Mapping[str, Mapping[str, Any]]) -> None:
    """Write the static output shapes into the graph: the exporter leaves some symbolic (e.g. after Softmax)."""
    for output in proto.graph.output:
        dims = output.type.tensor_type.shape.dim
        del dims[:]
        for value in specs[output.name]["shape"]:
            dim = dims.add()
            if isinstance(value, str):
                dim.dim_param = value
            else:
                dim.dim_value = int(value)


def check_output_shapes(path: Path, specs: Mapping[str, Mapping[str, Any]], channels: int, tile: int) -> None:
    """Run the written graph once in onnxruntime and compare every output with its declared shape (ONNX shape
    inference cannot follow Resize/Softmax, so only a run proves the declaration)."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    results = session.run(None, {md.INPUT_NAME: np.zeros((1, channels, tile, tile), np.float32)})
    for meta, value in zip(session.get_outputs(), results):
        declared = [1 if isinstance(d, str) else d for d in specs[meta.name]["shape"]]
        if list(value.shape) != declared:
            raise ConfigError(
                f"export: output '{meta.name}' is {list(value.shape)} for one tile, its declared shape is "
                f"{specs[meta.name]['shape']}"
            )


def _tasks_and_sizes(model: nn.Module, channels: int, tile: int) -> tuple[list[str], int, int, int]:
    """Run the model once to see which heads it has and their sizes (works for any module with the contract)."""
    with torch.no_grad():
        out = model(torch.zeros(1, channels, tile, tile))
    tasks = [t for t, key in (("det", "cls_logits"), ("seg", "seg_logits")) if key in out]
    if not tasks:
        raise ConfigError(f"export: the model output has neither 'cls_logits' nor 'seg_logits' (found {sorted(out)})")
    num_det = out["cls_logits"].shape[-1] if "det" in tasks else 0
    num_anchors = out["cls_logits"].shape[1] if "det" in tasks else 0
    num_seg = out["seg_logits"].shape[1] if "seg" in tasks else 0
    return tasks, num_seg, num_det, num_anchors


def _anchor_params(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        return {}
    return {
        "base_size": cfg.anchor_base_size,
        "scales": list(cfg.anchor_scales),
        "aspect_ratios": list(cfg.anchor_aspect_ratios),
        "strides": list(cfg.strides),
        "centre": "(x + 0.5) * stride",
    }


def _torch_export(
    wrapper: nn.Module, example: Tensor, path: Path, outputs: list[str], opset: int, dynamo: bool
) -> None:
    names = {"input_names": [md.INPUT_NAME], "output_names": outputs}
    if dynamo:
        batch = torch.export.Dim(BATCH_DIM, min=1, max=4096)
        torch.onnx.export(
            wrapper, (example,), str(path), dynamo=True, opset_version=opset, dynamic_shapes=({0: batch},), **names
        )
    else:
        axes = {name: {0: BATCH_DIM} for name in [md.INPUT_NAME, *outputs]}
        torch.onnx.export(wrapper, (example,), str(path), dynamo=False, opset_version=opset, dynamic_axes=axes, **names)


PROVENANCE_KEYS: tuple[str, ...] = (
    "name",
    "datasets",
    "kd",
    "validation",
    "model_config",
    "role",
    "checkpoint",
    "weights",
    "init",  # where a fine-tuned model started (engine.train.warmstart)
)


def _contract(
    model: nn.Module,
    metadata: Mapping[str, Any],
    tasks: Sequence[str],
    tile: int,
    overlap: int,
    sizes: tuple[int, int],
    class_thresholds: bool,
) -> md.ModelContract:
    """The model contract of an export: checkpoint metadata (classes, input, domains, provenance) and the graph's
    heads (``sizes``: segmentation and detection class counts). ``class_thresholds`` False: the per-class
    thresholds training recorded are left out (one threshold was given for all classes)."""
    provenance = {k: metadata[k] for k in PROVENANCE_KEYS if metadata.get(k) is not None}
    cfg = getattr(model, "cfg", None)
    if "model_config" not in provenance and cfg is not None:
        provenance["model_config"] = cfg.to_dict()
    sizes_of = {t: n for t, n in zip(("seg", "det"), sizes) if t in tasks}
    contract = md.ModelContract.from_checkpoint(metadata, sizes_of, tile, overlap, provenance, "export")
    if "det" in contract.heads and not class_thresholds:
        det = dataclasses.replace(contract.heads["det"], class_score_thresh=None)
        contract = dataclasses.replace(contract, heads={**contract.heads, "det": det})
    return contract


def export_onnx(
    model: nn.Module,
    out_path: str | os.PathLike[str],
    metadata: Mapping[str, Any],
    tile_size: int,
    *,
    overlap: int | None = None,
    variant: str = "full",
    score_thresh: float | None = None,
    iou_thresh: float = 0.5,
    ios_thresh: float = 0.6,
    opset: int = DEFAULT_OPSET,
    dynamo: bool = False,
) -> dict[str, Any]:
    """Write ``model`` as ONNX with validated metadata to ``out_path`` (atomically) and return that metadata.

    ``metadata`` describes the data the model was trained on, with the checkpoint-metadata keys: ``bands``,
    ``value_scaling`` {dtype, max}, ``mean``, ``std``, ``gsd`` (m), and optionally the head keys of
    :func:`engine.core.modelio.heads_to_checkpoint` (the ISPRS classes and colours when absent) and provenance
    (:data:`PROVENANCE_KEYS`).
    ``model`` needs ``anchors_for((H, W))`` when it has a detection head. ``score_thresh`` None: each detection
    class gets the threshold training found best on validation (``class_score_thresh`` in ``metadata``; classes
    without one, and models without the record, get :data:`~engine.core.modelio.DEFAULT_SCORE_THRESH`); a number:
    that, for all.
    """
    tile, overlap = _checked_options(metadata, tile_size, overlap, variant, opset)
    channels = len(metadata["bands"])

    model = model.eval().cpu()
    tasks, num_seg, num_det, num_anchors = _tasks_and_sizes(model, channels, tile)
    if variant == "deepness" and "seg" not in tasks:
        raise ConfigError("export: variant 'deepness' needs a segmentation head; the model has none")
    anchors = None
    if "det" in tasks:
        anchors = model.anchors_for((tile, tile), device="cpu").float()
        if anchors.shape != (num_anchors, 4):
            raise ConfigError(f"export: anchors_for gave {tuple(anchors.shape)}, cls_logits need ({num_anchors}, 4)")
    cfg = getattr(model, "cfg", None)
    variances = tuple(cfg.box_variances) if cfg is not None else DEFAULT_VARIANCES
    wrapper = ExportWrapper(model, tasks, anchors, variances, variant).eval()
    specs = output_specs(tasks, variant, num_seg, num_det, tile, num_anchors)
    graph_tasks = sorted({s["task"] for s in specs.values()}, key=["det", "seg"].index)

    contract = _contract(model, metadata, graph_tasks, tile, overlap, (num_seg, num_det), score_thresh is None)
    decoding = md.Decoding(
        score_thresh=md.DEFAULT_SCORE_THRESH if score_thresh is None else float(score_thresh),
        iou_thresh=iou_thresh,
        ios_thresh=ios_thresh,
        variances=variances,
        anchors=_anchor_params(model),
    )
    meta = contract.to_metadata(specs, decoding)

    _write_graph(wrapper, Path(out_path), meta, specs, (channels, tile), opset, dynamo)
    return meta


def _checked_options(
    metadata: Mapping[str, Any], tile_size: int, overlap: int | None, variant: str, opset: int
) -> tuple[int, int]:
    """(tile, overlap) of an export, after refusing options and metadata it cannot use (overlap None: tile / 5)."""
    if variant not in VARIANTS:
        raise ConfigError(f"export: parameter 'variant' must be one of {list(VARIANTS)}, found {variant!r}")
    if opset < 18:
        raise ConfigError(f"export: parameter 'opset' must be >= 18, found {opset}")
    missing = [k for k in ("bands", "value_scaling", "mean", "std", "gsd") if k not in metadata]
    if missing:
        raise InputError(f"export: model metadata lacks the keys {missing} (found {sorted(metadata)})")
    tile = int(tile_size)
    if tile < 16:
        raise ConfigError(f"export: parameter 'tile_size' must be >= 16 px, found {tile}")
    overlap = tile // 5 if overlap is None else int(overlap)
    if not 0 <= overlap <= tile // 2:
        raise ConfigError(f"export: parameter 'overlap' must be within [0, {tile // 2}] px, found {overlap}")
    return tile, overlap


def _write_graph(
    wrapper: nn.Module,
    out_path: Path,
    meta: Mapping[str, Any],
    specs: Mapping[str, Mapping[str, Any]],
    input_size: tuple[int, int],
    opset: int,
    dynamo: bool,
) -> None:
    """Export ``wrapper`` to ``out_path`` (atomically) with ``meta`` as metadata_props and the declared output
    shapes, checked by ONNX and by one onnxruntime run (``input_size``: channels, tile)."""
    import onnx

    channels, tile = input_size
    with atomic_path(out_path) as tmp:
        with torch.no_grad():
            _torch_export(wrapper, torch.zeros(2, channels, tile, tile), tmp, list(specs), opset, dynamo)
        proto = onnx.load(str(tmp))
        declare_output_shapes(proto, specs)
        store_metadata(proto, meta)
        onnx.save(proto, str(tmp))
        check_output_shapes(tmp, specs, channels, tile)


def export_checkpoint(
    ckpt_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    tile_size: int | None = None,
    role: str = "student",
    precision: str = "fp32",
    calibration: Sequence[str | os.PathLike[str]] | str | os.PathLike[str] | None = None,
    quantization: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Export a training checkpoint (EMA weights when present) with the metadata training stored in it.

    ``precision`` fp16 / int8: the fp32 graph is converted by :func:`engine.export.quantize.convert_precision`
    (``quantization``: its keyword options, e.g. ``calibration_chips``, ``eval_chips``, ``eval_split``), calibrated
    on ``calibration`` chip datasets or, by default, on the training chip datasets recorded in the checkpoint.

    Checkpoint form (engine.models.checkpoint): {"model_config": dict, "model": state_dict, "ema": {"module":
    state_dict, ...} | None, "metadata": {bands, value_scaling, mean, std, gsd, chip_size, the head keys of
    :func:`engine.core.modelio.heads_to_checkpoint`, name, datasets, kd, validation}}. ``options`` go to
    :func:`export_onnx`.
    """
    from engine.models import build_model, load_model_config
    from engine.models.checkpoint import inference_state, load_checkpoint

    options = {k: v for k, v in options.items() if v is not None}  # None = "the default" (QGIS optional params)
    payload = load_checkpoint(ckpt_path)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)  # `--out new_folder/model.onnx` as a user writes it
    cfg = dataclasses.replace(load_model_config(payload["model_config"]), pretrained=None)
    model = build_model(cfg)
    try:
        model.load_state_dict(inference_state(payload))
    except RuntimeError as exc:
        raise InputError(f"checkpoint '{ckpt_path}': weights do not fit its model_config: {exc}") from exc
    meta = dict(payload.get("metadata") or {})
    meta.update(
        model_config=cfg.to_dict(),
        role=role,
        checkpoint=str(ckpt_path),
        weights="ema" if payload.get("ema") else "model",
    )
    if tile_size is None:  # the largest training chips fit whole (each domain may have its own chip size)
        sizes = [d["chip_size"] for d in meta.get("domains") or () if d.get("chip_size")]
        tile_size = int(max(sizes, default=meta.get("chip_size", default_of(ChipOptions, "size"))))
    check_precision(precision)
    if precision == "fp32":
        return export_onnx(model, out_path, meta, tile_size, **options)
    sources = calibration_sources(payload, ckpt_path, calibration, required=precision == "int8")
    with tempfile.TemporaryDirectory(prefix=".pmtl-export-", dir=Path(out_path).parent) as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(model, fp32, meta, tile_size, **options)
        return convert_precision(fp32, out_path, precision, sources, progress=progress, **(quantization or {}))


def _chip_dir(path: Any) -> Path | None:
    """``path`` when it is a finished chip dataset (has a manifest), else None."""
    if not path:
        return None
    root = Path(path)
    return root if (root / "manifest.json").is_file() else None


def _labelled_tasks(manifest: Mapping[str, Any]) -> tuple[str, ...]:
    """The tasks a chip dataset has labels for (manifest ``task``: det|seg|both|none; missing = both)."""
    return {"none": (), "det": ("det",), "seg": ("seg",)}.get(manifest.get("task", "both"), ("det", "seg"))


def given_sources(
    roots: Sequence[str | os.PathLike[str]], trained: Mapping[str, Mapping[str, Any]]
) -> list[ChipSource]:
    """Calibration chip datasets given by the user: every one calibrates; each task's accuracy cost is measured
    on ONE of them that has that task's labels, the one from the dataset that task was trained on
    (``trained``: the checkpoint metadata's ``datasets``) when listed, else the first with labels. Unlabelled
    (``--task none``) chips only calibrate."""
    manifests = []
    for root in roots:
        if _chip_dir(root) is None:
            raise InputError(f"{param_ref('calibration')} {root}: expected a chip dataset folder with manifest.json")
        manifests.append(json.loads((Path(root) / "manifest.json").read_text(encoding="utf-8")))
    measured: dict[int, list[str]] = {k: [] for k in range(len(roots))}
    for task in ("det", "seg"):
        labelled = [k for k, m in enumerate(manifests) if task in _labelled_tasks(m)]
        own = [k for k in labelled if manifests[k].get("dataset") == (trained.get(task) or {}).get("dataset")]
        if labelled:
            measured[(own or labelled)[0]].append(task)
    return [ChipSource(Path(root), tuple(measured[k])) for k, root in enumerate(roots)]


def calibration_sources(
    payload: Mapping[str, Any],
    ckpt_path: str | os.PathLike[str],
    calibration: Sequence[str | os.PathLike[str]] | str | os.PathLike[str] | None,
    required: bool = True,
) -> list[ChipSource]:
    """The chip datasets to calibrate on and to measure the accuracy cost on: the ones given
    (:func:`given_sources`), else the training config's ``data.det`` / ``data.seg`` recorded in the checkpoint when
    they still exist (none found: an InputError when ``required``, else an empty list)."""
    if calibration is not None:
        roots = [calibration] if isinstance(calibration, (str, os.PathLike)) else list(calibration)
        return given_sources(roots, (payload.get("metadata") or {}).get("datasets") or {})
    data = (payload.get("config") or {}).get("data") or {}
    found: dict[Path, list[str]] = {}
    for task in ("det", "seg"):
        root = _chip_dir(data.get(task))
        if root is not None:
            found.setdefault(root, []).append(task)
    if not found and required:
        recorded = {task: data.get(task) for task in ("det", "seg")}
        raise InputError(
            f"checkpoint '{ckpt_path}': int8 needs calibration chips; the training chip datasets it records "
            f"{recorded} are not there: give one with {param_ref('calibration')}"
        )
    return [ChipSource(root, tuple(tasks)) for root, tasks in found.items()]


AGREEMENT_TARGET: float = 0.97
"""INT8 class maps must agree with fp32 on at least this share of validation pixels to replace fp32 (issue 13)."""


def export_int8_or_fp32(
    ckpt_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    min_agreement: float = AGREEMENT_TARGET,
    **options: Any,
) -> dict[str, Any]:
    """INT8 export of a checkpoint when its class maps agree with fp32 on >= ``min_agreement`` of the validation
    chips' pixels (as recorded in its metadata), else the fp32 export in its place. Returns the metadata of the
    file written (``meta["precision"]`` says which); when fp32 was written, the returned dict (not the file) also
    holds the rejected INT8 attempt's accuracy under ``meta["int8_rejected"]``. ``options`` as export_checkpoint."""
    meta = export_checkpoint(ckpt_path, out_path, precision="int8", **options)
    accuracy = meta["quantization"].get("accuracy") or {}
    agreement = accuracy.get("pixel_agreement")
    if agreement is not None and agreement >= min_agreement:
        return meta
    options.pop("calibration", None)
    options.pop("quantization", None)
    fp32 = export_checkpoint(ckpt_path, out_path, precision="fp32", **options)
    fp32["int8_rejected"] = {"min_agreement": min_agreement, "accuracy": accuracy}
    return fp32
