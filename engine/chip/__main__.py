"""``python -m engine.chip``: chip an ISPRS dataset (``--dataset``/``--root``) or your own rasters with your own
labels (``--image`` … ``--labels`` … ``--task``) into a chip dataset and print its summary."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from functools import partial

from engine.core.cli import cli_progress, run_cli
from engine.core.errors import ConfigError, quiet_gdal_close_errors
from engine.core.options import ChipOptions, add_options, help_of
from engine.core.progress import Progress
from engine.data.boxes import DEFAULT_CONNECTIVITY, DEFAULT_MIN_AREA

EPILOG = """examples:
  python -m engine.chip --dataset vaihingen --root data/Vaihingen --out chips/vaihingen
  python -m engine.chip --image ortho.tif --labels buildings.gpkg --task det --class-field type --out chips/det
  python -m engine.chip --image orthos/ --labels landcover.tif --task seg --classes classes.yaml --aoi aoi.gpkg \\
      --out chips/seg --size 256 --stride 256 --val-fraction 0.2 --split-by block --seed 0
  python -m engine.chip --image orthos/ --task none --out chips/unlabelled
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine.chip", description=__doc__, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    isprs = parser.add_argument_group("ISPRS layouts")
    isprs.add_argument("--dataset", choices=["vaihingen", "potsdam"])
    isprs.add_argument("--root", help="dataset folder in the ISPRS layout")
    isprs.add_argument("--bands", choices=["RGB", "IRRG", "RGBIR"], help="Potsdam product (default RGB)")
    isprs.add_argument("--splits", help="JSON file of tile → split (default: the standard ISPRS split)")
    own = parser.add_argument_group("your own rasters and labels")
    own.add_argument("--image", action="append", help="raster (any band count) or folder of rasters; repeatable")
    own.add_argument("--labels", help="polygon layer (any OGR format; file|layername=NAME), 1-band class raster, "
                     "or ISPRS RGB label raster")  # fmt: skip
    own.add_argument(
        "--task", choices=["det", "seg", "both", "none"], help="what the labels are for (none: imagery only)"
    )
    own.add_argument("--class-field", help="attribute holding each feature's class (default: one class)")
    own.add_argument("--class-name", help="name of the single class when there is no class field (default object)")
    own.add_argument("--classes", help="class file (YAML/JSON list of {name, value, colour})")
    own.add_argument("--aoi", help="polygon layer of the area where labels are valid (outside: ignored)")
    own.add_argument(
        "--val-fraction",
        type=float,
        help=f"{help_of(ChipOptions, 'val_fraction')}; with --task none: "
        f"{help_of(ChipOptions, 'unlabelled_val_fraction')}",
    )
    own.add_argument("--test-fraction", type=float, default=0.0, help="share of tiles/blocks for test (default 0)")
    own.add_argument("--split-by", choices=["tile", "block"], default="block", help="split unit (default block)")
    own.add_argument("--block", type=int, help="block side in px for --split-by block (default 2 × size)")
    add_options(own, ChipOptions, "seed")
    own.add_argument("--name", default="custom", help="dataset name recorded in the manifest (default custom)")
    parser.add_argument("--out", required=True, help="output folder (must be empty unless --overwrite)")
    add_options(parser, ChipOptions, "size", "stride")
    parser.add_argument("--connectivity", type=int, choices=[4, 8], default=DEFAULT_CONNECTIVITY,
                        help=f"blob connectivity for boxes (default {DEFAULT_CONNECTIVITY})")  # fmt: skip
    parser.add_argument("--min-area", type=int, default=DEFAULT_MIN_AREA,
                        help=f"smallest box / blob kept, px (default {DEFAULT_MIN_AREA})")  # fmt: skip
    parser.add_argument("--scale-max", type=float, help="raw value mapped to 1.0 (default: the dtype's maximum)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing chip dataset in --out")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of text")
    return parser


def _run(args: argparse.Namespace, progress: Progress):
    if args.image and args.dataset:
        raise ConfigError("--image and --dataset: choose your own rasters or an ISPRS layout, not both")
    if args.dataset:
        if not args.root:
            raise ConfigError("--root: --dataset needs the dataset folder")
        from engine.chip.chipper import chip_dataset

        return chip_dataset(
            args.dataset, args.root, args.out, args.size, args.stride, bands=args.bands, splits=args.splits,
            connectivity=args.connectivity, min_area=args.min_area, scale_max=args.scale_max,
            overwrite=args.overwrite, progress=progress,
        )  # fmt: skip
    if not args.image:
        raise ConfigError("expected --image IMG (your own rasters) or --dataset/--root (an ISPRS layout)")
    if not args.task:
        raise ConfigError("--task: expected det, seg, both or none with --image")
    from engine.chip.splits import SplitPlan, default_val_fraction
    from engine.chip.userdata import LabelSource, chip_images

    val = default_val_fraction(args.task) if args.val_fraction is None else args.val_fraction
    plan = SplitPlan(args.split_by, val, args.test_fraction, args.seed, args.block or 2 * args.size)
    labels = LabelSource(args.task, args.labels, args.class_field, args.class_name, args.classes, args.aoi)
    return chip_images(
        args.image, args.out, labels, size=args.size, stride=args.stride, plan=plan, dataset=args.name,
        scale_max=args.scale_max, connectivity=args.connectivity, min_area=args.min_area, overwrite=args.overwrite,
        progress=progress,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_gdal_close_errors()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    progress = cli_progress("chipping")
    cancelled = "chipping interrupted; the output is not marked complete"
    return run_cli(partial(_chip_and_report, args, progress), cancelled=cancelled, progress=progress)


def _chip_and_report(args: argparse.Namespace, progress: Progress) -> None:
    summary = _run(args, progress)
    progress.close()
    print(json.dumps(summary.to_dict(), indent=1) if args.json else summary.format())


if __name__ == "__main__":
    sys.exit(main())
