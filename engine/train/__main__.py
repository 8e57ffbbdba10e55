"""``python -m engine.train --config FILE [key=value ...]``: train a teacher, a baseline or a (distilled) student.

Multi-GPU: ``torchrun --nproc_per_node N -m engine.train --config FILE``.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

from engine.core.cli import cli_progress, run_cli
from engine.core.control import STDIN_FLAG, watch
from engine.core.errors import PmtlError, param_ref, quiet_gdal_close_errors
from engine.core.progress import JsonLinesProgress
from engine.train.config import load_config
from engine.train.distributed import init_distributed, shutdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML config (see models/); defaults apply to keys it leaves out")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt exactly where it stopped")
    parser.add_argument("--json-progress", action="store_true", help="JSON lines on stdout (for QGIS / scripts)")
    parser.add_argument("--print-config", action="store_true", help="print the effective, validated config and exit")
    parser.add_argument(STDIN_FLAG, action="store_true", help="stop when stdin says 'cancel' or closes (for QGIS)")
    parser.add_argument(
        "overrides", nargs="*", help="dotted key=value overrides, e.g. optim.epochs=5 data.batch_size=4"
    )
    args = parser.parse_args(argv)
    quiet_gdal_close_errors()

    if args.print_config:
        return run_cli(partial(_print_config, args))
    return run_cli(partial(_train, args), cancelled=partial(_cancelled, args), json_errors=args.json_progress)


def _print_config(args: argparse.Namespace) -> None:
    import yaml

    print(yaml.safe_dump(load_config(args.config, args.overrides), sort_keys=False), end="")


def _train(args: argparse.Namespace) -> None:
    from engine.train.loop import train

    cfg = load_config(args.config, args.overrides)
    info = init_distributed()
    try:
        inner = cli_progress(f"train {cfg['name']}", json_lines=args.json_progress, disable=not info.is_main)
        progress = watch(inner, args.control_stdin)
        progress.report(0.0, "PyTorch loaded: building the model and reading the chip datasets")
        result = train(cfg, progress=progress, resume=args.resume)
        progress.close()
    finally:
        shutdown(info)
    if info.is_main:
        best = " ".join(f"{k}={v:.4f}" for k, v in result.best_metrics.items() if k.startswith(("det_", "seg_")))
        print(f"best checkpoint: {result.best_checkpoint} ({best})")
        if args.json_progress:
            JsonLinesProgress().emit("done", best_checkpoint=str(result.best_checkpoint), metrics=result.best_metrics)


def _cancelled(args: argparse.Namespace) -> str:
    try:
        cfg = load_config(args.config, args.overrides)
    except PmtlError:
        cfg = None
    return f"training cancelled; {_what_is_left(cfg)}"


def _what_is_left(cfg: dict | None) -> str:
    """What a cancelled run leaves behind, truthfully: a checkpoint to resume from, or nothing yet."""
    last = Path(cfg["runtime"]["out"]) / "last.pt" if cfg else None
    if last is not None and last.is_file():
        return f"{last} is kept (resume with {param_ref('resume')})"
    return "no checkpoint was written yet (cancelled before the end of the first epoch)"


if __name__ == "__main__":
    sys.exit(main())
