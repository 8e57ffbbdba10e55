"""``python -m engine.export --checkpoint CKPT --out model.onnx``: ONNX (opset >= 18, dynamic batch, decoding in the
graph) with the versioned metadata that ``engine.predict``, the QGIS plugin and Deepness read."""

from __future__ import annotations

import argparse
import json
import sys

from engine.core.errors import PmtlError


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
    args = parser.parse_args(argv)

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
        return 2
    print(json.dumps({"out": args.out, "tasks": meta["tasks"], "outputs": list(meta["outputs"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
