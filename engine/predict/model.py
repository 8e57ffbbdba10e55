"""Load an ONNX model for inference with onnxruntime: provider choice, metadata, input/output checks."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from engine.core.errors import ConfigError, InputError
from engine.core.modelio import ModelInfo, model_info

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


@dataclasses.dataclass
class TileOutputs:
    """Per-batch graph outputs: ``seg`` (B, S, T, T) logits or probabilities, ``scores`` (B, A, D), ``boxes``
    (B, A, 4) tile px; absent heads are None."""

    seg: np.ndarray | None
    scores: np.ndarray | None
    boxes: np.ndarray | None


class OnnxModel:
    """An onnxruntime session plus the model's :class:`ModelInfo`; ``provider`` says what actually runs it."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str = "auto",
        threads: int | None = None,
        *,
        memory_arena: bool = True,
    ) -> None:
        """``memory_arena=False``: onnxruntime frees activations after each run instead of keeping its CPU arena
        (a long-lived process serving many rasters, e.g. a region worker, then keeps its memory bounded)."""
        import onnxruntime as ort

        if device not in DEVICES:
            raise ConfigError(f"parameter 'device' must be one of {list(DEVICES)}, found {device!r}")
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"model '{self.path}': expected an ONNX file, found nothing there")
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
        elif device == "cuda":
            raise ConfigError(f"parameter 'device' is 'cuda' but onnxruntime offers only {available}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        options.enable_cpu_mem_arena = bool(memory_arena)
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidProtobuf / NoSuchFile types
            raise InputError(
                f"model '{self.path}': expected a valid ONNX model, onnxruntime could not load it: {exc}"
            ) from exc
        self.provider = self.session.get_providers()[0]
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise InputError(f"model '{self.path}': expected one image input, found {[i.name for i in inputs]}")
        outputs = [(o.name, o.shape) for o in self.session.get_outputs()]
        meta = self.session.get_modelmeta().custom_metadata_map
        self.info: ModelInfo = model_info(meta, str(self.path), inputs[0].name, inputs[0].shape, outputs)
        shape = inputs[0].shape
        if len(shape) == 4 and isinstance(shape[1], int) and shape[1] != self.info.channels:
            raise InputError(
                f"model '{self.path}': metadata lists {self.info.channels} bands, the graph input has {shape[1]}"
            )
        if len(shape) == 4 and isinstance(shape[2], int) and shape[2] != self.info.tile_size:
            raise InputError(
                f"model '{self.path}': metadata 'tile_size' is {self.info.tile_size}, the graph input is {shape[2]} px"
            )
        seg_shape = dict(outputs).get(self.info.seg_output) if self.info.seg_output else None
        if seg_shape and len(seg_shape) == 4 and isinstance(seg_shape[1], int):
            classes = len(self.info.head("seg").classes)
            if seg_shape[1] != classes and not (seg_shape[1] == 1 and classes == 2):
                raise InputError(
                    f"model '{self.path}': metadata names {classes} segmentation classes, the graph output "
                    f"'{self.info.seg_output}' has {seg_shape[1]} channels"
                )
        self._names = [n for n in (self.info.seg_output, self.info.det_scores_output, self.info.det_boxes_output) if n]

    def run(self, batch: np.ndarray) -> TileOutputs:
        """Run a (B, C, T, T) float32 batch."""
        values = dict(zip(self._names, self.session.run(self._names, {self.info.input_name: batch})))
        seg = values.get(self.info.seg_output) if self.info.seg_output else None
        if seg is not None and seg.shape[1] == 1:  # single-channel (binary) Deepness segmentor
            seg = np.concatenate([1.0 - seg, seg], axis=1)
        return TileOutputs(
            seg=seg,
            scores=values.get(self.info.det_scores_output) if self.info.det_scores_output else None,
            boxes=values.get(self.info.det_boxes_output) if self.info.det_boxes_output else None,
        )
