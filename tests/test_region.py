"""engine.region (issue 18) with real dask.distributed, GDAL and onnxruntime: inputs, joins across inputs, a
LocalCluster of 2 processes, a scheduler + 2 workers started here on 127.0.0.1, a corrupt input among good ones,
a worker killed mid-task, the job SIGKILLed after its first raster then resumed, and cancel."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from distributed import Client
from osgeo import gdal, ogr, osr

from engine.core.errors import InputError
from engine.export.onnx_export import export_onnx
from engine.predict import predict_raster
from engine.predict.detections import BOTTOM, LEFT, RIGHT, TOP
from engine.region.inputs import expand_inputs
from engine.region.mosaic import RasterParts, join_across_inputs
from tests.test_predict import CAR, GSD, IMPERVIOUS, ORIGIN, OVERLAP, TILE, BlobNet, describe, scene, write_tif

gdal.UseExceptions()
REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
WORKER_TIMEOUT = 120


# --- inputs -------------------------------------------------------------------------------------------------------


def test_inputs_from_folders_globs_lists_and_urls(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for path in (a / "t1.tif", a / "t2.TIF", b / "t1.tif", a / "notes.md"):
        path.write_bytes(b"x")
    listing = tmp_path / "more.txt"
    listing.write_text("# orthos of the east\nb/t1.tif\n\n/vsicurl/https://example.org/data/east_1.tif\n")
    found = expand_inputs([str(a), str(tmp_path / "a" / "t1.tif"), str(listing), str(tmp_path / "b" / "*.tif")])
    assert [i.source for i in found] == [
        str(a / "t1.tif"),
        str(a / "t2.TIF"),
        str(b / "t1.tif"),
        "/vsicurl/https://example.org/data/east_1.tif",
    ]
    assert [i.stem for i in found] == ["t1", "t2", "t1_2", "east_1"]


@pytest.mark.parametrize("given", ["missing.tif", "nothing_*.tif", "empty_folder"])
def test_inputs_that_name_nothing_are_one_line_errors(tmp_path, given):
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(InputError) as caught:
        expand_inputs([str(tmp_path / given)])
    assert given in str(caught.value) and "\n" not in str(caught.value)


# --- joins across inputs (hand-computed) --------------------------------------------------------------------------


def parts(stem: str, col: int, boxes: list[list[float]], scores: list[float], edges: list[int]) -> RasterParts:
    """An input 100 m wide (1 m pixels) at column ``col`` of a row of inputs; map boxes (min x, min y, max x,
    max y)."""
    x0 = 1000.0 + 100.0 * col
    return RasterParts(
        stem=stem,
        boxes=np.asarray(boxes, np.float64).reshape(-1, 4),
        scores=np.asarray(scores, np.float32),
        labels=np.zeros(len(scores), np.int64),
        edges=np.asarray(edges, np.uint8),
        extent=np.array([x0, 0.0, x0 + 100.0, 50.0]),
        gsd=1.0,
        wkt="",
    )


def test_an_object_cut_by_the_border_between_two_inputs_is_joined():
    # a building from x 1090 to 1120 (y 10..20) seen as two parts cut at x = 1100; a car touching the east edge of
    # the east input (nothing beyond it) and one in the west input's middle
    west = parts("west", 0, [[1090, 10, 1100, 20], [1040, 30, 1045, 32]], [0.6, 0.9], [RIGHT, 0])
    east = parts("east", 1, [[1100, 10.5, 1120, 20], [1195, 0, 1200, 4]], [0.8, 0.7], [LEFT, RIGHT | BOTTOM])
    dets, sources, frame = join_across_inputs([west, east], iou_thresh=0.5, ios_thresh=0.7)
    assert (frame.x0, frame.y0, frame.width, frame.height) == (1000.0, 50.0, 200, 50)
    order = np.argsort(-dets.scores)
    boxes = dets.boxes[order].tolist()
    assert dets.scores[order].tolist() == pytest.approx([0.9, 0.8, 0.7])
    assert boxes == [[40, 18, 45, 20], [90, 30, 120, 40], [195, 46, 200, 50]]  # frame px (y down from 50 m)
    assert [sources[k] for k in order] == ["west", "east", "east"]
    assert dets.truncated[order].tolist() == [0, 0, 0]


def test_inputs_that_do_not_tile_a_grid_are_not_joined():
    west = parts("west", 0, [[1090, 10, 1100, 20]], [0.6], [RIGHT])
    east = parts("east", 1, [[1100, 10, 1120, 20]], [0.8], [LEFT | TOP])
    east.extent = np.array([1100.0, 0.0, 1170.0, 50.0])  # a narrower raster: not one grid
    dets, sources, _ = join_across_inputs([west, east], iou_thresh=0.5, ios_thresh=0.7)
    assert len(dets) == 2 and sorted(sources) == ["east", "west"]
    assert sorted(dets.boxes[:, 0].tolist()) == [90, 100]


# --- jobs on real clusters ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("region_model") / "blob.onnx"
    export_onnx(BlobNet(), path, describe(), TILE, overlap=OVERLAP, score_thresh=0.5)
    return path


def grid_of_rasters(folder: Path, rows: int, cols: int, size: tuple[int, int] = (96, 128)) -> list[Path]:
    """``rows`` × ``cols`` adjacent rasters (``size`` = height, width px at the model's GSD), a car in each."""
    folder.mkdir(parents=True, exist_ok=True)
    h, w = size
    paths = []
    for r in range(rows):
        for c in range(cols):
            gt = (ORIGIN[0] + c * w * GSD, GSD, 0.0, ORIGIN[1] - r * h * GSD, 0.0, -GSD)
            img = scene(h, w, [(20 + 8 * c, 30 + 4 * r)])
            paths.append(write_tif(folder / f"tile_{r}_{c}.tif", img, gt=gt))
    return paths


def run_cli(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "engine.region", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=WORKER_TIMEOUT, **kwargs,
    )  # fmt: skip


def class_array(path: Path) -> np.ndarray:
    return gdal.Open(str(path)).ReadAsArray()


def features(path: Path) -> list[tuple]:
    ds = ogr.Open(str(path))
    layer = ds.GetLayer(0)
    rows = []
    for f in layer:
        env = f.GetGeometryRef().GetEnvelope()
        rows.append((f["class"], f["class_id"], round(f["score"], 5), f["source"], tuple(round(v, 3) for v in env)))
    return sorted(rows)


def no_partials(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if ".partial" in p.name or p.name.startswith(".cancel")]


@pytest.mark.slow
def test_local_cluster_of_two_processes_with_a_corrupt_input(model, tmp_path):
    rasters = grid_of_rasters(tmp_path / "in", 2, 2)
    corrupt = tmp_path / "in" / "broken.tif"
    corrupt.write_bytes(b"II*\x00" + os.urandom(4000))  # a TIFF header and garbage
    out = tmp_path / "out"
    done = run_cli(["--model", str(model), "--input", str(tmp_path / "in"), "--out", str(out), "--workers", "2"])
    assert done.returncode == 1, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.tif" in errors[0]

    report = json.loads((out / "region.json").read_text())
    records = {r["stem"]: r for r in report["inputs"]}
    assert report["status"] == "failed" and report["counts"] == {"done": 4, "failed": 1}
    assert records["broken"]["status"] == "failed" and "broken.tif" in records["broken"]["error"]
    assert "\n" not in records["broken"]["error"]
    assert {r["pid"] for r in records.values()}.isdisjoint({os.getpid()})  # ran in the worker processes

    for raster in rasters:  # each class map: a COG on its input's grid, the same classes as engine.predict
        cog = out / "classes" / f"{raster.stem}.tif"
        assert gdal.Open(str(cog)).GetMetadataItem("LAYOUT", "IMAGE_STRUCTURE") == "COG"
        predict_raster(model, raster, tmp_path / f"{raster.stem}_ref.tif")
        np.testing.assert_array_equal(class_array(cog), class_array(tmp_path / f"{raster.stem}_ref.tif"))
        assert gdal.Open(str(cog)).GetGeoTransform() == gdal.Open(str(raster)).GetGeoTransform()
    vrt = gdal.Open(str(out / "classes.vrt"))
    assert (vrt.RasterXSize, vrt.RasterYSize) == (256, 192)
    assert vrt.GetRasterBand(1).GetRasterColorTable() is not None
    found = features(out / "detections.gpkg")
    assert sorted(f[3] for f in found) == sorted(r.stem for r in rasters)  # one car each, attributed to its input
    assert {f[0] for f in found} == {"car"}
    assert no_partials(out)


@contextlib.contextmanager
def dask_processes(tmp_path: Path, workers: int = 2) -> Iterator[str]:
    """``dask scheduler`` and ``workers`` × ``dask worker`` (each with its nanny) on 127.0.0.1, torn down after."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    scheduler_file = tmp_path / "scheduler.json"
    common = {"cwd": REPO, "env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    common["start_new_session"] = True
    scheduler = shlex.split("distributed.cli.dask_scheduler --host 127.0.0.1 --port 0 --no-dashboard --scheduler-file")
    worker = shlex.split(
        "distributed.cli.dask_worker {} --nthreads 1 --host 127.0.0.1 --no-dashboard --death-timeout 60"
    )
    procs = [subprocess.Popen([sys.executable, "-m", *scheduler, str(scheduler_file)], **common)]
    try:
        deadline = time.monotonic() + WORKER_TIMEOUT
        while not scheduler_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        for _ in range(workers):
            command = [sys.executable, "-m", *(address if a == "{}" else a for a in worker)]
            procs.append(subprocess.Popen(command, **common))
        with Client(address, timeout=WORKER_TIMEOUT) as client:
            client.wait_for_workers(workers, timeout=WORKER_TIMEOUT)
        yield address
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)


def start_job(args: list[str], **kwargs) -> subprocess.Popen:
    """The region CLI in its own process group, JSON progress on stdout."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "engine.region", "--json-progress", *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        **kwargs,
    )  # fmt: skip


def progress_lines(proc: subprocess.Popen) -> Iterator[dict]:
    for line in proc.stdout:
        if line.startswith("{"):
            yield json.loads(line)


def car_raster(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_tif(path, scene(size, size, [(size // 2, size // 2)]))


@pytest.mark.slow
def test_scheduler_and_two_workers_survive_a_worker_killed_mid_task(model, tmp_path):
    small = grid_of_rasters(tmp_path / "in", 1, 2)
    car_raster(tmp_path / "in" / "big.tif", 2560)  # ~2,800 tiles: seconds of work on one worker
    out = tmp_path / "out"
    with dask_processes(tmp_path) as address, Client(address, timeout=WORKER_TIMEOUT) as client:
        job = start_job(["--model", str(model), "--input", str(tmp_path / "in"), "--out", str(out),
                         "--scheduler", address])  # fmt: skip
        killed = None
        for event in progress_lines(job):
            if killed is None and "big " in event.get("message", "") and "big 0%" not in event["message"]:
                running = [w for w, keys in client.processing().items() if any("-big-" in str(k) for k in keys)]
                pids = client.run(os.getpid, workers=running)
                killed = pids[running[0]]
                os.kill(killed, signal.SIGKILL)  # the worker running big.tif dies mid-task
        assert job.wait(timeout=WORKER_TIMEOUT) == 0, job.stderr.read()[-3000:]
    assert killed is not None
    records = {r["stem"]: r for r in json.loads((out / "region.json").read_text())["inputs"]}
    assert all(r["status"] == "done" for r in records.values()) and len(records) == 3
    assert records["big"]["pid"] != killed  # retried on another (or the restarted) worker process
    classes = class_array(out / "classes" / "big.tif")
    assert classes.shape == (2560, 2560) and (classes[1285, 1285], classes[100, 100]) == (CAR, IMPERVIOUS)
    assert sorted(f[3] for f in features(out / "detections.gpkg")) == sorted(["big", *(r.stem for r in small)])
    assert no_partials(out)


@pytest.mark.slow
def test_job_sigkilled_after_its_first_raster_resumes_to_identical_outputs(model, tmp_path):
    for k in range(4):
        car_raster(tmp_path / "in" / f"area{k}.tif", 1024)
    common = ["--model", str(model), "--input", str(tmp_path / "in")]
    reference = run_cli([*common, "--out", str(tmp_path / "ref"), "--workers", "2"])
    assert reference.returncode == 0, reference.stderr[-3000:]

    out = tmp_path / "out"
    job = start_job([*common, "--out", str(out), "--workers", "1"])
    for event in progress_lines(job):
        if event.get("message", "").startswith("1/4 rasters"):
            os.killpg(job.pid, signal.SIGKILL)  # the client, its scheduler and its worker processes
            break
    job.wait(timeout=WORKER_TIMEOUT)
    first = json.loads((out / "region.json").read_text())
    finished = {r["stem"]: r["pid"] for r in first["inputs"] if r["status"] == "done"}
    assert first["status"] == "running" and 1 <= len(finished) < 4

    resumed = run_cli([*common, "--out", str(out), "--workers", "1", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    report = json.loads((out / "region.json").read_text())
    assert report["status"] == "done" and report["counts"] == {"done": 4}
    for record in report["inputs"]:  # finished rasters were not run again
        if record["stem"] in finished:
            assert record["pid"] == finished[record["stem"]]
    for k in range(4):
        np.testing.assert_array_equal(
            class_array(out / "classes" / f"area{k}.tif"), class_array(tmp_path / "ref" / "classes" / f"area{k}.tif")
        )
    assert features(out / "detections.gpkg") == features(tmp_path / "ref" / "detections.gpkg")
    assert no_partials(out)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["stdin", "ctrl-c"])
def test_cancel_stops_running_tasks_and_leaves_nothing_half_written(model, tmp_path, how):
    for k in range(2):
        car_raster(tmp_path / "in" / f"wide{k}.tif", 2560)
    out = tmp_path / "out"
    job = start_job(
        ["--model", str(model), "--input", str(tmp_path / "in"), "--out", str(out), "--workers", "1",
         "--control-stdin"], stdin=subprocess.PIPE,
    )  # fmt: skip
    for event in progress_lines(job):
        if "wide0 " in event.get("message", "") and "wide0 0%" not in event["message"]:
            if how == "stdin":
                job.stdin.write("cancel\n")
                job.stdin.flush()
            else:  # a terminal's Ctrl-C reaches the whole process group: the client and its workers
                os.killpg(job.pid, signal.SIGINT)
            break
    started = time.monotonic()
    assert job.wait(timeout=WORKER_TIMEOUT) == 130
    assert time.monotonic() - started < 30
    assert "Traceback" not in job.stderr.read()
    report = json.loads((out / "region.json").read_text())
    assert report["status"] == "cancelled" and report["counts"] == {"pending": 2}
    assert not list((out / "classes").glob("*.tif")) and not (out / "classes.vrt").exists()
    assert no_partials(out)


def test_windows_of_a_raster_put_together_equal_the_whole_raster(model, tmp_path):
    from engine.predict.model import OnnxModel
    from engine.predict.pipeline import RasterSettings, TileWindow, merge_detections, predict_window
    from engine.predict.tiling import TileGrid

    # cars across the seams between windows (tile rows 2|3 at y = 96..112 and 4|5 at y = 192..208)
    img = scene(300, 230, [(40, 100), (150, 196), (100, 20), (200, 260)])
    raster = write_tif(tmp_path / "big.tif", img)
    whole = predict_raster(model, raster, tmp_path / "whole.tif", tmp_path / "whole.gpkg")
    onnx = OnnxModel(model)
    grid = TileGrid(230, 300, TILE, OVERLAP)
    windows = [TileWindow(0, 2), TileWindow(2, 4), TileWindow(4, len(grid.ys))]
    bands, parts = [], []
    for k, window in enumerate(windows):
        done = predict_window(onnx, raster, tmp_path / f"band{k}.tif", RasterSettings(), window)
        band = gdal.Open(str(tmp_path / f"band{k}.tif"))
        assert (
            band.GetGeoTransform()[3] == ORIGIN[1] - done.rows[0] * GSD
            and band.RasterYSize == done.rows[1] - done.rows[0]
        )
        bands.append(band.ReadAsArray())
        parts.append(done.detections)
    np.testing.assert_array_equal(np.concatenate(bands), class_array(tmp_path / "whole.tif"))
    kept, _ = merge_detections(parts, onnx.info, 230, 300)
    assert len(kept) == whole.detections == 4
    ds = ogr.Open(str(tmp_path / "whole.gpkg"))
    reference = sorted(round(f["score"], 5) for f in ds.GetLayer(0))
    assert sorted(round(float(v), 5) for v in kept.scores) == reference


@pytest.mark.slow
def test_a_raster_too_big_for_one_task_is_split_into_windows_and_put_together(model, tmp_path):
    img = scene(300, 230, [(40, 100), (150, 196), (100, 20), (200, 260)])
    (tmp_path / "in").mkdir()
    write_tif(tmp_path / "in" / "big.tif", img)
    coarse = tmp_path / "in" / "coarse.tif"  # at 2x the model's GSD: its windows are warped back once assembled
    write_tif(coarse, scene(150, 115, [(20, 50)], size=8), gt=(ORIGIN[0], 2 * GSD, 0.0, ORIGIN[1], 0.0, -2 * GSD))
    out = tmp_path / "out"
    done = run_cli(["--model", str(model), "--input", str(tmp_path / "in"), "--out", str(out), "--workers", "2",
                    "--max-tiles-per-task", "6"])  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    records = {r["stem"]: r for r in json.loads((out / "region.json").read_text())["inputs"]}
    assert records["big"]["windows"] == 6 and records["coarse"]["windows"] >= 2
    for name in ("big", "coarse"):
        source = tmp_path / "in" / f"{name}.tif"
        whole = predict_raster(model, source, tmp_path / f"{name}_whole.tif", tmp_path / f"{name}_whole.gpkg")
        np.testing.assert_array_equal(
            class_array(out / "classes" / f"{name}.tif"), class_array(tmp_path / f"{name}_whole.tif")
        )
        assert records[name]["detections"] == whole.detections
    assert not (out / "windows").exists() and no_partials(out)


def test_rasters_outside_the_aoi_are_skipped_not_failed(model, tmp_path):
    west, _east = grid_of_rasters(tmp_path / "in", 1, 2)
    aoi = tmp_path / "aoi.geojson"  # a triangle over the west raster only (128 px = 11.52 m wide)
    x0, y0 = ORIGIN
    ring = [[x0, y0], [x0 + 10, y0], [x0 + 10, y0 - 8], [x0, y0]]
    crs = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32632"}}
    feature = {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}
    aoi.write_text(json.dumps({"type": "FeatureCollection", "crs": crs, "features": [feature]}))
    out = tmp_path / "out"
    done = run_cli(["--model", str(model), "--input", str(tmp_path / "in"), "--out", str(out), "--workers", "1",
                    "--aoi", str(aoi)])  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "region.json").read_text())
    assert report["status"] == "done" and report["counts"] == {"done": 1, "outside_aoi": 1}
    assert [p.name for p in (out / "classes").glob("*.tif")] == [f"{west.stem}.tif"]
    resumed = run_cli(["--model", str(model), "--input", str(tmp_path / "in"), "--out", str(out), "--resume",
                       "--aoi", str(aoi)])  # fmt: skip
    assert resumed.returncode == 0 and json.loads(resumed.stdout)["timings"]["cluster_s"] == 0.0  # nothing to run


def test_inputs_in_another_crs_are_brought_into_the_first_ones():
    utm, geo = osr.SpatialReference(), osr.SpatialReference()
    utm.ImportFromEPSG(32632)
    geo.ImportFromEPSG(4326)
    geo.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    utm.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    to_geo = osr.CoordinateTransformation(utm, geo)
    (lon0, lat0, _), (lon1, lat1, _) = to_geo.TransformPoints([[500010.0, 5400000.0], [500020.0, 5400010.0]])
    first = parts("utm", 0, [[1040, 30, 1045, 32]], [0.9], [0])
    first.boxes = np.array([[500000.0, 5399990.0, 500005.0, 5399995.0]])
    first.extent = np.array([500000.0, 5399950.0, 500100.0, 5400050.0])
    first.wkt = utm.ExportToWkt()
    second = parts("geo", 1, [[lon0, lat0, lon1, lat1]], [0.8], [0])
    second.extent = np.array([lon0 - 1e-4, lat0 - 1e-4, lon1 + 1e-4, lat1 + 1e-4])
    second.wkt = geo.ExportToWkt()
    dets, sources, frame = join_across_inputs([first, second], iou_thresh=0.5, ios_thresh=0.7)
    assert frame.wkt == first.wkt and sources[int(np.argmin(dets.scores))] == "geo"
    box = dets.boxes[int(np.argmin(dets.scores))]  # 10 m x 10 m north-east of (500010, 5400000), 1 m pixels
    np.testing.assert_allclose(box, [10, 40, 20, 50], atol=0.05)


def test_resume_refuses_a_report_made_with_other_options(tmp_path):
    from engine.core.errors import ConfigError
    from engine.region.inputs import RegionInput
    from engine.region.job import RegionReport

    inputs = [RegionInput("/data/a.tif", "a")]
    job = {"model": "/m.onnx", "settings": {"score_thresh": None}}
    report = RegionReport.open(tmp_path, job, inputs, resume=True)  # nothing to resume: a fresh report
    report.update({"input": "/data/a.tif", "stem": "a", "status": "done"})
    again = RegionReport.open(tmp_path, job, inputs, resume=True)
    assert again.records["a"]["status"] == "done"
    with pytest.raises(ConfigError, match=r"made with settings \{'score_thresh': None\}, this job has"):
        RegionReport.open(tmp_path, {**job, "settings": {"score_thresh": 0.3}}, inputs, resume=True)
    assert RegionReport.open(tmp_path, {**job, "model": "/n.onnx"}, inputs, resume=False).records["a"]["status"] == (
        "pending"
    )


def test_the_whole_regions_figures_are_rendered_from_the_bench_json():
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_readme", REPO / "scripts" / "render_readme.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    readme = REPO / "README.md"
    assert render.stale_blocks(readme.read_text(), REPO, str(readme)) == []
    assert "<!-- figures:region -->" in readme.read_text()


def test_relative_inputs_become_absolute_and_each_worker_loads_the_model_once(model, tmp_path, monkeypatch):
    from engine.region.worker import worker_model

    (tmp_path / "t.tif").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert [i.source for i in expand_inputs(["t.tif"])] == [str(tmp_path / "t.tif")]
    first = worker_model(str(model), "cpu", 1)
    assert worker_model(str(model), "cpu", 1) is first and worker_model(str(model), "cpu", 2) is not first


def test_a_worker_session_frees_its_activations_and_predict_keeps_its_arena(model):
    from engine.predict.model import OnnxModel
    from engine.region.worker import worker_model

    assert worker_model(str(model), "cpu", 1).session.get_session_options().enable_cpu_mem_arena is False
    assert OnnxModel(model, "cpu", 1).session.get_session_options().enable_cpu_mem_arena is True


@pytest.mark.skipif(sys.platform != "linux", reason="malloc_trim is glibc's")
def test_memory_a_task_freed_goes_back_to_the_os():
    from engine.region.worker import release_freed_memory

    def resident_mb() -> float:
        status = Path("/proc/self/status").read_text().splitlines()
        return next(int(line.split()[1]) / 1024.0 for line in status if line.startswith("VmRSS:"))

    chunks = [bytearray(2048) for _ in range(60_000)]  # ~120 MB of small heap blocks (below glibc's mmap size)
    del chunks[:-1]  # freed, but the last block pins the top of the heap: glibc cannot shrink it by itself
    before = resident_mb()
    release_freed_memory()
    assert before - resident_mb() > 60.0


def test_the_readmes_slurm_recipe_writes_a_job_that_runs_one_raster_per_worker(monkeypatch):
    """The README's dask-jobqueue example, run as written up to ``sbatch``: its job script must start workers that
    take one raster at a time, and its onnxruntime threads must fit the cores SLURM reserves."""
    import re

    import dask_jobqueue

    import engine.region

    block = re.search(r"```python\n(from dask_jobqueue import SLURMCluster\n.*?)```", README.read_text(), re.S)
    assert block, "README.md: the SLURM example (a python block starting 'from dask_jobqueue import') is gone"
    seen: dict = {}
    monkeypatch.setattr(dask_jobqueue.SLURMCluster, "scale", lambda self, n=0, jobs=0, **_: seen.update(jobs=jobs or n))
    monkeypatch.setattr(engine.region, "run_region", lambda options: seen.update(options=options))
    scope: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), scope)
    cluster = scope["cluster"]
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    cores = int(re.search(r"--cpus-per-task=(\d+)", script).group(1))
    workers = int(re.search(r"--nworkers (\d+)", script).group(1))
    assert re.search(r"--nthreads 1\b", script), script  # one raster at a time per worker
    assert seen["options"].threads_per_worker * workers <= cores, script
    assert seen["options"].scheduler == cluster.scheduler_address
