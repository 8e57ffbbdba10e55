"""ONNX model metadata: build, validate (JSON Schema, versioned) and read it back, for pmtl and Deepness models.

Kept free of torch and onnx so inference needs only numpy, GDAL, onnxruntime and jsonschema. Every top-level key is
one ``metadata_props`` entry holding the key's JSON value (the convention Deepness reads too).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.core.classes import (
    DET_CLASSES,
    IGNORE_INDEX,
    ISPRS_SEG,
    PALETTE,
    SEG_CLASSES,
    det_colors_for,
    head_keys,
    recorded,
)
from engine.core.errors import ConfigError, InputError

SCHEMA_VERSION: int = 1
SUPPORTED_SCHEMA_VERSIONS: tuple[int, ...] = (1,)
SCHEMA_PATH: Path = Path(__file__).with_name("modelio.schema.json")
FORMAT: str = "pmtl-onnx"

DEEPNESS_KEYS: tuple[str, ...] = (
    "model_type",
    "class_names",
    "resolution",
    "tile_size",
    "tiles_overlap",
    "standardization_mean",
    "standardization_std",
    "seg_thresh",
    "det_conf",
    "det_iou_thresh",
)
"""Keys the Deepness QGIS plugin reads (its code reads ``tile_size``; its docs say ``tiles_size``)."""

PMTL_REQUIRED_KEYS: tuple[str, ...] = ("schema_version", "format", "tasks", "input", "outputs", "gsd", "tile_size")

# Graph output names of the full model (see the schema's description).
SEG_LOGITS, DET_SCORES, DET_BOXES, SEG_PROBS = "seg_logits", "det_scores", "det_boxes", "seg_probs"
INPUT_NAME = "images"


@functools.cache
def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) shipped beside this module."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def validate_metadata(meta: Mapping[str, Any], origin: str = "metadata") -> None:
    """Raise InputError naming the offending key path when ``meta`` does not match the schema."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(dict(meta)), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"'{'/'.join(str(p) for p in e.absolute_path) or '(top level)'}': {e.message}" for e in errors[:8]]
        raise InputError(
            f"{origin}: model metadata does not match schema version {SCHEMA_VERSION} ({SCHEMA_PATH.name}): "
            + "; ".join(lines)
        )


def domain_entry(domain: Mapping[str, Any]) -> dict[str, Any]:
    """One training domain as the metadata's ``domains`` records it: task, dataset, GSD and value scaling."""
    scaling = domain["value_scaling"]
    entry = {k: domain[k] for k in ("task", "dataset") if domain.get(k) is not None}
    return {
        **entry,
        "gsd": float(domain["gsd"]),
        "value_scaling": {"dtype": scaling["dtype"], "max": float(scaling["max"])},
    }


RGB = tuple[int, int, int]

TASKS: tuple[str, ...] = ("det", "seg")
"""Head tasks in the order the metadata lists them."""

DEFAULT_SCORE_THRESH: float = 0.3
"""Detection score threshold of a model (and of a class training recorded none for) when nothing else says."""


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    """One head of a trained model: its classes in id order, one colour each and, for detection, one score
    threshold each (``class_score_thresh``: the best F1 on validation; None: the model's single threshold)."""

    classes: tuple[str, ...] = ()
    colors: tuple[RGB, ...] = ()
    class_score_thresh: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.colors) != len(self.classes):
            raise ConfigError(f"head spec: {len(self.colors)} colours for {len(self.classes)} classes")
        thresholds = self.class_score_thresh
        if thresholds is not None and len(thresholds) != len(self.classes):
            raise ConfigError(f"head spec: {len(thresholds)} class score thresholds for {len(self.classes)} classes")


NO_HEAD = HeadSpec()


@dataclasses.dataclass(frozen=True)
class ModelContract:
    """What a trained model promises its readers: tasks, a :class:`HeadSpec` per task, the input (bands, value
    scaling, normalisation), GSD and training domains, tile, provenance. Written to ONNX metadata by
    :meth:`to_metadata` (pmtl keys and Deepness keys); read back by :func:`model_info`."""

    tasks: tuple[str, ...]
    heads: Mapping[str, HeadSpec]
    bands: tuple[str, ...]
    value_scaling: Mapping[str, Any]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    gsd: float
    tile_size: int
    overlap: int
    domains: tuple[Mapping[str, Any], ...] = ()
    provenance: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    precision: str = "fp32"

    def head(self, task: str) -> HeadSpec:
        return self.heads.get(task, NO_HEAD)

    @classmethod
    def from_checkpoint(
        cls,
        meta: Mapping[str, Any],
        sizes: Mapping[str, int],
        tile_size: int,
        overlap: int,
        provenance: Mapping[str, Any] | None = None,
        origin: str = "checkpoint",
    ) -> ModelContract:
        """The contract of a network with heads of ``sizes`` classes (task -> count) from its checkpoint metadata
        (``bands``, ``value_scaling``, ``mean``, ``std``, ``gsd``, ``domains`` and the head keys), for tiles of
        ``tile_size`` px."""
        heads = heads_from_checkpoint(meta, sizes, origin)
        return cls(
            tasks=tuple(t for t in TASKS if t in heads),
            heads=heads,
            bands=tuple(meta["bands"]),
            value_scaling=meta["value_scaling"],
            mean=tuple(meta["mean"]),
            std=tuple(meta["std"]),
            gsd=float(meta["gsd"]),
            tile_size=int(tile_size),
            overlap=int(overlap),
            domains=tuple(meta.get("domains") or ()),
            provenance=dict(provenance or {}),
        )

    def to_metadata(self, outputs: Mapping[str, Mapping[str, Any]], decoding: Decoding | None = None) -> dict:
        """The full ONNX metadata dict (pmtl keys + Deepness keys), validated against the schema."""
        decoding = decoding or Decoding()
        meta: dict[str, Any] = {
            **self._pmtl_entries(outputs),
            **self._deepness_entries(),
        }
        if "seg" in self.tasks:
            meta["seg"] = _seg_entry(self.head("seg"))
            meta["seg_thresh"] = float(decoding.seg_thresh)
        if "det" in self.tasks:
            meta["det"] = _det_entry(self.head("det"), decoding)
            meta["det_conf"] = float(decoding.score_thresh)
            meta["det_iou_thresh"] = float(decoding.iou_thresh)
        validate_metadata(meta, "export")
        return meta

    def _pmtl_entries(self, outputs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        from engine import __version__

        scaling = {"dtype": self.value_scaling["dtype"], "max": float(self.value_scaling["max"])}
        return {
            "schema_version": SCHEMA_VERSION,
            "format": FORMAT,
            "tasks": list(self.tasks),
            "input": {
                "name": INPUT_NAME,
                "layout": "NCHW",
                "bands": list(self.bands),
                "value_scaling": scaling,
                "mean": [float(v) for v in self.mean],
                "std": [float(v) for v in self.std],
            },
            "outputs": {k: dict(v) for k, v in outputs.items()},
            "gsd": float(self.gsd),
            **({"domains": [domain_entry(d) for d in self.domains]} if self.domains else {}),
            "tile_size": int(self.tile_size),
            "overlap": int(self.overlap),
            "precision": self.precision,
            "provenance": {
                "engine_version": __version__,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                **dict(self.provenance),
            },
        }

    def _deepness_entries(self) -> dict[str, Any]:
        """The keys the Deepness plugin reads, derived from the pmtl ones."""
        names = self.head("seg").classes or self.head("det").classes
        return {
            "model_type": "Segmentor" if "seg" in self.tasks else "Detector",
            "class_names": {str(i): name for i, name in enumerate(names)},
            "resolution": round(float(self.gsd) * 100.0, 6),
            "tiles_overlap": round(100.0 * self.overlap / self.tile_size),
            **deepness_standardization(self.mean, self.std, float(self.value_scaling["max"])),
        }


@dataclasses.dataclass(frozen=True)
class Decoding:
    """How readers turn the graph's detection outputs into boxes (and Deepness its probabilities into classes).

    ``seg_thresh`` 0 turns Deepness's probability threshold off: Deepness zeroes probabilities below it before the
    argmax, which on a multi-class softmax would turn every uncertain pixel into class 0."""

    score_thresh: float = DEFAULT_SCORE_THRESH
    iou_thresh: float = 0.5
    ios_thresh: float = 0.6
    variances: tuple[float, ...] = (0.1, 0.2)
    anchors: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    seg_thresh: float = 0.0


def _rgb_lists(colors: Sequence[Sequence[int]]) -> list[list[int]]:
    return [list(map(int, c)) for c in colors]


def _seg_entry(head: HeadSpec) -> dict[str, Any]:
    """Metadata ``seg``: ``colors`` is the one name; ``palette`` (the same list) stays because schema version 1
    requires it."""
    colors = _rgb_lists(head.colors)
    entry: dict[str, Any] = {"classes": list(head.classes), "palette": colors, "ignore_index": IGNORE_INDEX}
    if colors:
        entry["colors"] = colors
    return entry


def _det_entry(head: HeadSpec, decoding: Decoding) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "classes": list(head.classes),
        "score_thresh": float(decoding.score_thresh),
        "iou_thresh": float(decoding.iou_thresh),
        "ios_thresh": float(decoding.ios_thresh),
        "decoding": {
            "in_graph": True,
            "box_format": "xyxy_px",
            "variances": [float(v) for v in decoding.variances],
            "anchors": dict(decoding.anchors),
        },
    }
    if head.class_score_thresh is not None:
        entry["class_score_thresh"] = [float(t) for t in head.class_score_thresh]
    if head.colors:
        entry["colors"] = _rgb_lists(head.colors)
    return entry


def _entries(meta: Mapping[str, Any], key: str, default: Sequence[Any], count: int, origin: str) -> tuple:
    values = tuple(recorded(meta, key) or default)
    if len(values) != count:
        raise InputError(f"{origin}: metadata '{key}' has {len(values)} entries, the model head has {count} classes")
    return values


def class_thresholds(found: Any, names: Sequence[str]) -> tuple[float, ...] | None:
    """The validation-F1 thresholds training recorded (``found``: class name -> threshold or None), in ``names``
    order; a class without one gets :data:`DEFAULT_SCORE_THRESH`. None: nothing recorded."""
    if not names or not isinstance(found, Mapping):
        return None
    return tuple(DEFAULT_SCORE_THRESH if found.get(n) is None else float(found[n]) for n in names)


def heads_from_checkpoint(
    meta: Mapping[str, Any], sizes: Mapping[str, int], origin: str = "checkpoint"
) -> dict[str, HeadSpec]:
    """The head specs of a checkpoint whose heads have ``sizes`` classes (task -> count; 0 or absent: no head),
    from its metadata (older key names read too: :data:`engine.core.classes.LEGACY_KEYS`); a head without
    recorded classes gets the ISPRS ones."""
    heads: dict[str, HeadSpec] = {}
    if sizes.get("seg"):
        names = _entries(meta, "seg_classes", SEG_CLASSES, sizes["seg"], origin)
        heads["seg"] = HeadSpec(names, _colors(_entries(meta, "seg_colors", PALETTE, sizes["seg"], origin)))
    if sizes.get("det"):
        names = _entries(meta, "det_classes", DET_CLASSES, sizes["det"], origin)
        colors = _entries(meta, "det_colors", det_colors_for(names, ISPRS_SEG), sizes["det"], origin)
        heads["det"] = HeadSpec(names, _colors(colors), class_thresholds(recorded(meta, "class_score_thresh"), names))
    return heads


def heads_to_checkpoint(heads: Mapping[str, HeadSpec]) -> dict[str, Any]:
    """The checkpoint-metadata keys of ``heads``: ``seg_classes``/``seg_colors``, ``det_classes``/``det_colors``
    and ``class_score_thresh`` (detection class name -> threshold)."""
    out: dict[str, Any] = {}
    for task, head in heads.items():
        out.update(head_keys(task, head.classes, head.colors))
        if head.class_score_thresh is not None:
            out["class_score_thresh"] = dict(zip(head.classes, head.class_score_thresh))
    return out


DEEPNESS_VALUE_MAX: float = 255.0
"""Deepness divides every raw input value by 255 before it standardises (its models take uint8 imagery)."""


def deepness_standardization(mean: Sequence[float], std: Sequence[float], value_max: float) -> dict[str, list[float]]:
    """Deepness's ``standardization_mean/std`` giving the model exactly pmtl's input, (raw / max - mean) / std,
    from Deepness's (raw / 255 - mean') / std': mean' = mean * max / 255, std' = std * max / 255 (the identity for
    uint8 models)."""
    factor = float(value_max) / DEEPNESS_VALUE_MAX
    return {
        "standardization_mean": [float(v) * factor for v in mean],
        "standardization_std": [float(v) * factor for v in std],
    }


def to_props(meta: Mapping[str, Any]) -> dict[str, str]:
    """One JSON string per top-level key, as stored in ONNX ``metadata_props``."""
    return {key: json.dumps(value) for key, value in meta.items()}


def from_props(props: Mapping[str, str]) -> dict[str, Any]:
    """Decode ``metadata_props``; values that are not JSON stay strings (some exporters write bare text)."""
    out: dict[str, Any] = {}
    for key, text in props.items():
        try:
            out[key] = json.loads(text)
        except (TypeError, ValueError):
            out[key] = text
    return out


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What inference needs to know about a model, from pmtl metadata or Deepness defaults."""

    source: str  # "pmtl" | "deepness"
    input_name: str
    channels: int
    bands: tuple[str, ...] | None
    value_dtype: str
    value_max: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    gsd: float | None
    tile_size: int
    overlap: int
    gsd_range: tuple[float, float] | None = None
    """(finest, coarsest) GSD of the training domains; None: only ``gsd`` is known."""
    value_scalings: tuple[tuple[str, float], ...] = ()
    """(dtype, max) of each training domain (metadata ``domains``); empty: only ``value_dtype``/``value_max``."""
    seg_output: str | None = None
    seg_kind: str = "logits"
    det_scores_output: str | None = None
    det_boxes_output: str | None = None
    heads: Mapping[str, HeadSpec] = dataclasses.field(default_factory=dict)
    """The :class:`HeadSpec` of each task the model has (colours from the metadata, else fallbacks)."""
    score_thresh: float = DEFAULT_SCORE_THRESH
    iou_thresh: float = 0.5
    ios_thresh: float = 0.6
    notes: tuple[str, ...] = ()
    """Defaults the reader had to assume (Deepness-only models); inference logs them."""
    raw: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def head(self, task: str) -> HeadSpec:
        """The spec of the ``task`` head; an empty one when the model has no such head."""
        return self.heads.get(task, NO_HEAD)

    def value_max_for(self, dtype: str) -> float | None:
        """The raw value that maps to 1.0 for imagery of ``dtype``: that of the training domain stored in that
        dtype (the first model input's for older models); None when no domain was."""
        for domain_dtype, domain_max in self.value_scalings or ((self.value_dtype, self.value_max),):
            if dtype == domain_dtype:
                return domain_max
        return None


SEG_COLORS_KEY, DET_COLORS_KEY = "seg.colors", "det.colors"
"""Optional top-level metadata keys: a JSON list of [r, g, b] per class, in class-id order."""


def fallback_color(index: int) -> tuple[int, int, int]:
    """A deterministic colour for class ``index`` (golden-ratio hue steps: neighbours differ strongly)."""
    import colorsys

    hue = (0.13 + index * 0.618033988749895) % 1.0
    value = 0.95 if index % 2 == 0 else 0.75
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, value)
    return round(r * 255), round(g * 255), round(b * 255)


def _isprs_color(name: str) -> tuple[int, int, int] | None:
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    return PALETTE[SEG_CLASSES.index(key)] if key in SEG_CLASSES else None


def class_colors(names: Sequence[str]) -> tuple[tuple[int, int, int], ...]:
    """Colours for classes without colours in the metadata: ISPRS colours for ISPRS names, else distinct ones."""
    colors: list[tuple[int, int, int]] = []
    step = 0
    for name in names:
        color = _isprs_color(name)
        while color is None or color in colors:
            color, step = fallback_color(step), step + 1
        colors.append(color)
    return tuple(colors)


def _parse_colors(value: Any, names: Sequence[str], key: str, origin: str) -> tuple[tuple[int, int, int], ...]:
    """``[[r, g, b], ...]`` with one colour per class, else an InputError naming the key."""
    ok = isinstance(value, list) and len(value) == len(names)
    colors: list[tuple[int, int, int]] = []
    for item in value if ok else ():
        if not (isinstance(item, list) and len(item) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in item)):
            ok = False
            break
        colors.append((item[0], item[1], item[2]))
    if not ok:
        raise InputError(
            f"model '{origin}': metadata key '{key}' must list one [r, g, b] (0-255 integers) per class "
            f"({len(names)} classes: {list(names)}), found {value!r}"
        )
    return tuple(colors)


def _colors_of(
    meta: Mapping[str, Any], key: str, names: Sequence[str], origin: str, palette: Sequence[Sequence[int]] = ()
) -> tuple[tuple[int, int, int], ...]:
    """Class colours from ``key`` (``head.colors``: a top-level dotted key, which wins, or nested under the head as
    pmtl writes it), else ``palette`` when it covers every class, else :func:`class_colors`."""
    head, _, leaf = key.partition(".")
    nested = meta.get(head) if isinstance(meta.get(head), Mapping) else {}
    if key in meta:
        return _parse_colors(meta[key], names, key, origin)
    if leaf in nested:
        return _parse_colors(nested[leaf], names, key, origin)
    if names and len(palette) == len(names):
        return tuple((int(c[0]), int(c[1]), int(c[2])) for c in palette)
    return class_colors(names)


def _output_of(meta: Mapping[str, Any], task: str, kinds: tuple[str, ...]) -> tuple[str | None, str]:
    for name, spec in meta["outputs"].items():
        if spec["task"] == task and spec["kind"] in kinds:
            return name, spec["kind"]
    return None, ""


def _colors(values: Sequence[Sequence[int]]) -> tuple[tuple[int, int, int], ...]:
    return tuple((int(c[0]), int(c[1]), int(c[2])) for c in values)


def _gsd_range(meta: Mapping[str, Any]) -> tuple[float, float]:
    """(finest, coarsest) GSD of the training domains; an older model's single ``gsd`` both ways."""
    gsds = [float(d["gsd"]) for d in meta.get("domains", ())] or [float(meta["gsd"])]
    return min(gsds), max(gsds)


def _heads_of(meta: Mapping[str, Any], origin: str) -> dict[str, HeadSpec]:
    """The head specs written in pmtl metadata (``colors``; older models: ``seg.palette``, else fallbacks)."""
    heads: dict[str, HeadSpec] = {}
    for task in meta["tasks"]:
        entry = meta.get(task, {})
        classes = tuple(entry.get("classes", ()))
        palette = entry.get("palette", ()) if task == "seg" else ()
        thresholds = entry.get("class_score_thresh")
        if thresholds and len(thresholds) != len(classes):
            raise InputError(
                f"model '{origin}': metadata key '{task}.class_score_thresh' lists {len(thresholds)} thresholds "
                f"for {len(classes)} classes {list(classes)}"
            )
        heads[task] = HeadSpec(
            classes,
            _colors_of(meta, f"{task}.colors", classes, origin, palette),
            tuple(map(float, thresholds)) if thresholds else None,
        )
    return heads


def _pmtl_info(meta: Mapping[str, Any], origin: str, graph_outputs: Sequence[str]) -> ModelInfo:
    version = meta.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise InputError(
            f"model '{origin}': metadata key 'schema_version' is {version!r}, this reader supports "
            f"{list(SUPPORTED_SCHEMA_VERSIONS)}; re-export the model with this version of pmtl"
        )
    validate_metadata(meta, f"model '{origin}'")
    missing = sorted(set(meta["outputs"]) - set(graph_outputs))
    if missing:
        raise InputError(f"model '{origin}': metadata names outputs {missing} the graph lacks (graph: {graph_outputs})")
    inp, det = meta["input"], meta.get("det", {})
    seg_output, seg_kind = _output_of(meta, "seg", ("logits", "probabilities"))
    scores, _ = _output_of(meta, "det", ("sigmoid_scores",))
    boxes, _ = _output_of(meta, "det", ("boxes_xyxy_px",))
    return ModelInfo(
        source="pmtl",
        input_name=inp["name"],
        channels=len(inp["bands"]),
        bands=tuple(inp["bands"]),
        value_dtype=inp["value_scaling"]["dtype"],
        value_max=float(inp["value_scaling"]["max"]),
        mean=tuple(inp["mean"]),
        std=tuple(inp["std"]),
        gsd=float(meta["gsd"]),
        tile_size=int(meta["tile_size"]),
        overlap=int(meta["overlap"]),
        gsd_range=_gsd_range(meta),
        value_scalings=tuple(
            (d["value_scaling"]["dtype"], float(d["value_scaling"]["max"])) for d in meta.get("domains", ())
        ),
        seg_output=seg_output,
        seg_kind=seg_kind or "logits",
        det_scores_output=scores if "det" in meta["tasks"] else None,
        det_boxes_output=boxes if "det" in meta["tasks"] else None,
        heads=_heads_of(meta, origin),
        score_thresh=float(det.get("score_thresh", DEFAULT_SCORE_THRESH)),
        iou_thresh=float(det.get("iou_thresh", 0.5)),
        ios_thresh=float(det.get("ios_thresh", 0.6)),
        raw=dict(meta),
    )


def _deepness_classes(meta: Mapping[str, Any], origin: str, n_out: int | None) -> tuple[str, ...]:
    names = meta.get("class_names")
    if isinstance(names, Mapping) and names:
        try:
            ordered = sorted(names.items(), key=lambda kv: int(kv[0]))
        except ValueError as exc:
            raise InputError(f"model '{origin}': metadata key 'class_names' needs integer ids, found {names}") from exc
        return tuple(str(v) for _, v in ordered)
    if isinstance(names, list) and names:
        return tuple(str(v) for v in names)
    return tuple(f"class_{i}" for i in range(max(n_out or 2, 2)))


GraphIO = tuple[str, Sequence[Any], Sequence[tuple[str, Any]]]
"""(input name, input shape, [(output name, output shape), ...]) of an ONNX graph."""


def _deepness_info(meta: Mapping[str, Any], origin: str, graph: GraphIO) -> ModelInfo:
    input_name, input_shape, outputs = graph
    model_type = str(meta.get("model_type", "")).capitalize()
    if model_type != "Segmentor":
        raise InputError(
            f"model '{origin}': Deepness metadata 'model_type' is {meta.get('model_type')!r}; only 'Segmentor' "
            "models can run here (Deepness detectors use a different output format)"
        )
    notes: list[str] = []
    channels = input_shape[1] if len(input_shape) == 4 and isinstance(input_shape[1], int) else 3
    tile = meta.get("tile_size", meta.get("tiles_size"))
    if tile is None:
        tile = input_shape[2] if len(input_shape) == 4 and isinstance(input_shape[2], int) else 512
        notes.append(f"no 'tile_size' in metadata: using {tile} px")
    out_shape = outputs[0][1]
    n_out = out_shape[1] if len(out_shape) == 4 and isinstance(out_shape[1], int) else None
    classes = _deepness_classes(meta, origin, n_out)
    mean = meta.get("standardization_mean", [0.0] * channels)
    std = meta.get("standardization_std", [1.0] * channels)
    if "standardization_mean" not in meta:
        notes.append("no 'standardization_mean/std': input scaled to [0, 1] only (raw / 255)")
    resolution = meta.get("resolution")
    if resolution is None:
        notes.append("no 'resolution': the raster's GSD is used as is (no resampling)")
    overlap_pct = int(meta.get("tiles_overlap", 10))
    notes.append(f"Deepness-only metadata: bands taken in raster order, uint8 scaling, classes {list(classes)}")
    return ModelInfo(
        source="deepness",
        input_name=input_name,
        channels=channels,
        bands=None,
        value_dtype="uint8",
        value_max=255.0,
        mean=tuple(float(v) for v in (mean if isinstance(mean, list) else [mean] * channels)),
        std=tuple(float(v) for v in (std if isinstance(std, list) else [std] * channels)),
        gsd=None if resolution is None else float(resolution) / 100.0,
        tile_size=int(tile),
        overlap=round(int(tile) * overlap_pct / 100.0),
        seg_output=outputs[0][0],
        seg_kind="probabilities",
        heads={"seg": HeadSpec(classes, _colors_of(meta, SEG_COLORS_KEY, classes, origin))},
        notes=tuple(notes),
        raw=dict(meta),
    )


def model_info(
    props: Mapping[str, str],
    origin: str,
    input_name: str,
    input_shape: Sequence[Any],
    outputs: Sequence[tuple[str, Any]],
) -> ModelInfo:
    """Interpret a model's metadata: pmtl (schema-validated) or Deepness-only, else a clear InputError."""
    meta = from_props(props)
    if "schema_version" in meta or meta.get("format") == FORMAT:
        if "schema_version" not in meta:
            raise InputError(f"model '{origin}': pmtl metadata without the key 'schema_version'")
        return _pmtl_info(meta, origin, [name for name, _ in outputs])
    if "model_type" in meta:
        return _deepness_info(meta, origin, (input_name, input_shape, outputs))
    found = sorted(meta) or "no metadata at all"
    raise InputError(
        f"model '{origin}': expected pmtl metadata (keys {list(PMTL_REQUIRED_KEYS)}) or Deepness metadata "
        f"(at least 'model_type'), found {found}; export the model with `python -m engine.export`"
    )
