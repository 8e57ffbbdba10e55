"""Tiled inference speed and memory: ``engine.predict`` against raw onnxruntime on the same tiles, peak RSS.

1. Throughput: the real student (ResNet18-FPN, both heads, random init) exported at 320 px is run by
   ``predict_raster`` over a SIZE² textured 3-band GeoTIFF (class map + detections written), then the same tiles,
   pre-read into memory, go through the bare onnxruntime session. Ratio = raw time / predict time (target >= 0.9).
   Mpx/s and the time for a 5000×5000 ortho (extrapolated from tiles/s; goal <= 60 s on 2 cores) are reported.
2. Memory: peak RSS of a child process (no torch imported) running ``predict_raster`` on a 4096² and a 16384²
   compressed near-constant GeoTIFF, with a tiny exported model (the pipeline's memory, not the model's, is what
   depends on raster size; target: within 10 %).

``python -m bench.bench_predict [--size 2048] [--batch 4] [--rss-sizes 4096,16384] [--skip-rss]``: one text line
and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from osgeo import gdal, osr

from engine.core.classes import DET_CLASSES, PALETTE, SEG_CLASSES

gdal.UseExceptions()
TILE, OVERLAP, GSD = 320, 64, 0.09
DESCRIPTION = {
    "bands": ["nir", "red", "green"],
    "value_scaling": {"dtype": "uint8", "max": 255.0},
    "mean": [0.45, 0.32, 0.31],
    "std": [0.21, 0.15, 0.14],
    "gsd": GSD,
    "seg_classes": list(SEG_CLASSES),
    "palette": [list(c) for c in PALETTE],
    "det_classes": list(DET_CLASSES),
}


def _create(
    path: Path, size: int, compress: bool, gsd: float = GSD, origin: tuple[float, float] = (500000.0, 5400000.0)
) -> gdal.Dataset:
    options = ["TILED=YES", "BIGTIFF=IF_SAFER"] + (["COMPRESS=DEFLATE"] if compress else [])
    ds = gdal.GetDriverByName("GTiff").Create(str(path), size, size, 3, gdal.GDT_Byte, options)
    ds.SetGeoTransform((origin[0], gsd, 0.0, origin[1], 0.0, -gsd))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32632)
    ds.SetSpatialRef(srs)
    return ds


def textured_raster(
    path: Path, size: int, seed: int = 0, gsd: float = GSD, origin: tuple[float, float] = (500000.0, 5400000.0)
) -> Path:
    """Blocky scene + noise, written in strips (the bench itself stays small in memory); ``gsd`` m pixels with the
    top-left corner at ``origin`` (UTM 32N)."""
    rng = np.random.default_rng(seed)
    ds = _create(path, size, compress=False, gsd=gsd, origin=origin)
    for y in range(0, size, 512):
        h = min(512, size - y)
        blocks = rng.integers(30, 230, (3, -(-h // 16), -(-size // 16))).astype(np.float32)
        strip = np.kron(blocks, np.ones((16, 16), np.float32))[:, :h, :size] + rng.normal(0, 6, (3, h, size))
        ds.WriteArray(np.clip(strip, 0, 255).astype(np.uint8), 0, y)
    ds = None
    return path


def constant_raster(path: Path, size: int) -> Path:
    """Compressed near-constant raster (cheap to make at 16384²) with a bright 48 px square every 2048 px."""
    ds = _create(path, size, compress=True)
    for b in range(1, 4):
        ds.GetRasterBand(b).Fill(90)
    square = np.full((3, 48, 48), 240, np.uint8)
    for y in range(1000, size - 48, 2048):
        for x in range(1000, size - 48, 2048):
            ds.WriteArray(square, x, y)
    ds = None
    return path


def _export_models(root: Path, tile: int, overlap: int) -> tuple[Path, Path]:
    import torch
    from torch import nn

    from engine.export import export_onnx
    from engine.models import ModelConfig, build_model

    class Tiny(nn.Module):
        """Per-pixel seg + a pooled brightness detector with 32 px anchors every 16 px (the MultiTaskNet dict)."""

        def __init__(self) -> None:
            super().__init__()
            self.seg = nn.Conv2d(3, len(SEG_CLASSES), 1)

        def anchors_for(self, hw, device=None):
            ys, xs = torch.meshgrid(
                torch.arange(hw[0] // 16, dtype=torch.float32) * 16 + 8,
                torch.arange(hw[1] // 16, dtype=torch.float32) * 16 + 8,
                indexing="ij",
            )
            return torch.stack([xs - 16, ys - 16, xs + 16, ys + 16], -1).reshape(-1, 4)

        def forward(self, x):
            score = torch.nn.functional.avg_pool2d(x.mean(1, keepdim=True), 32, 16, 8)[..., : x.shape[2] // 16, :]
            cls = (10 * (score - 2.5)).flatten(1)[..., None].expand(-1, -1, len(DET_CLASSES))
            return {"seg_logits": self.seg(x), "cls_logits": cls, "box_deltas": torch.zeros(*cls.shape[:2], 4)}

    torch.manual_seed(0)
    real, tiny = root / "student.onnx", root / "tiny.onnx"
    export_onnx(build_model(ModelConfig()).eval(), real, DESCRIPTION, tile, overlap=overlap)
    export_onnx(Tiny().eval(), tiny, DESCRIPTION, TILE, overlap=OVERLAP)
    return real, tiny


def raw_onnxruntime(model_path: Path, raster: Path, batch: int, threads: int | None = None) -> tuple[float, float, int]:
    """Wall and CPU seconds of the bare session on the predict tiles (read and normalised beforehand, not timed)."""
    from engine.predict.model import OnnxModel
    from engine.predict.raster import open_source
    from engine.predict.tiling import TileGrid

    model = OnnxModel(model_path, threads=threads)
    src = open_source(raster, model.info)
    grid = TileGrid(src.width, src.height, model.info.tile_size, model.info.overlap)
    tiles = [src.read(*grid.origin(i, j), grid.tile)[0] for i, j in grid.tiles()]
    batches = [np.stack(tiles[k : k + batch]) for k in range(0, len(tiles), batch)]
    model.session.run(None, {model.info.input_name: batches[0]})  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    for b in batches:
        model.session.run(None, {model.info.input_name: b})
    return time.perf_counter() - start, time.process_time() - cpu, len(tiles)


def rss_child(model: str, raster: str, out_dir: str) -> None:
    """Run in a fresh process (torch never imported): predict, then print peak RSS."""
    from engine.predict import predict_raster

    summary = predict_raster(model, raster, Path(out_dir) / "seg.tif", Path(out_dir) / "det.gpkg", batch_size=4)
    # VmHWM, not getrusage's ru_maxrss: the latter carries the (torch-sized) parent's RSS over fork + exec
    status = Path("/proc/self/status").read_text().splitlines()
    peak_mb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024.0
    print(
        json.dumps(
            {
                "peak_rss_mb": peak_mb,
                "tiles": summary.tiles,
                "seconds": summary.seconds,
                "detections": summary.detections,
            }
        )
    )


def _rss(model: Path, raster: Path, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "bench.bench_predict", "--rss-child", str(model), str(raster), str(out_dir)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _throughput(real: Path, root: Path, size: int, batch: int, tile: int, overlap: int, repeats: int) -> dict:
    """Best of ``repeats`` alternating predict / raw-session runs. Wall time and this process's CPU time (all
    threads) are both reported: CPU time is what other users of a shared machine disturb least."""
    from engine.predict import predict_raster

    raster = textured_raster(root / "ortho.tif", size)
    predict_raster(real, textured_raster(root / "warm.tif", tile), root / "warm_seg.tif")  # warm-up
    runs, cpu, raws, raw_cpu = [], [], [], []
    for k in range(repeats):
        c0 = time.process_time()
        runs.append(predict_raster(real, raster, root / f"seg{k}.tif", root / f"det{k}.gpkg", batch_size=batch))
        cpu.append(time.process_time() - c0)
        raw_s, raw_c, tiles = raw_onnxruntime(real, raster, batch)
        raws.append(raw_s)
        raw_cpu.append(raw_c)
        assert tiles == runs[-1].tiles
    summary = min(runs, key=lambda r: r.seconds)
    tiles_per_s = summary.tiles / summary.seconds
    tiles_5000 = (-(-(5000 - overlap) // (tile - overlap))) ** 2
    return {
        "provider": summary.provider,
        "raster_px": size,
        "tile": tile,
        "overlap": overlap,
        "batch": batch,
        "tiles": summary.tiles,
        "predict_s": round(summary.seconds, 2),
        "raw_onnxruntime_s": round(min(raws), 2),
        "throughput_ratio": round(min(raws) / summary.seconds, 3),
        "predict_cpu_s": round(min(cpu), 2),
        "raw_onnxruntime_cpu_s": round(min(raw_cpu), 2),
        "cpu_time_ratio": round(min(raw_cpu) / min(cpu), 3),
        "mpx_per_s": round(summary.mpx_per_s, 3),
        "tiles_per_s": round(tiles_per_s, 2),
        "tiles_5000x5000": tiles_5000,
        "est_5000x5000_s": round(tiles_5000 / tiles_per_s, 1),
        "detections": summary.detections,
    }


def run(
    size: int, batch: int, rss_sizes: list[int], tile: int, overlap: int, repeats: int, throughput: bool = True
) -> dict:
    """Throughput on a SIZE² raster and peak RSS per raster side in ``rss_sizes``."""
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        root = Path(tmp)
        real, tiny = _export_models(root, tile, overlap)
        record: dict = {"cpu_count": os.cpu_count(), "load_avg_1min": round(os.getloadavg()[0], 2)}
        if throughput:
            record.update(_throughput(real, root, size, batch, tile, overlap, repeats))
        rss = {}
        for px in rss_sizes:
            rss[px] = _rss(tiny, constant_raster(root / f"const_{px}.tif", px), root / f"rss_{px}")
        if rss:
            record["rss"] = {str(px): r for px, r in rss.items()}
            peaks = [r["peak_rss_mb"] for r in rss.values()]
            record["rss_growth"] = round(max(peaks) / min(peaks) - 1.0, 3)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_predict", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="side of the throughput raster in px")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tile", type=int, default=TILE, help="tile size the student is exported at")
    parser.add_argument("--overlap", type=int, default=OVERLAP)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rss-sizes", default="4096,16384", help="raster sides for the peak-RSS comparison")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--rss-child", nargs=3, metavar=("MODEL", "RASTER", "OUT_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        rss_child(*args.rss_child)
        return 0
    sizes = [] if args.skip_rss else [int(v) for v in args.rss_sizes.split(",") if v]
    record = run(args.size, args.batch, sizes, args.tile, args.overlap, args.repeats, not args.skip_throughput)
    line = (
        ""
        if args.skip_throughput
        else (
            f"predict {record['mpx_per_s']} Mpx/s ({record['tiles_per_s']} tiles/s, {record['provider']}), "
            f"ratio to raw onnxruntime {record['throughput_ratio']} (CPU time {record['cpu_time_ratio']}), "
            f"5000² ortho ≈ {record['est_5000x5000_s']} s"
        )
    )
    if "rss" in record:
        line += ", peak RSS " + " / ".join(f"{px}²: {r['peak_rss_mb']:.0f} MB" for px, r in record["rss"].items())
    print(line)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
