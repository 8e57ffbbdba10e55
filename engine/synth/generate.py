"""``generate()``: a whole synthetic ISPRS-like dataset in the real folder layout, with a summary."""

from __future__ import annotations

import math
import multiprocessing
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from engine.core.atomic import write_json_atomic
from engine.core.classes import SEG_CLASSES
from engine.core.errors import ConfigError, InputError, param_ref
from engine.core.progress import Cancelled, Progress, check_cancel
from engine.synth.domains import DOMAINS, EPSG, LAYOUT_DIRS, DomainSpec, select_tiles
from engine.synth.tile import generate_tile

SUMMARY_FILE = "synth_summary.json"
MIN_TILE_PX = 32
MAX_TILE_PX = 6000


@dataclass
class SynthSummary:
    """What :func:`generate` wrote: tile names (with their split), class pixel shares and the time it took."""

    domain: str
    root: Path
    tiles: list[str]
    class_shares: dict[str, float]
    elapsed_s: float
    seed: int = 0
    splits: dict[str, str] = field(default_factory=dict)
    tile_size_px: int = 0
    gsd: float = 0.0

    @property
    def pixels(self) -> int:
        return len(self.tiles) * self.tile_size_px**2

    def to_json(self) -> dict:
        data = asdict(self)
        data["root"] = str(self.root)
        data["pixels"] = self.pixels
        return data


def _check_args(domain: str, tiles: int | None, tile_size_m: float | None, workers: int) -> tuple[DomainSpec, int, int]:
    if domain not in DOMAINS:
        raise ConfigError(f"domain: expected one of {sorted(DOMAINS)}, found {domain!r}")
    spec = DOMAINS[domain]
    count = spec.default_tiles if tiles is None else tiles
    if not isinstance(count, int) or not 1 <= count <= spec.max_tiles:
        raise ConfigError(f"tiles: expected an integer from 1 to {spec.max_tiles} for {domain}, found {tiles!r}")
    size_m = spec.default_tile_size_m if tile_size_m is None else tile_size_m
    size_px = round(size_m / spec.gsd) if isinstance(size_m, (int, float)) and math.isfinite(size_m) else -1
    if not MIN_TILE_PX <= size_px <= MAX_TILE_PX:
        lo, hi = MIN_TILE_PX * spec.gsd, MAX_TILE_PX * spec.gsd
        raise ConfigError(
            f"tile_size_m: expected {lo:g} to {hi:g} m for {domain} ({MIN_TILE_PX}-{MAX_TILE_PX} px at "
            f"{spec.gsd} m), found {tile_size_m!r}"
        )
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers: expected a positive integer, found {workers!r}")
    return spec, count, size_px


def _prepare_root(root: Path, overwrite: bool) -> None:
    """Refuse a non-empty folder unless ``overwrite``; then clear only the ISPRS layout folders we own."""
    if root.exists() and not root.is_dir():
        raise InputError(f"output folder {root}: expected a folder, found a file")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise InputError(
                f"output folder {root} is not empty: choose an empty folder or set {param_ref('overwrite')}"
            )
        for name in (*LAYOUT_DIRS["vaihingen"], *LAYOUT_DIRS["potsdam"]):
            shutil.rmtree(root / name, ignore_errors=True)
        (root / SUMMARY_FILE).unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)


def generate(
    domain: str,
    out_dir: Path,
    seed: int = 0,
    tiles: int | None = None,
    tile_size_m: float | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    workers: int = 1,
) -> SynthSummary:
    """Write a synthetic ``domain`` dataset (vaihingen|potsdam|suburb) under ``out_dir`` in the real ISPRS layout.

    Tiles are named from the standard train/val split lists, so readers apply the default split. Each tile
    depends only on (seed, domain, tile name, size): the same seed gives identical files whatever ``tiles`` or
    ``workers`` is. ``workers`` > 1 renders tiles in that many processes (for the CLI; keep 1 inside QGIS).
    """
    start = time.perf_counter()
    spec, count, size_px = _check_args(domain, tiles, tile_size_m, workers)
    root = Path(out_dir)
    _prepare_root(root, overwrite)
    chosen = select_tiles(spec, count)
    counts = np.zeros(len(SEG_CLASSES), dtype=np.int64)
    if progress is not None:
        progress.report(0.0, f"{domain}: {count} tiles of {size_px} px")
    if workers == 1:
        for i, (tile, _) in enumerate(chosen):
            check_cancel(progress)
            counts += generate_tile(spec, root, tile, seed, size_px)
            if progress is not None:
                progress.report((i + 1) / count, tile)
    else:
        counts += _generate_parallel(spec, root, [t for t, _ in chosen], seed, size_px, workers, progress)
    total = max(int(counts.sum()), 1)
    summary = SynthSummary(
        domain=domain,
        root=root,
        tiles=[t for t, _ in chosen],
        class_shares={name: float(c) / total for name, c in zip(SEG_CLASSES, counts)},
        elapsed_s=0.0,
        seed=seed,
        splits=dict(chosen),
        tile_size_px=size_px,
        gsd=spec.gsd,
    )
    summary.elapsed_s = time.perf_counter() - start
    record = summary.to_json() | {"bands": list(spec.bands), "sensor": spec.sensor, "crs": f"EPSG:{EPSG}"}
    write_json_atomic(root / SUMMARY_FILE, record)
    return summary


def _generate_parallel(
    spec: DomainSpec, root: Path, names: list[str], seed: int, size_px: int, workers: int, progress: Progress | None
) -> np.ndarray:
    """Render tiles in ``workers`` spawned processes; cancelling drops the tiles not yet started."""
    counts = np.zeros(len(SEG_CLASSES), dtype=np.int64)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(names)), mp_context=ctx) as pool:
        pending: set[Future] = {pool.submit(generate_tile, spec, root, t, seed, size_px) for t in names}
        done_n = 0
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            try:
                check_cancel(progress)
            except Cancelled:
                for f in pending:
                    f.cancel()
                raise
            for f in done:
                counts += f.result()
                done_n += 1
                if progress is not None:
                    progress.report(done_n / len(names), f"{done_n}/{len(names)} tiles")
    return counts
