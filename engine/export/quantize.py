"""Reduced-precision copies of an exported fp32 pmtl ONNX model: static INT8 for CPUs, FP16 for the CUDA provider.

INT8 (``onnxruntime.quantization``): ``quant_pre_process`` (shape inference + graph clean-up), then static QDQ
quantization, weights int8 per output channel, activations uint8 with ranges calibrated (MinMax) on training chips.
uint8 activations: onnxruntime's CPU kernels fuse DQ → Conv → Q into QLinearConv for U8S8 (VNNI / AVX2 paths);
with int8 activations most convolutions stayed float (docs/results/quant.md). The graph's tail stays float32:
walking back from every graph output up to and including the first Conv (the 1×1 predictors), so detection
decoding, the sigmoid scores and the seg logits' final resize are float — cheap ops where rounding would cost most.

FP16 (``onnxruntime.transformers.float16``, shipped with onnxruntime): weights and arithmetic in float16 with
float32 graph inputs/outputs (``keep_io_types``) and the same float32 tail; meant for the CUDA provider.

Both keep the fp32 model's outputs and metadata and add ``precision`` and ``quantization`` (tool, calibration
datasets, accuracy against fp32 on held-out chips: metric deltas in points and class-map pixel agreement).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from engine.core import modelio as md
from engine.core.atomic import atomic_path
from engine.core.errors import ConfigError, InputError, param_ref
from engine.core.progress import Progress, ScaledProgress, check_cancel

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
DEFAULT_CALIBRATION_CHIPS: int = 64
DEFAULT_EVAL_CHIPS: int = 64
CALIBRATION_SPLIT: str = "train"


@dataclasses.dataclass(frozen=True)
class ChipSource:
    """A chip dataset used to calibrate, and the tasks whose accuracy cost is measured on it."""

    root: Path
    tasks: tuple[str, ...] = ("det", "seg")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"parameter 'precision' must be one of {list(PRECISIONS)}, found {precision!r}")
    return precision


def float_tail_nodes(model: Any) -> list[str]:
    """Nodes from each graph output back to (and including) the first Conv: kept float32 in reduced precision."""
    producer = {out: node for node in model.graph.node for out in node.output}
    keep: set[str] = set()
    stack = [o.name for o in model.graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in keep:
            continue
        keep.add(node.name)
        if node.op_type != "Conv":
            stack.extend(node.input)
    return sorted(keep)


def _calibration_rows(sources: Sequence[ChipSource], split: str, count: int) -> list[tuple[Any, np.ndarray]]:
    """(chip store, row indices) per source: ``count`` chips of ``split`` spread evenly over the sources."""
    from engine.data.chipstore import open_chip_dataset

    stores = [open_chip_dataset(s.root) for s in sources]
    for store in stores:
        if not store.splits.get(split):
            raise InputError(
                f"calibration chips '{store.root}': expected chips in split {split!r}, found splits {store.splits}"
            )
    share = [count // len(stores) + (k < count % len(stores)) for k in range(len(stores))]
    picked = []
    for store, n in zip(stores, share):
        total = store.splits[split]
        rows = np.unique(np.linspace(0, total - 1, max(1, min(n, total))).round().astype(int))
        picked.append((store, rows))
    return picked


class ChipCalibrationReader(CalibrationDataReader):
    """Training chips as graph inputs, ``batch_size`` tiles at a time (chips packed k×k per tile as evaluation
    packs segmentation chips), for onnxruntime's calibrator."""

    def __init__(
        self,
        sources: Sequence[ChipSource],
        info: md.ModelInfo,
        split: str = CALIBRATION_SPLIT,
        count: int = DEFAULT_CALIBRATION_CHIPS,
        batch_size: int = 4,
        progress: Progress | None = None,
    ) -> None:
        from engine.evaluate.onnx_eval import band_order, chips_per_tile

        self.info = info
        self.batches: list[tuple[Any, np.ndarray, list[int]]] = []
        self.used: list[dict[str, Any]] = []
        for store, rows in _calibration_rows(sources, split, count):
            order = band_order(store.bands, info, f"calibration chips '{store.root}'")
            self.used.append({"path": str(store.root), "dataset": store.manifest.get("dataset"), "chips": len(rows)})
            step = batch_size * chips_per_tile(store.chip_size, info) ** 2  # chips packed as in evaluation
            for k in range(0, len(rows), step):
                self.batches.append((store, rows[k : k + step], order))
        self.split = split
        self.chips = sum(u["chips"] for u in self.used)
        self.progress = progress
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        from engine.evaluate.onnx_eval import mosaic_chips

        check_cancel(self.progress)
        if self._next >= len(self.batches):
            return None
        store, rows, order = self.batches[self._next]
        self._next += 1
        if self.progress is not None:
            self.progress.report(self._next / len(self.batches), f"calibrating ({self._next}/{len(self.batches)})")
        images = np.stack([store.images(self.split)[r] for r in rows])
        return {self.info.input_name: mosaic_chips(images, self.info, order)[0]}

    def rewind(self) -> None:
        self._next = 0


def _onnxruntime_tool(module: str) -> str:
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__} {module}"


def _quantize_static(
    pre: Path, out: Path, reader: ChipCalibrationReader, exclude: list[str], reduce_range: bool
) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(pre),
        str(out),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude,
        calibrate_method=CalibrationMethod.MinMax,
    )


def int8_graph(
    fp32_path: Path,
    out_path: Path,
    sources: Sequence[ChipSource],
    work: Path,
    calibration_chips: int = DEFAULT_CALIBRATION_CHIPS,
    reduce_range: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write the INT8 graph of ``fp32_path`` to ``out_path`` (no metadata yet); return its ``quantization`` entry."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from engine.predict.model import OnnxModel

    if not sources:
        raise ConfigError(f"int8 export needs calibration chips: give a chip dataset in {param_ref('calibration')}")
    if calibration_chips < 1:
        raise ConfigError(f"parameter 'calibration_chips' must be >= 1, found {calibration_chips}")
    info = OnnxModel(fp32_path, device="cpu").info
    reader = ChipCalibrationReader(sources, info, CALIBRATION_SPLIT, calibration_chips, progress=progress)
    pre = work / "preprocessed.onnx"
    quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)  # static shapes: ONNX inference does
    exclude = float_tail_nodes(onnx.load(str(pre), load_external_data=False))
    _quantize_static(pre, out_path, reader, exclude, reduce_range)
    return {
        "method": "static_qdq",
        "tool": _onnxruntime_tool("quantization.quantize_static"),
        "float_nodes": exclude,
        "activation_type": "uint8",
        "weight_type": "int8",
        "per_channel": True,
        "reduce_range": bool(reduce_range),
        "calibration": {"datasets": reader.used, "split": reader.split, "chips": reader.chips, "method": "MinMax"},
    }


def fp16_graph(fp32_path: Path, out_path: Path) -> dict[str, Any]:
    """Write the FP16 graph of ``fp32_path`` (float32 inputs/outputs and tail) to ``out_path``."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel as OrtModel

    model = onnx.load(str(fp32_path))
    tail = float_tail_nodes(model)
    half = OrtModel(convert_float_to_float16(model, keep_io_types=True, node_block_list=tail))
    half.topological_sort()  # the converter appends the input casts at the end of the node list
    onnx.save(half.model, str(out_path))
    return {"method": "float16", "tool": _onnxruntime_tool("transformers.float16"), "float_nodes": tail}


def _points(value: Any, reference: Any) -> float | None:
    if not isinstance(value, float) or not isinstance(reference, float):
        return None
    return round(100.0 * (value - reference), 3)


def accuracy_cost(
    fp32_path: Path,
    reduced_path: Path,
    sources: Sequence[ChipSource],
    split: str = "val",
    max_chips: int = DEFAULT_EVAL_CHIPS,
    progress: Progress | None = None,
) -> dict[str, Any] | None:
    """Reduced vs fp32 on ``split`` of the first source per task: metrics, deltas in points, pixel agreement.

    None when no source has that split (nothing held out to measure on)."""
    from engine.data.chipstore import open_chip_dataset
    from engine.evaluate.onnx_eval import compare_onnx

    roots: dict[str, Path] = {}
    for source in sources:
        if split not in open_chip_dataset(source.root).splits:
            continue
        for task in source.tasks:
            roots.setdefault(task, source.root)
    fp32 = md.from_props(_props(fp32_path))
    roots = {task: root for task, root in roots.items() if task in fp32["tasks"]}
    if not roots:
        return None
    (ref, red), agreement = compare_onnx(
        [fp32_path, reduced_path], roots.get("det"), roots.get("seg"), split, max_chips=max_chips, progress=progress
    )
    keys = ("det_map", "det_ap50", "seg_miou", "seg_oa")
    return {
        "split": split,
        "max_chips": max_chips,
        "datasets": {task: str(root) for task, root in roots.items()},
        "fp32": {k: ref[k] for k in keys if k in ref},
        "reduced": {k: red[k] for k in keys if k in red},
        "delta_seg_miou": _points(red.get("seg_miou"), ref.get("seg_miou")),
        "delta_det_ap50": _points(red.get("det_ap50"), ref.get("det_ap50")),
        "delta_det_map": _points(red.get("det_map"), ref.get("det_map")),
        "pixel_agreement": None if agreement is None else round(agreement, 6),
    }


def _props(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def write_metadata(graph_path: Path, out_path: Path, meta: dict[str, Any]) -> None:
    """Validate ``meta``, store it as ``graph_path``'s metadata_props, check the model, write ``out_path``."""
    import onnx

    md.validate_metadata(meta, "export")
    proto = onnx.load(str(graph_path))
    store_metadata(proto, meta)
    onnx.save(proto, str(out_path))


def store_metadata(proto: Any, meta: Mapping[str, Any]) -> None:
    """Replace the ``metadata_props`` of the ONNX model ``proto`` by ``meta`` (one JSON string per key), then check
    the model."""
    import onnx

    del proto.metadata_props[:]
    for key, value in md.to_props(meta).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)


def convert_precision(
    fp32_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    precision: str,
    sources: Sequence[ChipSource] = (),
    *,
    calibration_chips: int = DEFAULT_CALIBRATION_CHIPS,
    eval_split: str = "val",
    eval_chips: int = DEFAULT_EVAL_CHIPS,
    reduce_range: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write the ``precision`` copy of the fp32 pmtl model ``fp32_path`` to ``out_path`` (atomically); return its
    metadata. INT8 calibrates on the ``train`` chips of ``sources``; the accuracy cost is measured on their
    ``eval_split`` chips (at most ``eval_chips`` per task) for both INT8 and FP16 when ``sources`` are given."""
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    check_precision(precision)
    if precision == "fp32":
        raise ConfigError("convert_precision: the model is fp32 already; precision must be 'fp16' or 'int8'")
    meta = md.from_props(_props(fp32_path))
    if meta.get("precision", "fp32") != "fp32":
        raise InputError(f"model '{fp32_path}': expected an fp32 pmtl model, found precision {meta['precision']!r}")
    with tempfile.TemporaryDirectory(prefix=".pmtl-quant-", dir=out_path.parent) as tmp:
        work = Path(tmp)
        graph = work / "reduced.onnx"
        if precision == "int8":
            calib = ScaledProgress(progress, 0.0, 0.6)
            quant = int8_graph(fp32_path, graph, sources, work, calibration_chips, reduce_range, calib)
        else:
            quant = fp16_graph(fp32_path, graph)
        quant["accuracy"] = (
            accuracy_cost(fp32_path, graph, sources, eval_split, eval_chips, ScaledProgress(progress, 0.6, 0.98))
            if sources
            else None
        )
        meta.update(precision=precision, quantization=quant)
        with atomic_path(out_path) as final:
            write_metadata(graph, final, meta)
    if progress is not None:
        progress.report(1.0, f"{precision} model written")
    return meta
