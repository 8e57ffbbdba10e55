"""Band names: which of a raster's or chip set's bands a network reads, and in which order (torch- and GDAL-free)."""

from __future__ import annotations

from collections.abc import Sequence


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
