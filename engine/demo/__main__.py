"""``python -m engine.demo --out DIR``: synthetic data → chips → teachers → students (the paper's table, demo
preset) → evaluation → ONNX → detection + segmentation of a map layer through ``qgis_process`` → PNG map.

Each step reuses what an earlier run finished, so a re-run after an interruption continues.
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

from engine.core.errors import PmtlError

REPO = Path(__file__).resolve().parents[2]


def _step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def summarise_chips(chips: dict[str, Path], out: Path) -> list[Path]:
    """Print chips per split, boxes per class and class pixel shares; write a preview PNG per dataset."""
    from engine.data.chipstore import open_chip_dataset
    from engine.viz.chips import preview_chips

    previews = []
    for name, root in chips.items():
        manifest = open_chip_dataset(root).manifest
        boxes: dict[str, int] = {}
        for chip in manifest["chips"]:
            for box in chip["boxes"]:
                boxes[box[4]] = boxes.get(box[4], 0) + 1
        summary = manifest.get("summary", {})
        shares = summary.get("class_pixel_shares", {})
        print(f"{name}: bands {manifest['bands']}, GSD {manifest['gsd']} m, chips {manifest['chip_size']}²")
        print(f"  chips per split: {manifest['splits']}")
        print(f"  boxes per class: {boxes}")
        if shares:
            print("  class pixel shares: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in shares.items()))
        png = out / f"preview_{name}.png"
        preview_chips(root, png, split="train", count=12)
        previews.append(png)
        print(f"  preview: {png}")
    return previews


def run_qgis(args: list[str], log: Path) -> None:
    """Run ``scripts/qgis_process`` (plugin + venv on the paths); raise with its output on failure."""
    cmd = [str(REPO / "scripts" / "qgis_process"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise PmtlError(
            f"qgis_process {' '.join(args[:2])} failed (exit {proc.returncode}); log: {log}\n{proc.stderr[-2000:]}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--direction", default="p2v", choices=["p2v", "v2p", "both"])
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    try:
        from engine.experiments.__main__ import load_preset, run_direction
        from engine.experiments.data import prepare_chips
        from engine.experiments.plan import DIRECTIONS
        from engine.experiments.tables import build_table, write_tables

        preset = load_preset(args.preset)
        t = _step("1/5 synthetic twin (Vaihingen-like NIR-R-G 9 cm, Potsdam-like R-G-B 5 cm) and chips")
        chips = prepare_chips(preset, out / "data", {"vaihingen": None, "potsdam": None})
        summarise_chips(chips, out)
        timings["data"] = time.perf_counter() - t

        t = _step("2/5 teachers, single-task, partial MTL and distilled students (demo preset)")
        directions = list(DIRECTIONS) if args.direction == "both" else [args.direction]
        tables = {d: build_table(run_direction(d, preset, chips, out / "runs", 1, None)) for d in directions}
        print(write_tables(out, tables, 1))
        timings["training"] = time.perf_counter() - t

        t = _step("3/5 the map model: partial-MTL student trained longer, then ONNX export")
        from engine.export import export_checkpoint

        det_set, seg_set = DIRECTIONS[directions[0]]
        best = train_showcase(preset, chips[det_set], chips[seg_set], out / "runs" / "showcase")
        model = out / "model.onnx"
        # trained on small chips, run on larger tiles: fewer seams, room for objects bigger than a chip
        export_checkpoint(best, model, tile_size=preset["showcase"].get("export_tile_size"))
        print(f"model: {model}")
        timings["map_model"] = time.perf_counter() - t

        t = _step("4/5 detection + segmentation of a synthetic ortho through qgis_process")
        ortho = _test_ortho(out / "data" / "chips" / det_set)
        classes, detections, png = out / "map_classes.tif", out / "map_detections.gpkg", out / "map.png"
        run_qgis(
            ["run", "pmtl:detect_segment", "--", f"INPUT={ortho}", f"MODEL={model}", f"OUTPUT_RASTER={classes}",
             f"OUTPUT_DETECTIONS={detections}", f"SCORE_THRESHOLD={preset['showcase'].get('score_thresh', 0.3)}"],
            out / "qgis_detect_segment.log",
        )  # fmt: skip
        timings["predict"] = time.perf_counter() - t

        t = _step("5/5 map rendered by QGIS")
        run_qgis(
            ["run", "pmtl:render_map", "--", f"INPUT={ortho}", f"CLASS_MAP={classes}", f"DETECTIONS={detections}",
             "WIDTH=1400", f"OUTPUT={png}"],
            out / "qgis_render_map.log",
        )  # fmt: skip
        timings["render"] = time.perf_counter() - t
    except PmtlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    total = time.perf_counter() - started
    timings["total"] = total
    (out / "timings.json").write_text(json.dumps(timings, indent=1))
    print("\n=== done in " + f"{total:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ")")
    print(f"  chip previews:  {out}/preview_*.png")
    print(f"  paper table:    {out}/tables.md (+ tables.json, tables.png)")
    print(f"  ONNX model:     {out}/model.onnx")
    print(f"  map layers:     {out}/map_classes.tif, {out}/map_detections.gpkg (ortho: {ortho})")
    print(f"  rendered map:   {out}/map.png")
    return 0


def train_showcase(preset: dict[str, Any], det_chips: Path, seg_chips: Path, out_dir: Path) -> Path:
    """Train (or reuse) the demo's map model and print its test-split metrics; returns its best checkpoint."""
    from engine.core.progress import TqdmProgress
    from engine.evaluate.report import format_table
    from engine.experiments.__main__ import train_and_test
    from engine.train.config import load_config

    spec = preset["showcase"]
    overrides = [f"{k}={json.dumps(v)}" for k, v in spec["overrides"].items()]
    overrides += [f"data.det={json.dumps(str(det_chips))}", f"data.seg={json.dumps(str(seg_chips))}"]
    overrides += [f"runtime.out={json.dumps(str(out_dir))}", "name=showcase"]
    bar = TqdmProgress("map model")
    best, metrics = train_and_test(load_config(spec["config"], overrides), det_chips, seg_chips, bar)
    bar.close()
    print(format_table({"detection (test split)": metrics["det"], "segmentation (test split)": metrics["seg"]}))
    return best


def _test_ortho(chip_root: Path) -> Path:
    """A test-split tile of the detection dataset: an ortho the networks never saw in training."""
    manifest: dict[str, Any] = json.loads((chip_root / "manifest.json").read_text())
    for tile in manifest["tiles"].values():
        if tile["split"] == "test":
            return Path(tile["image"])
    return Path(next(iter(manifest["tiles"].values()))["image"])


if __name__ == "__main__":
    sys.exit(main())
