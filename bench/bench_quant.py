"""INT8 / FP16 against FP32 on one ortho: predict throughput, class-map agreement, accuracy cost, file size.

1. A small synthetic Vaihingen-like set (engine.synth, 6 tiles of 54 m) is chipped at 96 px (train / val / test
   tiles held out as in the experiments) and the partial-MTL student (ResNet18-FPN, both heads) is trained briefly
   on it (``--iters``, about a minute on 2 cores), or ``--checkpoint`` is used as it is.
2. ``engine.export`` writes it at 320 px tiles (overlap 64) as fp32, int8 (calibrated on the training chips; its
   metadata records the deltas on the val chips) and fp16.
3. ``predict_raster`` runs every model over the same unseen SIZE² synthetic ortho, alternating models, best of
   ``--repeats``; the same tiles go through the bare onnxruntime session (predict overhead ratio per precision).
   Class maps of int8 and fp16 are compared with fp32 pixel by pixel; mIoU / AP50 of every model are measured on
   the held-out test chips (``engine.evaluate.onnx_eval``).
4. onnxruntime's profiler splits one batch's kernel time by operator type (what dominates, int8 vs fp32).

Targets (issue 13): int8 throughput >= 2x fp32, agreement >= 97 %, mIoU and AP50 cost <= 1 point, int8 file <=
35 % of fp32, predict / raw onnxruntime >= 0.9 for every precision.
``python -m bench.bench_quant [--size 1024] [--iters 40] [--eval-chips 32] [--repeats 2] [--threads 2]
[--checkpoint CK --chips DIR]``
prints one text line per result and one JSON line.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from osgeo import gdal

from bench.bench_predict import raw_onnxruntime

gdal.UseExceptions()
TILE, OVERLAP, CHIP = 320, 64, 96
PRECISIONS = ("fp32", "int8", "fp16")


def make_chips(root: Path) -> Path:
    """Synthetic Vaihingen-like tiles chipped at 96 px with train / val / test tiles (as the experiments do)."""
    from engine import synth
    from engine.chip import chip_dataset
    from engine.data.isprs import find_isprs_tiles
    from engine.experiments.data import holdout_splits

    synth.generate("vaihingen", root / "synthetic", seed=0, tiles=6, tile_size_m=54.0, overwrite=True)
    splits = holdout_splits(find_isprs_tiles("vaihingen", root / "synthetic"))
    chip_dataset("vaihingen", root / "synthetic", root / "chips", CHIP, CHIP, splits=splits, overwrite=True)
    return root / "chips"


def train_student(chips: Path, out: Path, iters: int) -> Path:
    """The partial-MTL student trained ``iters`` steps (detection and segmentation on the same chips)."""
    from engine.core.progress import TqdmProgress
    from engine.train.config import load_config
    from engine.train.loop import train

    overrides = [
        f"data.det={chips}",
        f"data.seg={chips}",
        "data.batch_size=4",
        "data.num_workers=0",
        "data.max_val_chips=16",
        "optim.epochs=1",
        f"optim.iters_per_epoch={iters}",
        f"optim.warmup_iters={max(1, iters // 10)}",
        "optim.lr=0.02",
        "ema.decay=0.99",
        "ema.tau=20.0",
        f"runtime.out={out}",
    ]
    bar = TqdmProgress("bench student")
    try:
        return train(load_config("models/train/student_mtl.yaml", overrides), progress=bar).best_checkpoint
    finally:
        bar.close()


def make_ortho(root: Path, size: int) -> Path:
    """One unseen synthetic scene of about SIZE² px (another seed than the training tiles)."""
    from engine import synth

    summary = synth.generate("vaihingen", root / "ortho", seed=7, tiles=1, tile_size_m=size * 0.09, overwrite=True)
    return next((root / "ortho").rglob(f"{summary.tiles[0]}*.tif"))


def export_all(checkpoint: Path, chips: Path, root: Path, eval_chips: int) -> dict[str, dict[str, Any]]:
    from engine.export import export_checkpoint

    models = {}
    for precision in PRECISIONS:
        path = root / f"model_{precision}.onnx"
        started = time.perf_counter()
        meta = export_checkpoint(
            checkpoint,
            path,
            tile_size=TILE,
            overlap=OVERLAP,
            precision=precision,
            calibration=[chips],
            quantization={"eval_chips": eval_chips},
        )
        models[precision] = {
            "path": path,
            "meta": meta,
            "export_s": round(time.perf_counter() - started, 1),
            "mb": path.stat().st_size / 1e6,
        }
    return models


def _session_model(path: Path, threads: int) -> Any:
    from engine.predict.model import OnnxModel

    return OnnxModel(path, device="cpu", threads=threads)


def throughput(models: dict[str, dict], ortho: Path, root: Path, threads: int, repeats: int, batch: int) -> dict:
    """Best-of-``repeats`` predict and raw-session seconds per precision, runs alternating between models."""
    from engine.predict import predict_raster

    opened = {p: _session_model(m["path"], threads) for p, m in models.items()}
    runs: dict[str, list] = collections.defaultdict(list)
    cpu: dict[str, list] = collections.defaultdict(list)
    raws: dict[str, list] = collections.defaultdict(list)
    for k in range(repeats):
        for precision, model in opened.items():
            outputs = (root / f"classes_{precision}.tif", root / f"det_{precision}_{k}.gpkg")
            c0 = time.process_time()
            runs[precision].append(predict_raster(model, ortho, *outputs, batch_size=batch))
            cpu[precision].append(time.process_time() - c0)
            raws[precision].append(raw_onnxruntime(models[precision]["path"], ortho, batch, threads))
    record = {}
    for precision in opened:
        best = min(runs[precision], key=lambda r: r.seconds)
        raw_s, raw_cpu = min(r[0] for r in raws[precision]), min(r[1] for r in raws[precision])
        record[precision] = {
            "predict_s": round(best.seconds, 2),
            "predict_cpu_s": round(min(cpu[precision]), 2),
            "raw_onnxruntime_s": round(raw_s, 2),
            "raw_onnxruntime_cpu_s": round(raw_cpu, 2),
            "overhead_ratio": round(raw_s / best.seconds, 3),
            "overhead_cpu_ratio": round(raw_cpu / min(cpu[precision]), 3),
            "tiles": best.tiles,
            "detections": best.detections,
            "provider": best.provider,
        }
    return record


def agreement(root: Path, precision: str) -> float:
    """Share of the ortho's pixels whose class is the same in the fp32 and ``precision`` class maps."""
    ref = gdal.Open(str(root / "classes_fp32.tif")).ReadAsArray()
    other = gdal.Open(str(root / f"classes_{precision}.tif")).ReadAsArray()
    valid = ref != 255
    return float((ref[valid] == other[valid]).mean())


def test_split_metrics(models: dict[str, dict], chips: Path, threads: int, count: int) -> dict[str, dict]:
    """mIoU / AP50 / mAP of every model on the first ``count`` held-out test chips (same chips for all)."""
    from engine.evaluate.onnx_eval import compare_onnx

    paths = [m["path"] for m in models.values()]
    results, _ = compare_onnx(paths, chips, chips, "test", threads=threads, max_chips=count)
    keys = ("seg_miou", "det_ap50", "det_map")
    return {p: {k: r.get(k) for k in keys} for p, r in zip(models, results)}


def profile(path: Path, threads: int, batch: int) -> dict[str, float]:
    """Share of kernel time per operator type over two runs of one batch of random tiles (onnxruntime profiler)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(0, 1, (batch, 3, TILE, TILE)).astype(np.float32)
    for _ in range(2):
        session.run(None, {session.get_inputs()[0].name: x})
    events = json.loads(Path(session.end_profiling()).read_text())
    by_op: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"]
    total = sum(by_op.values()) or 1
    return {op: round(100.0 * us / total, 1) for op, us in by_op.most_common(6)}


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_quant_") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        chips = args.chips or make_chips(root / "data")
        checkpoint = args.checkpoint or train_student(chips, root / "run", args.iters)
        prepared = time.perf_counter() - started
        models = export_all(checkpoint, chips, root, args.eval_chips)
        ortho = make_ortho(root / "data", args.size)
        speed = throughput(models, ortho, root, args.threads, args.repeats, args.batch)
        tests = test_split_metrics(models, chips, args.threads, args.eval_chips)
        record: dict[str, Any] = {
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
            "load_avg_1min": round(os.getloadavg()[0], 2),
            "prepare_s": round(prepared, 1),
            "ortho_px": gdal.Open(str(ortho)).RasterXSize,
            "tile": TILE,
            "overlap": OVERLAP,
        }
        fp32, fp32_cpu = speed["fp32"]["predict_s"], speed["fp32"]["predict_cpu_s"]
        for precision, model in models.items():
            quant = model["meta"].get("quantization") or {}
            record[precision] = {
                "file_mb": round(model["mb"], 2),
                "file_ratio": round(model["mb"] / models["fp32"]["mb"], 3),
                "export_s": model["export_s"],
                **speed[precision],
                "speedup_vs_fp32": round(fp32 / speed[precision]["predict_s"], 2),
                "cpu_speedup_vs_fp32": round(fp32_cpu / speed[precision]["predict_cpu_s"], 2),
                "agreement_vs_fp32": None if precision == "fp32" else round(agreement(root, precision), 4),
                "test": tests[precision],
                "recorded_val_cost": {
                    k: v for k, v in (quant.get("accuracy") or {}).items() if k.startswith(("delta_", "pixel_"))
                },
            }
            for key in ("seg_miou", "det_ap50"):
                ref, value = tests["fp32"].get(key), tests[precision].get(key)
                cost = None if ref is None or value is None else round(100.0 * (ref - value), 2)
                record[precision][f"test_cost_{key}_pts"] = cost
        record["profile_op_share_pct"] = {p: profile(models[p]["path"], args.threads, args.batch) for p in PRECISIONS}
    return record


def summary_lines(record: dict) -> list[str]:
    lines = []
    for p in PRECISIONS:
        r = record[p]
        lines.append(
            f"{p}: {r['file_mb']:.1f} MB ({100 * r['file_ratio']:.0f} %), predict {r['predict_s']} s "
            f"({r['speedup_vs_fp32']}x fp32, CPU time {r['cpu_speedup_vs_fp32']}x; predict/raw onnxruntime "
            f"{r['overhead_ratio']}), agreement "
            f"{r['agreement_vs_fp32']}, test mIoU {r['test']['seg_miou']}, AP50 {r['test']['det_ap50']}, "
            f"cost mIoU {r['test_cost_seg_miou_pts']} pt, AP50 {r['test_cost_det_ap50_pts']} pt"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_quant", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="side of the ortho in px")
    parser.add_argument("--iters", type=int, default=40, help="training steps of the bench's student")
    parser.add_argument("--eval-chips", type=int, default=32, help="val / test chips per task for the accuracy cost")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (2 cores)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--checkpoint", type=Path, help="use this checkpoint instead of training one")
    parser.add_argument("--chips", type=Path, help="chip dataset (train/val/test) for --checkpoint")
    args = parser.parse_args(argv)
    if (args.checkpoint is None) != (args.chips is None):
        parser.error("--checkpoint and --chips go together")
    record = run(args)
    for line in summary_lines(record):
        print(line)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
