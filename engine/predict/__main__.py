"""``python -m engine.predict --model M.onnx --input RASTER --out-raster SEG.tif --out-vector DET.gpkg``: tiled,
georeferenced inference of an exported model over a raster of any size."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from functools import partial

from engine.core.cli import cli_progress, options, run_cli
from engine.core.errors import log_params_as_flags, quiet_gdal_close_errors
from engine.core.progress import Progress

PREDICT_OPTIONS = ("aoi", "bands", "overlap", "batch_size", "out_probs", "out_polygons", "device", "threads",
                   "score_thresh", "value_max")  # fmt: skip
"""Options passed to ``predict_raster`` under their own names."""


def _bands(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated band numbers like 4,1,2, found {text!r}") from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.predict", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="exported ONNX model (pmtl or Deepness segmentation)")
    parser.add_argument("--input", required=True, help="input raster (any GDAL format)")
    parser.add_argument("--out-raster", help="class map GeoTIFF (uint8, ISPRS colours, 255 = nodata)")
    parser.add_argument("--out-vector", help="detections GeoPackage (one layer: class, class_id, score)")
    parser.add_argument("--out-probs", help="per-class probability GeoTIFF (uint8, p*250, 255 = nodata)")
    parser.add_argument("--out-polygons", help="class map polygons GeoPackage (class_id, class)")
    parser.add_argument("--aoi", help="polygon vector file limiting the area processed")
    parser.add_argument("--bands", type=_bands, help="raster band numbers in the model's band order, e.g. 4,1,2")
    parser.add_argument("--overlap", type=int, help="tile overlap in px (default: the model's recommendation)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: all cores)")
    parser.add_argument(
        "--score-thresh", type=float, help="detection score threshold for all classes (default: the model's, per class)"
    )
    parser.add_argument("--value-max", type=float, help="raw value that maps to 1.0 (default: the model's scaling)")
    parser.add_argument("--json-progress", action="store_true", help="JSON lines on stdout (for QGIS / scripts)")
    args = parser.parse_args(argv)
    quiet_gdal_close_errors()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    log_params_as_flags()

    progress = cli_progress("predict", json_lines=args.json_progress)
    cancelled = "prediction cancelled; no output written"
    return run_cli(partial(_predict, args, progress), cancelled=cancelled, progress=progress)


def _predict(args: argparse.Namespace, progress: Progress) -> None:
    from engine.predict.pipeline import predict_raster

    keywords = options(args, PREDICT_OPTIONS)
    summary = predict_raster(args.model, args.input, args.out_raster, args.out_vector, progress=progress, **keywords)
    if hasattr(progress, "close"):
        progress.close()
    print(json.dumps(summary.as_dict(), indent=1))


if __name__ == "__main__":
    sys.exit(main())
