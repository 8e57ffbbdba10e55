"""Whole regions: ``engine.predict`` one raster at a time against ``engine.region`` with 1 and 2 workers.

COUNT synthetic 5 cm orthos (SIZE² px each, laid edge to edge in a square grid, like an ortho delivery) and the
real student network (ResNet18-FPN, both heads, random init) exported as a 20 cm model at 320 px tiles:

1. one by one: ``python -m engine.predict`` per raster (a shell loop: one process and model load each);
2. ``python -m engine.region`` over the folder with ``--workers 1`` and ``--workers 2`` (same outputs + COGs, VRT,
   one GeoPackage): speed-up against (1), target >= 1.3x with 2 workers on 2 cores;
3. scheduler overhead per raster (1 worker): the task phase's wall time minus the tasks' own time, per raster, in
   ms and as a share of a raster's predict time (target <= 2 %);
4. peak RSS of a region worker over all its rasters against the largest of three ``engine.predict`` processes,
   one raster each (target: within 10 %);
5. the cost of a 1,000 km² region at 20 cm on N workers, projected from the measured per-worker rate.

``python -m bench.bench_region [--count 16] [--size 2000]``: one text line and one JSON line. Ratios are taken
within this run (the machine is shared: absolute times vary from run to run).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GSD, MODEL_GSD, TILE, OVERLAP = 0.05, 0.20, 320, 64
PROJECT_KM2 = 1000.0


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _cli(module: str, *args: str) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=_env(), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{module} failed ({done.returncode}): {done.stderr[-2000:]}")
    return time.perf_counter() - start, done.stdout


def make_inputs(root: Path, count: int, size: int) -> list[Path]:
    """COUNT textured orthos at 5 cm on a square grid of adjacent tiles (UTM 32N)."""
    from bench.bench_predict import textured_raster

    side = math.ceil(math.sqrt(count))
    folder = root / "orthos"
    folder.mkdir()
    paths = []
    for k in range(count):
        row, col = divmod(k, side)
        origin = (500000.0 + col * size * GSD, 5400000.0 - row * size * GSD)
        paths.append(textured_raster(folder / f"ortho_{row}_{col}.tif", size, seed=k, gsd=GSD, origin=origin))
    return paths


def export_model(root: Path) -> Path:
    import torch

    from bench.bench_predict import DESCRIPTION
    from engine.export import export_onnx
    from engine.models import ModelConfig, build_model

    torch.manual_seed(0)
    path = root / "student_20cm.onnx"
    export_onnx(build_model(ModelConfig()).eval(), path, {**DESCRIPTION, "gsd": MODEL_GSD}, TILE, overlap=OVERLAP)
    return path


def one_by_one(model: Path, rasters: list[Path], out: Path) -> float:
    out.mkdir()
    total = 0.0
    for raster in rasters:
        seconds, _ = _cli(
            "engine.predict", "--model", str(model), "--input", str(raster),
            "--out-raster", str(out / f"{raster.stem}.tif"), "--out-vector", str(out / f"{raster.stem}.gpkg"),
        )  # fmt: skip
        total += seconds
    return total


def region(model: Path, folder: Path, out: Path, workers: int) -> dict:
    seconds, stdout = _cli(
        "engine.region", "--model", str(model), "--input", str(folder), "--out", str(out), "--workers", str(workers)
    )
    summary = json.loads(stdout)
    records = json.loads((out / "region.json").read_text())["inputs"]
    return {"wall_s": seconds, "summary": summary, "records": records}


def predict_rss(model: Path, rasters: list[Path], out: Path) -> float:
    """The largest peak RSS of one ``engine.predict`` process per raster (a shell loop's peak) over ``rasters``."""
    peaks = []
    for raster in rasters:
        _, stdout = _cli("bench.bench_predict", "--rss-child", str(model), str(raster), str(out))
        peaks.append(float(json.loads(stdout.strip().splitlines()[-1])["peak_rss_mb"]))
    return max(peaks)


def overhead(run: dict) -> tuple[float, float]:
    """(ms per raster the scheduler adds, as a share of a raster's predict time) for a 1-worker run."""
    records = run["records"]
    task_s = sum(r["seconds"] for r in records)
    per_raster_ms = 1000.0 * (run["summary"]["timings"]["tasks_s"] - task_s) / len(records)
    predict_ms = 1000.0 * sum(r["predict_seconds"] for r in records) / len(records)
    return per_raster_ms, per_raster_ms / predict_ms


def projection(run: dict, workers: int, raster_km2: float) -> dict:
    """km² per worker-hour from a run's task phase, and the hours for 1,000 km² on N workers."""
    count = len(run["records"])
    rate = count * raster_km2 / (run["summary"]["timings"]["tasks_s"] * workers) * 3600.0
    return {
        "km2_per_worker_hour": round(rate, 3),
        "hours_for_1000_km2": {str(n): round(PROJECT_KM2 / (rate * n), 1) for n in (1, 2, 8, 32, 128)},
    }


def run(count: int, size: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_region_") as tmp:
        root = Path(tmp)
        model = export_model(root)
        rasters = make_inputs(root, count, size)
        loop_s = one_by_one(model, rasters, root / "loop")
        one = region(model, rasters[0].parent, root / "region1", 1)
        two = region(model, rasters[0].parent, root / "region2", 2)
        rss_predict = predict_rss(model, rasters[:3], root / "rss")
    overhead_ms, overhead_share = overhead(one)
    rss_worker = max(r["worker_peak_rss_mb"] for r in two["records"])
    raster_km2 = (size * GSD) ** 2 / 1e6
    return {
        "cpu_count": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "rasters": count,
        "raster_px": size,
        "gsd_m": GSD,
        "model_gsd_m": MODEL_GSD,
        "one_by_one_s": round(loop_s, 2),
        "region_1_worker_s": round(one["wall_s"], 2),
        "region_2_workers_s": round(two["wall_s"], 2),
        "region_2_workers_cluster_s": two["summary"]["timings"]["cluster_s"],
        "speedup_1_worker": round(loop_s / one["wall_s"], 3),
        "speedup_2_workers": round(loop_s / two["wall_s"], 3),
        "overhead_ms_per_raster": round(overhead_ms, 1),
        "overhead_share": round(overhead_share, 4),
        "predict_s_per_raster": round(sum(r["predict_seconds"] for r in one["records"]) / count, 3),
        "peak_rss_predict_mb": round(rss_predict, 1),
        "peak_rss_worker_mb": round(rss_worker, 1),
        "rss_ratio": round(rss_worker / rss_predict, 3),
        "projection_20cm": projection(two, 2, raster_km2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_region", description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=16, help="number of orthos")
    parser.add_argument("--size", type=int, default=2000, help="side of each ortho in px (at 5 cm)")
    args = parser.parse_args(argv)
    record = run(args.count, args.size)
    hours = record["projection_20cm"]["hours_for_1000_km2"]
    print(
        f"{record['rasters']} orthos of {record['raster_px']}² px: one by one {record['one_by_one_s']} s, region "
        f"1 worker {record['region_1_worker_s']} s ({record['speedup_1_worker']}x), 2 workers "
        f"{record['region_2_workers_s']} s ({record['speedup_2_workers']}x); scheduler overhead "
        f"{record['overhead_ms_per_raster']} ms/raster ({100 * record['overhead_share']:.2f} %); peak RSS worker "
        f"{record['peak_rss_worker_mb']:.0f} MB vs predict {record['peak_rss_predict_mb']:.0f} MB; 1,000 km² at 20 cm: "
        f"{hours['1']} h on 1 worker, {hours['32']} h on 32"
    )
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
