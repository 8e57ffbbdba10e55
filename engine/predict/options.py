"""The per-raster command-line options shared by ``engine.predict`` and ``engine.region`` (one definition each),
turned into a :class:`~engine.predict.pipeline.RasterSettings`."""

from __future__ import annotations

import argparse

from engine.core.options import PredictOptions, add_options
from engine.predict.raster import MAX_GSD_RATIO


def band_numbers(text: str) -> list[int]:
    """``--bands 4,1,2`` → [4, 1, 2]."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated band numbers like 4,1,2, found {text!r}") from exc


def add_raster_options(parser: argparse.ArgumentParser) -> None:
    """Band mapping, AOI, tiling, thresholds, scaling, GSD guard, device and threads."""
    parser.add_argument("--aoi", help="polygon vector file limiting the area processed")
    parser.add_argument("--bands", type=band_numbers, help="raster band numbers in the model's band order, e.g. 4,1,2")
    parser.add_argument("--overlap", type=int, help="tile overlap in px (default: the model's recommendation)")
    add_options(parser, PredictOptions, "batch_size", "device")
    parser.add_argument(
        "--score-thresh", type=float, help="detection score threshold for all classes (default: the model's, per class)"
    )
    parser.add_argument("--value-max", type=float, help="raw value that maps to 1.0 (default: the model's scaling)")
    parser.add_argument(
        "--max-gsd-ratio",
        type=float,
        default=MAX_GSD_RATIO,
        help=f"refuse rasters whose GSD is more than this factor away from the model's (default {MAX_GSD_RATIO:g})",
    )


def raster_settings(args: argparse.Namespace):
    """The :class:`~engine.predict.pipeline.RasterSettings` the parsed options describe."""
    from engine.predict.pipeline import RasterSettings

    return RasterSettings(
        aoi=args.aoi,
        bands=None if args.bands is None else tuple(args.bands),
        overlap=args.overlap,
        batch_size=args.batch_size,
        score_thresh=args.score_thresh,
        value_max=args.value_max,
        max_gsd_ratio=args.max_gsd_ratio,
    )
