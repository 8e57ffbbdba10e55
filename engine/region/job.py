"""``run_region``: one job over many rasters on Dask (a ``LocalCluster`` of worker processes, or an existing
scheduler), with per-raster and overall progress, cancel, resume and per-raster faults.

The client (this process) expands the inputs, submits one task per raster (``engine.region.worker.predict_one``;
a raster with more tiles than ``max_tiles_per_task``: one per window of tile rows and one putting them together),
records each result in ``region.json`` as it arrives, and at the end builds ``classes.vrt`` and
``detections.gpkg`` from the finished rasters' files. Worker deaths are Dask's to handle: a task whose worker died
runs again elsewhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from engine.core.atomic import process_alive, write_json_atomic
from engine.core.errors import ConfigError, InputError, PmtlError
from engine.core.options import PredictOptions, WorkerOptions
from engine.core.progress import Progress
from engine.predict.model import OnnxModel
from engine.predict.pipeline import RasterSettings, TileWindow, open_input, tile_plan
from engine.region.inputs import RegionInput, expand_inputs
from engine.region.mosaic import load_parts, write_class_vrt, write_region_detections
from engine.region.worker import (
    RasterJob,
    assemble_raster,
    cancel_flag,
    class_map_path,
    parts_path,
    predict_one,
    predict_window_task,
    progress_topic,
)

log = logging.getLogger("engine.region")

CANCEL_GRACE_S: float = 60.0
"""After a cancel, how long running tasks get to stop at their next safe point and remove their partial files."""

POLL_S: float = 0.5

FINISHED: tuple[str, ...] = ("done", "outside_aoi")
"""Record states ``--resume`` does not run again."""

MAX_TILES_PER_TASK: int = 4096
"""A raster with more model tiles than this (about 16k x 16k px at 320 px tiles) is split into windows of tile
rows, one task each, put together by one more task (blended and merged as ``engine.predict`` does)."""


@dataclasses.dataclass(frozen=True)
class RegionOptions:
    """A region job: model, inputs (paths, folders, globs, VRTs, list files, GDAL URLs), output folder, where it
    runs (``workers`` local processes, or the Dask ``scheduler`` at that address), onnxruntime threads per worker,
    resume, and the per-raster options of ``engine.predict``."""

    model: str
    inputs: tuple[str, ...]
    out_dir: str
    workers: int = WorkerOptions.workers
    threads_per_worker: int | None = None
    scheduler: str | None = None
    resume: bool = False
    device: str = PredictOptions.device
    settings: RasterSettings = dataclasses.field(default_factory=RasterSettings)
    max_tiles_per_task: int = MAX_TILES_PER_TASK

    def __post_init__(self) -> None:
        if int(self.workers) < 1:
            raise ConfigError(f"parameter 'workers' must be >= 1, found {self.workers}")
        if self.threads_per_worker is not None and int(self.threads_per_worker) < 1:
            raise ConfigError(f"parameter 'threads_per_worker' must be >= 1, found {self.threads_per_worker}")
        if int(self.max_tiles_per_task) < 1:
            raise ConfigError(f"parameter 'max_tiles_per_task' must be >= 1, found {self.max_tiles_per_task}")
        if not self.inputs:
            raise ConfigError("parameter 'input': expected at least one raster, folder, glob or list file")

    def onnx_threads(self) -> int | None:
        """onnxruntime threads per worker: as given, else the local cores shared by the local workers."""
        if self.threads_per_worker is not None:
            return int(self.threads_per_worker)
        return None if self.scheduler else max(1, (os.cpu_count() or 1) // int(self.workers))


@dataclasses.dataclass
class RegionSummary:
    """The job's outcome: ``status`` done / failed (some rasters failed, the others finished) / cancelled;
    ``timings``: seconds to start (or join) the cluster, to run the tasks, and to write the region outputs."""

    status: str
    seconds: float
    counts: dict[str, int]
    timings: dict[str, float]
    detections: int
    outputs: dict[str, str]
    failures: dict[str, str]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class RegionReport:
    """``region.json``: the job's status and one record per input (status, time, counts), saved atomically after
    every change, so a killed job leaves a true account that ``--resume`` trusts."""

    def __init__(
        self, path: Path, job: dict[str, object], inputs: Sequence[RegionInput], previous: dict | None
    ) -> None:
        self.path, self.job = path, job
        self.started = time.time()
        old = {r["stem"]: r for r in (previous or {}).get("inputs", [])}
        self.records: dict[str, dict] = {}
        for item in inputs:
            record = old.get(item.stem)
            if record is None or record.get("input") != item.source or record.get("status") not in FINISHED:
                record = {"input": item.source, "stem": item.stem, "status": "pending"}
            self.records[item.stem] = record
        self.status = "running"
        self.detections = 0

    @classmethod
    def open(cls, out_dir: Path, job: dict[str, object], inputs: Sequence[RegionInput], resume: bool) -> RegionReport:
        """The report of ``out_dir``; with ``resume``, the previous one's finished records are kept, provided it
        ran the same ``job`` (model and per-raster options)."""
        path = out_dir / "region.json"
        previous = None
        if resume and path.is_file():
            try:
                previous = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise InputError(f"--resume: '{path}' is not a readable region report: {exc}") from None
            for key, value in job.items():
                if previous.get(key) != value:
                    raise ConfigError(
                        f"--resume: '{path}' was made with {key} {previous.get(key)}, this job has {value}; "
                        "use another --out folder or the same model and options"
                    )
        return cls(path, job, inputs, previous)

    def finished(self, item: RegionInput, out_dir: Path) -> bool:
        record = self.records[item.stem]
        if record["status"] == "outside_aoi":
            return True
        return record["status"] == "done" and parts_path(out_dir, item.stem).is_file()

    def update(self, record: dict) -> None:
        self.records[record["stem"]] = record
        self.save()

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self.records.values():
            counts[record["status"]] = counts.get(record["status"], 0) + 1
        return counts

    def save(self) -> None:
        write_json_atomic(
            self.path,
            {
                "format": "pmtl-region",
                "version": 1,
                "status": self.status,
                **self.job,
                "seconds": round(time.time() - self.started, 3),
                "counts": self.counts(),
                "detections": self.detections,
                "inputs": list(self.records.values()),
            },
        )


class _Tracker:
    """Per-raster fractions (from the workers' events) and finished count → the overall progress report."""

    def __init__(self, total: int, finished: int, progress: Progress | None) -> None:
        self.total, self.finished, self.failed = total, finished, 0
        self.progress = progress
        self.fractions: dict[tuple[str, int], float] = {}
        self.last_message = ""

    def on_event(self, event: tuple[float, dict]) -> None:
        message = event[1]
        if isinstance(message, dict) and message.get("fraction") is not None:
            part = (message["stem"], int(message.get("part", 0)))
            self.fractions[part] = float(message["fraction"]) / max(int(message.get("parts", 1)), 1)

    def done(self, stem: str, ok: bool) -> None:
        for part in [p for p in self.fractions if p[0] == stem]:
            self.fractions.pop(part, None)
        self.finished += 1
        self.failed += 0 if ok else 1

    def report(self) -> None:
        if self.progress is None:
            return
        running: dict[str, float] = {}
        for (stem, _), fraction in list(self.fractions.items()):
            running[stem] = running.get(stem, 0.0) + fraction
        overall = (self.finished + sum(running.values())) / max(self.total, 1)
        parts = [f"{self.finished}/{self.total} rasters" + (f" ({self.failed} failed)" if self.failed else "")]
        parts += [f"{stem} {10 * int(10 * f)}%" for stem, f in sorted(running.items())]
        message = "; ".join(parts)
        # a new line only when a raster starts, ends or passes a tenth (a long job's log stays readable)
        self.progress.report(min(overall, 1.0), message if message != self.last_message else "")
        self.last_message = message


@contextlib.contextmanager
def _workers_ignore_sigint() -> Iterator[None]:
    """Worker processes started meanwhile ignore SIGINT (an ignored signal survives exec): Ctrl-C in a terminal
    reaches the whole process group, and the job's own cancel lets running rasters clean up, where killed workers
    would not. This process's handler is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def open_client(options: RegionOptions) -> Iterator:
    """A Dask client: joined to ``options.scheduler``, or to an embedded ``LocalCluster`` of ``options.workers``
    processes (one task at a time each; loopback only)."""
    from distributed import Client, LocalCluster

    if options.scheduler:
        try:
            client = Client(options.scheduler, timeout="30s")
        except (OSError, TimeoutError) as exc:
            raise InputError(f"--scheduler '{options.scheduler}': cannot connect to a Dask scheduler: {exc}") from None
        with client:
            yield client
        return
    with _workers_ignore_sigint():
        cluster = LocalCluster(
            n_workers=int(options.workers),
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
    with cluster, Client(cluster) as client:
        yield client


_PARTIAL = re.compile(r"\.(\d+)-[A-Za-z0-9_]+\.partial")


def sweep_partials(folders: Sequence[Path]) -> list[Path]:
    """Remove temporary files of processes that no longer run (a killed job's, its workers'), nested ones too."""
    removed = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            pids = [int(p) for p in _PARTIAL.findall(entry.name)]
            stale_flag = entry.name.startswith(".cancel-")  # a job killed while cancelling left its flag
            if stale_flag or (entry.name.startswith(".") and pids and not any(process_alive(p) for p in pids)):
                entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


def _record_of(future, stem: str, source: str) -> dict:
    """A task's record; a task that raised (a worker killed too often, a bug) fails alone with one line."""
    try:
        return future.result()
    except Exception as exc:  # distributed.KilledWorker, or anything the task did not map to a record
        text = (str(exc).strip().splitlines() or [""])[0]
        return {"input": source, "stem": stem, "status": "failed", "error": f"{type(exc).__name__}: {text}"}


def _cancel_running(client, pending: dict, flag: Path) -> None:
    """Ask running tasks to stop (the flag), drop queued ones, and give the running ones time to clean up."""
    from distributed import wait

    flag.touch()
    with contextlib.suppress(Exception):
        wait(list(pending), timeout=CANCEL_GRACE_S)
    with contextlib.suppress(Exception):
        client.cancel(list(pending))


def plan_windows(model: OnnxModel, job: RasterJob, max_tiles: int) -> list[TileWindow] | None:
    """Windows of tile rows for a raster with more than ``max_tiles`` tiles; None when one task does (or when the
    raster cannot be opened: its task then fails alone with the reason)."""
    try:
        grid, _ = tile_plan(model, open_input(model, job.source, job.settings, []), job.settings)
    except (PmtlError, OSError):
        return None
    if len(grid) <= max_tiles:
        return None
    rows = max(1, max_tiles // len(grid.xs))
    return [TileWindow(r, min(r + rows, len(grid.ys))) for r in range(0, len(grid.ys), rows)]


def _submit(client, job: RasterJob, windows: list[TileWindow] | None):
    """The future whose result is the raster's record: one task, or its windows and the task putting them
    together."""
    key = f"pmtl-region-{job.stem}-{job.job_id}"
    if not windows:
        return client.submit(predict_one, job, key=key, pure=False)
    parts = [
        client.submit(predict_window_task, job, k, w, len(windows), key=f"{key}-w{k}", pure=False)
        for k, w in enumerate(windows)
    ]
    return client.submit(assemble_raster, job, *parts, key=key, pure=False)


def _run_tasks(
    client, jobs: list[RasterJob], plans: dict[str, list[TileWindow]], report: RegionReport, tracker: _Tracker, progress
) -> bool:
    """Submit the jobs and record results as they come; returns False when cancelled."""
    from distributed import wait

    topic = progress_topic(jobs[0].job_id)
    client.subscribe_topic(topic, tracker.on_event)
    pending = {_submit(client, job, plans.get(job.stem)): job for job in jobs}
    try:
        while pending:
            if progress is not None and progress.is_canceled():
                _cancel_running(client, pending, cancel_flag(jobs[0].out_dir, jobs[0].job_id))
                return False
            try:
                finished, _ = wait(list(pending), timeout=POLL_S, return_when="FIRST_COMPLETED")
            except TimeoutError:
                finished = set()
            for future in finished:
                job = pending.pop(future)
                record = _record_of(future, job.stem, job.source)
                report.update(record)
                tracker.done(job.stem, record["status"] in FINISHED)
                if record["status"] == "failed":
                    log.error("%s: %s", job.source, record.get("error"))
            tracker.report()
    except BaseException:
        _cancel_running(client, pending, cancel_flag(jobs[0].out_dir, jobs[0].job_id))
        raise
    finally:
        with contextlib.suppress(Exception):
            client.unsubscribe_topic(topic)
    return True


def _finish(out_dir: Path, report: RegionReport, model: OnnxModel) -> dict[str, str]:
    """classes.vrt and detections.gpkg over every finished raster."""
    done = [r["stem"] for r in report.records.values() if r["status"] == "done"]
    outputs: dict[str, str] = {"report": str(report.path)}
    class_maps = [class_map_path(out_dir, s) for s in done if class_map_path(out_dir, s).is_file()]
    if class_maps:
        write_class_vrt(out_dir / "classes.vrt", class_maps)
        outputs["classes"] = str(out_dir / "classes.vrt")
    if model.info.det_scores_output is not None:
        parts = [load_parts(parts_path(out_dir, s), s) for s in done]
        report.detections = write_region_detections(out_dir / "detections.gpkg", parts, model.info)
        outputs["detections"] = str(out_dir / "detections.gpkg")
    return outputs


def run_region(options: RegionOptions, progress: Progress | None = None) -> RegionSummary:
    """Predict every input raster of ``options`` on Dask; see the module docstring for the outputs."""
    started = time.perf_counter()
    inputs = expand_inputs(options.inputs)
    model = OnnxModel(options.model, device="cpu", threads=1)  # checked once here; tasks load their own session
    model_path = str(Path(options.model).resolve())
    out_dir = Path(options.out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out '{out_dir}': cannot create the folder: {exc}") from None
    job = {"model": model_path, "settings": json.loads(json.dumps(dataclasses.asdict(options.settings)))}
    report = RegionReport.open(out_dir, job, inputs, options.resume)
    folders = [out_dir, out_dir / "classes", out_dir / "parts", out_dir / "windows"]
    sweep_partials(folders)
    todo = [item for item in inputs if not report.finished(item, out_dir)]
    report.save()
    tracker = _Tracker(len(inputs), len(inputs) - len(todo), progress)
    completed = True
    timings = {"cluster_s": 0.0, "tasks_s": 0.0}
    if todo:
        job_id = uuid.uuid4().hex[:12]
        threads = options.onnx_threads()
        jobs = [
            RasterJob(
                model_path, i.source, i.stem, str(out_dir.resolve()), options.settings, options.device, threads, job_id
            )
            for i in todo
        ]
        plans = {j.stem: plan_windows(model, j, options.max_tiles_per_task) for j in jobs}
        try:
            clock = time.perf_counter()
            with open_client(options) as client:
                timings["cluster_s"] = time.perf_counter() - clock
                clock = time.perf_counter()
                completed = _run_tasks(client, jobs, plans, report, tracker, progress)
                timings["tasks_s"] = time.perf_counter() - clock
        finally:
            cancel_flag(out_dir, job_id).unlink(missing_ok=True)
    sweep_partials(folders)  # a worker killed mid-task left its temporary files; its task ran again elsewhere
    with contextlib.suppress(OSError):
        (out_dir / "windows").rmdir()  # only when empty: every raster split into windows was put together
    counts = report.counts()
    clock = time.perf_counter()
    outputs = _finish(out_dir, report, model) if completed else {"report": str(report.path)}
    timings["finish_s"] = time.perf_counter() - clock
    report.status = "cancelled" if not completed else ("failed" if counts.get("failed") else "done")
    report.save()
    failures = {r["input"]: r.get("error", "") for r in report.records.values() if r["status"] == "failed"}
    seconds = time.perf_counter() - started
    timings = {k: round(v, 3) for k, v in timings.items()}
    return RegionSummary(report.status, seconds, counts, timings, report.detections, outputs, failures)
