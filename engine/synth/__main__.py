"""CLI: ``python -m engine.synth --domain {vaihingen,potsdam,suburb} --out DIR --seed S [--tiles N] [--tile-size-m M]``
(``suburb``: the held-out town of issue 11)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.core.errors import PmtlError
from engine.core.progress import TqdmProgress
from engine.synth.domains import DOMAINS
from engine.synth.generate import generate


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
    bar = TqdmProgress(f"synth {args.domain}")
    try:
        summary = generate(
            args.domain,
            args.out,
            seed=args.seed,
            tiles=args.tiles,
            tile_size_m=args.tile_size_m,
            overwrite=args.overwrite,
            progress=bar,
            workers=args.workers,
        )
    except PmtlError as exc:
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bar.close()
    splits = {s: sum(v == s for v in summary.splits.values()) for s in ("train", "val")}
    shares = ", ".join(f"{k} {v:.1%}" for k, v in summary.class_shares.items())
    print(
        f"{summary.domain}: {len(summary.tiles)} tiles ({splits['train']} train, {splits['val']} val) of "
        f"{summary.tile_size_px} px at {summary.gsd} m in {summary.elapsed_s:.1f} s -> {summary.root}"
    )
    print(f"class shares: {shares}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
