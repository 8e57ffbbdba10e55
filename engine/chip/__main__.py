"""``python -m engine.chip``: chip an ISPRS dataset (real layout) into a chip dataset and print its summary."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from engine.core.errors import PmtlError, quiet_gdal_close_errors
from engine.core.progress import Cancelled, TqdmProgress
from engine.data.boxes import DEFAULT_CONNECTIVITY, DEFAULT_MIN_AREA


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine.chip", description=__doc__)
    parser.add_argument("--dataset", required=True, choices=["vaihingen", "potsdam"])
    parser.add_argument("--root", required=True, help="dataset folder in the ISPRS layout")
    parser.add_argument("--out", required=True, help="output folder (must be empty unless --overwrite)")
    parser.add_argument("--size", type=int, default=320, help="chip side in pixels (default 320)")
    parser.add_argument("--stride", type=int, default=320, help="step between chips in pixels (default 320)")
    parser.add_argument("--bands", choices=["RGB", "IRRG", "RGBIR"], help="Potsdam product (default RGB)")
    parser.add_argument("--splits", help="JSON file of tile → split (default: the standard ISPRS split)")
    parser.add_argument("--connectivity", type=int, choices=[4, 8], default=DEFAULT_CONNECTIVITY,
                        help=f"blob connectivity for boxes (default {DEFAULT_CONNECTIVITY})")  # fmt: skip
    parser.add_argument("--min-area", type=int, default=DEFAULT_MIN_AREA,
                        help=f"smallest blob that becomes a box, px (default {DEFAULT_MIN_AREA})")  # fmt: skip
    parser.add_argument("--scale-max", type=float, help="raw value mapped to 1.0 (default: the dtype's maximum)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing chip dataset in --out")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of text")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_gdal_close_errors()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from engine.chip.chipper import chip_dataset

    progress = TqdmProgress("chipping")
    try:
        summary = chip_dataset(
            args.dataset, args.root, args.out, args.size, args.stride, bands=args.bands, splits=args.splits,
            connectivity=args.connectivity, min_area=args.min_area, scale_max=args.scale_max,
            overwrite=args.overwrite, progress=progress,
        )  # fmt: skip
    except (PmtlError, OSError) as exc:  # OSError: what no writer named (its message has the path when known)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (Cancelled, KeyboardInterrupt):
        print("chipping interrupted; the output is not marked complete", file=sys.stderr)
        return 130
    finally:
        progress.close()
    print(json.dumps(summary.to_dict(), indent=1) if args.json else summary.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
