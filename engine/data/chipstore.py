"""Write and read the chip dataset format of docs/ARCHITECTURE.md (numpy arrays + manifest.json; no GDAL needed).

Why .npy: one contiguous (N, H, W, C) array per split opens with ``np.load(mmap_mode="r")`` in microseconds, a chip
is one slice of the page cache (no decoding, no per-file open), DataLoader workers share the pages, and numpy is
on every machine (the GPU machine has no GDAL).

Crash safety: arrays are preallocated with ``np.lib.format.open_memmap`` inside ``OUT/.pmtl-partial/`` and moved
into place on commit; ``manifest.json`` with ``"complete": true`` is written last, atomically. A folder holding
``.pmtl-partial`` or an incomplete manifest is the leftover of an interrupted run and is cleared by the next run.
(No fsync: this guards against interrupted runs, not against power loss.)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engine.core.atomic import atomic_path
from engine.core.classes import IGNORE_INDEX
from engine.core.errors import InputError, filesystem_full, output_error, param_ref

log = logging.getLogger(__name__)

FORMAT = "pmtl-chips"
VERSION = 1
MANIFEST = "manifest.json"
PARTIAL_DIR = ".pmtl-partial"
ARRAY_NAMES = ("images", "masks", "eroded")
RERUN = "chipping did not finish; rerun engine.chip"


def _read_manifest_file(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_chip_output(folder: Path) -> tuple[bool, bool]:
    """(is a pmtl chip folder, is complete) for an existing folder."""
    manifest = _read_manifest_file(folder / MANIFEST) if (folder / MANIFEST).is_file() else None
    ours = (folder / PARTIAL_DIR).exists() or (manifest is not None and manifest.get("format") == FORMAT)
    complete = manifest is not None and manifest.get("format") == FORMAT and manifest.get("complete") is True
    return ours, complete and not (folder / PARTIAL_DIR).exists()


def _clear(folder: Path) -> None:
    # the manifest goes first so a crash mid-way never leaves a complete-looking dataset
    (folder / MANIFEST).unlink(missing_ok=True)
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def prepare_output_dir(out_dir: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Make ``out_dir`` an empty folder for a new chip dataset, or raise InputError.

    Empty or missing: used. Leftover of an interrupted chipping run: cleared. Complete chip dataset: replaced only
    with ``overwrite``. Anything else: refused even with ``overwrite`` (a chipper never deletes unrelated files).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: expected an output folder, found a file")
    if not out.exists():
        out.mkdir(parents=True)
        return out
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return out
    ours, complete = _is_chip_output(out)
    if ours and not complete:
        log.warning("%s: removing the partial output of an interrupted chipping run", out)
        _clear(out)
    elif ours and overwrite:
        log.warning("%s: replacing the existing chip dataset (%s)", out, param_ref("overwrite"))
        _clear(out)
    elif ours:
        raise InputError(f"{out}: expected an empty output folder, found a chip dataset; set {param_ref('overwrite')} to replace it")
    else:
        raise InputError(
            f"{out}: expected an empty output folder (or a chip dataset to replace with {param_ref('overwrite')}), found {entries[:8]}; "
            "choose another folder or empty it yourself"
        )
    return out


def _dump_manifest(manifest: Mapping[str, Any]) -> str:
    """JSON text with one key, one tile and one chip per line: readable, and small for tens of thousands of chips."""
    lines = []
    for key, value in manifest.items():
        if key in ("tiles", "chips") and value:
            items = value.items() if isinstance(value, dict) else enumerate(value)
            body = ",\n".join(
                f"  {json.dumps(k) + ': ' if isinstance(value, dict) else ''}{json.dumps(v)}" for k, v in items
            )
            opening, closing = ("{", "}") if isinstance(value, dict) else ("[", "]")
            lines.append(f" {json.dumps(key)}: {opening}\n{body}\n {closing}")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


class ChipWriter:
    """Per-split arrays preallocated in ``OUT/.pmtl-partial``; :meth:`commit` moves them and writes the manifest.

    The ``.npy`` files are created full-size with ``np.lib.format.open_memmap`` (header + sparse body); chips are
    then written at their offsets with ``os.pwrite``, which costs about half of assigning into the map (no page
    fault per 4 KiB page). Use as a context manager: leaving it without commit (error, ``Cancelled``) removes
    everything it wrote.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        counts: Mapping[str, int],
        chip_size: int,
        bands: int,
        dtype: str,
        overwrite: bool = False,
        arrays: tuple[str, ...] = ARRAY_NAMES,
    ) -> None:
        if arrays not in (ARRAY_NAMES, ("images",)):
            raise ValueError(f"chip arrays: expected {ARRAY_NAMES} or ('images',), found {arrays}")
        self.out = prepare_output_dir(out_dir, overwrite)
        self.arrays = arrays
        self.counts = {split: int(n) for split, n in counts.items() if n > 0}
        self.chip_size = chip_size
        self.bands = bands
        self.dtype = np.dtype(dtype)
        self.partial = self.out / PARTIAL_DIR
        self.partial.mkdir()
        self._committed = False
        self._image = np.zeros((chip_size, chip_size, bands), self.dtype)
        self._masks = np.full((2, chip_size, chip_size), IGNORE_INDEX, np.uint8)
        self._extent = (chip_size, chip_size)
        """Reused chip buffers (a fresh allocation per chip costs a page fault per 4 KiB) and the extent of the
        last chip written into them: outside it they hold padding."""
        self._files: dict[tuple[str, str], tuple[int, int, int]] = {}
        """(split, array name) → (file descriptor, data offset, bytes per chip)."""
        try:
            self._create_arrays(bands)
        except BaseException:
            self.abort()
            raise

    def _create_arrays(self, bands: int) -> None:
        chip_size = self.chip_size
        for split, n in self.counts.items():
            (self.partial / split).mkdir()
            for name, kind, shape in (
                ("images", self.dtype, (n, chip_size, chip_size, bands)),
                ("masks", np.dtype(np.uint8), (n, chip_size, chip_size)),
                ("eroded", np.dtype(np.uint8), (n, chip_size, chip_size)),
            ):
                if name not in self.arrays:
                    continue
                path = self.partial / split / f"{name}.npy"
                array = np.lib.format.open_memmap(path, "w+", kind, shape)
                offset, per_chip = int(array.offset), int(np.prod(shape[1:])) * kind.itemsize
                del array
                self._files[(split, name)] = (os.open(path, os.O_WRONLY), offset, per_chip)

    def __enter__(self) -> ChipWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self._committed:
            self.abort()

    def _write(self, split: str, name: str, index: int, chip: np.ndarray) -> None:
        fd, offset, per_chip = self._files[(split, name)]
        if chip.nbytes != per_chip:
            raise ValueError(f"{name} chip of {chip.nbytes} bytes, expected {per_chip}")
        try:
            written = os.pwrite(fd, chip, offset + index * per_chip)
        except OSError as exc:
            raise output_error(self.out, exc) from None
        if written != per_chip:
            raise output_error(self.out, f"wrote {written} of {per_chip} bytes", filesystem_full(self.partial / split))

    def put(
        self, split: str, index: int, image: np.ndarray, mask: np.ndarray | None, eroded: np.ndarray | None
    ) -> None:
        """Store one chip; inputs smaller than the chip are padded (image 0, masks IGNORE_INDEX).

        ``mask`` / ``eroded`` are None for an imagery-only writer (``arrays=("images",)``).
        """
        h, w = image.shape[:2]
        if (h, w) != self._extent:  # re-pad (windows of one tile share their extent, so this is rare)
            self._image.fill(0)
            self._masks.fill(IGNORE_INDEX)
            self._extent = (h, w)
        self._image[:h, :w] = image
        self._write(split, "images", index, self._image)
        if "masks" in self.arrays:
            self._masks[0, :h, :w] = mask
            self._masks[1, :h, :w] = eroded
            self._write(split, "masks", index, self._masks[0])
            self._write(split, "eroded", index, self._masks[1])

    def _close(self) -> None:
        for fd, _, _ in self._files.values():
            os.close(fd)
        self._files.clear()

    def commit(self, manifest: Mapping[str, Any]) -> Path:
        """Move the arrays into ``OUT/{split}/``, then write ``manifest.json`` (complete) last, atomically."""
        splits = dict(manifest.get("splits", {}))
        if splits != self.counts:
            raise ValueError(f"manifest splits {splits} do not match the arrays written {self.counts}")
        self._close()
        for split in self.counts:
            os.replace(self.partial / split, self.out / split)
        full = {"format": FORMAT, "version": VERSION, "complete": True, "arrays": list(self.arrays), **manifest}
        with atomic_path(self.out / MANIFEST) as tmp:
            tmp.write_text(_dump_manifest(full), encoding="utf-8")
        shutil.rmtree(self.partial)
        self._committed = True
        return self.out

    def abort(self) -> None:
        """Remove everything this writer created (the output folder is left empty)."""
        self._close()
        shutil.rmtree(self.partial, ignore_errors=True)
        if not (self.out / MANIFEST).exists():
            for split in self.counts:
                shutil.rmtree(self.out / split, ignore_errors=True)


class ChipDataset:
    """A complete chip dataset on disk: its manifest, memory-mapped arrays per split and boxes per chip."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest
        self.splits: dict[str, int] = {k: int(v) for k, v in manifest["splits"].items()}
        self.bands: list[str] = list(manifest["bands"])
        self.chip_size = int(manifest["chip_size"])
        self.task: str = str(manifest.get("task", "both"))
        """Which labels the chips carry: det, seg, both (ISPRS) or none (imagery only)."""
        self.unlabelled = self.task == "none"
        """An unlabelled dataset (``engine.chip --task none``): imagery only, no label arrays, no boxes."""
        self.arrays: tuple[str, ...] = tuple(manifest.get("arrays", ("images",) if self.unlabelled else ARRAY_NAMES))
        self.det_classes: list[str] = list(manifest.get("det_classes", []))
        self.seg_classes: list[str] = list(manifest.get("seg_classes", []))
        self.ignore_index = int(manifest.get("ignore_index", IGNORE_INDEX))
        self.value_scaling: dict[str, Any] = dict(manifest["value_scaling"])
        self.mean = np.asarray(manifest.get("mean", []), np.float64)
        self.std = np.asarray(manifest.get("std", []), np.float64)
        self._chips: dict[str, list[dict[str, Any]]] = {split: [{}] * n for split, n in self.splits.items()}
        for chip in manifest["chips"]:
            self._chips[chip["split"]][int(chip["index"])] = chip
        self._maps: dict[tuple[str, str], np.ndarray] = {}

    def _array(self, split: str, name: str) -> np.ndarray:
        key = (split, name)
        if key not in self._maps:
            if split not in self.splits:
                raise KeyError(f"{self.root}: no split {split!r}; splits are {sorted(self.splits)}")
            self._maps[key] = np.load(self.root / split / f"{name}.npy", mmap_mode="r")
        return self._maps[key]

    def images(self, split: str) -> np.ndarray:
        """(N, H, W, C) imagery of a split, native dtype, memory-mapped read-only."""
        return self._array(split, "images")

    def masks(self, split: str) -> np.ndarray:
        """(N, H, W) uint8 class indices (IGNORE_INDEX = padding / undefined), memory-mapped."""
        return self._array(split, "masks")

    def eroded(self, split: str) -> np.ndarray:
        """(N, H, W) uint8 class indices of the eroded label (IGNORE_INDEX = boundary), memory-mapped."""
        return self._array(split, "eroded")

    def chips(self, split: str) -> list[dict[str, Any]]:
        """Manifest records of a split's chips, in array-row order."""
        return self._chips[split]

    def boxes(self, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per chip of a split: float32 (K, 4) xyxy pixel boxes and int64 (K,) detection-class indices."""
        out = []
        for chip in self._chips[split]:
            entries = chip.get("boxes", [])
            boxes = np.array([e[:4] for e in entries], np.float32).reshape(-1, 4)
            labels = np.array([self.det_classes.index(e[4]) for e in entries], np.int64)
            out.append((boxes, labels))
        return out


def open_chip_dataset(root: str | os.PathLike[str]) -> ChipDataset:
    """Open a chip dataset written by ``engine.chip``; InputError if it is missing, unfinished or inconsistent."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        hint = RERUN if (root / PARTIAL_DIR).exists() else "run engine.chip to make one"
        raise InputError(f"{root}: expected a chip dataset with {MANIFEST}, found none; {hint}")
    manifest = _read_manifest_file(path)
    if manifest is None or manifest.get("format") != FORMAT:
        found = "unreadable JSON" if manifest is None else f"format {manifest.get('format')!r}"
        raise InputError(f"{path}: expected a {FORMAT!r} manifest, found {found}")
    if manifest.get("complete") is not True:
        raise InputError(f"{path}: expected a complete chip dataset, found one not marked complete; {RERUN}")
    if manifest.get("version") != VERSION:
        raise InputError(f"{path}: expected format version {VERSION}, found {manifest.get('version')!r}")
    dataset = ChipDataset(root, manifest)
    size, bands, dtype = dataset.chip_size, len(dataset.bands), str(dataset.value_scaling.get("dtype"))
    for split, n in dataset.splits.items():
        for name in dataset.arrays:
            file = root / split / f"{name}.npy"
            if not file.is_file():
                raise InputError(f"{file}: expected the {name} array of split {split!r}, found no such file; {RERUN}")
            array = dataset._array(split, name)
            shape = (n, size, size, bands) if name == "images" else (n, size, size)
            want = dtype if name == "images" else "uint8"
            if array.shape != shape or array.dtype.name != want:
                found = f"{array.shape} {array.dtype}"
                raise InputError(f"{file}: expected {shape} {want} (from {MANIFEST}), found {found}")
    return dataset
