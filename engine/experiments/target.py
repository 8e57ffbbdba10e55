"""Distilling onto unlabelled imagery of a held-out town, measured (issue 11).

For each direction and seed: the distilled student trained without and with the target domain's unlabelled
imagery (``data.unlabelled`` = the target's training chips, labels never read), both scored on the target's test
labels and on the source domains' test splits; the frozen teachers (trained once per direction, as the paper's
teachers are fixed) are scored on the target too. ``python -m engine.experiments --unlabelled-target suburb``.
Run directories match the tables' (``DIR/{direction}/teachers/…``, ``DIR/{direction}/seed{s}/{variant}``), so with the
same ``--out`` a tables run's teachers and sources-only students are reused; the new runs are ``{variant}_unlabelled``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from engine.core.atomic import atomic_path, write_json_atomic
from engine.core.errors import ConfigError
from engine.core.progress import Progress
from engine.experiments.data import chip_geometry, holdout_splits, resample_layout
from engine.experiments.plan import DIRECTIONS, RUNS, RunSpec, run_overrides
from engine.experiments.tables import mean_std

TARGET_DEFAULTS: dict[str, Any] = {
    "variant": "mtl_soft_pdf",
    "synthetic": {"tiles": 8, "tile_size_m": 80.0},
    "seed": 100,
    "train": {},
}
"""The preset's optional ``target`` section overrides these: which distilled student, the target twin's size
and seed, and extra training overrides for the runs with unlabelled imagery (e.g. ``kd.unlabelled.det_weight``)."""

ROWS: tuple[tuple[str, str], ...] = (
    ("teachers", "Teachers (frozen)"),
    ("student", "Student, sources only"),
    ("student_unlabelled", "Student + unlabelled target"),
)
COLUMNS: tuple[tuple[str, str], ...] = (
    ("target_seg_miou", "target mIoU"),
    ("target_det_ap50", "target AP50"),
    ("target_det_map", "target mAP"),
    ("source_seg_miou", "source mIoU"),
    ("source_det_ap50", "source AP50"),
)


def target_settings(preset: dict[str, Any]) -> dict[str, Any]:
    settings = {**TARGET_DEFAULTS, **(preset.get("target") or {})}
    names = {spec.name for spec in RUNS if spec.uses_kd}
    if settings["variant"] not in names:
        raise ConfigError(
            f"preset key 'target.variant': expected one of {sorted(names)}, found {settings['variant']!r}"
        )
    return settings


def dataset_bands(dataset: str, preset: dict[str, Any]) -> str:
    """The band product a source dataset's chips hold (Vaihingen IRRG; Potsdam the preset's, RGB by default)."""
    return "IRRG" if dataset == "vaihingen" else preset["chips"].get("potsdam_bands", "RGB")


def target_bands(direction: str, preset: dict[str, Any]) -> str:
    """The target's band product the student is scored on: its detection dataset's (the student's input bands)."""
    return dataset_bands(DIRECTIONS[direction][0], preset)


STREAM_BANDS = "RGBIR"
"""The target product the unlabelled stream reads: it holds every source product (RGB, IRRG), so the student
takes its own bands from it and each teacher the bands it was trained on (engine.train.setup.input_views)."""


def prepare_target_chips(domain: str, preset: dict[str, Any], data_dir: Path, bands: str = "RGB") -> Path:
    """Generate the held-out town (train tiles → unlabelled stream, standard val tiles → ``test``) and chip its
    ``bands`` product (the town is written in the Potsdam layout: RGB, IRRG and RGBIR)."""
    chips = preset["chips"]
    chip_root = data_dir / "chips" / f"{domain}_{bands}"
    if (chip_root / "manifest.json").is_file():
        return chip_root
    from engine import synth  # GDAL from here on
    from engine.chip import chip_dataset
    from engine.data.isprs import find_isprs_tiles

    spec = synth.DOMAINS.get(domain)
    if spec is None or domain in ("vaihingen", "potsdam"):
        known = sorted(set(synth.DOMAINS) - {"vaihingen", "potsdam"})
        raise ConfigError(f"--unlabelled-target: expected a held-out synthetic domain {known}, found {domain!r}")
    settings = target_settings(preset)
    root = data_dir / "synthetic" / domain
    if not (root / ".complete").is_file():
        synth.generate(domain, root, seed=int(settings["seed"]), overwrite=True, **settings["synthetic"])
        (root / ".complete").write_text("ok\n")
    if chips.get("gsd"):  # the preset's working GSD, as for the source domains (predict resamples orthos alike)
        root = resample_layout(root, data_dir / f"resampled_{chips['gsd']:g}m" / domain, chips["gsd"])
    layout = spec.file_layout
    splits = holdout_splits(find_isprs_tiles(layout, root, bands if layout == "potsdam" else None))
    product = bands if layout == "potsdam" else None
    size, stride = chip_geometry(chips, domain)
    chip_dataset(layout, root, chip_root, size, stride, bands=product, splits=splits, overwrite=True)
    return chip_root


def _evaluate(checkpoint: Path, roots: dict[str, Path | None], batch_size: int, device_name: str) -> dict[str, Any]:
    """Test-split metrics of a checkpoint on the given chip sets (a task whose root is None is skipped)."""
    from engine.evaluate.run import evaluate_model
    from engine.models.checkpoint import model_from_checkpoint
    from engine.train.distributed import DistInfo, pick_device

    device = pick_device(device_name, DistInfo())
    net, _ = model_from_checkpoint(checkpoint, device)
    tasks = net.cfg.tasks
    return evaluate_model(
        net,
        det_root=roots.get("det") if "det" in tasks else None,
        seg_root=roots.get("seg") if "seg" in tasks else None,
        split="test",
        batch_size=batch_size,
        device=device,
    )


def _scores(checkpoint: Path, sources: dict[str, Path], target: Path, cfg: dict[str, Any]) -> dict[str, float]:
    """target_* and source_* scalars of one checkpoint."""
    batch, device = cfg["data"]["batch_size"], cfg["runtime"]["device"]
    out: dict[str, float] = {}
    for prefix, roots in (("source", sources), ("target", {"det": target, "seg": target})):
        metrics = _evaluate(checkpoint, roots, batch, device)
        out |= {f"{prefix}_{k}": float(v) for k, v in metrics.items() if isinstance(v, float)}
    return out


def _train_cached(overrides: list[str], run_dir: Path, progress: Progress | None) -> tuple[Path, dict[str, Any]]:
    """Train (continuing an interrupted run; a finished one is skipped) and return best.pt and the config."""
    from engine.train.config import load_config
    from engine.train.loop import train

    cfg = load_config(None, overrides)
    best = run_dir / "best.pt"
    # finished here ("done") or by a tables run (its test_metrics.json is written after training): never retrained
    if not ((run_dir / "done").is_file() or (run_dir / "test_metrics.json").is_file()):
        print(f"training {run_dir}", file=sys.stderr)
        train(cfg, progress=progress, resume=(run_dir / "last.pt").is_file())
        (run_dir / "done").write_text("ok\n")
    return best, cfg


def _cached_scores(
    run_dir: Path, checkpoint: Path, sources: dict[str, Path], target: Path, cfg: dict[str, Any]
) -> dict[str, float]:
    result = run_dir / "target_metrics.json"
    if not result.is_file():
        write_json_atomic(result, _scores(checkpoint, sources, target, cfg))
    return json.loads(result.read_text())


def _spec(name: str) -> RunSpec:
    return next(spec for spec in RUNS if spec.name == name)


def run_target_direction(
    direction: str,
    preset: dict[str, Any],
    chips: dict[str, Path],
    targets: dict[str, Path],
    out: Path,
    seeds: int,
    progress: Progress | None,
) -> dict[str, dict[int, dict[str, float]]]:
    """results[row][seed] = scores, for the rows of :data:`ROWS`. ``targets``: the target's chips per band product
    (the students are scored on their detection dataset's, each teacher on its own, the stream reads RGBIR)."""
    det_set, seg_set = DIRECTIONS[direction]
    sources = {"det": chips[det_set], "seg": chips[seg_set]}
    settings = target_settings(preset)
    base = out / direction
    teachers: dict[str, str] = {}
    teacher_scores: dict[str, float] = {}
    for name in ("teacher_det", "teacher_seg"):
        spec, run_dir = _spec(name), base / "teachers" / name
        overrides = run_overrides(spec, preset, str(sources["det"]), str(sources["seg"]), str(run_dir), 0, {})
        best, cfg = _train_cached(overrides, run_dir, progress)
        teachers[spec.tasks[0]] = str(best)
        # each teacher is scored on the target in the band product it was trained on
        own = targets[dataset_bands(det_set if spec.tasks[0] == "det" else seg_set, preset)]
        teacher_scores |= _cached_scores(run_dir, best, sources, own, cfg)
    target = targets[target_bands(direction, preset)]
    results: dict[str, dict[int, dict[str, float]]] = {name: {} for name, _ in ROWS}
    student = _spec(settings["variant"])
    extra = [f"{k}={json.dumps(v)}" for k, v in settings["train"].items()]
    for seed in range(seeds):
        results["teachers"][seed] = teacher_scores
        # the sources-only student is the tables' run of the same variant and seed: shared when both are run
        for row, unlabelled in (("student", False), ("student_unlabelled", True)):
            run_dir = base / f"seed{seed}" / (f"{student.name}_unlabelled" if unlabelled else student.name)
            overrides = run_overrides(
                student, preset, str(sources["det"]), str(sources["seg"]), str(run_dir), seed, teachers
            )
            if unlabelled:
                overrides += [f"data.unlabelled={json.dumps(str(targets[STREAM_BANDS]))}", *extra]
            best, cfg = _train_cached(overrides, run_dir, progress)
            results[row][seed] = _cached_scores(run_dir, best, sources, target, cfg)
    return results


def build_target_table(results: dict[str, dict[int, dict[str, float]]]) -> list[dict[str, Any]]:
    """Rows of mean ± std (sample std over seeds) per column; the teachers' row is the same every seed."""
    table = []
    for name, label in ROWS:
        per_seed = list(results.get(name, {}).values())[: 1 if name == "teachers" else None]
        cells: dict[str, Any] = {"row": name, "label": label}
        for key, _ in COLUMNS:
            cells[key] = mean_std([r[key] for r in per_seed if r.get(key) is not None])
        table.append(cells)
    return table


def target_markdown(direction: str, domain: str, table: list[dict[str, Any]], seeds: int) -> str:
    det_set, seg_set = DIRECTIONS[direction]
    lines = [
        f"### Sources: detection {det_set}, segmentation {seg_set}; unlabelled target: {domain} "
        f"(mean ± std over {seeds} seed(s), test splits)",
        "",
        "| Model | " + " | ".join(name for _, name in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for cells in table:
        parts = ["–" if cells[k] is None else f"{100 * cells[k][0]:.1f} ± {100 * cells[k][1]:.1f}" for k, _ in COLUMNS]
        lines.append(f"| {cells['label']} | " + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n"


def write_target_tables(out: Path, domain: str, tables: dict[str, list[dict[str, Any]]], seeds: int) -> str:
    """Write unlabelled.md and unlabelled.json under ``out``; return the markdown."""
    markdown = "\n".join(target_markdown(d, domain, table, seeds) for d, table in tables.items())
    with atomic_path(out / "unlabelled.md") as tmp:
        tmp.write_text(markdown, encoding="utf-8")
    write_json_atomic(out / "unlabelled.json", {"target": domain, "seeds": seeds, "tables": tables})
    return markdown


def run_target_experiment(
    domain: str,
    preset: dict[str, Any],
    chips: dict[str, Path],
    data_dir: Path,
    out: Path,
    directions: list[str],
    seeds: int,
    progress: Progress | None,
) -> str:
    """The whole measurement: target chips, every direction × seed, tables; returns the markdown."""
    tables = {}
    for direction in directions:
        products = {STREAM_BANDS, *(dataset_bands(d, preset) for d in DIRECTIONS[direction])}
        targets = {bands: prepare_target_chips(domain, preset, data_dir, bands) for bands in sorted(products)}
        tables[direction] = build_target_table(
            run_target_direction(direction, preset, chips, targets, out, seeds, progress)
        )
    return write_target_tables(out, domain, tables, seeds)
