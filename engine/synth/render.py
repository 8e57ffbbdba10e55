"""From material/height/shade maps to sensor bands and ISPRS labels.

Reflectance = material colour × object shading × material texture × cast-shadow factor; then a per-domain
sensor model (gain per band, path-radiance offset, Gaussian optics blur, noise, 8-bit quantisation).
Texture is what separates the look-alike materials (REFERENCE §4): foliage is clumpy at ~0.5 m, lawn smooth.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from engine.core.classes import BOUNDARY_COLOR, IGNORE_INDEX, PALETTE
from engine.synth.canvas import Canvas, cast_shadows
from engine.synth.domains import DomainSpec
from engine.synth.layout import Sun
from engine.synth.materials import BAND_INDEX, MATERIAL_CLASS, SHADOW_FACTOR, M, seasonal_reflectance

# texture amplitudes per material: (fine ~0.15 m, clumps ~0.6 m, patches ~6 m)
_TEXTURE: dict[M, tuple[float, float, float]] = {
    M.GRASS: (0.07, 0.05, 0.16),
    M.MEADOW: (0.09, 0.08, 0.14),
    M.SOIL: (0.07, 0.06, 0.14),
    M.ASPHALT: (0.05, 0.02, 0.07),
    M.PAVING: (0.05, 0.02, 0.06),
    M.PAVING_RED: (0.06, 0.02, 0.06),
    M.GRAVEL: (0.10, 0.04, 0.06),
    M.ROOF_RED: (0.05, 0.03, 0.02),
    M.ROOF_GREY: (0.04, 0.02, 0.04),
    M.ROOF_DARK: (0.04, 0.02, 0.04),
    M.ROOF_LIGHT: (0.03, 0.02, 0.03),
    M.TREE: (0.10, 0.30, 0.06),
}
_AMP = np.zeros((len(M), 3), dtype=np.float32)
for _m, _a in _TEXTURE.items():
    _AMP[int(_m)] = _a
_AMP[[int(m) for m in M if m not in _TEXTURE]] = (0.03, 0.0, 0.0)

_OFFSET_DN = {"blue": 14.0, "green": 9.0, "red": 6.0, "nir": 4.0}
"""Path radiance (haze) added by the atmosphere, in DN: strongest in blue."""

_PALETTE = np.array(PALETTE, dtype=np.uint8)


def _linear_weights(n: int, cell: float, n_coarse: int) -> tuple[np.ndarray, np.ndarray]:
    """Left coarse node and weight of the right node for each of ``n`` pixel centres (nodes ``cell`` px apart)."""
    x = (np.arange(n, dtype=np.float64) + 0.5) / cell
    i0 = np.minimum(np.floor(x).astype(np.intp), n_coarse - 2)
    return i0, (x - i0).astype(np.float32)


def smooth_noise(shape: tuple[int, int], cell_px: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, ~unit-variance noise correlated over ``cell_px`` pixels (white noise below 2 px).

    Separable bilinear upsampling of coarse noise with plain element-wise numpy (faster than ndimage.zoom and,
    unlike a BLAS product, bit-identical on every machine).
    """
    h, w = shape
    if cell_px < 2.0:
        return rng.standard_normal(shape, dtype=np.float32)
    lh, lw = int(h / cell_px) + 2, int(w / cell_px) + 2
    coarse = rng.standard_normal((lh, lw), dtype=np.float32)
    r0, fr = _linear_weights(h, cell_px, lh)
    c0, fc = _linear_weights(w, cell_px, lw)
    cols = coarse[:, c0] + (coarse[:, c0 + 1] - coarse[:, c0]) * fc[None, :]  # (lh, w): small
    cols *= np.float32(1.5)  # bilinear interpolation leaves 4/9 of the variance: rescale to ~unit variance
    step = cols[1:] - cols[:-1]
    up = cols[r0]  # whole-row gathers are contiguous copies: fast at full resolution
    up += step[r0] * fr[:, None]
    return up


def reflectance(
    canvas: Canvas, sun: Sun, bands: tuple[str, ...], rng: np.random.Generator, season: str = "summer"
) -> dict[str, np.ndarray]:
    """Per-band reflectance maps (float32) of a laid-out canvas, with textures and cast shadows; ``season``
    changes the vegetation's colours (engine.synth.materials.SEASONS)."""
    table = seasonal_reflectance(season)
    mat = canvas.mat
    g = canvas.gsd
    light = np.ones(mat.shape, dtype=np.float32)
    for k, cell_m in enumerate((0.15, 0.6, 6.0)):
        noise = smooth_noise(mat.shape, cell_m / g, rng)
        noise *= _AMP[:, k][mat]
        light += noise
    np.maximum(light, np.float32(0.15), out=light)
    light *= canvas.shade
    shadow = cast_shadows(canvas.height, g, sun.azimuth_deg, sun.elevation_deg).astype(np.float32)
    shadow = ndimage.gaussian_filter(shadow, sigma=0.12 / g)  # penumbra
    out: dict[str, np.ndarray] = {}
    for band in bands:
        b = BAND_INDEX[band]
        refl = table[:, b][mat]
        refl *= light
        refl *= 1.0 + shadow * np.float32(SHADOW_FACTOR[b] - 1.0)
        out[band] = refl
    return out


def sensor(refl: dict[str, np.ndarray], spec: DomainSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """8-bit digital numbers: gain (jittered per flight/tile), haze offset, optics blur, noise, quantisation."""
    out: dict[str, np.ndarray] = {}
    exposure = float(rng.uniform(0.9, 1.1))
    for band, r in refl.items():
        gain = spec.gain[band] * exposure * float(rng.uniform(0.96, 1.04))
        dn = r * np.float32(gain) + np.float32(_OFFSET_DN[band])
        dn = ndimage.gaussian_filter(dn, sigma=spec.blur_sigma_px, truncate=3.0)
        dn += rng.standard_normal(dn.shape, dtype=np.float32) * np.float32(spec.noise_dn)
        np.clip(dn, 0.0, 255.0, out=dn)
        out[band] = np.rint(dn).astype(np.uint8)
    return out


def class_map(canvas: Canvas) -> np.ndarray:
    """Class index per pixel (uint8, SEG_CLASSES order)."""
    return MATERIAL_CLASS[canvas.mat]


def erode_boundaries(label: np.ndarray, radius: int = 3) -> np.ndarray:
    """Class map with pixels within ``radius`` px (disc) of a class boundary set to IGNORE_INDEX (ISPRS eroded GT).

    A pixel is kept only if its whole disc neighbourhood has its class (max == min over the disc); tile borders
    are not boundaries. The disc is split into separable rectangles (one per half-width), so the filters run as
    1-D van Herk passes instead of a 2-D footprint.
    """
    boundary = np.zeros(label.shape, dtype=bool)
    for half_w, half_h in _disc_rectangles(radius):
        hi, lo = label, label
        for axis, half in ((1, half_w), (0, half_h)):
            if half > 0:
                hi = ndimage.maximum_filter1d(hi, 2 * half + 1, axis=axis, mode="nearest")
                lo = ndimage.minimum_filter1d(lo, 2 * half + 1, axis=axis, mode="nearest")
        boundary |= hi != lo
    out = label.copy()
    out[boundary] = IGNORE_INDEX
    return out


def _disc_rectangles(radius: int) -> list[tuple[int, int]]:
    """Half-widths/heights of rectangles whose union is the digital disc x² + y² ≤ r² (one per distinct width)."""
    widths = [int(np.floor(np.sqrt(radius * radius - y * y))) for y in range(radius + 1)]
    rects = []
    for y, half_w in enumerate(widths):
        if y + 1 > radius or widths[y + 1] < half_w:
            rects.append((half_w, y))
    return rects


def label_rgb(label: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 ISPRS palette colours; IGNORE_INDEX becomes the black boundary colour."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(_PALETTE)] = _PALETTE
    lut[IGNORE_INDEX] = BOUNDARY_COLOR
    return lut[label]
