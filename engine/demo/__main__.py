"""``python -m engine.demo --out DIR``: synthetic data → chips → students → ONNX → fresh-tile scores → QGIS maps.

Synthetic twin of both domains resampled to a 20 cm working GSD and chipped; single-task students and the partial
multi-task students (detection labels from the Potsdam-like domain, segmentation labels from the Vaihingen-like one)
trained for the same steps and tested (``tables.md``); the map model, exported to ONNX, is
scored on fresh tiles of both domains predicted whole through ``engine.predict`` (``quality.json``), and run through
``qgis_process`` (detect_segment + render_map) on one fresh tile of each domain, side by side in ``map.png``.

The table also has the distilled partial-MTL student (the paper's best, + soft + PDF), taught by this run's two
single-task students (``kd_teachers: students`` in the preset: no ResNet50 teachers to train). Both partial-MTL
students are exported and scored on the fresh tiles; the better one is the map model (``quality.json``).

Each step reuses what an earlier run finished, so a re-run after an interruption continues.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from engine.core.atomic import write_json_atomic
from engine.core.cli import run_cli
from engine.core.errors import PmtlError
from engine.demo.quality import format_quality, format_students

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
    parser.add_argument("--direction", default="p2v", choices=["p2v", "v2p"])
    args = parser.parse_args(argv)
    cancelled = "demo interrupted; a re-run continues from the steps already finished"
    return run_cli(partial(_run_demo, args), cancelled=cancelled)


def _run_demo(args: argparse.Namespace) -> None:
    """The five steps, timed; then the list of what was written and the fresh-tile scores."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    from engine.experiments.__main__ import load_preset, machine_info
    from engine.experiments.data import prepare_chips

    preset = load_preset(args.preset)
    gsd = preset["chips"].get("gsd")
    t = _step(f"1/5 synthetic twin (Vaihingen-like NIR-R-G 9 cm, Potsdam-like R-G-B 5 cm) → {gsd} m chips")
    chips = prepare_chips(preset, out / "data", {"vaihingen": None, "potsdam": None})
    summarise_chips(chips, out)
    timings["data"] = time.perf_counter() - t

    t = _step("2/5 single-task students vs the partial multi-task students, plain and distilled (same steps)")
    candidates = run_table(preset, chips, out, args.direction)
    timings["training"] = time.perf_counter() - t

    t = _step("3/5 ONNX export, then both partial-MTL students on fresh tiles they never saw (the better: map model)")
    quality = score_students(candidates, out, preset["map_model"], args.direction)
    model = out / "model.onnx"
    timings["fresh_tiles"] = time.perf_counter() - t

    t = _step("4/5 detection + segmentation of a fresh tile of each domain through qgis_process")
    panels = [
        detect_and_render(model, scene, out / f"map_{domain}", preset["map_model"], domain)
        for domain, scene in first_scene_per_domain(out / "fresh").items()
    ]
    timings["qgis"] = time.perf_counter() - t

    t = _step("5/5 both domains side by side")
    png = compose_map(panels, out / "map.png", args.direction)
    timings["compose"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started
    write_json_atomic(out / "timings.json", {**timings, "machine": machine_info()})
    print_outputs(out, png, timings, quality)


def print_outputs(out: Path, png: Path, timings: dict[str, float], quality: dict[str, Any]) -> None:
    """What the demo wrote, where, and the fresh-tile scores."""
    print(f"\n=== done in {timings['total']:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ")")
    print(f"  chip previews:  {out}/preview_*.png")
    print(f"  table:          {out}/tables.md (+ tables.json, tables.png); curves: {out}/runs/*/seed0/*/curves.png")
    print(f"  ONNX model:     {out}/model.onnx (the map model: {quality['map_model']}; both in {out}/students/)")
    print(f"  fresh tiles:    {out}/quality.json")
    print(f"  map layers:     {out}/map_*/classes.tif, {out}/map_*/detections.gpkg")
    print(f"  rendered map:   {png}")
    print("\n" + format_quality(quality))
    print(format_students(quality["students"], quality["map_model"]))


def run_table(preset: dict[str, Any], chips: dict[str, Path], out: Path, direction: str) -> dict[str, Path]:
    """Train the preset's runs (1 seed), print and write their table; returns each map-model candidate's best
    checkpoint (``map_model.candidates``)."""
    from engine.experiments.__main__ import run_tables
    from engine.experiments.tables import build_table, write_tables

    results = run_tables([direction], preset, chips, out / "runs", 1, None)[direction]
    print(write_tables(out, {direction: build_table(results)}, 1))
    seed_dir = out / "runs" / direction / "seed0"
    return {run: seed_dir / run / "best.pt" for run in preset["map_model"]["candidates"]}


def score_students(candidates: dict[str, Path], out: Path, spec: dict[str, Any], direction: str) -> dict[str, Any]:
    """Export and score each candidate on the fresh tiles; the better one becomes ``model.onnx``. Writes
    ``quality.json``: the map model's figures, ``map_model`` (its run) and ``students`` (each one's in-domain and
    cross-domain figures)."""
    import shutil

    from engine.core.atomic import atomic_path
    from engine.demo.quality import fresh_tile_quality, pick_map_model, student_summary
    from engine.experiments.plan import DIRECTIONS

    results, summaries, labels = {}, {}, run_labels()
    for run, best in candidates.items():
        print(f"--- {run}")
        onnx = export_map_model(best, out / "students" / f"{run}.onnx", spec)
        results[run] = fresh_tile_quality(onnx, out / "fresh")
        summaries[run] = {"label": labels.get(run, run), **student_summary(results[run], *DIRECTIONS[direction])}
    chosen = pick_map_model(summaries)
    with atomic_path(out / "model.onnx") as tmp:
        shutil.copyfile(out / "students" / f"{chosen}.onnx", tmp)
    quality = {**results[chosen], "map_model": chosen, "students": summaries}
    write_json_atomic(out / "quality.json", quality)
    print(format_quality(quality))
    print(format_students(summaries, chosen))
    return quality


def run_labels() -> dict[str, str]:
    """Each partial-MTL run's label in the tables (``mtl`` → ``Partial MTL``)."""
    from engine.experiments.plan import ROWS

    return {row.det_run: row.label for row in ROWS if row.det_run == row.seg_run}


def export_map_model(best: Path, model: Path, spec: dict[str, Any]) -> Path:
    """ONNX of the map model on tiles larger than its training chips (fewer seams, whole buildings per tile):
    INT8 (about twice as fast on a CPU) when its class maps agree with fp32 on >= 97 % of the validation pixels,
    else fp32; what was chosen and why is printed."""
    from engine.export.onnx_export import export_int8_or_fp32

    meta = export_int8_or_fp32(best, model, tile_size=spec.get("export_tile_size"))
    accuracy = (meta.get("quantization") or meta.get("int8_rejected") or {}).get("accuracy") or {}
    agreement = accuracy.get("pixel_agreement")
    shown = "n/a" if agreement is None else f"{100 * agreement:.1f} %"
    print(f"model: {model} ({meta['precision']}; int8 vs fp32 class-map agreement on validation chips {shown})")
    return model


def first_scene_per_domain(fresh: Path) -> dict[str, Any]:
    """One fresh tile per domain (what the map shows), Potsdam-like first."""
    from engine.demo.quality import FRESH_TILES, fresh_scenes

    return {domain: fresh_scenes(domain, fresh / domain, FRESH_TILES)[0] for domain in ("potsdam", "vaihingen")}


def detect_and_render(model: Path, scene: Any, folder: Path, spec: dict[str, Any], domain: str) -> tuple[str, Path]:
    """``pmtl:detect_segment`` then ``pmtl:render_map`` on one scene, both through ``qgis_process``."""
    folder.mkdir(parents=True, exist_ok=True)
    classes, detections, png = folder / "classes.tif", folder / "detections.gpkg", folder / "map.png"
    run_qgis(
        ["run", "pmtl:detect_segment", "--", f"INPUT={scene.image}", f"MODEL={model}", f"OUTPUT_RASTER={classes}",
         f"OUTPUT_DETECTIONS={detections}",
         *([f"SCORE_THRESHOLD={spec['score_thresh']}"] if spec.get("score_thresh") is not None else [])],
        folder / "qgis_detect_segment.log",
    )  # fmt: skip
    run_qgis(
        ["run", "pmtl:render_map", "--", f"INPUT={scene.image}", f"CLASS_MAP={classes}", f"DETECTIONS={detections}",
         "WIDTH=900", f"OUTPUT={png}"],
        folder / "qgis_render_map.log",
    )  # fmt: skip
    return domain, png


PANEL_TITLES = {
    "potsdam": "Potsdam-like (R-G-B, 5 cm)\ndetection: {det} · segmentation: {seg}",
    "vaihingen": "Vaihingen-like (NIR-R-G, 9 cm)\ndetection: {det} · segmentation: {seg}",
}


def compose_map(panels: list[tuple[str, Path]], png: Path, direction: str) -> Path:
    """Both QGIS-rendered maps side by side, each titled with which task was learned in that domain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from engine.core.atomic import atomic_path
    from engine.experiments.plan import DIRECTIONS

    det_set, seg_set = DIRECTIONS[direction]
    fig, axes = plt.subplots(1, len(panels), figsize=(9 * len(panels), 10.5))
    for ax, (domain, path) in zip(axes, panels):
        ax.imshow(plt.imread(path))
        ax.set_axis_off()
        det = "labels from this domain" if domain == det_set else "no labels here (shared encoder)"
        seg = "labels from this domain" if domain == seg_set else "no labels here (shared encoder)"
        ax.set_title(PANEL_TITLES[domain].format(det=det, seg=seg), fontsize=12)
    fig.suptitle("One model, both tasks, both domains: fresh tiles the model never saw", fontsize=15)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return png


if __name__ == "__main__":
    sys.exit(main())
