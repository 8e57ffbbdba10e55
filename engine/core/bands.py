"""Band names: which of a raster's or chip set's bands a network reads, and in which order; and what a raster
says its bands are (descriptions, colour interpretation) against what a model or a chip dataset expects, so a
NIR-R-G ortho given to an R-G-B model fails with a message instead of running silently (torch-free; GDAL is
imported only by the functions that read a raster)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np

from engine.core.errors import InputError, param_ref


def bands_by_name(have: Sequence[str], want: Sequence[str]) -> list[int] | None:
    """Indices into ``have`` that give the bands ``want`` by name (a permutation, or a subset of a larger band
    product, e.g. IRRG out of RGBIR); None when a wanted name is missing or a name repeats (order unknown)."""
    have, want = list(have), list(want)
    if len(set(have)) != len(have) or len(set(want)) != len(want) or not set(want) <= set(have):
        return None
    return [have.index(name) for name in want]


def input_order(have: Sequence[str], want: Sequence[str]) -> list[int] | None:
    """How a network whose bands are ``want`` reads data whose bands are ``have``: by name where every name is
    there, else in their order when the counts agree (a partial-MTL model reads one domain's NIR-R-G chips in the
    slots its other domain calls R-G-B); None when neither applies."""
    named = bands_by_name(have, want)
    if named is not None:
        return named
    return list(range(len(have))) if len(have) == len(want) else None


ALIASES = {
    "red": "red",
    "r": "red",
    "green": "green",
    "g": "green",
    "blue": "blue",
    "b": "blue",
    "nir": "nir",
    "ir": "nir",
    "infrared": "nir",
    "nearinfrared": "nir",
    "rededge": "rededge",
    "re": "rededge",
    "swir": "swir",
    "coastal": "coastal",
    "pan": "pan",
    "panchromatic": "pan",
}
"""Spellings of the band names the check understands (lower case, letters only) and the name each stands for."""

BandNames = Sequence[Optional[str]]


def known_band(name: str | None) -> str | None:
    """The band ``name`` stands for (``"Near-Infrared"`` → ``nir``, ``"R"`` → ``red``), or None when unknown."""
    if not name:
        return None
    return ALIASES.get(re.sub(r"[^a-z]", "", name.lower()))


def approx_range(paths: Sequence[str | os.PathLike[str]]) -> tuple[float, float]:
    """The approximate (min, max) over every band of the rasters at ``paths`` (GDAL's overview / sampled
    statistics: quick on large rasters)."""
    from osgeo import gdal

    low, high = np.inf, -np.inf
    for path in paths:
        ds = gdal.Open(str(path))
        for index in range(1, ds.RasterCount + 1):
            band_low, band_high = ds.GetRasterBand(index).ComputeRasterMinMax(True)
            low, high = min(low, float(band_low)), max(high, float(band_high))
    return low, high


@dataclass(frozen=True)
class StatedBands:
    """What a raster says its bands are: ``names`` (known band names, None where unknown) and ``described`` (True
    where the name is the band's description, False where it is only the colour interpretation, which GeoTIFF
    writers often set to red, green, blue for any 3-band 8-bit image: weaker evidence)."""

    names: tuple[str | None, ...]
    described: tuple[bool, ...]

    @classmethod
    def of(cls, names: BandNames) -> StatedBands:
        """Names stated as descriptions (e.g. a chip dataset's or another raster's band names)."""
        return cls(tuple(known_band(name) for name in names), tuple(True for _ in names))

    def pick(self, bands: Sequence[int]) -> StatedBands:
        """The bands numbered ``bands`` (1-based), in that order."""
        return StatedBands(tuple(self.names[b - 1] for b in bands), tuple(self.described[b - 1] for b in bands))


def raster_band_names(ds: object) -> StatedBands:
    """Each band's name as the raster states it: its description when that is a known band name, else its colour
    interpretation (GDAL's Red, Green, Blue, ...), else None."""
    from osgeo import gdal

    names: list[str | None] = []
    described: list[bool] = []
    for index in range(1, ds.RasterCount + 1):  # type: ignore[attr-defined]
        band = ds.GetRasterBand(index)  # type: ignore[attr-defined]
        interpretation = gdal.GetColorInterpretationName(band.GetColorInterpretation())
        names.append(known_band(band.GetDescription()) or known_band(interpretation))
        described.append(known_band(band.GetDescription()) is not None)
    return StatedBands(tuple(names), tuple(described))


def check_band_names(
    found: StatedBands, expected: Sequence[str], where: str, expects: str, fix: str, strict: bool = True
) -> list[str]:
    """Compare the names of the raster bands used (``found``, in order) with the ``expected`` names (``expects``
    says whose: "the model expects", "the band names given are").

    A described band whose name differs from the expected known name is a clear mismatch: an :class:`InputError`
    naming both lists and ``fix`` (how to map them), or only a warning when not ``strict`` (the user mapped the
    bands: they chose). A mismatch of colour interpretations only, bands or expected names the check does not know
    give a warning. Returns the warnings."""
    wanted = [known_band(name) for name in expected]
    if not any(wanted):
        return [f"{where}: cannot check its bands: {expects} {list(expected)}"]
    pairs = list(zip(found.names, wanted, found.described))
    clashes = [described for have, want, described in pairs if have and want and have != want]
    if clashes:
        message = (
            f"{where}: its bands are {listed(found.names)} (band descriptions / colour interpretation), "
            f"{expects} {list(expected)}; {fix}"
        )
        if strict and any(clashes):
            raise InputError(message)
        return [message if any(clashes) else f"{message} (if the colour interpretation is right)"]
    unknown = [i + 1 for i, (have, want, _) in enumerate(pairs) if not have or not want]
    if unknown:
        return [
            f"{where}: cannot check bands {unknown} ({expects} {list(expected)}): not every band is "
            f"named (its bands: {listed(found.names)}); make sure they are in that order"
        ]
    return []


def check_against_any(
    found: StatedBands, candidates: Sequence[Sequence[str]], where: str, who: str, fix: str, strict: bool
) -> list[str]:
    """:func:`check_band_names` against every band list a model was trained on (partial multi-task learning feeds
    one network NIR-R-G chips for one task and R-G-B chips for the other): a raster that matches one passes."""
    failures: list[InputError] = []
    for expected in candidates:
        try:
            return check_band_names(found, expected, where, f"{who} expects", fix, strict)
        except InputError as error:
            failures.append(error)
    if len(failures) == 1:
        raise failures[0]
    trained = " or ".join(str(list(expected)) for expected in candidates)
    raise InputError(
        f"{where}: its bands are {listed(found.names)} (band descriptions / colour interpretation), {who} was "
        f"trained on {trained}; {fix}"
    )


def listed(names: BandNames) -> list[str]:
    """Band names for a message, '?' for an unknown one."""
    return [name or "?" for name in names]


def mapping_hint(stated: StatedBands, expected: Sequence[str]) -> str:
    """'map them in [[bands]] …, e.g. 2,3,1': the raster band numbers (of all its ``names``) in the expected order,
    and the expected bands the raster lacks."""
    names, wanted = stated.names, [known_band(name) for name in expected]
    numbers = [str(names.index(want) + 1) if want in names else "?" for want in wanted]
    missing = [want for want in wanted if want and want not in names]
    hint = f"map them in {param_ref('bands')} (raster band numbers in the model's order), e.g. {','.join(numbers)}"
    return hint + (f"; the raster has no band named {missing}" if missing else "")


def range_warning(where: str, dtype: str, values: tuple[float, float], scale: float, what: str) -> str | None:
    """A warning when 16-bit or float imagery is scaled by a maximum far from its values: 12-bit data in uint16
    scaled by 65535 (dark input), or values above the maximum (saturated input). It gives the raster's actual
    range and the parameter to set (``what``)."""
    low, high = values
    if dtype == "uint8" or not np.isfinite(high) or high <= 0 or 0.5 * scale <= high <= 1.01 * scale:
        return None
    effect = "saturate" if high > scale else f"use {100 * high / scale:.0f} % of the range"
    return (
        f"{where}: {dtype} values range over {low:g}..{high:g} but are scaled by a maximum of {scale:g}, so they "
        f"{effect}; set {param_ref(what)} to the sensor's maximum (e.g. {high:g}, or 4095 for 12-bit data)"
    )
