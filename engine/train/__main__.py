"""``python -m engine.train --config FILE [key=value ...]``: train a teacher, a baseline or a (distilled) student.

Multi-GPU: ``torchrun --nproc_per_node N -m engine.train --config FILE``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.core.control import STDIN_FLAG, watch
from engine.core.errors import PmtlError, error_event, param_ref, quiet_gdal_close_errors, render_message
from engine.core.progress import Cancelled, JsonLinesProgress, TqdmProgress
from engine.train.config import load_config
from engine.train.distributed import DistInfo, init_distributed, shutdown


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

    from engine.train.loop import train

    info = DistInfo()
    if args.print_config:
        import yaml

        try:
            print(yaml.safe_dump(load_config(args.config, args.overrides), sort_keys=False), end="")
        except PmtlError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    cfg = None
    try:
        cfg = load_config(args.config, args.overrides)
        info = init_distributed()
        inner = (
            JsonLinesProgress()
            if args.json_progress
            else TqdmProgress(f"train {cfg['name']}", disable=not info.is_main)
        )
        progress = watch(inner, args.control_stdin)
        progress.report(0.0, "PyTorch loaded: building the model and reading the chip datasets")
        result = train(cfg, progress=progress, resume=args.resume)
    except Cancelled:
        message = f"training cancelled; {_what_is_left(cfg)}"  # with --json-progress the caller names parameters
        print(message if args.json_progress else render_message(message), file=sys.stderr)
        return 130
    except (PmtlError, OSError) as exc:  # OSError: what no writer named (its message has the path when known)
        print(f"error: {exc}", file=sys.stderr)
        if args.json_progress:
            JsonLinesProgress().emit("error", **error_event(exc))
        return 2
    finally:
        shutdown(info)
    if info.is_main:
        best = " ".join(f"{k}={v:.4f}" for k, v in result.best_metrics.items() if k.startswith(("det_", "seg_")))
        print(f"best checkpoint: {result.best_checkpoint} ({best})")
        if args.json_progress:
            JsonLinesProgress().emit("done", best_checkpoint=str(result.best_checkpoint), metrics=result.best_metrics)
    return 0


def _what_is_left(cfg: dict | None) -> str:
    """What a cancelled run leaves behind, truthfully: a checkpoint to resume from, or nothing yet."""
    last = Path(cfg["runtime"]["out"]) / "last.pt" if cfg else None
    if last is not None and last.is_file():
        return f"{last} is kept (resume with {param_ref('resume')})"
    return "no checkpoint was written yet (cancelled before the end of the first epoch)"


if __name__ == "__main__":
    sys.exit(main())
