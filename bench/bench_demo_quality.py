"""Quality of a map model on fresh tiles it never saw (issue 9's targets), predicted the way a user predicts.

``python -m bench.bench_demo_quality [--model out/demo/model.onnx] [--tiles 3]``: generates new synthetic tiles of
both domains (seed 1000, native 5 cm / 9 cm GSD), runs ``engine.predict`` on each whole tile and scores the class
maps (eroded labels) and detections (blobs of the full labels) — see :mod:`engine.demo.quality`. Prints a table and
one JSON line. Scores the model ``make demo`` leaves (skipped, with a note, when there is none).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.demo.quality import format_quality, fresh_tile_quality


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_demo_quality", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("out/demo/model.onnx"))
    parser.add_argument("--tiles", type=int, default=3, help="fresh tiles per domain")
    parser.add_argument("--work", type=Path, default=Path("out/bench_quality"))
    args = parser.parse_args(argv)
    if not args.model.is_file():
        reason = f"model '{args.model}' does not exist: run `make demo` first (it writes out/demo/model.onnx)"
        print(f"skipped: {reason}")
        print(json.dumps({"skipped": reason}))
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    result = fresh_tile_quality(args.model, args.work, tiles=args.tiles)
    print(format_quality(result))
    print(json.dumps({"model": str(args.model), **{k: v for k, v in result.items() if k != "details"}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
