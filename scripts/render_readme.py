"""Fill the measured figures of the README (and docs/results pages) from the committed JSON they come from.

A figure block is ``<!-- figures:NAME -->`` … ``<!-- /figures -->``; NAME picks a renderer in ``RENDERERS``. The
JSON: ``docs/results/bench.json`` (written by ``make bench``) and ``docs/results/demo/*.json`` (copied from a
``make demo`` output folder by ``--from-demo``).

    python scripts/render_readme.py                      # rewrite every block from the JSON
    python scripts/render_readme.py --check              # exit 1 naming each block that disagrees with its JSON
    python scripts/render_readme.py --from-demo out/demo # first copy that demo's quality/tables/timings JSON
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path("docs/results")
DOCS = (Path("README.md"), RESULTS / "quant.md")
"""The files whose figure blocks are rendered, relative to the repository root."""
PRECISIONS = ("fp32", "int8", "fp16")
DEMO_FILES = ("quality.json", "tables.json", "timings.json")
"""What ``--from-demo`` copies from a ``make demo`` output folder into ``docs/results/demo/``."""

BLOCK = re.compile(r"(<!-- figures:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /figures -->)", re.DOTALL)

HEADLINE = (
    ("vaihingen_seg_miou", "Vaihingen-like segmentation mIoU (eroded labels)"),
    ("potsdam_building_ap50", "Potsdam-like building AP50"),
    ("potsdam_car_ap50", "Potsdam-like car AP50"),
    ("potsdam_seg_miou", "Potsdam-like segmentation mIoU (no segmentation label in that domain)"),
    ("vaihingen_det_ap50", "Vaihingen-like detection AP50 (no detection label in that domain)"),
)
"""The fresh-tile figures of ``engine.demo.quality`` and how the README names them."""


def load(root: Path, name: str) -> dict[str, Any]:
    """One committed JSON file under ``docs/results``; a missing or broken one is named in one line."""
    path = root / RESULTS / name
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: figures file '{path}': expected JSON, {exc}") from None


def _minutes(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def _fresh(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def demo_steps(root: Path) -> int:
    """Training steps per run of the demo preset (epochs × iterations per epoch)."""
    import yaml

    train = yaml.safe_load((root / "models/presets/demo.yaml").read_text())["train"]
    return int(train["optim.epochs"]) * int(train["optim.iters_per_epoch"])


def render_demo_run(root: Path) -> str:
    """How long ``make demo`` took and its test-chip table in one paragraph."""
    timings = load(root, "demo/timings.json")
    tables = load(root, "demo/tables.json")
    rows = {row["label"]: row for row in tables["tables"]["p2v"]}
    trainings = sum(2 if label == "Single task" else 1 for label in rows)

    def cells(label: str) -> str:
        row = rows[label]
        det = f"det mAP {100 * row['det_map'][0]:.1f} / AP50 {100 * row['det_ap50'][0]:.1f}"
        return f"{det}, seg mIoU {100 * row['seg_miou'][0]:.1f} / OA {100 * row['seg_oa'][0]:.1f}"

    distilled = [label for label in rows if label not in ("Single task", "Partial MTL")]
    return (
        f"Measured from a fresh output folder on {_machine(timings)}: **`make demo` "
        f"{_minutes(timings['total'])}** (data {_minutes(timings['data'])}, the {_count(trainings)} trainings of "
        f"{demo_steps(root)} steps each {_minutes(timings['training'])}, export + fresh tiles "
        f"{_minutes(timings['fresh_tiles'])}, `qgis_process` {_minutes(timings['qgis'])}). On the test chips "
        f"(`tables.md`, 1 seed) the partial multi-task student scores {cells('Partial MTL')}"
        + "".join(f"; distilled ({label.lstrip('+ ')}) {cells(label)}" for label in distilled)
        + f"; the single-task students {cells('Single task')}.\n"
    )


def _machine(timings: dict[str, Any]) -> str:
    machine = timings.get("machine")
    if not machine:
        return "the 2-core CPU machine"
    bf16 = "native bf16" if machine.get("cpu_native_bf16") else "no native bf16: fp32 training"
    return f"a {machine['cores']}-core {machine['cpu']} ({bf16})"


def _count(number: int) -> str:
    return {2: "two", 3: "three", 4: "four", 5: "five"}.get(number, str(number))


def render_demo_quality(root: Path) -> str:
    """The fresh-tile table: each partial-MTL student as ``make demo`` scores it (3 tiles), the map model on 8 tiles,
    the targets; then which student is the map model and why."""
    three, eight = load(root, "demo/quality.json"), load(root, "demo/quality_8tiles.json")
    students = three.get("students") or {"map": {"label": "map model", "headline": three["headline"]}}
    tiles = three["tiles_per_domain"]
    header = "".join(f" {s['label']} ({tiles} tiles) |" for s in students.values())
    lines = [
        f"| fresh tiles (whole rasters, `engine.predict`) |{header} map model, {eight['tiles_per_domain']} tiles "
        "| target |",
        "|---|" + "---:|" * (len(students) + 2),
    ]
    for key, label in HEADLINE:
        target = three["targets"].get(key)
        shown = "—" if target is None else f"≥ {target:.2f}"
        cells = "".join(f" {_fresh(s['headline'][key])} |" for s in students.values())
        lines.append(f"| {label} |{cells} {_fresh(eight['headline'][key])} | {shown} |")
    return "\n".join(lines) + "\n" + _map_model_line(three) + _per_class_line(eight)


def _map_model_line(quality: dict[str, Any]) -> str:
    students = quality.get("students")
    if not students:
        return ""
    means = ", ".join(f"{s['label']} {s['score']:.3f}" for s in students.values())
    chosen = students[quality["map_model"]]["label"]
    return (
        f"\nThe map model (`model.onnx`) is **{chosen}**: of the students that meet every target, the one with the "
        f"higher mean of in-domain and cross-domain AP50 and mIoU on these tiles ({means}).\n"
    )


def _per_class_line(quality: dict[str, Any]) -> str:
    details = quality.get("details") or {}
    iou = details.get("vaihingen", {}).get("seg", {}).get("iou", {})
    ap50 = {k: v["ap50"] for k, v in details.get("potsdam", {}).get("det", {}).get("per_class", {}).items()}
    if not iou and not ap50:
        return ""
    seg = ", ".join(f"{name.replace('_', ' ')} {value:.2f}" for name, value in iou.items())
    det = ", ".join(f"{name} {value:.2f}" for name, value in ap50.items())
    tiles = quality["tiles_per_domain"]
    return f"\nPer class ({tiles} tiles): Vaihingen-like IoU {seg}; Potsdam-like AP50 {det}.\n"


def _bench_rows(bench: dict[str, Any]) -> list[tuple[str, str, str]]:
    synth, chip, labels = bench["bench.bench_synth"], bench["bench.bench_chip"], bench["bench.bench_labels"]
    train, predict = bench["bench.bench_train"], bench["bench.bench_predict"]
    rss = predict["rss"]
    small, large = sorted(rss, key=int)[0], sorted(rss, key=int)[-1]
    return [
        (f"synthetic twin, paper-sized Vaihingen set ({synth['tiles']} tiles × {synth['tile_px']}², "
         f"{synth['mpx']:.0f} Mpx ≈ {synth['chips_320_equiv']:.0f} chips of 320²)",
         f"{synth['seconds']:g} s ({synth['workers']} workers)", f"< {synth['target_s']:.0f} s"),
        (f"chipping vs a raw GDAL read of the same tiles ({chip['tiles']} × {chip['tile_size'][0]}×"
         f"{chip['tile_size'][1]})",
         f"{chip['chip_mpx_per_s']:g} vs {chip['raw_read_mpx_per_s']:g} Mpx/s = **{chip['ratio']:.2f}**",
         f"≥ {chip['target_ratio']:g}"),
        (f"chipping from polygons ({labels['polygons']:,} in WGS 84) vs ISPRS raster labels, {labels['tiles']} × "
         f"{labels['tile_size'][0]}×{labels['tile_size'][1]} (`bench_labels`)",
         f"{labels['vector_mpx_per_s']:g} vs {labels['raster_mpx_per_s']:g} Mpx/s = "
         f"**{labels['ratio_vector_over_raster']:.2f}** (load average {labels['load_avg_1min']:g} on "
         f"{labels['cores']} cores)", "—"),
        (f"KD training step (loader → augment → student + 2 frozen teachers → losses → backward → step → EMA) vs "
         f"the same models on random tensors, {train['size']}², batch {train['batch_per_task']}+"
         f"{train['batch_per_task']}",
         f"{train['real_img_per_s']:g} vs {train['random_tensor_img_per_s']:g} img/s = **{train['ratio']:.2f}**",
         "≥ 0.9 on GPU"),
        (f"tiled prediction vs raw onnxruntime on the same {predict['tile']}² tiles",
         f"**{predict['throughput_ratio']:.2f}** (CPU time {predict['cpu_time_ratio']:g})", "≥ 0.9"),
        (f"prediction speed, student, {predict['tile']}² tiles, {predict['overlap']} px overlap",
         f"{predict['mpx_per_s']:g} Mpx/s → a 5000×5000 ortho in **≈ {predict['est_5000x5000_s']:.0f} s**", "≤ 60 s"),
        (f"peak memory, {small}² vs {large}² raster",
         f"{rss[small]['peak_rss_mb']:.0f} MB vs {rss[large]['peak_rss_mb']:.0f} MB "
         f"(+{100 * predict['rss_growth']:.0f} %)", "within 10 %"),
    ]  # fmt: skip


def _quant_row(bench: dict[str, Any]) -> tuple[str, str, str]:
    quant = bench["bench.bench_quant"]
    int8 = quant["int8"]
    return (
        f"int8 vs fp32 student (`bench_quant`, same {quant['ortho_px']}² ortho): speed, class-map agreement, "
        "mIoU / AP50 cost, file",
        f"**{int8['speedup_vs_fp32']:.2f}×** (CPU time {int8['cpu_speedup_vs_fp32']:.2f}×), "
        f"**{100 * int8['agreement_vs_fp32']:.1f} %**, {int8['test_cost_seg_miou_pts']:.2f} / "
        f"{int8['test_cost_det_ap50_pts']:.2f} pt, **{100 * int8['file_ratio']:.0f} %** "
        "([docs/results/quant.md](docs/results/quant.md))",
        "≥ 2×, ≥ 97 %, ≤ 1 pt, ≤ 35 %",
    )


def _cpu_step_row(bench: dict[str, Any]) -> tuple[str, str, str]:
    rates = bench["manual.cpu_train_step"]["img_per_s"]
    names, values = list(rates), list(rates.values())
    return (
        "CPU training step, 128², batch 8, one core: " + " vs ".join(names),
        " vs ".join(f"{v:g}" for v in values) + f" img/s (fp32 → bf16: **{values[-1] / values[-2]:.2f}×**)",
        "—",
    )


def render_bench(root: Path) -> str:
    """The benchmark table of the README from ``docs/results/bench.json``."""
    bench = load(root, "bench.json")
    rows = [*_bench_rows(bench), _quant_row(bench), _cpu_step_row(bench)]
    lines = ["| what | measured | target |", "|---|---|---|"]
    lines += [f"| {what} | {measured} | {target} |" for what, measured, target in rows]
    return "\n".join(lines) + "\n"


def render_quant(root: Path) -> str:
    """The int8 / fp16 / fp32 table of ``docs/results/quant.md`` from ``bench.json``."""
    quant = load(root, "bench.json")["bench.bench_quant"]
    fp32, int8, fp16 = quant["fp32"], quant["int8"], quant["fp16"]

    def reduced(r: dict[str, Any]) -> list[str]:
        val = r["recorded_val_cost"]
        return [
            f"{r['file_mb']:.1f} MB ({100 * r['file_ratio']:.0f} %)",
            f"{r['predict_s']:.2f} s = {r['speedup_vs_fp32']:.2f}× (CPU time {r['cpu_speedup_vs_fp32']:.2f}×)",
            f"{100 * r['agreement_vs_fp32']:.2f} %",
            f"{r['test_cost_seg_miou_pts']:.2f} / {r['test_cost_det_ap50_pts']:.2f} pt",
            f"{val['delta_seg_miou']:+.2f} / {val['delta_det_ap50']:+.2f} pt, {100 * val['pixel_agreement']:.2f} %",
            f"{r['overhead_ratio']:.3f}",
        ]

    first = [f"{fp32['file_mb']:.1f} MB", f"{fp32['predict_s']:.2f} s", "—", "—", "—", f"{fp32['overhead_ratio']:.3f}"]
    names = ("file", f"`engine.predict` on the {quant['ortho_px']}² ortho", "class-map pixel agreement with fp32",
             "cost on the test chips: mIoU / AP50", "recorded in the metadata (val chips): Δ mIoU / Δ AP50, agreement",
             "`engine.predict` / raw onnxruntime, CPU time")  # fmt: skip
    lines = ["| | fp32 | int8 | fp16 (CPU provider) |", "|---|---|---|---|"]
    for name, a, b, c in zip(names, first, reduced(int8), reduced(fp16)):
        lines.append(f"| {name} | {a} | {b} | {c} |")
    shares = quant.get("profile_op_share_pct", {})
    kernels = [", ".join(f"{op} {pct:.1f} %" for op, pct in shares.get(p, {}).items()) for p in PRECISIONS]
    lines.append("| onnxruntime profiler, kernel time | " + " | ".join(kernels) + " |")
    return "\n".join(lines) + "\n"


def render_region(root: Path) -> str:
    """The whole-regions figures (``bench_region``): one by one vs the region job, overhead, RSS, projection."""
    region = load(root, "bench.json")["bench.bench_region"]
    hours = region["projection_20cm"]["hours_for_1000_km2"]
    side = region["raster_px"] * region["gsd_m"]
    lines = [
        f"{region['rasters']} synthetic orthos of {region['raster_px']} × {region['raster_px']} px at "
        f"{100 * region['gsd_m']:.0f} cm ({side:.0f} m tiles edge to edge) and the student network (random init) "
        f"exported as a {100 * region['model_gsd_m']:.0f} cm model, on {region['cpu_count']} cores shared with other "
        f"work (load average {region['load_avg_1min']:g}):",
        "",
        "| | wall time | vs one by one | target |",
        "|---|---:|---:|---:|",
        f"| `engine.predict`, one process per ortho (a shell loop) | {region['one_by_one_s']:.1f} s | 1.00× | |",
        f"| `engine.region --workers 1` | {region['region_1_worker_s']:.1f} s | {region['speedup_1_worker']:.2f}× | |",
        f"| `engine.region --workers 2` | {region['region_2_workers_s']:.1f} s | "
        f"**{region['speedup_2_workers']:.2f}×** | ≥ 1.3× |",
        "",
        f"- Scheduler overhead: {region['overhead_ms_per_raster']:.0f} ms per raster, "
        f"**{100 * region['overhead_share']:.1f} %** of a raster's predict time (target ≤ 2 %); starting the local "
        f"cluster of 2 workers: {region['region_2_workers_cluster_s']:.1f} s.",
        f"- Peak RSS: {region['peak_rss_worker_mb']:.0f} MB per worker over its {region['rasters'] // 2} orthos vs "
        f"{region['peak_rss_predict_mb']:.0f} MB for `engine.predict` (the largest of three processes, one ortho "
        f"each): **{100 * (region['rss_ratio'] - 1):+.1f} %** (target within 10 %). A worker holds dask (~25 MB) "
        "but frees each run's activations and gives each raster's memory back before the next.",
        f"- Projection from the 2-worker run ({region['projection_20cm']['km2_per_worker_hour']:.1f} km² per "
        f"worker-hour, one core each, 5 cm orthos resampled to 20 cm): 1,000 km² at 20 cm takes about {hours['1']} h "
        f"on 1 worker, {hours['8']} h on 8, {hours['32']} h on 32 and {hours['128']} h on 128, if the per-worker rate "
        "holds (storage that keeps up).",
    ]
    return "\n".join(lines) + "\n"


def _pct(cell: list[float] | None, spread: bool) -> str:
    """A [mean, std] fraction as points ("–" for a run not made); the spread is left out for one-run rows."""
    if cell is None:
        return "–"
    mean, std = cell
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if spread else f"{100 * mean:.1f}"


METHOD_COLUMNS = (("p2v", "det_ap50"), ("p2v", "seg_miou"), ("v2p", "det_ap50"), ("v2p", "seg_miou"))
"""The README's method table: each direction's in-domain score of each task."""


def _seeds(count: int) -> str:
    return "one seed" if count == 1 else f"{count} seeds"


def _is_teacher(row: dict[str, Any]) -> bool:
    return row["label"].startswith("Teacher")


def render_method(root: Path) -> str:
    """The paper's comparison at CPU scale (``docs/results/cpu/tables.json``) and the held-out town's distillation
    (``docs/results/unlabelled/unlabelled.json``): the best student of each column in bold."""
    cpu = load(root, "cpu/tables.json")
    tables, seeds = cpu["tables"], cpu["seeds"]
    best = {
        (d, key): max((row[key][0] for row in tables[d] if row[key] and not _is_teacher(row)), default=None)
        for d, key in METHOD_COLUMNS
    }
    spread = f"mean ± sample std over {seeds} seeds" if seeds > 1 else "one seed"
    lines = [
        f"`cpu` preset, {spread}, test split (`docs/results/cpu/tables.md`):",
        "",
        "| | p2v det AP50 | p2v seg mIoU | v2p det AP50 | v2p seg mIoU |",
        "|---|---:|---:|---:|---:|",
    ]
    by_label = {d: {row["label"]: row for row in rows} for d, rows in tables.items()}
    labels = list(dict.fromkeys(label for rows in by_label.values() for label in rows))
    for label in labels:
        cells = []
        for direction, key in METHOD_COLUMNS:
            row = by_label[direction].get(label, {"label": label, "runs": 0, key: None})
            text = _pct(row[key], spread=row["runs"] > 1)
            bold = row[key] is not None and not _is_teacher(row) and row[key][0] == best[direction, key]
            cells.append(f"**{text}**" if bold else text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", _unlabelled_line(load(root, "unlabelled/unlabelled.json"))]
    return "\n".join(lines) + "\n"


def _change(name: str, before: list[float] | None, after: list[float] | None) -> str:
    """``name before → after (±delta)`` in points, from two [mean, std] cells ("–" for a run not made)."""
    if before is None or after is None:
        return f"{name} –"
    return f"{name} {100 * before[0]:.1f} → {100 * after[0]:.1f} ({100 * (after[0] - before[0]):+.1f})"


def _unlabelled_line(unlabelled: dict[str, Any]) -> str:
    """Sources only → + the held-out town's unlabelled imagery, per direction, on that town's test labels."""
    parts = []
    for direction, rows in unlabelled["tables"].items():
        by_row = {row["row"]: row for row in rows}
        before, after = by_row["student"], by_row["student_unlabelled"]
        changes = [
            _change(name, before[key], after[key])
            for name, key in (("mIoU", "target_seg_miou"), ("AP50", "target_det_ap50"))
        ]
        parts.append(f"{direction} {', '.join(changes)}")
    return (
        f"Distilling onto the unlabelled held-out town `{unlabelled['target']}` (+ soft + PDF, "
        f"{_seeds(unlabelled['seeds'])}, its test labels; `docs/results/unlabelled/`): " + "; ".join(parts) + "."
    )


RENDERERS: dict[str, Callable[[Path], str]] = {
    "demo-run": render_demo_run,
    "demo-quality": render_demo_quality,
    "bench": render_bench,
    "quant": render_quant,
    "region": render_region,
    "method": render_method,
}


def render_text(text: str, root: Path, source: str = "README.md") -> str:
    """``text`` with every figure block re-rendered; an unknown block name is an error naming the file."""

    def fill(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in RENDERERS:
            raise SystemExit(f"error: '{source}': unknown figure block '{name}' (known: {', '.join(RENDERERS)})")
        return match.group(1) + RENDERERS[name](root) + match.group(4)

    return BLOCK.sub(fill, text)


def stale_blocks(text: str, root: Path, source: str = "README.md") -> list[str]:
    """Names of the blocks of ``text`` whose figures differ from what their JSON renders to."""
    fresh = {m.group("name"): m.group("body") for m in BLOCK.finditer(render_text(text, root, source))}
    return [m.group("name") for m in BLOCK.finditer(text) if fresh[m.group("name")] != m.group("body")]


def copy_demo(demo_dir: Path, root: Path) -> None:
    """Copy a ``make demo`` output folder's figure JSON into ``docs/results/demo``."""
    missing = [name for name in DEMO_FILES if not (demo_dir / name).is_file()]
    if missing:
        raise SystemExit(f"error: demo folder '{demo_dir}': expected {', '.join(missing)} (run `make demo` first)")
    for name in DEMO_FILES:
        shutil.copyfile(demo_dir / name, root / RESULTS / "demo" / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/render_readme.py", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a block is stale")
    parser.add_argument("--from-demo", type=Path, help="a `make demo` output folder whose JSON to commit first")
    parser.add_argument("--root", type=Path, default=REPO, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.from_demo:
        copy_demo(args.from_demo, args.root)
    stale = []
    for doc in DOCS:
        text = (args.root / doc).read_text()
        if args.check:
            stale += [f"{doc}: {name}" for name in stale_blocks(text, args.root, str(doc))]
        else:
            (args.root / doc).write_text(render_text(text, args.root, str(doc)))
    for line in stale:
        print(f"stale figures (run python scripts/render_readme.py): {line}", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
