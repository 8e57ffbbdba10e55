"""Augmentations: geometric ones per sample in the loader workers, photometric + normalisation per batch on the device.

Geometric transforms (REFERENCE §2: random crop / expand, horizontal flip) must move image, masks and boxes together,
so they run per sample on the CPU next to the data. Photometric jitter and float conversion only touch pixel values,
so they run batched on the accelerator (:class:`DeviceAugment`): per-sample Python work is what starved the GPU in
the reference implementation (REFERENCE §5).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.core.classes import IGNORE_INDEX
from engine.core.errors import ConfigError, InputError
from engine.core.settings import RUN_NORMALIZATIONS

Sample = dict[str, np.ndarray]
"""A chip in numpy: "image" (C,H,W) uint8/uint16, optional "mask"/"eroded" (H,W) uint8, "boxes" (K,4) float32
xyxy px (x1/y1 exclusive), "labels" (K,) int64."""

Window = tuple[int, int, int, int]
"""(x0, y0, width, height) in source pixels; may reach outside the chip (zoom-out) or lie inside it (crop)."""


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Integer in [low, high] inclusive."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def _coin(p: float, generator: torch.Generator | None) -> bool:
    return float(torch.rand((), generator=generator)) < p


def _cut(array: np.ndarray, window: Window, fill: np.ndarray) -> np.ndarray:
    """The (…, h, w) part of ``array`` (…, H, W) under ``window``; pixels outside the array take ``fill`` (per band)."""
    x0, y0, w, h = window
    height, width = array.shape[-2:]
    out = np.empty((*array.shape[:-2], h, w), dtype=array.dtype)
    out[...] = fill.reshape((*fill.shape, 1, 1)) if fill.ndim else fill
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + w, width), min(y0 + h, height)
    if sx1 > sx0 and sy1 > sy0:
        out[..., sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = array[..., sy0:sy1, sx0:sx1]
    return out


def _resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear (antialiased when shrinking) resize of a (C,h,w) integer image, keeping its dtype."""
    if image.shape[-2:] == size:
        return image
    shrinking = image.shape[-2] > size[0] or image.shape[-1] > size[1]
    tensor = torch.from_numpy(image.astype(np.float32))[None]
    resized = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=shrinking)[0]
    info = np.iinfo(image.dtype)
    return resized.round_().clamp_(info.min, info.max).numpy().astype(image.dtype)


def _resize_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize sampling pixel centres, so a pixel edge at x maps exactly to x * size / w."""
    h, w = mask.shape[-2:]
    if (h, w) == size:
        return mask
    rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64), w - 1)
    return mask[..., rows[:, None], cols[None, :]]


def _visible_fraction(boxes: np.ndarray, clipped: np.ndarray) -> np.ndarray:
    def area(b: np.ndarray) -> np.ndarray:
        return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)

    full = area(boxes)
    return np.where(full > 0, area(clipped) / np.maximum(full, 1e-12), 0.0)


class GeometricAugment:
    """Random zoom-out (expand onto a mean-filled canvas), random crop and horizontal flip of one chip.

    Expand and crop compose into one source window that is resampled back to the chip size (bilinear for the
    image, nearest for masks), so every output has the chip's shape and batches stack. Boxes follow the same
    affine map, are clipped to the chip, and are dropped when less than ``min_visible`` of their area (or less
    than 1 px in width/height) survives. Randomness comes from torch's RNG (seeded per DataLoader worker) or an
    explicit ``generator``.
    """

    def __init__(
        self,
        expand_p: float = 0.5,
        max_expand: float = 2.0,
        crop_p: float = 0.5,
        min_crop_scale: float = 0.5,
        max_aspect_change: float = 2.0,
        flip_p: float = 0.5,
        min_visible: float = 0.5,
        crop_tries: int = 10,
    ) -> None:
        for name, p in (("expand_p", expand_p), ("crop_p", crop_p), ("flip_p", flip_p), ("min_visible", min_visible)):
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"GeometricAugment: {name} must be in [0, 1], got {p}")
        if max_expand < 1.0:
            raise ConfigError(f"GeometricAugment: max_expand must be >= 1, got {max_expand}")
        if not 0.0 < min_crop_scale <= 1.0:
            raise ConfigError(f"GeometricAugment: min_crop_scale must be in (0, 1], got {min_crop_scale}")
        if max_aspect_change < 1.0:
            raise ConfigError(f"GeometricAugment: max_aspect_change must be >= 1, got {max_aspect_change}")
        self.expand_p = expand_p
        self.max_expand = max_expand
        self.crop_p = crop_p
        self.min_crop_scale = min_crop_scale
        self.max_aspect_change = max_aspect_change
        self.flip_p = flip_p
        self.min_visible = min_visible
        self.crop_tries = crop_tries

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"GeometricAugment({fields})"

    def __call__(
        self, sample: Sample, fill: Sequence[float] | np.ndarray, generator: torch.Generator | None = None
    ) -> Sample:
        """Augment one chip; ``fill`` is the per-band raw value of the zoom-out canvas (the dataset mean)."""
        height, width = sample["image"].shape[-2:]
        window = self.sample_window(height, width, sample.get("boxes"), generator)
        flip = _coin(self.flip_p, generator)
        return self.apply(sample, window, flip, fill)

    def sample_window(
        self, height: int, width: int, boxes: np.ndarray | None, generator: torch.Generator | None = None
    ) -> Window:
        """Draw the source window: optional zoom-out canvas, then an optional crop that keeps a box visible."""
        window: Window = (0, 0, width, height)
        if self.max_expand > 1.0 and _coin(self.expand_p, generator):
            ratio = _uniform(1.0, self.max_expand, generator)
            cw, ch = round(width * ratio), round(height * ratio)
            window = (-_randint(0, cw - width, generator), -_randint(0, ch - height, generator), cw, ch)
        if self.min_crop_scale < 1.0 and _coin(self.crop_p, generator):
            for _ in range(self.crop_tries):
                crop = self._crop_inside(window, generator)
                if boxes is None or len(boxes) == 0 or self._keeps_a_box(boxes, crop):
                    return crop
        return window

    def _crop_inside(self, window: Window, generator: torch.Generator | None) -> Window:
        x0, y0, w, h = window
        while True:
            sw = _uniform(self.min_crop_scale, 1.0, generator)
            sh = _uniform(self.min_crop_scale, 1.0, generator)
            if 1.0 / self.max_aspect_change <= sw / sh <= self.max_aspect_change:
                break
        cw, ch = max(1, round(w * sw)), max(1, round(h * sh))
        return (x0 + _randint(0, w - cw, generator), y0 + _randint(0, h - ch, generator), cw, ch)

    def _keeps_a_box(self, boxes: np.ndarray, window: Window) -> bool:
        x0, y0, w, h = window
        clipped = np.stack(
            [
                np.clip(boxes[:, 0], x0, x0 + w),
                np.clip(boxes[:, 1], y0, y0 + h),
                np.clip(boxes[:, 2], x0, x0 + w),
                np.clip(boxes[:, 3], y0, y0 + h),
            ],
            axis=1,
        )
        return bool((_visible_fraction(boxes, clipped) >= self.min_visible).any())

    def apply(self, sample: Sample, window: Window, flip: bool, fill: Sequence[float] | np.ndarray) -> Sample:
        """Deterministic part: resample ``window`` to the chip size, then mirror left-right if ``flip``."""
        image = sample["image"]
        height, width = image.shape[-2:]
        out: Sample = dict(sample)
        if window != (0, 0, width, height):
            fill_arr = np.asarray(fill, dtype=np.float64)
            if fill_arr.shape != (image.shape[0],):
                raise InputError(f"GeometricAugment: fill needs one value per band ({image.shape[0]}), got {fill}")
            info = np.iinfo(image.dtype)
            fill_raw = np.clip(np.round(fill_arr), info.min, info.max).astype(image.dtype)
            out["image"] = _resize_image(_cut(image, window, fill_raw), (height, width))
            for key in ("mask", "eroded"):
                if key in sample:
                    ignore = np.array(IGNORE_INDEX, dtype=sample[key].dtype)
                    out[key] = _resize_nearest(_cut(sample[key], window, ignore), (height, width))
            if "boxes" in sample:
                out["boxes"], out["labels"] = self._map_boxes(sample["boxes"], sample["labels"], window, width, height)
        if flip:
            out["image"] = out["image"][..., ::-1]
            for key in ("mask", "eroded"):
                if key in out:
                    out[key] = out[key][..., ::-1]
            if "boxes" in out:
                boxes = out["boxes"].copy()
                boxes[:, [0, 2]] = width - out["boxes"][:, [2, 0]]
                out["boxes"] = boxes
        for key in ("image", "mask", "eroded"):
            if key in out:
                out[key] = np.ascontiguousarray(out[key])
        return out

    def _map_boxes(
        self, boxes: np.ndarray, labels: np.ndarray, window: Window, width: int, height: int
    ) -> tuple[np.ndarray, np.ndarray]:
        x0, y0, w, h = window
        scale = np.array([width / w, height / h, width / w, height / h], dtype=np.float64)
        mapped = (boxes.astype(np.float64) - np.array([x0, y0, x0, y0])) * scale
        clipped = mapped.copy()
        clipped[:, [0, 2]] = np.clip(mapped[:, [0, 2]], 0, width)
        clipped[:, [1, 3]] = np.clip(mapped[:, [1, 3]], 0, height)
        keep = _visible_fraction(mapped, clipped) >= self.min_visible
        keep &= (clipped[:, 2] - clipped[:, 0] >= 1.0) & (clipped[:, 3] - clipped[:, 1] >= 1.0)
        return clipped[keep].astype(np.float32), labels[keep]


IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("dataset", "imagenet")
"""Per-manifest modes (:func:`normalization_for`); a training run uses :data:`RUN_NORMALIZATIONS`."""


def normalization_for(
    manifest: Mapping[str, Any], mode: str = "dataset"
) -> tuple[tuple[float, ...], tuple[float, ...], float]:
    """(mean, std, scale_max): the chip dataset's own statistics, or ImageNet's (the reference's choice, which
    matches ImageNet-pretrained backbones; 3-band chips only)."""
    mean, std, scale_max = normalization_from_manifest(manifest)
    if mode == "imagenet":
        if len(mean) != 3:
            raise ConfigError(
                f"normalization 'imagenet' needs 3-band chips; {manifest.get('dataset', '?')!r} chips have "
                f"{len(mean)} bands {manifest.get('bands')}: use 'dataset'"
            )
        return IMAGENET_MEAN, IMAGENET_STD, scale_max
    if mode != "dataset":
        raise ConfigError(f"normalization: expected one of {list(NORMALIZATIONS)}, found {mode!r}")
    return mean, std, scale_max


def normalization_from_manifest(manifest: Mapping[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...], float]:
    """(mean, std, scale_max) of a chip dataset: float image = raw / scale_max, then (x - mean) / std per band."""
    where = f"chip manifest of {manifest.get('dataset', '?')!r}"
    bands = manifest.get("bands")
    try:
        mean = tuple(float(v) for v in manifest["mean"])
        std = tuple(float(v) for v in manifest["std"])
        scale_max = float(manifest["value_scaling"]["max"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{where}: expected 'mean', 'std' lists and 'value_scaling.max', got error {exc!r}") from exc
    if bands is not None and not (len(mean) == len(std) == len(bands)):
        raise InputError(f"{where}: expected mean/std with one value per band {bands}, found {mean} / {std}")
    if not all(math.isfinite(s) and s > 0 for s in std) or not all(math.isfinite(m) for m in mean):
        raise InputError(f"{where}: expected finite mean and positive std, found mean {mean}, std {std}")
    if not (math.isfinite(scale_max) and scale_max > 0):
        raise InputError(f"{where}: expected value_scaling.max > 0, found {scale_max}")
    return mean, std, scale_max


def stats_pixels(manifest: Mapping[str, Any]) -> float:
    """How many pixels a manifest's mean/std were computed over: its ``stats_split`` chips (``train`` by default,
    every split when the chipper said ``all``) times the chip area. The weight of that dataset in a pooled mean."""
    splits = {k: int(v) for k, v in (manifest.get("splits") or {}).items()}
    which = manifest.get("stats_split", "train")
    chips = sum(splits.values()) if which == "all" or which not in splits else splits[which]
    return float(max(chips, 1)) * float(manifest.get("chip_size", 1)) ** 2


def pooled_statistics(manifests: Sequence[Mapping[str, Any]]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-band mean/std of the union of several chip datasets' pixels (weighted by their pixel counts).

    Exact for the union: var = Σ wᵢ(σᵢ² + μᵢ²) / Σ wᵢ − μ², with μ = Σ wᵢ μᵢ / Σ wᵢ. One normalisation for every
    stream is what lets both heads of one deployed model see inputs scaled the way they were trained.
    """
    stats = [normalization_from_manifest(m) for m in manifests]
    if not stats or len({len(mean) for mean, _, _ in stats}) != 1:
        raise InputError(f"pooled normalisation: expected chip datasets with equal band counts, found {len(stats)}")
    weights = np.array([stats_pixels(m) for m in manifests])[:, None]
    means = np.array([mean for mean, _, _ in stats])
    stds = np.array([std for _, std, _ in stats])
    mean = (weights * means).sum(0) / weights.sum()
    second = (weights * (stds**2 + means**2)).sum(0) / weights.sum()
    std = np.sqrt(np.maximum(second - mean**2, 1e-12))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def run_normalization(
    manifests: Sequence[Mapping[str, Any]], mode: str = "pooled"
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) a training run applies to every stream: pooled over its chip datasets, or ImageNet's."""
    if mode == "pooled":
        return pooled_statistics(manifests)
    if mode != "imagenet":
        raise ConfigError(
            f"config key 'data.normalization': expected one of {list(RUN_NORMALIZATIONS)}, found {mode!r}"
        )
    mean, std, _ = normalization_for(manifests[0], "imagenet")
    return mean, std


class DeviceAugment(nn.Module):
    """Batched photometric jitter + float conversion + normalisation, run where the batch lives (GPU).

    In training mode each of four jitters is applied to each sample with probability ``p`` and its own random
    parameter (no Python loop over samples), in [0, 1] units: brightness (add δ ∈ ±brightness), contrast (scale
    around the sample mean by c ∈ 1 ± contrast), saturation-like (scale each band's deviation from the per-pixel
    band mean by s ∈ 1 ± saturation; works for any band count), hue-like (shift each band by its own offset
    ∈ ±hue, a colour-balance change). Results are clamped to [0, 1]. In eval mode only ``(raw / scale_max -
    mean) / std``.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        scale_max: float,
        brightness: float = 32 / 255,
        contrast: float = 0.5,
        saturation: float = 0.5,
        hue: float = 0.05,
        p: float = 0.5,
    ) -> None:
        super().__init__()
        if len(mean) != len(std) or not all(s > 0 for s in std) or scale_max <= 0:
            raise ConfigError(f"DeviceAugment: need len(mean) == len(std), std > 0, scale_max > 0; got {mean}, {std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.scale_max = float(scale_max)
        self.brightness, self.contrast, self.saturation, self.hue, self.p = brightness, contrast, saturation, hue, p

    @classmethod
    def from_manifest(
        cls, manifest: Mapping[str, Any], normalization: str = "dataset", **jitter: float
    ) -> DeviceAugment:
        mean, std, scale_max = normalization_for(manifest, normalization)
        return cls(mean, std, scale_max, **jitter)

    @classmethod
    def for_stream(
        cls, manifest: Mapping[str, Any], mean: Sequence[float], std: Sequence[float], **jitter: float
    ) -> DeviceAugment:
        """A stream's raw values scaled by its own dataset's ``value_scaling.max``, then a run-wide mean/std."""
        try:
            scale_max = float(manifest["value_scaling"]["max"])
        except (KeyError, TypeError, ValueError) as exc:
            where = f"chip manifest of {manifest.get('dataset', '?')!r}"
            raise InputError(f"{where}: expected 'value_scaling.max', got error {exc!r}") from exc
        return cls(mean, std, scale_max, **jitter)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,C,H,W) raw integer (or float raw-valued) images → normalised float32."""
        if images.ndim != 4 or images.shape[1] != self.mean.shape[1]:
            raise InputError(
                f"DeviceAugment: expected images (B, {self.mean.shape[1]}, H, W), got shape {tuple(images.shape)}"
            )
        return (self.unit(images, generator) - self.mean) / self.std

    def unit(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,C,H,W) raw images of any band count → float32 in [0, 1] units (raw / scale_max), jittered in
        training mode: what each network of a run then views its own way (:class:`BandView`)."""
        x = images.to(torch.float32) / self.scale_max
        return self._jitter(x, generator) if self.training else x

    def _jitter(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        b, c = x.shape[:2]

        def factor(spread: float, neutral: float, bands: int = 1) -> torch.Tensor:
            """Per-sample (or per-sample-and-band) random value, ``neutral`` where the p-coin says skip."""
            value = neutral + spread * (2 * torch.rand(b, bands, 1, 1, device=x.device, generator=generator) - 1)
            use = torch.rand(b, 1, 1, 1, device=x.device, generator=generator) < self.p
            return torch.where(use, value, torch.full_like(value, neutral))

        x = x + factor(self.brightness, 0.0)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = mean + factor(self.contrast, 1.0) * (x - mean)
        gray = x.mean(dim=1, keepdim=True)
        x = gray + factor(self.saturation, 1.0) * (x - gray)
        x = x + factor(self.hue, 0.0, bands=c)
        return x.clamp_(0.0, 1.0)


class BandView(nn.Module):
    """How one network of a training run sees a stream's images in [0, 1] units (:meth:`DeviceAugment.unit`):
    which bands, in which order, standardised with ITS mean/std. The student's view uses the run's normalisation;
    a teacher's, the one it was trained with (its checkpoint's), so a frozen teacher sees exactly the inputs it
    learned from, and the bands of its own product where the stream has them."""

    indices: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, indices: Sequence[int], mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if not len(indices) == len(mean) == len(std) or not all(s > 0 for s in std):
            raise ConfigError(f"BandView: need one mean and std > 0 per band {list(indices)}; got {mean}, {std}")
        self.register_buffer("indices", torch.tensor(list(indices), dtype=torch.long), persistent=False)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.in_order = list(indices) == list(range(len(indices)))

    def forward(self, unit_images: torch.Tensor) -> torch.Tensor:
        whole = self.in_order and unit_images.shape[1] == len(self.indices)  # no band copy: the usual case
        return ((unit_images if whole else unit_images.index_select(1, self.indices)) - self.mean) / self.std


def input_normaliser(
    net: nn.Module, manifest: dict[str, Any], normalization: tuple[Sequence[float], Sequence[float]] | None = None
) -> DeviceAugment:
    """Raw chips of ``manifest`` → the network's inputs: ``normalization`` (mean, std), else the one recorded with
    the network (``net.input_normalization``, set from its checkpoint), else (networks without a record) the
    dataset's own statistics."""
    norm = normalization or getattr(net, "input_normalization", None)
    if norm is None:
        return DeviceAugment.from_manifest(manifest, "dataset")
    return DeviceAugment.for_stream(manifest, norm[0], norm[1])
