"""CLI: ``python -m engine.synth --domain {vaihingen,potsdam,suburb} --out DIR --seed S [--tiles N] [--tile-size-m M]``
(``suburb``: the held-out town of issue 11)."""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

from engine.core.cli import cli_progress, options, run_cli
from engine.core.progress import Progress
from engine.synth.domains import DOMAINS
from engine.synth.generate import generate

CANCELLED = "synthesis cancelled; the folder holds the tiles written so far and no summary (rerun with --overwrite)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.synth", description="Write a synthetic ISPRS-like dataset in the real ISPRS layout."
    )
    parser.add_argument("--domain", required=True, choices=sorted(DOMAINS))
    parser.add_argument("--out", required=True, type=Path, help="output root folder (must be empty or new)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiles", type=int, default=None, help="number of tiles (default: per domain)")
    parser.add_argument("--tile-size-m", type=float, default=None, help="tile side in metres (default: per domain)")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering tiles in parallel")
    parser.add_argument("--overwrite", action="store_true", help="replace the ISPRS folders in a non-empty --out")
    args = parser.parse_args(argv)
    progress = cli_progress(f"synth {args.domain}")
    job = partial(_generate, args, progress)
    return run_cli(job, cancelled=CANCELLED, progress=progress)


def _generate(args: argparse.Namespace, progress: Progress) -> None:
    keywords = options(args, ("seed", "tiles", "tile_size_m", "overwrite", "workers"))
    summary = generate(args.domain, args.out, progress=progress, **keywords)
    progress.close()
    splits = {s: sum(v == s for v in summary.splits.values()) for s in ("train", "val")}
    shares = ", ".join(f"{k} {v:.1%}" for k, v in summary.class_shares.items())
    print(
        f"{summary.domain}: {len(summary.tiles)} tiles ({splits['train']} train, {splits['val']} val) of "
        f"{summary.tile_size_px} px at {summary.gsd} m in {summary.elapsed_s:.1f} s -> {summary.root}"
    )
    print(f"class shares: {shares}")


if __name__ == "__main__":
    sys.exit(main())
