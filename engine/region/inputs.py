"""What ``--input`` names, expanded to the list of rasters of a region job: rasters, folders, globs, VRT mosaics and
text files of paths or GDAL URLs (``/vsicurl/…``, ``/vsis3/…``), each given a unique output stem."""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from engine.core.errors import InputError
from engine.predict.raster import is_gdal_name

RASTER_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".vrt", ".jp2", ".img", ".png", ".jpg", ".jpeg", ".gpkg")
"""Files a folder contributes (GDAL opens many more; name them directly or in a list file)."""

LIST_SUFFIXES: tuple[str, ...] = (".txt", ".lst", ".list")
"""A file with one of these suffixes is a list of inputs, one a line (lines starting with ``#`` are comments)."""


@dataclasses.dataclass(frozen=True)
class RegionInput:
    """One raster of the job: ``source`` as GDAL opens it, ``stem`` the name of its outputs (unique in the job)."""

    source: str
    stem: str


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _folder_rasters(folder: Path) -> list[str]:
    return sorted(
        str(p)
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in RASTER_SUFFIXES
    )


def _list_file(path: Path, depth: int) -> list[str]:
    base = path.parent
    found: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if not is_gdal_name(entry) and not os.path.isabs(entry):
            entry = str(base / entry)
        try:
            found += _expand_one(entry, depth + 1)
        except InputError as exc:
            raise InputError(f"--input list '{path}' line {number}: {exc}") from None
    return found


def _expand_one(text: str, depth: int = 0) -> list[str]:
    if depth > 4:
        raise InputError(f"--input '{text}': list files nest more than 4 deep")
    if is_gdal_name(text):
        return [text]
    path = Path(text).expanduser()
    if path.is_dir():
        rasters = _folder_rasters(path)
        if not rasters:
            raise InputError(
                f"--input '{text}': expected rasters ({', '.join(RASTER_SUFFIXES)}) in the folder, found none"
            )
        return rasters
    if path.is_file():
        return _list_file(path, depth) if path.suffix.lower() in LIST_SUFFIXES else [str(path)]
    if _is_glob(text):
        matches = sorted(m for m in glob.glob(str(path), recursive=True) if os.path.isfile(m))
        if not matches:
            raise InputError(f"--input '{text}': expected the pattern to match raster files, it matches none")
        return matches
    raise InputError(
        f"--input '{text}': expected a raster, a folder, a glob, a text file of paths or a GDAL URL, "
        "found nothing there"
    )


def _stem(source: str) -> str:
    name = source.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
    stem = Path(name).stem or "raster"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)


def unique_stems(sources: Iterable[str]) -> list[RegionInput]:
    """Each source with the stem of its file name, suffixed _2, _3 … where two share one."""
    taken: set[str] = set()
    out = []
    for source in sources:
        stem, n = _stem(source), 1
        candidate = stem
        while candidate.lower() in taken:
            n += 1
            candidate = f"{stem}_{n}"
        taken.add(candidate.lower())
        out.append(RegionInput(source, candidate))
    return out


def expand_inputs(paths: Sequence[str]) -> list[RegionInput]:
    """Every raster the ``--input`` values name, in order, each once; files as absolute paths (workers of a
    cluster do not share the client's working folder)."""
    seen: set[str] = set()
    sources = []
    for text in paths:
        for found in _expand_one(str(text)):
            source = found if is_gdal_name(found) else os.path.abspath(found)
            key = source if is_gdal_name(source) else os.path.realpath(source)
            if key not in seen:
                seen.add(key)
                sources.append(source)
    if not sources:
        raise InputError("--input: expected at least one raster, found none")
    return unique_stems(sources)
