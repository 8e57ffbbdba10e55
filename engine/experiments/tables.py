"""Aggregate per-seed results into the paper's table layout (mean ± std over seeds): markdown, JSON, bar plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from engine.core.atomic import atomic_path, write_json_atomic
from engine.experiments.plan import DIRECTIONS, ROWS

COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("det", "det_map", "mAP@[.5:.95]"),
    ("det", "det_ap50", "AP50"),
    ("seg", "seg_miou", "mIoU"),
    ("seg", "seg_oa", "OA"),
)


def mean_std(values: list[float]) -> tuple[float, float] | None:
    """Mean and sample standard deviation over seeds (0 for one seed); None when no run was made."""
    if not values:
        return None
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def build_table(results: dict[str, dict[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """``results[run][seed]`` → rows with mean/std per column (None where a run is missing)."""
    table = []
    for row in ROWS:
        cells: dict[str, Any] = {"label": row.label, "runs": 0}
        for task, key, _ in COLUMNS:
            run = row.det_run if task == "det" else row.seg_run
            values = [r[key] for r in results.get(run, {}).values() if r.get(key) is not None]
            cells[key] = mean_std(values)
            cells["runs"] = max(cells["runs"], len(values))
        if cells["runs"]:  # rows a preset did not run are left out
            table.append(cells)
    return table


def table_markdown(direction: str, table: list[dict[str, Any]], seeds: int) -> str:
    det_set, seg_set = DIRECTIONS[direction]
    header = f"Detection on {det_set}, segmentation on {seg_set} (mean ± std over {seeds} seed(s), test split)"
    lines = [f"### {header}", "", "| Method | " + " | ".join(f"{name}" for _, _, name in COLUMNS) + " |"]
    lines.append("|---|" + "---:|" * len(COLUMNS))
    for cells in table:
        parts = []
        for _, key, _ in COLUMNS:
            cell = cells[key]
            spread = f" ± {100 * cell[1]:.1f}" if cell is not None and cells.get("runs", seeds) > 1 else ""
            parts.append("–" if cell is None else f"{100 * cell[0]:.1f}{spread}")
        label = cells["label"] + (" (1 run)" if seeds > 1 and cells.get("runs", seeds) == 1 else "")
        lines.append(f"| {label} | " + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n"


def write_tables(out_dir: Path, tables: dict[str, list[dict[str, Any]]], seeds: int) -> str:
    """Write tables.md, tables.json and tables.png; return the markdown."""
    markdown = "\n".join(table_markdown(direction, table, seeds) for direction, table in tables.items())
    with atomic_path(out_dir / "tables.md") as tmp:
        tmp.write_text(markdown, encoding="utf-8")
    write_json_atomic(out_dir / "tables.json", {"seeds": seeds, "tables": tables})
    plot_tables(out_dir / "tables.png", tables)
    return markdown


def plot_tables(path: Path, tables: dict[str, list[dict[str, Any]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(tables), 2, figsize=(12, 3.6 * len(tables)), squeeze=False)
    for row_axes, (direction, table) in zip(axes, tables.items()):
        det_set, seg_set = DIRECTIONS[direction]
        for ax, (key, title) in zip(
            row_axes, (("det_map", f"detection mAP ({det_set})"), ("seg_miou", f"segmentation mIoU ({seg_set})"))
        ):
            labels = [cells["label"] for cells in table]
            means = [cells[key][0] if cells[key] else 0.0 for cells in table]
            stds = [cells[key][1] if cells[key] else 0.0 for cells in table]
            ax.bar(range(len(labels)), means, yerr=stds, color=["#888"] + ["#4a7"] * (len(labels) - 1))
            ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
            ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
