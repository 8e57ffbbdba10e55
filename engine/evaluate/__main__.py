"""``python -m engine.evaluate --checkpoint CKPT | --model M.onnx [--det-chips DIR] [--seg-chips DIR]``: metrics report.

Detection mAP@[.5:.95] / AP50 on the detection chip set, mIoU / OA / F1 (eroded masks) on the segmentation chip set,
written as a JSON report and printed as a table; for a checkpoint, a PNG shows a few chips of each set, ground truth
next to prediction. ``--model`` scores an exported ONNX model of any precision (fp32 / fp16 / int8) the way inference
feeds it (``engine.evaluate.onnx_eval``). Exit status 2 on bad input (message on stderr), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from engine.core.cli import cli_progress, run_cli
from engine.core.control import STDIN_FLAG, watch
from engine.core.errors import ConfigError, InputError

TASK_NAMES = {
    "det": ("detection", "--det-chips", "det_classes", "num_det_classes"),
    "seg": ("segmentation", "--seg-chips", "seg_classes", "num_seg_classes"),
}


def resolve_device(name: str) -> torch.device:
    """'auto' → CUDA when available, else CPU; an explicit CUDA device that is not there is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device: expected auto, cpu, cuda or cuda:N, found {name!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    return device


def load_network(checkpoint: Path, device: torch.device) -> torch.nn.Module:
    """The checkpoint's network (EMA weights when kept); InputError when its weights do not fit its config."""
    from engine.models.checkpoint import model_from_checkpoint

    try:
        net, _ = model_from_checkpoint(checkpoint, device)
    except RuntimeError as exc:  # load_state_dict: missing / unexpected / mis-shaped tensors
        raise InputError(f"checkpoint '{checkpoint}': its weights do not fit its model_config: {exc}") from exc
    return net


def check_inputs(net: torch.nn.Module, roots: dict[str, Path], split: str, checkpoint: Path) -> None:
    """Each chip set given needs a head for its task, the network's band count and class count, and ``split``."""
    from engine.data.chipstore import open_chip_dataset

    cfg = net.cfg
    for task, root in roots.items():
        name, flag, classes_key, count_field = TASK_NAMES[task]
        if task not in cfg.tasks:
            raise ConfigError(
                f"{flag} {root}: checkpoint '{checkpoint}' has no {name} head (its tasks are {list(cfg.tasks)}); "
                f"drop {flag} or evaluate a checkpoint trained for {name}"
            )
        dataset = open_chip_dataset(root)
        if split not in dataset.splits:
            raise InputError(f"{flag} {root}: expected a split {split!r}, found splits {sorted(dataset.splits)}")
        if len(dataset.bands) != cfg.in_channels:
            raise InputError(
                f"{flag} {root}: chips have {len(dataset.bands)} bands {dataset.bands}, "
                f"checkpoint '{checkpoint}' expects {cfg.in_channels} input channels"
            )
        classes = dataset.manifest[classes_key]
        if len(classes) != getattr(cfg, count_field):
            raise InputError(
                f"{flag} {root}: chips have {len(classes)} {name} classes {classes}, "
                f"checkpoint '{checkpoint}' predicts {getattr(cfg, count_field)}"
            )


def write_samples_png(
    net: torch.nn.Module,
    roots: dict[str, Path],
    split: str,
    count: int,
    device: torch.device,
    out_png: Path,
    heading: str,
) -> Path:
    """A few chips of each chip set, ground truth next to the network's prediction."""
    from engine.viz.samples import plot_samples, predict_samples

    parts = [predict_samples(net, root, split, count, device, label=f"{task} set · ") for task, root in roots.items()]
    return plot_samples(parts, out_png, heading)


def _summary(metrics: dict[str, Any]) -> str:
    parts = [
        f"{label} {metrics[key]:.3f}"
        for key, label in (("det_map", "det mAP"), ("seg_miou", "seg mIoU"))
        if isinstance(metrics.get(key), float)
    ]
    return " · ".join(parts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine.evaluate", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="training checkpoint (.pt); EMA weights used")
    source.add_argument("--model", type=Path, help="exported ONNX model (any precision), run with onnxruntime")
    parser.add_argument("--det-chips", type=Path, help="detection chip dataset (engine.chip output)")
    parser.add_argument("--seg-chips", type=Path, help="segmentation chip dataset (engine.chip output)")
    parser.add_argument("--split", default="val", help="split to evaluate (default: val)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, help="JSON report (default: STEM.eval-SPLIT.json beside CKPT / MODEL)")
    parser.add_argument("--png", type=Path, help="sample picture (default: CKPT-stem.eval-SPLIT.png beside CKPT)")
    parser.add_argument("--samples", type=int, default=3, help="chips per dataset in the picture (0: no picture)")
    parser.add_argument("--max-chips", type=int, help="evaluate at most this many chips per dataset (quick look)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    parser.add_argument("--json-progress", action="store_true", help="JSON lines on stdout (for QGIS / scripts)")
    parser.add_argument(STDIN_FLAG, action="store_true", help="stop when stdin says 'cancel' or closes (for QGIS)")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate, write the report (and picture), print the table; returns the metrics."""
    from engine.evaluate.run import evaluate_model

    roots = {task: path for task, path in (("det", args.det_chips), ("seg", args.seg_chips)) if path is not None}
    if not roots:
        raise ConfigError("give at least one chip dataset to evaluate on: --det-chips DIR and/or --seg-chips DIR")
    if args.batch_size < 1 or args.samples < 0 or (args.max_chips is not None and args.max_chips < 1):
        raise ConfigError(
            f"expected --batch-size >= 1, --samples >= 0, --max-chips >= 1; "
            f"found {args.batch_size}, {args.samples}, {args.max_chips}"
        )
    source = args.checkpoint or args.model
    stem = source.with_suffix("")
    out = args.out or stem.with_name(f"{stem.name}.eval-{args.split}.json")
    png = args.png or stem.with_name(f"{stem.name}.eval-{args.split}.png")
    for flag, path in (("--out", out), ("--png", png)):
        if path.is_dir():
            raise ConfigError(f"{flag} {path}: expected a file path to write, found a folder")
    if args.model is not None:
        return run_onnx(args, roots, out)
    device = resolve_device(args.device)
    net = load_network(args.checkpoint, device)
    check_inputs(net, roots, args.split, args.checkpoint)

    inner = cli_progress(f"evaluate {args.checkpoint.name}", json_lines=args.json_progress)
    progress = watch(inner, args.control_stdin)
    try:
        metrics = evaluate_model(
            net,
            roots.get("det"),
            roots.get("seg"),
            args.split,
            device,
            args.batch_size,
            max_chips=args.max_chips,
            progress=progress,
        )
    finally:
        progress.close()
    inputs = {"checkpoint": str(args.checkpoint), **_chip_inputs(args), "model_config": net.cfg.to_dict()}
    report(metrics, inputs, out)
    if args.json_progress:
        progress.emit("done", report=str(out), metrics={k: v for k, v in metrics.items() if not isinstance(v, dict)})
    if args.samples > 0:
        heading = f"{args.checkpoint.name} · split '{args.split}' · {_summary(metrics)}".rstrip(" ·")
        print(f"samples: {write_samples_png(net, roots, args.split, args.samples, device, png, heading)}")
    return metrics


def _chip_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """Which chips were scored, for the report."""
    return {
        "det_chips": None if args.det_chips is None else str(args.det_chips),
        "seg_chips": None if args.seg_chips is None else str(args.seg_chips),
        "split": args.split,
        "max_chips": args.max_chips,
    }


def report(metrics: dict[str, Any], inputs: dict[str, Any], out: Path) -> None:
    """Record what was scored in ``metrics``, write the JSON report and print the table."""
    from engine.evaluate.report import format_table, write_report

    metrics["inputs"] = inputs
    write_report(out, metrics)
    print(format_table(metrics))
    print(f"report: {out}")


def run_onnx(args: argparse.Namespace, roots: dict[str, Path], out: Path) -> dict[str, Any]:
    """Evaluate an exported ONNX model (no sample picture: that needs the torch network)."""
    from engine.evaluate.onnx_eval import evaluate_onnx

    device = "cuda" if args.device.startswith("cuda") else args.device
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device: expected auto, cpu, cuda or cuda:N, found {args.device!r}")
    progress = cli_progress(f"evaluate {args.model.name}")
    try:
        metrics = evaluate_onnx(
            args.model,
            roots.get("det"),
            roots.get("seg"),
            args.split,
            batch_size=args.batch_size,
            max_chips=args.max_chips,
            device=device,
            progress=progress,
        )
    finally:
        progress.close()
    report(metrics, {"model": str(args.model), **_chip_inputs(args)}, out)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cancelled = "evaluation cancelled; no report was written"
    return run_cli(partial(run, args), cancelled=cancelled, json_errors=args.json_progress)


if __name__ == "__main__":
    sys.exit(main())
