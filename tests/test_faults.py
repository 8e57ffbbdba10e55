"""Faults a user meets: a truncated GeoTIFF, a full disk, a prediction killed with SIGKILL. Each reads as one line
naming the file and the cause (exit code 2, no traceback) and leaves no partial output behind."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr

from engine.core.atomic import atomic_path, remove_stale_partials
from engine.core.errors import InputError, OutputError
from engine.predict import predict_raster

REPO = Path(__file__).resolve().parent.parent
GSD = 0.09


@pytest.fixture(scope="module")
def model(colour_model) -> Path:
    return colour_model(GSD, weight_std=None)


def write_raster(path: Path, size: int, options: tuple[str, ...] = ()) -> Path:
    rng = np.random.default_rng(0)
    ds = gdal.GetDriverByName("GTiff").Create(str(path), size, size, 3, gdal.GDT_Byte, list(options))
    ds.SetGeoTransform((500000.0, GSD, 0.0, 5400000.0, 0.0, -GSD))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32632)
    ds.SetProjection(srs.ExportToWkt())
    ds.WriteArray(rng.integers(0, 256, (3, size, size), dtype=np.uint8))
    ds = None
    return path


def predict_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "engine.predict", "--json-progress", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The CLI's stderr must be exactly one line (no traceback, no GDAL chatter)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_truncated_geotiff_fails_in_one_line(model, tmp_path):
    raster = write_raster(tmp_path / "ortho.tif", 400, ("TILED=YES", "COMPRESS=DEFLATE"))
    os.truncate(raster, raster.stat().st_size // 2)  # header intact: the read fails mid-raster
    out = tmp_path / "out"
    result = predict_cli("--model", str(model), "--input", str(raster), "--out-raster", str(out / "classes.tif"))
    assert result.returncode == 2
    line = error_line(result)
    assert line.startswith(f"error: input raster '{raster}': reading pixels ") and "failed: " in line
    assert "TIFFReadEncodedTile" in line or "IReadBlock" in line  # GDAL's cause, kept
    assert list(out.iterdir()) == []  # no output, no hidden partial


@pytest.fixture
def tiny_disk(tmp_path):
    """A 96 KiB tmpfs (needs root and a kernel that lets us mount; skipped otherwise)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the injected full-disk tests still run")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); the injected tests still run")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_during_prediction(model, tmp_path, tiny_disk):
    raster = write_raster(tmp_path / "ortho.tif", 900)  # random pixels: outputs that do not compress
    classes, probs = tiny_disk / "classes.tif", tiny_disk / "probs.tif"
    result = predict_cli(
        "--model", str(model), "--input", str(raster), "--out-raster", str(classes), "--out-probs", str(probs)
    )
    assert result.returncode == 2
    assert error_line(result) in (
        f"error: No space left on device writing '{classes}'",
        f"error: No space left on device writing '{probs}'",
    )
    assert os.listdir(tiny_disk) == []  # nothing left, hidden partials included

    # the polygon GeoPackage on a disk that is already full
    (tiny_disk / "filler").write_bytes(b"\0" * (90 * 1024))
    polygons = tiny_disk / "polygons.gpkg"
    result = predict_cli("--model", str(model), "--input", str(raster), "--out-polygons", str(polygons))
    assert result.returncode == 2
    assert error_line(result) == f"error: No space left on device writing '{polygons}'"
    assert os.listdir(tiny_disk) == ["filler"]


def test_full_disk_injected_at_the_write_layer(model, tmp_path, monkeypatch, capsys):
    """Where no tmpfs can be mounted: the band write raises ENOSPC after a few blocks."""
    raster = write_raster(tmp_path / "ortho.tif", 300)
    out = tmp_path / "out"
    out.mkdir()
    real_write = gdal.Band.WriteArray
    calls = []

    def failing_write(band, *args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(band, *args, **kwargs)

    monkeypatch.setattr(gdal.Band, "WriteArray", failing_write)
    with pytest.raises(OutputError) as raised:
        predict_raster(model, raster, out / "classes.tif")
    assert str(raised.value) == f"No space left on device writing '{out / 'classes.tif'}'"
    assert list(out.iterdir()) == []

    from engine.predict.__main__ import main

    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # main() installs its CLI hook: undone after
    calls.clear()
    code = main(["--model", str(model), "--input", str(raster), "--out-raster", str(out / "c.tif"), "--json-progress"])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"error: No space left on device writing '{out / 'c.tif'}'"
    assert list(out.iterdir()) == []


def test_full_disk_while_chipping_and_checkpointing(tmp_path, monkeypatch):
    from engine.data.chipstore import ChipWriter
    from engine.models import checkpoint

    out = tmp_path / "chips"

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", no_space)
    chip = np.zeros((32, 32, 3), np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    with (
        pytest.raises(OutputError, match=rf"^No space left on device writing '{out}'$"),
        ChipWriter(out, {"train": 2}, 32, 3, np.dtype(np.uint8), False) as writer,
    ):
        writer.put("train", 0, chip, mask, mask)
    assert list(out.iterdir()) == []  # the partial arrays were removed
    monkeypatch.undo()

    # torch.save says only 'file write failed': a (nearly) full filesystem names the cause
    def torch_failure(payload, path):
        Path(path).write_bytes(b"x")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0: file write failed")

    monkeypatch.setattr(checkpoint.torch, "save", torch_failure)
    monkeypatch.setattr("engine.core.errors.shutil.disk_usage", lambda path: type("Usage", (), {"free": 0})())
    target = tmp_path / "run" / "last.pt"
    with pytest.raises(OutputError, match=rf"^No space left on device writing '{target}'$"):
        checkpoint.save_checkpoint(target, {"model": {}})
    assert list(target.parent.iterdir()) == []


def hidden_partials(folder: Path, name: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(f".{name}.") and ".partial" in p.name)


def test_stale_partials_of_a_killed_prediction_are_removed_next_run(model, tmp_path):
    raster = write_raster(tmp_path / "ortho.tif", 1200)
    out = tmp_path / "out"
    out.mkdir()
    target = out / "classes.tif"
    command = [sys.executable, "-m", "engine.predict", "--json-progress", "--batch-size", "1"]
    command += ["--model", str(model), "--input", str(raster), "--out-raster", str(target)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in process.stdout:  # the first tile's progress: the output is being written
        if '"tile' in line:
            break
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    process.stdout.close()
    left = hidden_partials(out, "classes.tif")
    assert len(left) == 1 and not target.exists()  # what SIGKILL leaves: .classes.tif.<pid>-<random>.partial.tif
    assert left[0].name.startswith(f".classes.tif.{process.pid}-")
    live = out / f".classes.tif.{os.getpid()}-livewrite.partial.tif"  # a live process's: must be kept
    live.write_bytes(b"busy")
    other = out / f".other.tif.{process.pid}-abcdef.partial.tif"  # another output's: not ours to remove
    other.write_bytes(b"x")

    result = predict_cli("--model", str(model), "--input", str(raster), "--out-raster", str(target), timeout=300)
    assert result.returncode == 0, result.stderr
    assert gdal.Open(str(target)).RasterXSize == 1200
    assert hidden_partials(out, "classes.tif") == [live] and other.exists()


def test_sigterm_cancels_a_prediction_as_ctrl_c_does(model, tmp_path):
    """A scheduler's time limit or a parent's terminate sends SIGTERM: the CLI stops as on Ctrl-C, with its cancel
    line and exit code 130, and its atomic writer removes the partial output (SIGKILL above leaves one)."""
    raster = write_raster(tmp_path / "ortho.tif", 1200)
    out = tmp_path / "out"
    out.mkdir()
    command = [sys.executable, "-m", "engine.predict", "--json-progress", "--batch-size", "1"]
    command += ["--model", str(model), "--input", str(raster), "--out-raster", str(out / "classes.tif")]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:  # the first tile's progress: the output is being written
        if '"tile' in line:
            break
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err.strip() == "prediction cancelled; no output written"
    assert list(out.iterdir()) == []


def test_remove_stale_partials_rules(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(finished.stdout)
    names = {
        f".seg.tif.{dead}-k3j_x9.partial.tif": False,  # its process is gone: removed
        ".seg.tif.a1b2c3d4.partial.tif": False,  # an older version's unnamed temporary: removed
        f".seg.tif.{os.getppid()}-qq12.partial.tif": True,  # a live process: kept
        f".seg.tif2.{dead}-zz.partial.tif": True,  # another output
        "seg.tif.partial.tif": True,  # not hidden: not a temporary of ours
    }
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    folder = tmp_path / f".seg.tif.{dead}-dir1.partial"  # a folder written atomically
    folder.mkdir()
    (folder / "inner").write_bytes(b"x")
    removed = remove_stale_partials(tmp_path / "seg.tif")
    assert sorted(p.name for p in removed) == sorted([n for n, kept in names.items() if not kept] + [folder.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, kept in names.items() if kept)
    with atomic_path(tmp_path / "seg.tif") as tmp:  # the temporary names carry this process's pid
        assert tmp.name.startswith(f".seg.tif.{os.getpid()}-") and tmp.name.endswith(".partial.tif")
        tmp.write_bytes(b"done")
    assert (tmp_path / "seg.tif").read_bytes() == b"done"


def test_truncated_rasters_while_chipping_name_the_file(tmp_path):
    from engine.data.isprs import read_image, read_label

    image = write_raster(tmp_path / "top.tif", 400, ("TILED=YES", "COMPRESS=DEFLATE"))
    os.truncate(image, image.stat().st_size // 2)
    with pytest.raises(InputError, match=rf"^raster '{image}': reading its pixels failed: .*TIFFReadEncodedTile"):
        read_image(image)
    with pytest.raises(InputError, match=rf"^raster '{image}': reading its pixels failed: "):
        read_label(image, boundary_is_ignore=False)
