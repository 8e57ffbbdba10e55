"""How hard each loss term of one training step pulls each part of the student: per-term gradient norms.

Answers "which term drives this run?" (docs/results/cpu/README.md: the soft detection-KD term outweighs the
detection labels in v2p). Batches drawn as training draws them, each term back-propagated alone, norms averaged.

    python scripts/kd_gradients.py RUN_DIR                 # the weights the run last stepped (last.pt)
    python scripts/kd_gradients.py RUN_DIR --init          # the same run at its random initialisation
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PARTS = ("det_head", "seg_head", "encoder+neck")
"""Parameter groups reported: the two heads and everything they share."""


def part_of(name: str) -> str:
    """Which of :data:`PARTS` a student parameter belongs to (by its top-level module)."""
    top = name.split(".", 1)[0]
    return top if top in ("det_head", "seg_head") else "encoder+neck"


def term_gradient_norms(
    cfg: dict[str, Any], weights: dict[str, Any] | None = None, batches: int = 1
) -> list[dict[str, Any]]:
    """One row per (stream, loss term): its value and the L2 norm of its gradient on each of :data:`PARTS`, each
    the mean over ``batches`` batches of the stream.

    ``weights``: a student state dict to load first (None: the config's initialisation); with weights, the encoder
    BatchNorm is set as in the run's last epoch (frozen when ``optim.freeze_encoder_bn_epochs`` > 0). The run's
    out folder is not touched (a temporary one is used).
    """
    from engine.train.loop import freeze_encoder_norms
    from engine.train.setup import batch_streams, build_run

    with tempfile.TemporaryDirectory() as scratch:
        cfg = {**cfg, "runtime": {**cfg["runtime"], "out": scratch}}
        run = build_run(cfg)
        run.nets.model.train()
        if weights is not None:
            run.nets.student.load_state_dict(weights)
            if cfg["optim"]["freeze_encoder_bn_epochs"] > 0:
                freeze_encoder_norms(run.nets.student)
        streams = batch_streams(run, 0)
        params = list(run.nets.student.named_parameters())
        sums: dict[tuple[str, str], dict[str, float]] = {}
        for _ in range(batches):
            for stream in run.streams:
                for name, row in _stream_terms(run, stream, next(streams[stream]), params).items():
                    total = sums.setdefault((stream, name), dict.fromkeys(row, 0.0))
                    for key, value in row.items():
                        total[key] += value / batches
    return [{"stream": stream, "term": name, **row} for (stream, name), row in sums.items()]


def _stream_terms(run: Any, stream: str, raw_batch: dict[str, Any], params: list[tuple[str, Any]]) -> dict:
    """Each loss term of one batch: its value and its gradient norm on each of :data:`PARTS`."""
    import torch

    from engine.train.loop import prepare_batch, stream_loss_terms

    images, batch, teacher_images = prepare_batch(run, stream, raw_batch)
    terms = stream_loss_terms(run, stream, images, batch, teacher_images)
    rows = {}
    for name, value in terms.items():
        grads = torch.autograd.grad(value, [p for _, p in params], retain_graph=True, allow_unused=True)
        squares = dict.fromkeys(PARTS, 0.0)
        for (pname, _), grad in zip(params, grads):
            if grad is not None:
                squares[part_of(pname)] += float(grad.pow(2).sum())
        rows[name] = {"value": float(value.detach()), **{part: squares[part] ** 0.5 for part in PARTS}}
    return rows


def trained_weights(run_dir: Path) -> dict[str, Any]:
    """The weights the optimizer stepped last (last.pt's model; the EMA only follows them)."""
    import torch

    return torch.load(run_dir / "last.pt", weights_only=True, map_location="cpu")["model"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a training run's folder (config.json, last.pt)")
    parser.add_argument("--init", action="store_true", help="the run's random initialisation, not its weights")
    parser.add_argument("--batches", type=int, default=4, help="batches per stream to average over (default 4)")
    args = parser.parse_args(argv)
    config = args.run_dir / "config.json"
    if not config.is_file():
        print(f"error: {args.run_dir}: expected a training run folder with config.json, found none", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO))  # a script, run from anywhere: the engine is the repository's
    cfg = json.loads(config.read_text(encoding="utf-8"))
    weights = None if args.init else trained_weights(args.run_dir)
    print("| stream | term | value | " + " | ".join(PARTS) + " |")
    print("|---|---|---:|" + "---:|" * len(PARTS))
    for row in term_gradient_norms(cfg, weights, args.batches):
        cells = " | ".join(f"{row[part]:.3f}" for part in PARTS)
        print(f"| {row['stream']} | {row['term']} | {row['value']:.3f} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
