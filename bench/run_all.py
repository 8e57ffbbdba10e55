"""Run the benchmarks and record their JSON results in ``docs/results/bench.json`` (``make bench``).

Each module's record replaces its own entry; entries of modules not run this time (``--only``) are kept, so the
committed file always holds the latest measurement of every figure the README renders
(``scripts/render_readme.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from engine.core.atomic import write_json_atomic

BENCHES = (
    "bench.bench_synth",
    "bench.bench_chip",
    "bench.bench_labels",
    "bench.bench_train",
    "bench.bench_predict",
    "bench.bench_demo_quality",
    "bench.bench_quant",
    "bench.bench_region",
)
RESULTS = Path("docs/results/bench.json")


def run_bench(module: str) -> dict[str, Any]:
    """Run one benchmark module in a fresh process; its record is the last JSON line it prints."""
    print(f"=== {module}", flush=True)
    proc = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        return {"error": proc.returncode}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    record = json.loads(lines[-1]) if lines else {}
    when = time.strftime("%Y-%m-%d", time.gmtime())
    return {"_source": f"make bench ({module}), {when}, {os.cpu_count()} CPU cores", **record}


def merge(previous: dict[str, Any], fresh: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The committed records updated with this run's; a failed or skipped module keeps its last measurement."""
    merged = dict(previous)
    for module, record in fresh.items():
        if "error" not in record and "skipped" not in record:
            merged[module] = record
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=BENCHES, metavar="MODULE", help="run only these modules")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results file (default {RESULTS})")
    args = parser.parse_args(argv)
    fresh = {module: run_bench(module) for module in args.only or BENCHES}
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    write_json_atomic(args.out, merge(previous, fresh))
    print(f"results: {args.out} (render the README with: python scripts/render_readme.py)")
    return 0 if all("error" not in r for r in fresh.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
