"""``python -m engine.finetune``: improve a pmtl model with corrected labels (e.g. the edited Detections layer).

The labels are chipped at the model's GSD (rasters resampled to it), the model is trained from its checkpoint for a
few minutes (AdamW, short schedule, the whole network at one rate, augmentation), and
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
from typing import Any

from engine.core.cli import cli_progress, run_cli
from engine.core.control import STDIN_FLAG, watch
from engine.core.errors import quiet_gdal_close_errors
from engine.core.progress import JsonLinesProgress
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


def _finetune(args: argparse.Namespace, progress: Any) -> int:
    from engine.finetune.run import finetune

    watched = watch(progress, args.control_stdin)
    result = finetune(from_namespace(args), watched)
    watched.close()
    print(result.format())
    if args.json_progress:
        JsonLinesProgress().emit(
            "done", model=result.model, checkpoint=result.checkpoint, before=result.before, after=result.after
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_gdal_close_errors()
    progress = cli_progress("fine-tuning", args.json_progress)
    return run_cli(
        lambda: _finetune(args, progress),
        cancelled="fine-tuning cancelled; no model was written",
        progress=progress,
        json_errors=args.json_progress,
    )


if __name__ == "__main__":
    sys.exit(main())
