"""``python -m engine.finetune``: improve a pmtl model with corrected labels (e.g. the edited Detections layer).

The labels are chipped at the model's GSD (rasters resampled to it), the model is trained from its checkpoint for a
few minutes (AdamW, short schedule, first ResNet stages frozen, encoder at a tenth of the rate, augmentation), and
OUT/model.onnx (+ OUT/best.pt) is written. Before/after scores on a held-out part of the labelled area are printed.

Where labels count: only inside --aoi or, without it, inside the extent (bounding rectangle) of the label
features; elsewhere nothing counts as background (no detection chip is cut across the border of that area, and
segmentation pixels outside it are ignored). Inside it, every object must be labelled: an object without a polygon
is taught as background. Classes: names in --class-field (a class the model has keeps its weights, a new one starts
fresh), else one class --class-name (default: the model's first detection class).
"""

from __future__ import annotations

import argparse
import sys

from engine.core.control import STDIN_FLAG, watch
from engine.core.errors import PmtlError, quiet_gdal_close_errors
from engine.core.progress import Cancelled, JsonLinesProgress, TqdmProgress
from engine.finetune.options import add_arguments, from_namespace

EPILOG = """example:
  python -m engine.finetune --checkpoint runs/demo/best.pt --image ortho.tif --labels detections_edited.gpkg \\
      --class-field class --task det --out runs/improved --steps 150
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine.finetune", description=__doc__, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    add_arguments(parser)
    parser.add_argument("--json-progress", action="store_true", help="JSON lines on stdout (for QGIS / scripts)")
    parser.add_argument(STDIN_FLAG, action="store_true", help="stop when stdin says 'cancel' or closes (for QGIS)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_gdal_close_errors()
    from engine.finetune.run import finetune

    inner = JsonLinesProgress() if args.json_progress else TqdmProgress("fine-tuning")
    try:
        result = finetune(from_namespace(args), watch(inner, args.control_stdin))
    except Cancelled:
        print("fine-tuning cancelled; no model was written", file=sys.stderr)
        return 130
    except (PmtlError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if args.json_progress:
            JsonLinesProgress().emit("error", message=str(exc))
        return 2
    print(result.format())
    if args.json_progress:
        JsonLinesProgress().emit("done", model=result.model, checkpoint=result.checkpoint, before=result.before,
                                 after=result.after)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
