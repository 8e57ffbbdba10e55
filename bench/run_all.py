"""Run every benchmark in one go and collect their JSON results in ``out/bench.json`` (``make bench``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


def main() -> int:
    results = {}
    for module in BENCHES:
        print(f"=== {module}", flush=True)
        proc = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True)
        sys.stdout.write(proc.stdout)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-3000:])
            results[module] = {"error": proc.returncode}
            continue
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        results[module] = json.loads(lines[-1]) if lines else {}
    out = Path("out/bench.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"results: {out}")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
