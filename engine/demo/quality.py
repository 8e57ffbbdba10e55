"""How good is the demo's map model on orthos it never saw? Fresh synthetic tiles, predicted as a user predicts.

New seeds of ``engine.synth`` (other towns of the same two domains), at their native GSD (5 cm / 9 cm), go whole
through ``engine.predict`` (which resamples them to the model's GSD and back) and are scored against their own
label rasters (:mod:`engine.evaluate.rasters`). Targets (issue 9): Vaihingen-like segmentation mIoU ≥ 0.55 on the
eroded labels; Potsdam-like building AP50 ≥ 0.60 and car AP50 ≥ 0.30.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.evaluate.rasters import Scene, score_scenes

FRESH_SEED = 1000
"""Seed of the fresh tiles: the demo's own data uses seed 0, so every layout here is new."""

FRESH_TILES = 3
"""Fresh tiles per domain (at the domains' default sizes: 120 m Vaihingen-like, 80 m Potsdam-like)."""

TARGETS: dict[str, float] = {"vaihingen_seg_miou": 0.55, "potsdam_building_ap50": 0.60, "potsdam_car_ap50": 0.30}


def fresh_scenes(domain: str, root: Path, tiles: int, seed: int = FRESH_SEED) -> list[Scene]:
    """Generate (or reuse) ``tiles`` new tiles of a synthetic domain and return them as scenes to score."""
    from engine import synth
    from engine.data.isprs import find_isprs_tiles

    if not (root / ".complete").is_file():
        synth.generate(domain, root, seed=seed, tiles=tiles, overwrite=True)
        (root / ".complete").write_text("ok\n")
    bands = "RGB" if domain == "potsdam" else None
    return [Scene(t.image, t.label, t.eroded) for t in find_isprs_tiles(domain, root, bands)]


def fresh_tile_quality(
    model: Path, work_dir: Path, tiles: int = FRESH_TILES, threads: int | None = None
) -> dict[str, Any]:
    """Score ``model`` on fresh tiles of both domains; returns the headline figures, their targets and details."""
    details = {
        domain: score_scenes(model, fresh_scenes(domain, work_dir / domain, tiles), threads=threads, work_dir=work_dir)
        for domain in ("vaihingen", "potsdam")
    }
    per_class = details["potsdam"].get("det", {}).get("per_class", {})
    headline = {
        "vaihingen_seg_miou": details["vaihingen"].get("seg", {}).get("miou"),
        "potsdam_building_ap50": per_class.get("building", {}).get("ap50"),
        "potsdam_car_ap50": per_class.get("car", {}).get("ap50"),
        # the converse, through the shared encoder only (no label of that task in that domain)
        "potsdam_seg_miou": details["potsdam"].get("seg", {}).get("miou"),
        "vaihingen_det_ap50": details["vaihingen"].get("det", {}).get("ap50"),
    }
    met = {k: (headline[k] or 0.0) >= t for k, t in TARGETS.items()}
    return {"headline": headline, "targets": TARGETS, "met": met, "tiles_per_domain": tiles, "details": details}


def student_summary(result: dict[str, Any], det_domain: str, seg_domain: str) -> dict[str, Any]:
    """One student's fresh-tile figures split by where its labels came from: ``in_domain`` (detection where the
    detection labels were, segmentation where the segmentation labels were) and ``cross_domain`` (each task in the
    other domain, learned there through the shared encoder only); ``score`` = their mean (AP50 and mIoU, None as 0)."""
    details = result["details"]
    cross_det, cross_seg = seg_domain, det_domain

    def figure(domain: str, task: str, key: str) -> float | None:
        return details.get(domain, {}).get(task, {}).get(key)

    in_domain = {"det_ap50": figure(det_domain, "det", "ap50"), "seg_miou": figure(seg_domain, "seg", "miou")}
    cross = {"det_ap50": figure(cross_det, "det", "ap50"), "seg_miou": figure(cross_seg, "seg", "miou")}
    values = [v or 0.0 for v in (*in_domain.values(), *cross.values())]
    return {
        "headline": result["headline"],
        "in_domain": in_domain,
        "cross_domain": cross,
        "score": sum(values) / len(values),
        "targets_met": all(result["met"].values()),
    }


def pick_map_model(summaries: dict[str, dict[str, Any]]) -> str:
    """The student that becomes the map model: one that meets every target if any does, then the best ``score``."""
    return max(summaries, key=lambda run: (summaries[run]["targets_met"], summaries[run]["score"]))


def format_students(summaries: dict[str, dict[str, Any]], chosen: str) -> str:
    """The students side by side, in-domain and cross-domain, and which one is the map model."""
    lines = ["students on the same fresh tiles (AP50 / mIoU; cross-domain: the task where it had no labels):"]
    for run, summary in summaries.items():
        own, cross = summary["in_domain"], summary["cross_domain"]
        mark = "  <- map model" if run == chosen else ""
        lines.append(
            f"  {summary.get('label', run):<16} in-domain det {_shown(own['det_ap50'])} seg {_shown(own['seg_miou'])}"
            f" | cross-domain det {_shown(cross['det_ap50'])} seg {_shown(cross['seg_miou'])}"
            f" | mean {summary['score']:.3f}, targets {'met' if summary['targets_met'] else 'NOT met'}{mark}"
        )
    return "\n".join(lines)


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def format_quality(result: dict[str, Any]) -> str:
    """A few lines a user reads at the end of ``make demo``."""
    lines = [f"map model on {result['tiles_per_domain']} fresh tiles per domain (new seed, whole rasters, predict):"]
    for key, value in result["headline"].items():
        target = result["targets"].get(key)
        mark = "" if target is None else f"  (target >= {target:.2f}: {'met' if result['met'][key] else 'NOT met'})"
        shown = "n/a" if value is None else f"{value:.3f}"
        lines.append(f"  {key:<24} {shown}{mark}")
    for domain, scores in result["details"].items():
        if "seg" in scores:
            lines.append(f"  {domain} IoU per class: {_per_class(scores['seg']['iou'])}")
        if "det" in scores:
            ap50 = {name: v["ap50"] for name, v in scores["det"]["per_class"].items()}
            lines.append(f"  {domain} AP50 per class: {_per_class(ap50)}")
    return "\n".join(lines)


def _per_class(values: dict[str, float | None]) -> str:
    return ", ".join(f"{name} {'-' if v is None else format(v, '.2f')}" for name, v in values.items())
