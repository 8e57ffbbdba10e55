"""``python -m engine.region --model M.onnx --input PATH [--input PATH …] --out DIR``: predict a whole region (many
rasters, folders, globs, VRT mosaics, lists of paths or GDAL URLs) on Dask, from one laptop to a cluster."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from functools import partial

from engine.core.cli import EXIT_CANCELLED, EXIT_OK, cli_progress, run_cli
from engine.core.cli import options as cli_options
from engine.core.control import STDIN_FLAG, watch
from engine.core.errors import quiet_gdal_close_errors
from engine.core.options import WorkerOptions, add_options
from engine.predict.options import add_raster_options, raster_settings
from engine.region.job import MAX_TILES_PER_TASK, RegionOptions, run_region


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine.region", description=" ".join(__doc__.split()))
    parser.add_argument("--model", required=True, help="exported ONNX model")
    parser.add_argument(
        "--input",
        required=True,
        action="append",
        help="raster, folder, glob, VRT mosaic, or text file of paths / GDAL URLs (repeatable)",
    )
    parser.add_argument(
        "--out", required=True, help="output folder: classes/, classes.vrt, detections.gpkg, region.json"
    )
    add_options(parser, WorkerOptions, "workers")
    parser.add_argument(
        "--threads-per-worker", type=int, help="onnxruntime threads per worker (default: cores/workers)"
    )
    parser.add_argument("--scheduler", help="address of a running Dask scheduler to join, e.g. tcp://10.0.0.5:8786")
    parser.add_argument("--resume", action="store_true", help="skip the inputs region.json lists as finished")
    parser.add_argument(
        "--max-tiles-per-task",
        type=int,
        default=MAX_TILES_PER_TASK,
        help=f"split rasters with more model tiles than this into windows, one task each ({MAX_TILES_PER_TASK})",
    )
    add_raster_options(parser)
    parser.add_argument("--json-progress", action="store_true", help="JSON lines on stdout (for QGIS / scripts)")
    parser.add_argument(STDIN_FLAG, action="store_true", help="a 'cancel' line on stdin stops the job")
    return parser


CANCELLED = "region job cancelled; finished rasters are kept (--resume goes on)"
EXIT_SOME_FAILED = 1
"""Some rasters failed (each with its one-line error), the others finished."""
_SAME_NAMES = ("model", "workers", "threads_per_worker", "scheduler", "resume", "device", "max_tiles_per_task")
""":class:`RegionOptions` fields given by the command-line options of the same names."""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_gdal_close_errors()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    import distributed  # noqa: F401  (sets its loggers to INFO on import: quieten its start/stop chatter after)

    logging.getLogger("distributed").setLevel(logging.ERROR)
    inner = cli_progress("region", json_lines=args.json_progress)
    progress = watch(inner, args.control_stdin)
    return run_cli(
        partial(_region, args, progress), cancelled=CANCELLED, progress=progress, json_errors=args.json_progress
    )


def _region(args: argparse.Namespace, progress) -> int:
    options = RegionOptions(
        inputs=tuple(args.input), out_dir=args.out, settings=raster_settings(args), **cli_options(args, _SAME_NAMES)
    )
    summary = run_region(options, progress)
    progress.close()
    for error in summary.failures.values():
        print(f"error: {error}", file=sys.stderr)
    if args.json_progress:
        progress.inner.emit("done", **summary.as_dict())
    else:
        print(json.dumps(summary.as_dict(), indent=1))
    if summary.status == "cancelled":
        print(CANCELLED, file=sys.stderr)
        return EXIT_CANCELLED
    return EXIT_OK if summary.status == "done" else EXIT_SOME_FAILED


if __name__ == "__main__":
    sys.exit(main())
