"""``python -m engine.experiments --preset {demo,paper} --direction {p2v,v2p,both} --seeds N --out DIR``.

Trains, for each direction and seed: the two teachers (ResNet50-PAFPN), the single-task students, partial MTL and
the five KD variants; selects each run's best epoch on a validation split held out of the training tiles; reports
on the standard ISPRS validation tiles (our "test" split). Finished runs are skipped when re-run, so an interrupted
experiment continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from engine.core.atomic import write_json_atomic
from engine.core.cli import cli_progress, run_cli
from engine.core.errors import ConfigError
from engine.core.progress import Progress
from engine.experiments.data import prepare_chips
from engine.experiments.plan import DIRECTIONS, STUDENT_TEACHERS, RunSpec, kd_teachers, run_overrides, selected_runs
from engine.experiments.tables import build_table, write_tables
from engine.experiments.target import run_target_experiment

PRESET_DIR = Path(__file__).resolve().parents[2] / "models" / "presets"


def load_preset(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(PRESET_DIR.glob("*.yaml")))
        raise ConfigError(f"--preset '{name_or_path}': no preset file {path}; known presets: {known}")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def train_and_test(
    cfg: dict[str, Any], det_root: Path | None, seg_root: Path | None, progress: Progress | None = None
) -> tuple[Path, dict[str, Any]]:
    """Train one config (continuing an interrupted or finished run) and test its best checkpoint."""
    from engine.evaluate.run import evaluate_model
    from engine.models.checkpoint import model_from_checkpoint
    from engine.train.distributed import DistInfo, pick_device
    from engine.train.loop import train

    out_dir = Path(cfg["runtime"]["out"])
    result = train(cfg, progress=progress, resume=(out_dir / "last.pt").is_file())
    device = pick_device(cfg["runtime"]["device"], DistInfo())
    net, _ = model_from_checkpoint(result.best_checkpoint, device)
    metrics = evaluate_model(
        net,
        det_root=det_root if "det" in cfg["tasks"] else None,
        seg_root=seg_root if "seg" in cfg["tasks"] else None,
        split="test",
        batch_size=cfg["data"]["batch_size"],
        device=device,
    )
    return result.best_checkpoint, metrics


def _run_once(
    spec: RunSpec,
    run_dir: Path,
    preset: dict[str, Any],
    chips: tuple[Path, Path],
    seed: int,
    teachers: dict[str, str],
    progress: Progress | None,
    train: bool = True,
) -> dict[str, Any] | None:
    """Train and test one run unless its ``test_metrics.json`` exists (or training is off: None); its test metrics."""
    from engine.train.config import load_config

    result_file = run_dir / "test_metrics.json"
    if not result_file.is_file() and not train:
        return None
    if not result_file.is_file():
        det_root, seg_root = chips
        overrides = run_overrides(spec, preset, str(det_root), str(seg_root), str(run_dir), seed, teachers)
        started = time.perf_counter()
        print(f"[{run_dir.parent.parent.name} {run_dir.parent.name}] training {spec.name}", file=sys.stderr)
        _, metrics = train_and_test(load_config(None, overrides), det_root, seg_root, progress)
        flat = {k: v for k, v in metrics.items() if isinstance(v, float)}
        flat["train_seconds"] = time.perf_counter() - started
        write_json_atomic(result_file, {"metrics": flat, "details": metrics})
    return json.loads(result_file.read_text())["metrics"]


def run_tables(
    directions: list[str],
    preset: dict[str, Any],
    chips: dict[str, Path],
    out: Path,
    seeds: int,
    progress: Progress | None,
    train: bool = True,
) -> dict[str, dict[str, dict[int, dict[str, Any]]]]:
    """Train and test every run of the tables; returns results[direction][run][seed] = test metrics.

    The teachers are trained once per direction (seed 0, under ``DIR/teachers``) and shared by every seed's
    students, as the paper's teachers are fixed networks; with ``kd_teachers: students`` each seed's single-task
    students teach that seed's distilled runs instead. Students go seed by seed, both directions within a seed,
    so an experiment stopped early still has complete tables for its first seeds.
    """
    runs = selected_runs(preset)
    results: dict[str, dict[str, dict[int, dict[str, Any]]]] = {d: {} for d in directions}
    teachers: dict[str, dict[str, str]] = {d: {} for d in directions}
    for direction in directions:
        for spec in (s for s in runs if s.teacher):
            run_dir = out / direction / "teachers" / spec.name
            pair = _pair(chips, direction)
            metrics = _run_once(spec, run_dir, preset, pair, 0, teachers[direction], progress, train)
            results[direction][spec.name] = {0: metrics} if metrics else {}
            teachers[direction][spec.tasks[0]] = str(run_dir / "best.pt")
    for seed in range(seeds):
        for direction in directions:
            seed_dir = out / direction / f"seed{seed}"
            seed_teachers = _seed_teachers(preset, seed_dir, teachers[direction])
            for spec in (s for s in runs if not s.teacher):
                run_dir = seed_dir / spec.name
                pair = _pair(chips, direction)
                metrics = _run_once(spec, run_dir, preset, pair, seed, seed_teachers, progress, train)
                if metrics is not None:
                    results[direction].setdefault(spec.name, {})[seed] = metrics
    return results


def _seed_teachers(preset: dict[str, Any], seed_dir: Path, shared: dict[str, str]) -> dict[str, str]:
    """Who teaches this seed's distilled runs: the direction's teachers, or the seed's own single-task students."""
    if kd_teachers(preset) == "teachers":
        return shared
    return {task: str(seed_dir / run / "best.pt") for task, run in STUDENT_TEACHERS.items()}


def _pair(chips: dict[str, Path], direction: str) -> tuple[Path, Path]:
    det_set, seg_set = DIRECTIONS[direction]
    return chips[det_set], chips[seg_set]


def run_info(argv: list[str], started: float) -> dict[str, Any]:
    """What a reader needs to reproduce a table: the command, the machine and the wall time."""
    return {
        "command": "python -m engine.experiments " + " ".join(argv),
        "machine": machine_info(),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def machine_info() -> dict[str, Any]:
    """The CPU (and whether it has native bf16: about twice the training speed), cores, GPU, Python and torch."""
    import platform

    import torch

    from engine.train.schedule import cpu_has_fast_bf16

    cpu = next(
        (line.split(":", 1)[1].strip() for line in _read_lines("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cpu_native_bf16": cpu_has_fast_bf16(),
        "cores": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.experiments", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo", help="demo (2 CPU cores, minutes) | paper (GPU) | a YAML file")
    parser.add_argument("--direction", choices=[*DIRECTIONS, "both"], default="both")
    parser.add_argument("--seeds", type=int, help="students trained per configuration (default: the preset's, or 1)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--vaihingen-root", type=Path, help="real ISPRS Vaihingen folder (else synthetic)")
    parser.add_argument("--potsdam-root", type=Path, help="real ISPRS Potsdam folder (else synthetic)")
    parser.add_argument(
        "--data-only", action="store_true", help="prepare the chip datasets (needs GDAL) and stop; train elsewhere"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="write the tables from the runs finished so far; train nothing"
    )
    parser.add_argument(
        "--unlabelled-target",
        metavar="DOMAIN",
        help="instead of the tables: the distilled student with/without a held-out synthetic town's unlabelled "
        "imagery (e.g. suburb), scored on its labels → OUT/unlabelled.md",
    )
    args = parser.parse_args(argv)
    command = sys.argv[1:] if argv is None else list(argv)
    return run_cli(partial(_run, args, command), cancelled="experiments interrupted; finished runs are kept")


def _run(args: argparse.Namespace, command: list[str]) -> None:
    """Prepare the chips, then the tables or the unlabelled-target experiment, and write their files."""
    preset = load_preset(args.preset)
    seeds = args.seeds if args.seeds is not None else int(preset.get("seeds", 1))
    if seeds < 1:
        raise ConfigError(f"--seeds: expected >= 1, found {seeds}")
    started = time.perf_counter()
    roots = {"vaihingen": args.vaihingen_root, "potsdam": args.potsdam_root}
    chips = prepare_chips(preset, args.out / "data", roots)
    if args.data_only:
        print(f"chip datasets ready: {', '.join(str(p) for p in chips.values())}")
        return
    directions = list(DIRECTIONS) if args.direction == "both" else [args.direction]
    progress = cli_progress("experiments", disable=args.report_only)
    if args.unlabelled_target:
        markdown = run_target_experiment(
            args.unlabelled_target, preset, chips, args.out / "data", args.out, directions, seeds, progress
        )
        progress.close()
        write_json_atomic(args.out / "unlabelled_run_info.json", run_info(command, started))
        print(markdown)
        print(f"written to {args.out}/unlabelled.md, unlabelled.json, unlabelled_run_info.json")
        return
    results = run_tables(directions, preset, chips, args.out, seeds, progress, train=not args.report_only)
    tables = {direction: build_table(results[direction]) for direction in directions}
    progress.close()
    markdown = write_tables(args.out, tables, seeds)
    info = run_info(command, started)
    finished = [m for runs in results.values() for per_seed in runs.values() for m in per_seed.values()]
    info["runs_finished"] = len(finished)
    info["train_and_test_seconds"] = round(sum(m.get("train_seconds", 0.0) for m in finished), 1)
    write_json_atomic(args.out / "run_info.json", info)
    print(markdown)
    print(
        f"tables written to {args.out}/tables.md, tables.json, tables.png, run_info.json ({info['wall_seconds']:.0f} s)"
    )


if __name__ == "__main__":
    sys.exit(main())
