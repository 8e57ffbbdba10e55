"""Time synthetic generation of a paper-sized Vaihingen-like set (~630 train chips of 320² ≈ 65 Mpx).

``python -m bench.bench_synth [--workers 2] [--tiles 16] [--tile-px 2016]``: prints one line of text and one
line of JSON. The default is 16 tiles of 2016² px (181 m at 9 cm) = 65 Mpx = 635 chips' worth of area,
rendered by 2 processes (the target machine has 2 cores); the target is < 60 s, file writing included.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from engine.synth import DOMAINS, generate

TARGET_S = 60.0
CHIP = 320


def run(workers: int, tiles: int, tile_px: int, domain: str = "vaihingen") -> dict:
    """Generate into a temporary folder and return the timing record."""
    spec = DOMAINS[domain]
    with tempfile.TemporaryDirectory(prefix="bench_synth_") as tmp:
        cpu0 = time.process_time()
        start = time.perf_counter()
        out = Path(tmp) / "out"
        summary = generate(domain, out, seed=0, tiles=tiles, tile_size_m=tile_px * spec.gsd, workers=workers)
        wall = time.perf_counter() - start
        cpu_parent = time.process_time() - cpu0
    mpx = summary.pixels / 1e6
    return {
        "bench": "synth",
        "domain": domain,
        "tiles": tiles,
        "tile_px": tile_px,
        "mpx": round(mpx, 2),
        "chips_320_equiv": round(summary.pixels / CHIP**2, 1),
        "workers": workers,
        "cpu_count": os.cpu_count(),
        "seconds": round(wall, 2),
        "mpx_per_s": round(mpx / wall, 2),
        "parent_cpu_s": round(cpu_parent, 2),
        "class_shares": {k: round(v, 4) for k, v in summary.class_shares.items()},
        "target_s": TARGET_S,
        "ok": wall < TARGET_S,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_synth", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tiles", type=int, default=16)
    parser.add_argument("--tile-px", type=int, default=2016)
    args = parser.parse_args(argv)
    rec = run(args.workers, args.tiles, args.tile_px)
    verdict = "ok" if rec["ok"] else "MISSED"
    print(
        f"synth vaihingen: {rec['mpx']} Mpx ({rec['chips_320_equiv']} chips of 320²) in {rec['seconds']} s with "
        f"{rec['workers']} workers = {rec['mpx_per_s']} Mpx/s (target < {TARGET_S:.0f} s: {verdict})"
    )
    print(json.dumps(rec))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
