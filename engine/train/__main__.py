"""``python -m engine.train --config FILE [key=value ...]``: train a teacher, a baseline or a (distilled) student.

Multi-GPU: ``torchrun --nproc_per_node N -m engine.train --config FILE``.
"""

from __future__ import annotations

import argparse
import signal
import sys

from engine.core.errors import PmtlError, quiet_gdal_close_errors
from engine.core.progress import Cancelled, JsonLinesProgress, TqdmProgress
from engine.train.config import load_config
from engine.train.distributed import DistInfo, init_distributed, shutdown


class _SignalCancel:
    """Turns SIGINT/SIGTERM into a cancel request honoured at the next iteration (checkpoints stay intact)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.cancelled = False
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.cancelled = True

    def report(self, fraction, message: str = "") -> None:
        self.inner.report(fraction, message)

    def emit(self, event: str, **fields) -> None:
        if hasattr(self.inner, "emit"):
            self.inner.emit(event, **fields)
        elif event == "metrics":
            print(
                "metrics: "
                + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()),
                file=sys.stderr,
            )

    def is_canceled(self) -> bool:
        return self.cancelled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML config (see models/); defaults apply to keys it leaves out")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt exactly where it stopped")
    parser.add_argument("--json-progress", action="store_true", help="JSON lines on stdout (for QGIS / scripts)")
    parser.add_argument("--print-config", action="store_true", help="print the effective, validated config and exit")
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
    try:
        cfg = load_config(args.config, args.overrides)
        info = init_distributed()
        inner = (
            JsonLinesProgress()
            if args.json_progress
            else TqdmProgress(f"train {cfg['name']}", disable=not info.is_main)
        )
        progress = _SignalCancel(inner)
        result = train(cfg, progress=progress, resume=args.resume)
    except Cancelled:
        print("training cancelled; the last checkpoint is kept", file=sys.stderr)
        return 130
    except (PmtlError, OSError) as exc:  # OSError: what no writer named (its message has the path when known)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        shutdown(info)
    if info.is_main:
        best = " ".join(f"{k}={v:.4f}" for k, v in result.best_metrics.items() if k.startswith(("det_", "seg_")))
        print(f"best checkpoint: {result.best_checkpoint} ({best})")
        if args.json_progress:
            JsonLinesProgress().emit("done", best_checkpoint=str(result.best_checkpoint), metrics=result.best_metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
