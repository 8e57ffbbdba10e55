"""``python -m engine.predict --model M.onnx --input RASTER --out-raster SEG.tif --out-vector DET.gpkg``: tiled,
georeferenced inference of an exported model over a raster of any size."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from functools import partial

from engine.core.cli import cli_progress, run_cli
from engine.core.errors import quiet_gdal_close_errors
from engine.core.progress import Progress
from engine.predict.options import add_raster_options, raster_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine.predict", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="exported ONNX model (pmtl or Deepness segmentation)")
    parser.add_argument("--input", required=True, help="input raster (any GDAL format)")
    parser.add_argument("--out-raster", help="class map GeoTIFF (uint8, ISPRS colours, 255 = nodata)")
    parser.add_argument("--out-vector", help="detections GeoPackage (one layer: class, class_id, score)")
    parser.add_argument("--out-probs", help="per-class probability GeoTIFF (uint8, p*250, 255 = nodata)")
    parser.add_argument("--out-polygons", help="class map polygons GeoPackage (class_id, class)")
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: all cores)")
    add_raster_options(parser)
    parser.add_argument("--json-progress", action="store_true", help="JSON lines on stdout (for QGIS / scripts)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_gdal_close_errors()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")

    progress = cli_progress("predict", json_lines=args.json_progress)
    cancelled = "prediction cancelled; no output written"
    return run_cli(partial(_predict, args, progress), cancelled=cancelled, progress=progress)


def _predict(args: argparse.Namespace, progress: Progress) -> None:
    from engine.predict.pipeline import run_prediction

    outputs = {
        "raster": args.out_raster,
        "probs": args.out_probs,
        "vector": args.out_vector,
        "polygons": args.out_polygons,
    }
    settings = raster_settings(args)
    prediction = run_prediction(
        args.model, args.input, outputs, settings, device=args.device, threads=args.threads, progress=progress
    )
    if hasattr(progress, "close"):
        progress.close()
    print(json.dumps(prediction.summary.as_dict(), indent=1))


if __name__ == "__main__":
    sys.exit(main())
