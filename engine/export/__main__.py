"""``python -m engine.export --checkpoint CKPT --out model.onnx``: ONNX (opset >= 18, dynamic batch, decoding in the
graph) with the versioned metadata that ``engine.predict``, the QGIS plugin and Deepness read."""

from __future__ import annotations

import argparse
import json
import sys

from engine.core.control import STDIN_FLAG, watch
from engine.core.errors import PmtlError
from engine.core.progress import JsonLinesProgress, NullProgress


def main(argv: list[str] | None = None) -> int:
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
    parser.add_argument("--score-thresh", type=float, default=0.3, help="recommended detection score threshold")
    parser.add_argument("--iou-thresh", type=float, default=0.5, help="NMS IoU threshold")
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--dynamo", action="store_true", help="use the torch.export-based exporter (slower)")
    parser.add_argument("--json-progress", action="store_true", help="JSON lines on stdout (for QGIS / scripts)")
    parser.add_argument(STDIN_FLAG, action="store_true", help="stop when stdin says 'cancel' or closes (for QGIS)")
    args = parser.parse_args(argv)
    # The export has no safe points to poll: a cancel interrupts it, and the temporary file is removed on the way out.
    progress = watch(JsonLinesProgress() if args.json_progress else NullProgress(), args.control_stdin, interrupt=True)
    progress.report(0.0, f"exporting {args.checkpoint}")

    from engine.export.onnx_export import export_checkpoint

    try:
        meta = export_checkpoint(
            args.checkpoint,
            args.out,
            tile_size=args.tile_size,
            role=args.role,
            overlap=args.overlap,
            variant=args.variant,
            score_thresh=args.score_thresh,
            iou_thresh=args.iou_thresh,
            opset=args.opset,
            dynamo=args.dynamo,
        )
    except PmtlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if args.json_progress:
            JsonLinesProgress().emit("error", message=str(exc))
        return 2
    except KeyboardInterrupt:
        print("export cancelled; no model was written", file=sys.stderr)
        return 130
    summary = {"out": args.out, "tasks": meta["tasks"], "outputs": list(meta["outputs"])}
    if args.json_progress:
        progress.emit("done", **summary)
    else:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
