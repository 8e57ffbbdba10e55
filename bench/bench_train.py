"""Training-step throughput: the real pipeline vs the same models on random tensors already on the device.

Real: ``engine.train.loop.train`` (loader → geometric + device augmentation → student forward → frozen teachers →
supervised + soft + PDF losses → backward → SGD step → EMA), images/s as it logs them (evaluation excluded).
Baseline: the same student, teachers, objectives, optimizer and EMA fed random tensors already on the device.
The ratio says how much the data pipeline and bookkeeping cost. Run: ``python -m bench.bench_train [--size 128]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from engine.core.settings import configure_losses
from engine.models import build_model, load_model_config
from engine.models.adapters import FeatureAdapters
from engine.models.checkpoint import save_checkpoint
from engine.train import objectives as O
from engine.train.config import load_config
from engine.train.loop import train
from engine.train.schedule import ModelEMA
from tests.chipfixtures import write_chip_dataset


def _random_teacher(task: str, path: Path) -> Path:
    cfg = load_model_config(f"models/teacher_{task}.yaml")
    save_checkpoint(path, {"model_config": cfg.to_dict(), "model": build_model(cfg).state_dict(), "ema": None})
    return path


def synthetic_rate(
    cfg: dict, teachers: dict[str, Path], size: int, batch: int, iters: int, device: torch.device
) -> float:
    """Images/s of the same KD step on random device tensors (no loader, no augmentation)."""
    student = build_model(load_model_config(cfg["model"]))
    tnets = {}
    for task, path in teachers.items():
        payload = torch.load(path, weights_only=True)
        net = build_model(load_model_config(payload["model_config"])).eval().requires_grad_(False).to(device)
        tnets[task] = O.Teacher(net)
    adapters = torch.nn.ModuleDict({task: FeatureAdapters(256, 256, kernel_size=3) for task in tnets})
    model = O.StudentWithAdapters(student, adapters).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    ema = ModelEMA(student)
    images = torch.randn(batch, 3, size, size, device=device)
    boxes = torch.tensor([[[10.0, 10.0, 50.0, 40.0], [60.0, 60.0, 100.0, 110.0]]], device=device).expand(batch, 2, 4)
    labels = torch.tensor([[0, 2]], device=device).expand(batch, 2)
    mask = torch.randint(0, 6, (batch, size, size), device=device)
    anchors = student.anchors_for((size, size), device=device)

    settings = configure_losses(cfg)
    variances = tuple(student.cfg.box_variances)
    batches = {"det": {"boxes": boxes, "labels": labels}, "seg": {"mask": mask}}

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        for stream, batch in batches.items():  # the training loop's objective, one backward per stream
            terms = O.batch_objective(model, stream, images, batch, tnets, settings, lambda _: anchors, variances)
            sum(terms.values()).backward()
        if cfg["optim"]["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["optim"]["grad_clip"])
        optimizer.step()
        ema.update(student)

    step()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return 2 * batch * iters / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        det = write_chip_dataset(tmp / "det", {"train": 4 * args.batch, "val": 2}, size=args.size, seed=1)
        seg = write_chip_dataset(tmp / "seg", {"train": 4 * args.batch, "val": 2}, size=args.size, seed=2)
        teachers = {task: _random_teacher(task, tmp / f"teacher_{task}.pt") for task in ("det", "seg")}
        cfg = load_config(
            None,
            [
                f"data.det={det}",
                f"data.seg={seg}",
                f"data.batch_size={args.batch}",
                f"data.num_workers={args.workers}",
                "data.max_val_chips=2",
                "optim.epochs=2",  # the first epoch warms up (allocator, kernels); the second is measured
                f"optim.iters_per_epoch={args.iters}",
                "kd.soft=true",
                "kd.feature=pdf",
                f"kd.det_teacher={teachers['det']}",
                f"kd.seg_teacher={teachers['seg']}",
                f"runtime.out={tmp / 'run'}",
            ],
        )
        real = train(cfg).history[-1]["train_img_per_s"]
        baseline = synthetic_rate(cfg, teachers, args.size, args.batch, args.iters, device)
    result = {
        "device": str(device),
        "size": args.size,
        "batch_per_task": args.batch,
        "real_img_per_s": round(real, 2),
        "random_tensor_img_per_s": round(baseline, 2),
        "ratio": round(real / baseline, 3),
    }
    print(
        f"KD training step on {device} at {args.size}², batch {args.batch}+{args.batch}: pipeline {real:.1f} img/s, "
        f"random tensors {baseline:.1f} img/s, ratio {real / baseline:.2f}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
