"""Chipping throughput against a raw GDAL read of the same tiles, in one run (target ratio >= 0.5).

Writes ISPRS-sized Vaihingen-layout tiles (uncompressed GeoTIFF like the real ones: image, label, eroded label;
blocky label scenes with buildings, trees and cars), warms the page cache, then times (a) reading every file
whole with GDAL ``ReadAsArray`` and (b) ``engine.chip.chip_dataset`` on the same root (read, decode labels, boxes,
band statistics, write the chip arrays and manifest). Throughput is tile megapixels per second; the ratio is
chipping / raw read (best round of each, and every round's pair). CPU seconds of both are printed too: on a shared
machine wall-clock ratios move with other processes' load, CPU seconds much less.
Run: ``python -m bench.bench_chip [--tiles 6 (at most 20) --width 2500 --height 2000 --stride 320]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from osgeo import gdal, osr

from engine.chip import chip_dataset
from engine.core.classes import SEG_CLASSES
from engine.data.labels import encode_rgb_label, erode_mask

gdal.UseExceptions()
TRAIN_AREAS = (1, 3, 5, 7, 11, 13, 15, 17, 21, 23)
VAL_AREAS = (2, 4, 6, 8, 10, 12, 14, 16, 20, 22)


def _write(path: Path, array: np.ndarray, origin_x: float) -> None:
    h, w, c = array.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = gdal.GetDriverByName("GTiff").Create(str(path), w, h, c, gdal.GDT_Byte)
    ds.SetGeoTransform((origin_x, 0.09, 0.0, 5400000.0, 0.0, -0.09))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32632)
    ds.SetSpatialRef(srs)
    ds.WriteArray(array.transpose(2, 0, 1))
    ds.FlushCache()


def _scene(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Low vegetation ground, a road grid, then buildings, trees and cars as rectangles (sizes as at 9 cm)."""
    index = {name: i for i, name in enumerate(SEG_CLASSES)}
    mask = np.full((height, width), index["low_vegetation"], np.uint8)
    for y in range(0, height, 400):
        mask[y : y + 60] = index["impervious"]
    for x in range(0, width, 500):
        mask[:, x : x + 60] = index["impervious"]
    area = width * height
    for name, count, (lo, hi) in (("building", 60, (60, 220)), ("tree", 150, (20, 90)), ("car", 120, (18, 50)),
                                  ("clutter", 30, (10, 40))):  # fmt: skip
        for _ in range(count * area // 5_000_000):
            w, h = rng.integers(lo, hi, 2)
            x, y = rng.integers(0, width - w), rng.integers(0, height - h)
            mask[y : y + h, x : x + w] = index[name]
    return mask


def make_tiles(root: Path, tiles: int, width: int, height: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    areas = [a for pair in zip(TRAIN_AREAS, VAL_AREAS) for a in pair][:tiles]
    for area in areas:
        mask = _scene(width, height, rng)
        noise = rng.integers(0, 30, (height, width, 3), dtype=np.uint8)
        image = (np.arange(6, dtype=np.uint8)[mask] * 30 + 40)[:, :, None] + noise
        origin_x = 500000.0 + area * 1000
        _write(root / "top" / f"top_mosaic_09cm_area{area}.tif", image, origin_x)
        _write(root / "gts_for_participants" / f"top_mosaic_09cm_area{area}.tif", encode_rgb_label(mask), origin_x)
        eroded = encode_rgb_label(erode_mask(mask))
        _write(root / "gts_eroded_for_participants" / f"top_mosaic_09cm_area{area}_noBoundary.tif", eroded, origin_x)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raw_read(root: Path) -> tuple[float, float]:
    """Seconds to read every tile's image, label and eroded label whole with GDAL; tile megapixels."""
    start = time.perf_counter()
    pixels = 0
    for image in sorted((root / "top").glob("*.tif")):
        label = root / "gts_for_participants" / image.name
        eroded = root / "gts_eroded_for_participants" / f"{image.stem}_noBoundary.tif"
        for path in (image, label, eroded):
            ds = gdal.Open(str(path))
            ds.ReadAsArray()
        pixels += ds.RasterXSize * ds.RasterYSize
    return time.perf_counter() - start, pixels / 1e6


def tile_parser(prog: str, description: str, tiles: int, repeat: int) -> argparse.ArgumentParser:
    """The options of the chipping benchmarks: tiles and their size, chip size and stride, rounds, work folder."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--tiles", type=int, default=tiles)
    parser.add_argument("--width", type=int, default=2500)
    parser.add_argument("--height", type=int, default=2000)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--stride", type=int, default=320)
    parser.add_argument("--repeat", type=int, default=repeat, help="timed rounds; the best of each is reported")
    parser.add_argument("--workdir", help="folder for the tiles and chips (default: a temporary folder)")
    return parser


def tile_record(args: argparse.Namespace, megapixels: float) -> dict:
    """What a chipping benchmark measured on, for its JSON record."""
    return {
        "tiles": args.tiles,
        "tile_size": [args.width, args.height],
        "chip_size": args.size,
        "stride": args.stride,
        "megapixels": round(megapixels, 2),
    }


@contextmanager
def work_folder(workdir: str | None, prefix: str) -> Iterator[Path]:
    """``workdir`` when given (kept), else a temporary folder removed afterwards."""
    if workdir:
        yield Path(workdir)
        return
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def emit(summary: str, result: dict) -> dict:
    """Print the summary line, then the JSON record (``bench.run_all`` keeps the last JSON line)."""
    print(summary)
    print(json.dumps(result))
    return result


def machine_record() -> dict:
    """How busy the machine was: wall-clock ratios move with other processes' load."""
    return {"cores": os.cpu_count(), "load_avg_1min": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> dict:
    args = tile_parser("python -m bench.bench_chip", __doc__, tiles=6, repeat=3).parse_args(argv)
    with work_folder(args.workdir, "bench_chip_") as work:
        root, out = work / "vaihingen", work / "chips"
        make_tiles(root, args.tiles, args.width, args.height)
        raw_read(root)  # warm the page cache for both contestants
        raw_times, chip_times, raw_cpu, chip_cpu, megapixels, summary = [], [], [], [], 0.0, None
        for _ in range(args.repeat):  # the two contestants alternate, so load from other processes hits both
            cpu = _cpu_seconds()
            seconds, megapixels = raw_read(root)
            raw_times.append(seconds)
            raw_cpu.append(_cpu_seconds() - cpu)
            shutil.rmtree(out, ignore_errors=True)  # deleting the last round's output is not chipping work
            start, cpu = time.perf_counter(), _cpu_seconds()
            summary = chip_dataset("vaihingen", root, out, args.size, args.stride)
            chip_times.append(time.perf_counter() - start)
            chip_cpu.append(_cpu_seconds() - cpu)
        raw_rate, chip_rate = megapixels / min(raw_times), megapixels / min(chip_times)
        ratios = sorted(r / c for r, c in zip(raw_times, chip_times))
        result = {
            **tile_record(args, megapixels), "chips": sum(summary.chips_per_split.values()),
            "boxes": sum(summary.boxes_per_class.values()), "raw_read_s": round(min(raw_times), 3),
            "chip_s": round(min(chip_times), 3), "raw_read_mpx_per_s": round(raw_rate, 1),
            "chip_mpx_per_s": round(chip_rate, 1), "ratio": round(chip_rate / raw_rate, 3), "target_ratio": 0.5,
            "ratio_per_round": [round(r, 3) for r in ratios], "raw_cpu_s": round(min(raw_cpu), 3),
            "chip_cpu_s": round(min(chip_cpu), 3), "cpu_ratio": round(min(raw_cpu) / min(chip_cpu), 3),
            **machine_record(),
        }  # fmt: skip
    summary = (
        f"chipping {result['megapixels']} Mpx ({result['chips']} chips, {result['boxes']} boxes): "
        f"{result['chip_mpx_per_s']} Mpx/s; raw GDAL read {result['raw_read_mpx_per_s']} Mpx/s; "
        f"ratio {result['ratio']} (target >= 0.5; per round {result['ratio_per_round']}); CPU s chipping "
        f"{result['chip_cpu_s']} vs raw read {result['raw_cpu_s']}; load average {result['load_avg_1min']} "
        f"on {result['cores']} cores"
    )
    return emit(summary, result)


if __name__ == "__main__":
    main()
