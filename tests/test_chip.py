"""Chipping: windows, boxes, the chip store and the chip CLI, on tiny real GeoTIFFs in ISPRS layouts."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from test_isprs import BLD, CAR, LVEG, TREE, make_potsdam, make_vaihingen, write_tif

from engine.chip import axis_starts, chip_dataset, chip_tiles, chip_windows
from engine.chip.__main__ import main as chip_main
from engine.chip.stats import TileStats
from engine.core.classes import IGNORE_INDEX
from engine.core.errors import ConfigError, InputError
from engine.core.progress import Cancelled
from engine.data.boxes import BoxParams, boxes_from_mask, boxes_from_masks
from engine.data.chipstore import MANIFEST, PARTIAL_DIR, open_chip_dataset
from engine.data.isprs import TileSpec, read_image, read_label
from engine.data.labels import encode_rgb_label, erode_mask


def test_axis_starts_by_hand() -> None:
    assert axis_starts(10, 4, 3) == [0, 3, 6]  # 6 + 4 == 10: already flush
    assert axis_starts(11, 4, 3) == [0, 3, 6, 7]  # last window aligned to the border, overlap allowed
    assert axis_starts(12, 4, 4) == [0, 4, 8]
    assert axis_starts(13, 4, 4) == [0, 4, 8, 9]
    assert axis_starts(3, 4, 2) == [0] and axis_starts(4, 4, 9) == [0]  # shorter than / equal to a chip
    assert axis_starts(10, 4, 8) == [0, 6]  # stride > size: the border window is still added
    assert chip_windows(5, 11, 4, 3) == [(x, y, 4, 4) for y in (0, 3, 6, 7) for x in (0, 1)]  # row-major
    assert chip_windows(3, 2, 4, 4) == [(0, 0, 3, 2)]  # smaller tile: one window with its real extent
    with pytest.raises(ConfigError):
        axis_starts(10, 4, 0)


@pytest.mark.parametrize("length", [1, 5, 31, 32, 33, 64, 65, 100])
@pytest.mark.parametrize(("size", "stride"), [(32, 32), (32, 16), (32, 20), (8, 3)])
def test_windows_cover_every_pixel_once_aligned_without_duplicates(length: int, size: int, stride: int) -> None:
    starts = axis_starts(length, size, stride)
    assert starts[0] == 0 and len(set(starts)) == len(starts) and starts == sorted(starts)
    assert starts[-1] == max(length - size, 0)  # last window flush with the border
    assert all(b - a == stride for a, b in itertools.pairwise(starts[:-1]))  # a real stride
    assert 0 < starts[-1] - starts[-2] <= stride if len(starts) > 1 else True
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + size] = True
    assert covered.all()


def test_boxes_from_hand_drawn_mask() -> None:
    mask = np.full((10, 12), LVEG, np.uint8)
    mask[1:4, 2:6] = BLD  # 3 x 4 building
    mask[5, 5] = TREE  # two diagonal tree pixels: one blob with 8-connectivity, two with 4
    mask[6, 6] = TREE
    mask[7:10, 9:12] = CAR  # car touching the bottom-right border: box clipped at 12 / 10
    mask[0, 11] = CAR  # single car pixel
    boxes, labels = boxes_from_mask(mask, BoxParams(connectivity=8, min_area=1))
    assert boxes.tolist() == [[2, 1, 6, 4], [5, 5, 7, 7], [11, 0, 12, 1], [9, 7, 12, 10]]
    assert labels.tolist() == [0, 1, 2, 2] and boxes.dtype == np.int32 and labels.dtype == np.int64
    boxes4, labels4 = boxes_from_mask(mask, BoxParams(connectivity=4, min_area=1))
    assert boxes4.tolist() == [[2, 1, 6, 4], [5, 5, 6, 6], [6, 6, 7, 7], [11, 0, 12, 1], [9, 7, 12, 10]]
    assert labels4.tolist() == [0, 1, 1, 2, 2]
    big, big_labels = boxes_from_mask(mask, BoxParams(connectivity=8, min_area=3))  # single pixels dropped
    assert big.tolist() == [[2, 1, 6, 4], [9, 7, 12, 10]] and big_labels.tolist() == [0, 2]
    assert boxes_from_mask(mask[5:7, 5:7], BoxParams(8, 1))[0].tolist() == [[0, 0, 2, 2]]  # clipped sub-window
    empty, empty_labels = boxes_from_mask(np.full((4, 4), IGNORE_INDEX, np.uint8))
    assert empty.shape == (0, 4) and empty_labels.shape == (0,)
    with pytest.raises(ConfigError, match="connectivity"):
        BoxParams(connectivity=6)
    for bad in (0, 2.5, "16", None):
        with pytest.raises(ConfigError, match="min_area"):
            BoxParams(min_area=bad)


def _ndimage_boxes(mask: np.ndarray, connectivity: int, min_area: int) -> list[list[int]]:
    """Reference: scipy.ndimage.label + find_objects per detection class, as [x0, y0, x1, y1, det class]."""
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    out = []
    for det, seg in enumerate((BLD, TREE, CAR)):
        components, n = ndimage.label(mask == seg, structure=structure)
        areas = np.bincount(components.ravel(), minlength=n + 1)[1:]
        for k, (ys, xs) in enumerate(ndimage.find_objects(components)):
            if areas[k] >= min_area:
                out.append([xs.start, ys.start, xs.stop, ys.stop, det])
    return out


@pytest.mark.parametrize("connectivity", [4, 8])
def test_boxes_equal_ndimage_label_on_random_masks(connectivity: int) -> None:
    rng = np.random.default_rng(connectivity)
    for trial in range(150):
        h, w = rng.integers(1, 30, 2)
        mask = rng.choice([0, BLD, LVEG, TREE, CAR, IGNORE_INDEX], size=(h, w), p=[0.2, 0.2, 0.1, 0.2, 0.2, 0.1])
        mask = mask.astype(np.uint8)
        if trial % 2:  # blockier blobs
            mask = np.repeat(np.repeat(mask, 3, 0), 2, 1)[:h, :w]
        view = mask[:, ::-1] if trial % 3 == 0 else mask  # non-contiguous input too
        min_area = int(rng.integers(1, 5))
        boxes, labels = boxes_from_mask(view, BoxParams(connectivity, min_area))
        got = [[*b, c] for b, c in zip(boxes.tolist(), labels.tolist())]
        assert got == _ndimage_boxes(np.ascontiguousarray(view), connectivity, min_area), trial


def test_boxes_of_a_batch_equal_boxes_of_each_mask() -> None:
    rng = np.random.default_rng(7)
    masks = rng.choice([0, BLD, TREE, CAR], size=(5, 6, 7)).astype(np.uint8)
    masks[0, -1, :] = masks[1, 0, :] = BLD  # touching rows of consecutive masks must not join
    masks[3] = LVEG  # a mask without any blob
    batch = boxes_from_masks(masks, BoxParams(8, 1))
    assert len(batch) == 5 and batch[3][0].shape == (0, 4)
    for mask, (boxes, labels) in zip(masks, batch):
        single = boxes_from_mask(mask, BoxParams(8, 1))
        assert boxes.tolist() == single[0].tolist() and labels.tolist() == single[1].tolist()
    assert batch[0][0][:, 3].max() == 6 and batch[1][0][batch[1][1] == 0][:, 1].min() == 0  # both full rows boxed


def test_blob_cut_by_a_chip_border_gives_clipped_boxes_per_chip() -> None:
    mask = np.full((8, 16), LVEG, np.uint8)
    mask[2:6, 5:11] = BLD  # straddles the chip border at x = 8
    left, _ = boxes_from_mask(mask[:, :8], BoxParams(8, 1))
    right, _ = boxes_from_mask(mask[:, 8:], BoxParams(8, 1))
    assert left.tolist() == [[5, 2, 8, 6]] and right.tolist() == [[0, 2, 3, 6]]


@pytest.fixture
def vaihingen(tmp_path: Path) -> tuple[Path, dict[int, np.ndarray]]:
    root = tmp_path / "vaihingen"
    masks = make_vaihingen(root, {1: (50, 40), 2: (30, 20), 3: (32, 32)})
    return root, masks


def test_chip_dataset_end_to_end(vaihingen, tmp_path: Path) -> None:
    root, masks = vaihingen
    out = tmp_path / "chips"
    summary = chip_dataset("vaihingen", root, out, size=32, stride=24, min_area=4)
    data = open_chip_dataset(out)
    m = data.manifest
    # area1 50x40 → x starts [0, 18], y starts [0, 8]; area3 32x32 → 1 chip (both train); area2 30x20 → 1 padded
    assert m["splits"] == {"train": 5, "val": 1} == summary.chips_per_split
    train = [c for c in m["chips"] if c["split"] == "train"]
    assert [(c["tile"], c["window"]) for c in train] == [
        ("area1", [0, 0, 32, 32]), ("area1", [18, 0, 32, 32]), ("area1", [0, 8, 32, 32]), ("area1", [18, 8, 32, 32]),
        ("area3", [0, 0, 32, 32]),
    ]  # fmt: skip
    assert [c["index"] for c in train] == [0, 1, 2, 3, 4]
    assert m["bands"] == ["nir", "red", "green"] and m["dataset"] == "vaihingen" and m["complete"] is True
    assert m["gsd"] == pytest.approx(0.09) and m["value_scaling"] == {"dtype": "uint8", "max": 255.0}
    assert m["box_params"] == {"connectivity": 8, "min_area": 4} and m["chip_size"] == 32 and m["stride"] == 24
    assert m["tiles"]["area2"]["geotransform"] == [502000.0, 0.09, 0.0, 5400000.0, 0.0, -0.09]
    assert "32632" in m["tiles"]["area2"]["crs"] and m["tiles"]["area2"]["split"] == "val"
    assert data.images("train").shape == (5, 32, 32, 3) and data.masks("val").shape == (1, 32, 32)

    image1 = read_image(root / "top" / "top_mosaic_09cm_area1.tif")
    eroded_path = root / "gts_eroded_for_participants" / "top_mosaic_09cm_area1_noBoundary.tif"
    eroded1 = read_label(eroded_path, boundary_is_ignore=True).mask
    for chip in train[:4]:
        x, y, w, h = chip["window"]
        i = chip["index"]
        assert np.array_equal(data.images("train")[i], image1[y : y + h, x : x + w])
        assert np.array_equal(data.masks("train")[i], masks[1][y : y + h, x : x + w])
        assert np.array_equal(data.eroded("train")[i], eroded1[y : y + h, x : x + w])
        boxes, labels = boxes_from_mask(masks[1][y : y + h, x : x + w], BoxParams(8, 4))
        assert chip["boxes"] == [[*b, ["building", "tree", "car"][c]] for b, c in zip(boxes.tolist(), labels)]
    # the small val tile is padded: image 0, masks ignore, window keeps the real extent
    val = next(c for c in m["chips"] if c["split"] == "val")
    assert val["window"] == [0, 0, 30, 20]
    assert np.array_equal(data.masks("val")[0, :20, :30], masks[2])
    assert (data.masks("val")[0, 20:] == IGNORE_INDEX).all() and (data.eroded("val")[0, :, 30:] == IGNORE_INDEX).all()
    assert (data.images("val")[0, 20:] == 0).all() and (data.images("val")[0, :, 30:] == 0).all()
    # boxes read back as arrays; counts and class shares agree with the chips
    boxes_back = data.boxes("train")
    assert boxes_back[0][0].dtype == np.float32 and boxes_back[0][1].dtype == np.int64
    assert boxes_back[0][0].tolist() == [b[:4] for b in train[0]["boxes"]]
    per_class = np.bincount(np.concatenate([lab for split in data.splits for _, lab in data.boxes(split)]), minlength=3)
    assert summary.boxes_per_class == dict(zip(["building", "tree", "car"], per_class.tolist()))
    assert summary.boxes_per_class["car"] >= 3 and m["summary"]["boxes_per_class"] == summary.boxes_per_class
    px = np.bincount(np.concatenate([mask.ravel() for mask in masks.values()]), minlength=256)[:6]
    shares = dict(zip(["impervious", "building", "low_vegetation", "tree", "car", "clutter"], px / px.sum()))
    assert summary.class_pixel_shares == pytest.approx(shares, abs=1e-6)
    # band statistics: over the pixels of the train tiles (areas 1 and 3), in scaled units
    image3 = read_image(root / "top" / "top_mosaic_09cm_area3.tif")
    pixels = np.concatenate([image1.reshape(-1, 3), image3.reshape(-1, 3)]).astype(np.float64) / 255
    assert data.mean == pytest.approx(pixels.mean(0), abs=1e-9) and data.std == pytest.approx(pixels.std(0), abs=1e-9)
    assert m["stats_split"] == "train"
    assert not (out / PARTIAL_DIR).exists() and sorted(p.name for p in out.iterdir()) == [MANIFEST, "train", "val"]


def test_tiles_without_eroded_labels_and_potsdam_rgbir(tmp_path: Path) -> None:
    root = tmp_path / "potsdam"
    make_potsdam(root, {"2_10": (20, 18), "2_13": (16, 16)}, products=("RGBIR",))
    for path in (root / "5_Labels_all_noBoundary").iterdir():
        path.unlink()
    summary = chip_dataset("potsdam", root, tmp_path / "out", size=16, stride=16, bands="RGBIR")
    data = open_chip_dataset(tmp_path / "out")
    assert data.bands == ["red", "green", "blue", "nir"] and data.images("train").shape == (4, 16, 16, 4)
    assert data.manifest["gsd"] == pytest.approx(0.05) and summary.chips_per_split == {"train": 4, "val": 1}
    label = read_label(root / "5_Labels_all" / "top_potsdam_2_13_label.tif", boundary_is_ignore=False).mask
    assert np.array_equal(data.eroded("val")[0], erode_mask(label))


def test_uint16_imagery_is_scaled_by_a_configurable_maximum(tmp_path: Path) -> None:
    root = tmp_path / "v16"
    make_vaihingen(root, {1: (20, 20)}, dtype=np.uint16)
    image = read_image(root / "top" / "top_mosaic_09cm_area1.tif").astype(np.float64)
    image = np.minimum(image, 4095)
    write_tif(root / "top" / "top_mosaic_09cm_area1.tif", image.astype(np.uint16), origin=(501000.0, 5400000.0))
    summary = chip_dataset("vaihingen", root, tmp_path / "a", size=20, stride=20, scale_max=4095)
    data = open_chip_dataset(tmp_path / "a")
    assert data.value_scaling == {"dtype": "uint16", "max": 4095.0} == summary.value_scaling
    assert data.images("train").dtype == np.uint16
    assert data.mean == pytest.approx(image.reshape(-1, 3).mean(0) / 4095, abs=1e-5)
    default = chip_dataset("vaihingen", root, tmp_path / "b", size=20, stride=20)
    assert default.value_scaling == {"dtype": "uint16", "max": 65535.0}
    assert default.mean == pytest.approx(image.reshape(-1, 3).mean(0) / 65535, abs=1e-6)
    with pytest.raises(ConfigError, match=r"scale_max: expected a value in \(0, 65535\]"):
        chip_dataset("vaihingen", root, tmp_path / "c", size=20, stride=20, scale_max=70000)


def test_off_palette_label_pixels_are_reported_in_the_summary(tmp_path: Path) -> None:
    root = tmp_path / "v"
    masks = make_vaihingen(root, {1: (16, 16)})
    label = root / "gts_for_participants" / "top_mosaic_09cm_area1.tif"
    rgb = encode_rgb_label(masks[1])
    rgb[0, 0] = rgb[0, 1] = (250, 250, 250)
    write_tif(label, rgb, origin=(501000.0, 5400000.0))
    summary = chip_dataset("vaihingen", root, tmp_path / "out", size=16, stride=16)
    assert summary.off_palette_pixels == {str(label): 2}
    assert json.loads((tmp_path / "out" / MANIFEST).read_text())["summary"]["off_palette_pixels"] == {str(label): 2}
    assert "off-palette label pixels mapped to the nearest colour: 2 in 1 file(s)" in summary.format()


def test_output_folder_not_empty_is_refused_unless_overwrite(vaihingen, tmp_path: Path) -> None:
    root, _ = vaihingen
    out = tmp_path / "out"
    chip_dataset("vaihingen", root, out, size=32, stride=32)
    with pytest.raises(InputError, match="found a chip dataset; set --overwrite"):
        chip_dataset("vaihingen", root, out, size=32, stride=32)
    summary = chip_dataset("vaihingen", root, out, size=16, stride=16, overwrite=True)
    assert open_chip_dataset(out).chip_size == 16 and summary.chips_per_split["val"] == 4
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    for overwrite in (False, True):  # unrelated files are never deleted
        with pytest.raises(InputError, match=r"other: expected an empty output folder.*notes\.txt"):
            chip_dataset("vaihingen", root, other, size=32, stride=32, overwrite=overwrite)
    assert (other / "notes.txt").read_text() == "mine"


class CancelAfter:
    """Progress whose is_canceled turns True after ``n`` polls."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.polls = 0
        self.fractions: list[float] = []

    def report(self, fraction: float | None, message: str = "") -> None:
        if fraction is not None:
            self.fractions.append(fraction)

    def is_canceled(self) -> bool:
        self.polls += 1
        return self.polls > self.n


def test_interrupted_chipping_leaves_no_complete_dataset_and_a_rerun_works(vaihingen, tmp_path: Path) -> None:
    root, _ = vaihingen
    out = tmp_path / "out"
    cancel = CancelAfter(6)  # polls: 3 tile checks, tile 1, its batch, tile 2, its batch → cancelled there
    with pytest.raises(Cancelled):
        chip_dataset("vaihingen", root, out, size=16, stride=16, progress=cancel)
    assert cancel.fractions[-1] > 0.02  # mid-way: tile 1's chips were written
    assert not (out / MANIFEST).exists() and list(out.iterdir()) == []
    with pytest.raises(InputError, match=r"expected a chip dataset with manifest\.json"):
        open_chip_dataset(out)
    # a hard crash leaves the partial folder behind: the reader says so and a rerun (no --overwrite) starts clean
    (out / PARTIAL_DIR / "train").mkdir(parents=True)
    (out / PARTIAL_DIR / "train" / "images.npy").write_bytes(b"half")
    with pytest.raises(InputError, match=r"chipping did not finish; rerun engine\.chip"):
        open_chip_dataset(out)
    progress = CancelAfter(10**6)
    summary = chip_dataset("vaihingen", root, out, size=16, stride=16, progress=progress)
    assert open_chip_dataset(out).splits == summary.chips_per_split and not (out / PARTIAL_DIR).exists()
    assert progress.fractions[-1] == 1.0 and progress.fractions == sorted(progress.fractions)
    # a manifest not marked complete is refused by the reader and replaced by a rerun
    manifest = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(InputError, match="not marked complete; chipping did not finish"):
        open_chip_dataset(out)
    chip_dataset("vaihingen", root, out, size=16, stride=16)
    assert open_chip_dataset(out).manifest["complete"] is True


def test_reader_checks_arrays_against_the_manifest(vaihingen, tmp_path: Path) -> None:
    root, _ = vaihingen
    out = tmp_path / "out"
    chip_dataset("vaihingen", root, out, size=32, stride=32)
    np.save(out / "val" / "masks.npy", np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(InputError, match=r"val/masks\.npy: expected \(1, 32, 32\) uint8 .*found \(1, 8, 8\)"):
        open_chip_dataset(out)


def test_chip_tiles_takes_arbitrary_raster_label_pairs(tmp_path: Path) -> None:
    mask = np.full((12, 14), LVEG, np.uint8)
    mask[2:6, 3:9] = BLD
    image = write_tif(tmp_path / "ortho.tif", np.full((12, 14, 2), 7, np.uint8))
    label = write_tif(tmp_path / "classes.tif", mask)  # 1-band class-index label
    tiles = [TileSpec("mine", image, label, None, "train")]
    summary = chip_tiles(tiles, tmp_path / "out", size=8, stride=6, band_names=["a", "b"], min_area=1)
    data = open_chip_dataset(tmp_path / "out")
    assert data.manifest["dataset"] == "custom" and data.bands == ["a", "b"]
    assert summary.chips_per_split == {"train": 4}  # x starts [0, 6] (flush), y starts [0, 4]
    second = data.chips("train")[1]
    assert second["window"] == [6, 0, 8, 8] and second["boxes"] == [[0, 2, 3, 6, "building"]]
    assert data.mean == pytest.approx([7 / 255, 7 / 255]) and data.std == pytest.approx([0, 0], abs=1e-6)
    with pytest.raises(ConfigError, match="unique tile names"):
        chip_tiles(tiles * 2, tmp_path / "dup")
    with pytest.raises(ConfigError, match="expected 2 names"):
        chip_tiles(tiles, tmp_path / "names", band_names=["a"])
    with pytest.raises(ConfigError, match="tile mine: expected a split name"):
        chip_tiles([TileSpec("mine", image, label, None, "manifest.json")], tmp_path / "split")


def test_cli_prints_the_summary_and_reports_bad_input(vaihingen, tmp_path: Path, capsys) -> None:
    root, _ = vaihingen
    args = ["--dataset", "vaihingen", "--root", str(root), "--size", "32", "--stride", "32"]
    assert chip_main([*args, "--out", str(tmp_path / "a"), "--json", "--min-area", "2", "--connectivity", "4"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["chips_per_split"] == {"train": 5, "val": 1}
    assert set(printed["boxes_per_class"]) == {"building", "tree", "car"}
    assert open_chip_dataset(tmp_path / "a").manifest["box_params"] == {"connectivity": 4, "min_area": 2}
    assert chip_dataset("vaihingen", root, tmp_path / "d", 32, 32, connectivity=None, min_area=None).boxes_per_class
    assert open_chip_dataset(tmp_path / "d").manifest["box_params"] == {"connectivity": 8, "min_area": 16}
    assert chip_main([*args, "--out", str(tmp_path / "b")]) == 0
    text = capsys.readouterr().out
    assert "chips per split: train 5, val 1" in text and "class pixel shares: impervious" in text
    assert chip_main([*args, "--out", str(tmp_path / "b")]) == 2
    assert "set --overwrite" in capsys.readouterr().err
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"area1": "train", "area2": "train"}))
    assert chip_main([*args, "--out", str(tmp_path / "b"), "--overwrite", "--splits", str(splits)]) == 0
    assert open_chip_dataset(tmp_path / "b").splits == {"train": 5}
    bad_root = ["--dataset", "potsdam", "--root", str(root), "--out", str(tmp_path / "c")]
    assert chip_main(bad_root) == 2
    assert "2_Ortho_RGB/top_potsdam_{r}_{c}_RGB.tif" in capsys.readouterr().err


def test_small_tiles_of_different_extents_are_each_padded(tmp_path: Path) -> None:
    tiles = []
    for name, (h, w) in {"wide": (5, 7), "tall": (7, 5)}.items():
        image = write_tif(tmp_path / f"{name}.tif", np.full((h, w, 1), 9, np.uint8))
        label = write_tif(tmp_path / f"{name}_label.tif", np.full((h, w), TREE, np.uint8))
        tiles.append(TileSpec(name, image, label, label, "train"))
    chip_tiles(tiles, tmp_path / "out", size=8, stride=8)
    data = open_chip_dataset(tmp_path / "out")
    for i, (h, w) in enumerate([(5, 7), (7, 5)]):
        expected = np.full((8, 8), IGNORE_INDEX)
        expected[:h, :w] = TREE
        assert data.masks("train")[i].tolist() == expected.tolist()
        assert data.eroded("train")[i].tolist() == expected.tolist()
        assert data.images("train")[i, :, :, 0].tolist() == np.where(expected == TREE, 9, 0).tolist()
        assert data.chips("train")[i]["window"] == [0, 0, w, h]


def test_band_statistics_of_a_large_tile_come_from_a_regular_subsample() -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 4096, (1000, 1100, 2), dtype=np.uint16)
    image[:, :, 1] //= 4
    stats = TileStats(2)
    stats.add_image(image)  # 1.1 Mpx > STATS_SAMPLE: every 2nd row and column
    assert stats.gram[-1, -1] == 500 * 550 * 4  # weighted by the area each sample stands for
    mean, std = stats.mean_std(4095.0)
    full = image.reshape(-1, 2).astype(np.float64) / 4095
    assert mean == pytest.approx(full.mean(0), rel=5e-3) and std == pytest.approx(full.std(0), rel=5e-3)
    stats.add_mask(np.array([[0, 0, 1], [255, 4, 4]], np.uint8))
    shares = stats.class_shares()
    assert shares == {"impervious": 0.4, "building": 0.2, "low_vegetation": 0, "tree": 0, "car": 0.4, "clutter": 0}
    big = np.full((1000, 1100), TREE, np.uint8)  # subsampled, weighted by area: counts ~1.1 M tree pixels
    big[:, :330] = BLD
    stats.add_mask(big)
    assert stats.class_px[TREE] == 1000 * 770 and stats.class_px[BLD] == 1000 * 330 + 1
