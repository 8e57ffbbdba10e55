"""``python -m engine.export --checkpoint CKPT --out model.onnx [--precision fp32|fp16|int8]``: ONNX (opset >= 18,
dynamic batch, decoding in the graph) with the versioned metadata that ``engine.predict``, QGIS and Deepness read.

``--precision int8`` calibrates on chips of the training data (``--calibration DIR ...`` or the chip datasets the
checkpoint records) and writes the accuracy cost against fp32 on their ``val`` chips into the metadata."""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial

from engine.core.cli import cli_progress, options, run_cli
from engine.core.control import STDIN_FLAG, CancelWatch, watch
from engine.core.modelio import DEFAULT_SCORE_THRESH
from engine.core.progress import JsonLinesProgress

EXPORT_OPTIONS = ("tile_size", "overlap", "variant", "role", "score_thresh", "iou_thresh", "opset", "dynamo",
                  "precision", "calibration")  # fmt: skip
"""Options passed to ``export_checkpoint`` under their own names."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine.export", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="training checkpoint (EMA weights used when present)")
    parser.add_argument("--out", required=True, help="output .onnx path")
    parser.add_argument("--tile-size", type=int, help="tile side in px (default: the training chip size)")
    parser.add_argument("--overlap", type=int, help="recommended overlap in px (default: tile/5)")
    parser.add_argument(
        "--variant",
        choices=("full", "deepness"),
        default="full",
        help="full: seg_logits + det_scores + det_boxes; deepness: a single seg_probs output Deepness can load",
    )
    parser.add_argument("--role", default="student", choices=("student", "teacher", "single_task", "other"))
    parser.add_argument(
        "--score-thresh",
        type=float,
        help="detection score threshold for every class (default: per class, the best F1 on the validation split "
        f"as training recorded it; {DEFAULT_SCORE_THRESH:g} where none)",
    )
    parser.add_argument("--iou-thresh", type=float, default=0.5, help="NMS IoU threshold")
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--dynamo", action="store_true", help="use the torch.export-based exporter (slower)")
    parser.add_argument(
        "--precision",
        choices=("fp32", "fp16", "int8"),
        default="fp32",
        help="fp32; int8: static quantization for CPUs (calibrated); fp16: for the CUDA provider",
    )
    parser.add_argument(
        "--calibration",
        nargs="+",
        metavar="CHIPS_DIR",
        help="chip dataset(s) to calibrate int8 on and to measure the accuracy cost on (default: the training chip "
        "datasets recorded in the checkpoint)",
    )
    parser.add_argument("--calibration-chips", type=int, default=64, help="training chips used for calibration")
    parser.add_argument("--eval-chips", type=int, default=64, help="validation chips per task for the accuracy cost")
    parser.add_argument("--json-progress", action="store_true", help="JSON lines on stdout (for QGIS / scripts)")
    parser.add_argument(STDIN_FLAG, action="store_true", help="stop when stdin says 'cancel' or closes (for QGIS)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    inner = cli_progress(f"export {args.precision}", json_lines=args.json_progress, disable=args.precision == "fp32")
    # The export has no safe points to poll: a cancel interrupts it, and the temporary file is removed on the way out.
    progress = watch(inner, args.control_stdin, interrupt=True)
    cancelled = "export cancelled; no model was written"
    return run_cli(
        partial(_export, args, progress), cancelled=cancelled, progress=progress, json_errors=args.json_progress
    )


def _export(args: argparse.Namespace, progress: CancelWatch) -> None:
    progress.report(0.0, f"exporting {args.checkpoint}")  # a cancel may come as soon as this line is out
    from engine.export.onnx_export import export_checkpoint  # torch loads here: a cancel may already come

    quantization = {"calibration_chips": args.calibration_chips, "eval_chips": args.eval_chips}
    keywords = options(args, EXPORT_OPTIONS)
    meta = export_checkpoint(args.checkpoint, args.out, quantization=quantization, progress=progress, **keywords)
    progress.close()
    summary = {"out": args.out, "tasks": meta["tasks"], "outputs": list(meta["outputs"]), "precision": args.precision}
    accuracy = (meta.get("quantization") or {}).get("accuracy")
    if accuracy:
        summary["accuracy_vs_fp32"] = {k: v for k, v in accuracy.items() if k.startswith(("delta_", "pixel_"))}
    if args.json_progress:
        JsonLinesProgress().emit("done", **summary)
    else:
        print(json.dumps(summary))


if __name__ == "__main__":
    sys.exit(main())
