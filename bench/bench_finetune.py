"""Fine-tuning on real imagery with real labels, held out by area: one labelled area trains, another scores
(issue 21).

``python -m bench.bench_finetune --checkpoint START.pt --image RASTER --labels LAYER --out DIR [--steps N]
[--train-half west|east | --eval-image RASTER2 --eval-labels LAYER2] [--class-name building]``: without
``--eval-image`` the raster is split into a west and an east half (AOI rectangles) and ``engine.finetune`` trains on
one half's labels; with it, ``engine.finetune`` trains on the whole labelled extent of ``--image`` and the whole of
``--eval-image`` scores. (The fine-tune's own held-out blocks give the before/after it prints.) The scoring area,
chipped at the same GSD, scores (AP50, mAP) the starting model as it is, the fine-tuned model, the same
architecture trained from scratch for the same steps on the same chips, and (where the weights are on disk) from
ImageNet. Writes DIR/results.json; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from engine.finetune.options import FinetuneOptions
from engine.finetune.prepare import at_gsd, resolve_checkpoint
from engine.finetune.run import finetune, scalars, start_network, training_config


def half_aoi(image: Path, half: str, out: Path) -> Path:
    """A GeoPackage rectangle covering the ``west`` or ``east`` half of ``image`` (``all``: the whole), in its CRS."""
    from osgeo import ogr

    from engine.chip.sources import image_grid

    grid = image_grid(image)
    x0, y0, x1, y1 = grid.bounds
    mid = (x0 + x1) / 2
    left, right = {"west": (x0, mid), "east": (mid, x1)}.get(half, (x0, x1))
    ring = ogr.Geometry(ogr.wkbLinearRing)
    for x, y in ((left, y0), (right, y0), (right, y1), (left, y1), (left, y0)):
        ring.AddPoint_2D(x, y)
    polygon = ogr.Geometry(ogr.wkbPolygon)
    polygon.AddGeometry(ring)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(out))
    layer = ds.CreateLayer(half, grid.srs, ogr.wkbPolygon)
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetGeometry(polygon)
    layer.CreateFeature(feature)
    del feature, layer, ds
    return out


def eval_chips(image: Path, labels_path: Path, aoi: Path, gsd: float, size: int, class_name: str, out: Path) -> Path:
    """Every chip of the scoring area at ``gsd`` (one split, ``train``), boxes of class ``class_name``."""
    from engine.chip.splits import SplitPlan
    from engine.chip.userdata import LabelSource, chip_images

    rasters = [str(at_gsd(image, gsd, out.parent / "resampled"))]
    labels = LabelSource("det", str(labels_path), None, class_name, None, str(aoi))
    chip_images(rasters, out, labels, size=size, stride=size, plan=SplitPlan("tile", 0.0), overwrite=True)
    return out


def score(net: Any, chips: Path, norm: Any = None) -> dict[str, float]:
    from engine.evaluate.run import evaluate_model

    return scalars(evaluate_model(net, chips, None, split="train", batch_size=8, normalization=norm))


def score_checkpoint(path: Path, chips: Path) -> dict[str, float]:
    from engine.models.checkpoint import model_from_checkpoint

    net, _ = model_from_checkpoint(path)
    return score(net, chips)


def train_fresh(cfg: dict[str, Any], model_cfg: dict[str, Any], pretrained: str | None, out: Path) -> Path:
    """The fine-tuning run's data, steps and schedule, from random (or ImageNet) weights, whole encoder trained."""
    from engine.train.config import validate_config
    from engine.train.loop import train

    out.mkdir(parents=True, exist_ok=True)
    model_file = out / "model.yaml"
    model_file.write_text(yaml.safe_dump({**model_cfg, "pretrained": pretrained, "tasks": cfg["tasks"]}))
    fresh = {**cfg, "model": str(model_file), "init": {**cfg["init"], "checkpoint": None}}
    fresh["runtime"] = {**cfg["runtime"], "out": str(out)}
    return train(validate_config(fresh)).best_checkpoint


def areas(args: argparse.Namespace) -> tuple[str | None, str, Path, Path, Path]:
    """(training AOI or None for the labels' extent, name of the scoring area, its raster, labels and AOI)."""
    if args.eval_image:
        test_aoi = half_aoi(args.eval_image, "all", args.out / "eval_extent.gpkg")
        return None, args.eval_image.stem, args.eval_image, args.eval_labels, test_aoi
    other = "east" if args.train_half == "west" else "west"
    train_aoi = half_aoi(args.image, args.train_half, args.out / f"{args.train_half}.gpkg")
    return str(train_aoi), other, args.image, args.labels, half_aoi(args.image, other, args.out / f"{other}.gpkg")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every row, scored on the held-out area; DIR/results.json is rewritten after each row (a cut run keeps its
    finished rows)."""
    args.out.mkdir(parents=True, exist_ok=True)
    train_aoi, other, test_image, test_labels, test_aoi = areas(args)
    opts = FinetuneOptions(checkpoint=str(args.checkpoint), images=[str(args.image)], labels=str(args.labels),
                           out=str(args.out / "finetuned"), class_name=args.class_name, aoi=train_aoi,
                           steps=args.steps, seed=args.seed, size=args.size, gsd=args.gsd, lr=args.lr,
                           encoder_lr=args.encoder_lr, frozen_stages=args.frozen_stages)  # fmt: skip
    checkpoint, payload = resolve_checkpoint(opts.checkpoint)
    gsd, size = args.gsd or float(payload["metadata"]["gsd"]), args.size or int(payload["metadata"]["chip_size"])
    held_out = eval_chips(test_image, test_labels, test_aoi, gsd, size, args.class_name, args.out / "test_chips")
    rows: dict[str, Any] = {}
    results = {
        "image": str(args.image), "labels": str(args.labels), "start_checkpoint": str(checkpoint),
        "train_half": "all" if args.eval_image else args.train_half, "test_half": other,
        "eval_image": str(test_image), "eval_labels": str(test_labels), "gsd": gsd, "chip_size": size,
        "steps": args.steps, "seed": args.seed, "rows": rows, "options": dataclasses.asdict(opts),
    }  # fmt: skip
    started = time.perf_counter()
    result = finetune(opts)
    rows["finetuned"] = {"seconds": round(time.perf_counter() - started, 1)}
    results["finetune_holdout"] = {"before": result.before, "after": result.after, "chips": result.chips}
    results["training"] = {"finetuned": training_summary(Path(opts.out))}
    cfg = training_config(opts, checkpoint, payload, Path(opts.out) / "chips")
    net, norm = start_network(cfg)
    rows["start"] = {"seconds": 0.0, **score(net, held_out, norm)}
    rows["finetuned"].update(score_checkpoint(Path(result.checkpoint), held_out))
    save(args.out, results)
    starts = {} if args.no_scratch else {"scratch": None}
    if args.imagenet:
        starts["imagenet"] = "imagenet"
    for name, pretrained in starts.items():
        begun = time.perf_counter()
        best = train_fresh(cfg, payload["model_config"], pretrained, args.out / name)
        rows[name] = {"seconds": round(time.perf_counter() - begun, 1), **score_checkpoint(best, held_out)}
        results["training"][name] = training_summary(best.parent)
        save(args.out, results)
    return results


def training_summary(run_dir: Path) -> dict[str, Any]:
    """Throughput, the score on the run's own validation chips, and the first and last logged loss terms."""
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    first, last = row["steps"][0], row["steps"][-1]
    losses = {k: [round(first[k], 3), round(last[k], 3)] for k in first if k != "step"}
    return {"train_img_per_s": round(row["train_img_per_s"], 3), "own_val_ap50": row.get("det_ap50"),
            "loss_first_last": losses}  # fmt: skip


def save(out: Path, results: dict[str, Any]) -> None:
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(out / "results.json")


def table(results: dict[str, Any]) -> str:
    lines = [f"| start ({results['steps']} steps) | AP50 | mAP | training time (s) |", "|---|---:|---:|---:|"]
    for name, row in results["rows"].items():
        lines.append(f"| {name} | {row.get('det_ap50', 0):.3f} | {row.get('det_map', 0):.3f} | {row['seconds']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_finetune", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, help="chip size (default: the starting model's)")
    parser.add_argument("--gsd", type=float, help="GSD in m (default: the starting model's)")
    defaults = FinetuneOptions(checkpoint="", images=[], labels="", out="")
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--encoder-lr", type=float, default=defaults.encoder_lr)
    parser.add_argument("--frozen-stages", type=int, default=defaults.frozen_stages)
    parser.add_argument("--train-half", choices=["west", "east"], default="west")
    parser.add_argument("--eval-image", type=Path, help="score on this whole raster (the --image trains whole)")
    parser.add_argument("--eval-labels", type=Path, help="the labels of --eval-image")
    parser.add_argument("--class-name", default="building")
    parser.add_argument("--no-scratch", action="store_true", help="skip the from-scratch row")
    parser.add_argument("--imagenet", action="store_true", help="also from ImageNet weights (must be on disk)")
    args = parser.parse_args(argv)
    if bool(args.eval_image) != bool(args.eval_labels):
        parser.error("--eval-image and --eval-labels: give both (a raster to score and its labels) or neither")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")  # the engine's info lines
    results = run(args)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
