"""Chip datasets, collate, geometric augmentation, DeviceAugment and loaders, on a tiny hand-written chip set."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from chipfixtures import CLASS_LEVEL, chip_objects, write_chip_dataset

from engine.core.classes import DET_TO_SEG, IGNORE_INDEX, SEG_CLASSES
from engine.core.errors import ConfigError, InputError
from engine.data.datasets import (
    DetectionChips,
    SegmentationChips,
    collate_detection,
    collate_segmentation,
    make_eval_loader,
    make_train_loader,
)
from engine.data.transforms import DeviceAugment, GeometricAugment, normalization_from_manifest

BUILDING = SEG_CLASSES.index("building")
NO_AUG = {"expand_p": 0.0, "crop_p": 0.0, "flip_p": 0.0}


@pytest.fixture(scope="module")
def chips(tmp_path_factory: pytest.TempPathFactory):
    return write_chip_dataset(tmp_path_factory.mktemp("chips"))


@pytest.fixture(scope="module")
def chips16(tmp_path_factory: pytest.TempPathFactory):
    bands = ("red", "green", "blue", "nir")
    return write_chip_dataset(tmp_path_factory.mktemp("chips16"), bands=bands, dtype="uint16", max_value=4095)


def test_detection_items_have_contract_types_and_manifest_boxes(chips):
    ds = DetectionChips(chips, "train")
    assert len(ds) == 6
    item = ds[0]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 64, 64)
    assert item["boxes"].dtype == torch.float32 and item["labels"].dtype == torch.int64
    # chip 0: building (4,6,24,22), tree (36,30,52,46), car (10,48,30,56); labels = index in det_classes
    assert item["boxes"].tolist() == [[4, 6, 24, 22], [36, 30, 52, 46], [10, 48, 30, 56]]
    assert item["labels"].tolist() == [0, 1, 2]
    assert ds[1]["boxes"].shape == (2, 4)  # odd chips have no car
    raw = np.load(chips / "train" / "images.npy")[3]
    assert torch.equal(ds[3]["image"], torch.from_numpy(raw.transpose(2, 0, 1).copy()))


def test_segmentation_items_and_uint16_four_bands(chips, chips16):
    item = SegmentationChips(chips, "val")[1]
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (64, 64)
    assert item["eroded"].dtype == torch.int64
    assert torch.equal(item["mask"], torch.from_numpy(np.load(chips / "val" / "masks.npy")[1].astype(np.int64)))
    assert (item["eroded"] == IGNORE_INDEX).any() and set(item["mask"].unique().tolist()) <= set(range(6))
    item16 = SegmentationChips(chips16, "train")[0]
    assert item16["image"].dtype == torch.uint16 and item16["image"].shape == (4, 64, 64)
    assert int(item16["image"].numpy().max()) <= 4095


def test_hflip_mirrors_known_box_mask_and_image(chips):
    flip = GeometricAugment(expand_p=0.0, crop_p=0.0, flip_p=1.0)
    det = DetectionChips(chips, "train", train=True, augment=flip)[0]
    # building (4,6)-(24,22) in a 64-wide chip -> x0' = 64 - 24 = 40, x1' = 64 - 4 = 60
    assert det["boxes"][0].tolist() == [40, 6, 60, 22]
    seg = SegmentationChips(chips, "train", train=True, augment=flip)[0]
    plain = SegmentationChips(chips, "train")[0]
    assert seg["mask"][6, 40:60].eq(BUILDING).all()
    assert seg["mask"][6, 39] != BUILDING and seg["mask"][6, 60] != BUILDING
    assert seg["mask"][6, 4] != BUILDING  # the building left its original place
    assert torch.equal(seg["mask"], plain["mask"].flip(-1)) and torch.equal(seg["eroded"], plain["eroded"].flip(-1))
    assert torch.equal(seg["image"], plain["image"].flip(-1))
    # train=False never augments, even with an augment given
    assert DetectionChips(chips, "train", train=False, augment=flip)[0]["boxes"][0].tolist() == [4, 6, 24, 22]


def test_explicit_crop_and_expand_windows_by_hand():
    image = np.full((3, 64, 64), 7, np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    boxes = np.array([[20, 20, 30, 30], [0, 0, 20, 18], [10, 20, 30, 30], [40, 40, 56, 56]], np.float32)
    sample = {"image": image, "mask": mask, "boxes": boxes, "labels": np.arange(4)}
    aug = GeometricAugment()
    # crop (16,16) 32x32, zoom x2: (20,20,30,30)->(8,8,28,28); (0,0,20,18) keeps 4x2 of 20x18 px -> dropped;
    # (10,20,30,30)->(-12,8,28,28) keeps 28/40 = 0.7 -> clipped (0,8,28,28); (40,40,56,56)->(48,48,80,80) keeps 1/4
    out = aug.apply(sample, (16, 16, 32, 32), False, [100, 100, 100])
    assert out["boxes"].tolist() == [[8, 8, 28, 28], [0, 8, 28, 28]] and out["labels"].tolist() == [0, 2]
    assert out["image"].shape == (3, 64, 64) and (out["image"] == 7).all()
    # zoom-out: 128x128 canvas with the chip at (32,32), shrunk x0.5: (20,20,30,30)->(26,26,31,31)
    out = aug.apply(sample, (-32, -32, 128, 128), True, [100, 110, 120])
    assert out["boxes"][0].tolist() == [64 - 31, 26, 64 - 26, 31]  # then flipped
    assert out["image"][:, 0, 0].tolist() == [100, 110, 120] and out["image"][:, 32, 32].tolist() == [7, 7, 7]
    assert out["mask"][0, 0] == IGNORE_INDEX and out["mask"][32, 32] == 0 and out["mask"].shape == (64, 64)


def _bounds(blob: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(blob)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_random_crop_expand_keeps_boxes_bounding_their_mask_blobs(chips):
    ds = SegmentationChips(chips, "train")
    raw = ds._raw(0)
    objects = chip_objects(0)
    sample = {
        **raw,
        "boxes": np.array([o[:4] for o in objects], np.float32),
        "labels": np.array([("building", "tree", "car").index(o[4]) for o in objects]),
    }
    aug = GeometricAugment(expand_p=0.5, max_expand=2.0, crop_p=0.7, min_crop_scale=0.4, flip_p=0.5)
    widths, checked = set(), 0
    for seed in range(24):
        generator = torch.Generator().manual_seed(seed)
        window = aug.sample_window(64, 64, sample["boxes"], generator)
        out = aug.apply(sample, window, seed % 2 == 1, ds.fill)
        widths.add("zoom-out" if window[2] > 64 else "crop" if window[2] < 64 else "none")
        assert out["image"].shape == (3, 64, 64) and out["mask"].shape == (64, 64) == out["eroded"].shape
        for box, label in zip(out["boxes"], out["labels"]):
            seg_class = DET_TO_SEG[label]
            blob = out["mask"] == seg_class
            np.testing.assert_allclose(_bounds(blob), box, atol=1.0)
            level = np.median(out["image"][0][blob]) / 255  # the image moved with the mask
            assert abs(level - CLASS_LEVEL[seg_class]) < 0.12
            checked += 1
    assert widths == {"zoom-out", "crop", "none"} and checked > 30


def test_collate_pads_boxes_with_minus_one_labels():
    def item(k: int) -> dict[str, torch.Tensor]:
        return {
            "image": torch.zeros(3, 8, 8, dtype=torch.uint8),
            "boxes": torch.arange(4 * k, dtype=torch.float32).view(k, 4),
            "labels": torch.arange(k),
        }

    batch = collate_detection([item(2), item(0), item(1)])
    assert batch["image"].shape == (3, 3, 8, 8) and batch["boxes"].shape == (3, 2, 4)
    assert batch["labels"].tolist() == [[0, 1], [-1, -1], [0, -1]]
    assert batch["boxes"][0].tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]] and batch["boxes"][2, 1].tolist() == [0] * 4
    empty = collate_detection([item(0), item(0)])
    assert empty["boxes"].shape == (2, 1, 4) and empty["labels"].tolist() == [[-1], [-1]]
    seg = {"image": torch.zeros(3, 8, 8), "mask": torch.ones(8, 8, dtype=torch.int64), "eroded": torch.zeros(8, 8)}
    assert collate_segmentation([seg, seg])["mask"].shape == (2, 8, 8)


def test_device_augment_eval_is_exact_scaling_and_normalisation(chips16):
    manifest = json.loads((chips16 / "manifest.json").read_text())
    mean, std, scale_max = normalization_from_manifest(manifest)
    assert scale_max == 4095 and len(mean) == len(std) == 4
    raw = torch.randint(0, 4096, (2, 4, 16, 16), dtype=torch.int32).to(torch.uint16)
    out = DeviceAugment.from_manifest(manifest).eval()(raw)
    expected = (raw.numpy().astype(np.float64) / 4095 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_device_augment_train_jitters_each_sample_differently():
    torch.manual_seed(0)
    raw = torch.randint(60, 190, (8, 3, 16, 16), dtype=torch.uint8)
    aug = DeviceAugment([0.5, 0.4, 0.3], [0.2, 0.25, 0.3], 255.0)
    evaluated = aug.eval()(raw)
    trained = aug.train()(raw, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(trained).all() and not torch.allclose(trained, evaluated)
    low, high = (0 - aug.mean) / aug.std, (1 - aug.mean) / aug.std  # clamped to [0, 1] before normalising
    assert (trained >= low - 1e-5).all() and (trained <= high + 1e-5).all()
    # brightness only, always on: each sample shifted by its own constant delta in [0, 1] units
    bright = DeviceAugment([0.0] * 3, [1.0] * 3, 255.0, brightness=0.1, contrast=0, saturation=0, hue=0, p=1.0)
    delta = bright.train()(raw) - raw.float() / 255
    per_sample = delta.flatten(1)
    assert torch.allclose(per_sample, per_sample[:, :1].expand_as(per_sample), atol=1e-6)
    assert per_sample[:, 0].abs().max() <= 0.1 and per_sample[:, 0].unique().numel() == 8
    # p = 0: no jitter even in training mode
    no_jitter = DeviceAugment([0.5, 0.4, 0.3], [0.2, 0.25, 0.3], 255.0, p=0.0).train()(raw)
    torch.testing.assert_close(no_jitter, evaluated, rtol=0, atol=1e-5)
    with pytest.raises(InputError, match="expected images"):
        aug(torch.zeros(1, 4, 8, 8, dtype=torch.uint8))


def test_loaders_iterate_with_workers(chips, chips16):
    geometric = GeometricAugment()
    det = DetectionChips(chips, "train", train=True, augment=geometric)
    det_batches = make_train_loader(det, batch_size=2, num_workers=2, seed=5, per_epoch_batches=3)
    batches = [next(det_batches) for _ in range(4)]  # endless: runs into the second epoch
    for batch in batches:
        assert batch["image"].shape == (2, 3, 64, 64) and batch["image"].dtype == torch.uint8
        assert batch["boxes"].shape[:2] == batch["labels"].shape and batch["boxes"].shape[0] == 2
        valid = batch["labels"] >= 0
        assert ((batch["boxes"][..., 2:] > batch["boxes"][..., :2]).all(-1) | ~valid).all()
    seg_set = SegmentationChips(chips16, "train", train=True, augment=geometric)
    seg = next(make_train_loader(seg_set, batch_size=2, num_workers=0, seed=5, per_epoch_batches=1))
    assert seg["image"].shape == (2, 4, 64, 64) and seg["image"].dtype == torch.uint16
    assert seg["mask"].dtype == torch.int64 and seg["eroded"].shape == (2, 64, 64)
    assert DeviceAugment.from_manifest(seg_set.manifest)(seg["image"]).shape == (2, 4, 64, 64)
    val = make_eval_loader(chips, "val", "det", batch_size=4)
    assert [b["image"].shape[0] for b in val] == [2]
    halves = [make_eval_loader(chips, "train", "seg", batch_size=8, shard=(r, 2)) for r in (0, 1)]
    assert [len(next(iter(h))["image"]) for h in halves] == [3, 3]


def test_loaders_are_deterministic_per_seed_and_worker_count(chips):
    def first(seed: int, workers: int = 0) -> torch.Tensor:
        data = DetectionChips(chips, "train", train=True, augment=GeometricAugment())
        return next(make_train_loader(data, batch_size=3, num_workers=workers, seed=seed, per_epoch_batches=1))["image"]

    assert torch.equal(first(3), first(3))
    assert torch.equal(first(3), first(3, workers=2))  # augmentation seeds travel with the items
    assert not torch.equal(first(3), first(4))


def test_dataset_pickles_without_its_memory_maps(chips):
    ds = SegmentationChips(chips, "train")
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert len(pickle.dumps(ds)) < 20_000 and torch.equal(clone[2]["mask"], ds[2]["mask"])


def test_bad_input_is_reported(chips, tmp_path):
    with pytest.raises(InputError, match=r"manifest\.json"):
        DetectionChips(tmp_path, "train")
    broken = write_chip_dataset(tmp_path / "broken", splits={"train": 2})
    manifest = json.loads((broken / "manifest.json").read_text())
    with pytest.raises(InputError, match="split 'val'"):
        DetectionChips(broken, "val")
    manifest["chips"][0]["boxes"][0][4] = "boat"
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="boat"):
        DetectionChips(broken, "train")
    manifest["complete"] = False
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="not marked complete"):
        SegmentationChips(broken, "train")
    with pytest.raises(ConfigError, match="fewer than batch_size"):
        make_train_loader(DetectionChips(chips, "train"), batch_size=7, num_workers=0, seed=0, per_epoch_batches=1)
    with pytest.raises(ConfigError, match="min_crop_scale"):
        GeometricAugment(min_crop_scale=0.0)
