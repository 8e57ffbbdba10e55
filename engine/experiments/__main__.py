"""``python -m engine.experiments --preset {demo,paper} --direction {p2v,v2p,both} --seeds N --out DIR``.

Trains, for each direction and seed: the two teachers (ResNet50-PAFPN), the single-task students, partial MTL and
the five KD variants; selects each run's best epoch on a validation split held out of the training tiles; reports
on the standard ISPRS validation tiles (our "test" split). Finished runs are skipped when re-run, so an interrupted
experiment continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from engine.core.atomic import write_json_atomic
from engine.core.errors import ConfigError, PmtlError
from engine.core.progress import Progress, TqdmProgress
from engine.experiments.data import prepare_chips
from engine.experiments.plan import DIRECTIONS, RUNS, run_overrides
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
    from engine.train.checkpoint import model_from_checkpoint
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


def run_direction(
    direction: str, preset: dict[str, Any], chips: dict[str, Path], out: Path, seeds: int, progress: Progress | None
) -> dict[str, dict[int, dict[str, Any]]]:
    """Train and test every run of one table; returns results[run][seed] = test metrics."""
    from engine.train.config import load_config

    det_set, seg_set = DIRECTIONS[direction]
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for seed in range(seeds):
        teachers: dict[str, str] = {}
        for spec in RUNS:
            run_dir = out / direction / f"seed{seed}" / spec.name
            result_file = run_dir / "test_metrics.json"
            if not result_file.is_file():
                overrides = run_overrides(
                    spec, preset, str(chips[det_set]), str(chips[seg_set]), str(run_dir), seed, teachers
                )
                started = time.perf_counter()
                print(f"[{direction} seed {seed}] training {spec.name}", file=sys.stderr)
                _, metrics = train_and_test(load_config(None, overrides), chips[det_set], chips[seg_set], progress)
                flat = {k: v for k, v in metrics.items() if isinstance(v, float)}
                flat["train_seconds"] = time.perf_counter() - started
                write_json_atomic(result_file, {"metrics": flat, "details": metrics})
            flat = json.loads(result_file.read_text())["metrics"]
            results.setdefault(spec.name, {})[seed] = flat
            if spec.teacher:
                teachers[spec.tasks[0]] = str(run_dir / "best.pt")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.experiments", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo", help="demo (2 CPU cores, minutes) | paper (GPU) | a YAML file")
    parser.add_argument("--direction", choices=[*DIRECTIONS, "both"], default="both")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--vaihingen-root", type=Path, help="real ISPRS Vaihingen folder (else synthetic)")
    parser.add_argument("--potsdam-root", type=Path, help="real ISPRS Potsdam folder (else synthetic)")
    parser.add_argument(
        "--data-only", action="store_true", help="prepare the chip datasets (needs GDAL) and stop; train elsewhere"
    )
    parser.add_argument(
        "--unlabelled-target",
        metavar="DOMAIN",
        help="instead of the tables: the distilled student with/without a held-out synthetic town's unlabelled "
        "imagery (e.g. suburb), scored on its labels → OUT/unlabelled.md",
    )
    args = parser.parse_args(argv)
    try:
        if args.seeds < 1:
            raise ConfigError(f"--seeds: expected >= 1, found {args.seeds}")
        preset = load_preset(args.preset)
        started = time.perf_counter()
        roots = {"vaihingen": args.vaihingen_root, "potsdam": args.potsdam_root}
        chips = prepare_chips(preset, args.out / "data", roots)
        if args.data_only:
            print(f"chip datasets ready: {', '.join(str(p) for p in chips.values())}")
            return 0
        directions = list(DIRECTIONS) if args.direction == "both" else [args.direction]
        progress = TqdmProgress("experiments")
        if args.unlabelled_target:
            markdown = run_target_experiment(
                args.unlabelled_target, preset, chips, args.out / "data", args.out, directions, args.seeds, progress
            )
            progress.close()
            print(markdown)
            print(f"written to {args.out}/unlabelled.md, unlabelled.json ({time.perf_counter() - started:.0f} s)")
            return 0
        tables = {}
        for direction in directions:
            results = run_direction(direction, preset, chips, args.out, args.seeds, progress)
            tables[direction] = build_table(results)
        progress.close()
        markdown = write_tables(args.out, tables, args.seeds)
    except PmtlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown)
    print(f"tables written to {args.out}/tables.md, tables.json, tables.png ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
