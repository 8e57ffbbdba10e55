"""ISPRS reader and label decoding on tiny real GeoTIFFs written here in the real ISPRS layouts.

The helpers at the top (``write_tif``, ``make_vaihingen``, ``make_potsdam``) are reused by tests/test_chip.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr

from engine.core.classes import IGNORE_INDEX, PALETTE
from engine.core.errors import ConfigError, InputError
from engine.data import isprs
from engine.data.isprs import STANDARD_SPLITS, find_isprs_tiles, load_splits, read_image, read_label
from engine.data.labels import decode_rgb_label, encode_rgb_label, erode_mask

gdal.UseExceptions()
GSD = 0.09
IMP, BLD, LVEG, TREE, CAR, CLUT = range(6)


def write_tif(
    path: Path,
    array: np.ndarray,
    origin: tuple[float, float] = (500000.0, 5400000.0),
    gsd: float = GSD,
    epsg: int | None = 32632,
) -> Path:
    """Write an (H, W) or (H, W, C) uint8/uint16 array as a GeoTIFF (georeferenced unless ``epsg`` is None)."""
    array = array[:, :, None] if array.ndim == 2 else array
    h, w, c = array.shape
    kind = {"uint16": gdal.GDT_UInt16, "float32": gdal.GDT_Float32}.get(array.dtype.name, gdal.GDT_Byte)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = gdal.GetDriverByName("GTiff").Create(str(path), w, h, c, kind)
    if epsg is not None:
        ds.SetGeoTransform((origin[0], gsd, 0.0, origin[1], 0.0, -gsd))
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(epsg)
        ds.SetSpatialRef(srs)
    for b in range(c):
        ds.GetRasterBand(b + 1).WriteArray(array[:, :, b])
    ds.FlushCache()
    return path


def scene_mask(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A small scene: impervious ground, a building block, a tree, a car and some low vegetation."""
    mask = np.full((h, w), IMP, np.uint8)
    mask[:, int(w * 0.7) :] = LVEG
    mask[2 : h // 2, 3 : w // 3] = BLD
    mask[h // 2 + 2 : h - 2, w // 2 : w // 2 + 6] = TREE
    mask[h - 6 : h - 3, 2:9] = CAR
    rng = np.random.default_rng(seed)
    mask[rng.integers(0, h), rng.integers(0, w)] = CLUT
    return mask


def scene_image(mask: np.ndarray, bands: int = 3, dtype: type = np.uint8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    base = (np.arange(6) * 37 + 20)[mask][:, :, None] * (top / 255) * np.linspace(1, 0.6, bands)
    return np.clip(base + rng.normal(0, top * 0.02, base.shape), 0, top).astype(dtype)


def write_label_pair(label: Path, eroded: Path | None, mask: np.ndarray, **geo: object) -> None:
    write_tif(label, encode_rgb_label(mask), **geo)
    if eroded is not None:
        write_tif(eroded, encode_rgb_label(erode_mask(mask)), **geo)


def make_vaihingen(
    root: Path, areas: dict[int, tuple[int, int]], dtype: type = np.uint8, eroded: bool = True
) -> dict[int, np.ndarray]:
    """Vaihingen layout with the given {area: (width, height)}; returns each area's class mask."""
    masks = {}
    for n, (w, h) in areas.items():
        mask = scene_mask(h, w, seed=n)
        origin = (500000.0 + 1000 * n, 5400000.0)
        write_tif(root / "top" / f"top_mosaic_09cm_area{n}.tif", scene_image(mask, 3, dtype, n), origin)
        gts = root / "gts_for_participants" / f"top_mosaic_09cm_area{n}.tif"
        ero = root / "gts_eroded_for_participants" / f"top_mosaic_09cm_area{n}_noBoundary.tif"
        write_label_pair(gts, ero if eroded else None, mask, origin=origin)
        masks[n] = mask
    return masks


def make_potsdam(root: Path, tiles: dict[str, tuple[int, int]], products: tuple[str, ...] = ("RGB",)) -> None:
    """Potsdam layout with the given {"r_c": (width, height)} in the given image products."""
    folders = {"RGB": ("2_Ortho_RGB", 3), "IRRG": ("3_Ortho_IRRG", 3), "RGBIR": ("4_Ortho_RGBIR", 4)}
    for i, (name, (w, h)) in enumerate(tiles.items()):
        mask = scene_mask(h, w, seed=i)
        for product in products:
            folder, bands = folders[product]
            write_tif(root / folder / f"top_potsdam_{name}_{product}.tif", scene_image(mask, bands), gsd=0.05)
        label = root / "5_Labels_all" / f"top_potsdam_{name}_label.tif"
        eroded = root / "5_Labels_all_noBoundary" / f"top_potsdam_{name}_label_noBoundary.tif"
        write_label_pair(label, eroded, mask, gsd=0.05)


def test_vaihingen_tiles_are_paired_and_split_by_the_standard_list(tmp_path: Path) -> None:
    make_vaihingen(tmp_path, {1: (20, 16), 2: (18, 12), 11: (8, 8), 39: (10, 10)})
    tiles = find_isprs_tiles("vaihingen", tmp_path)  # natural order; area39 is in no split
    assert [(t.name, t.split) for t in tiles] == [("area1", "train"), ("area2", "val"), ("area11", "train")]
    assert tiles[0].image == tmp_path / "top" / "top_mosaic_09cm_area1.tif"
    assert tiles[0].label == tmp_path / "gts_for_participants" / "top_mosaic_09cm_area1.tif"
    assert tiles[0].eroded == tmp_path / "gts_eroded_for_participants" / "top_mosaic_09cm_area1_noBoundary.tif"


def test_standard_splits_match_reference() -> None:
    vaihingen, potsdam = STANDARD_SPLITS["vaihingen"], STANDARD_SPLITS["potsdam"]
    assert sum(s == "train" for s in vaihingen.values()) == 16 and sum(s == "val" for s in vaihingen.values()) == 17
    assert sum(s == "train" for s in potsdam.values()) == 24 and sum(s == "val" for s in potsdam.values()) == 14
    assert vaihingen["area37"] == "train" and vaihingen["area38"] == "val" and potsdam["7_13"] == "val"


def test_potsdam_band_products_are_selectable(tmp_path: Path) -> None:
    make_potsdam(tmp_path, {"2_10": (12, 10), "2_13": (12, 10)}, products=("RGB", "RGBIR"))
    rgb = find_isprs_tiles("potsdam", tmp_path)
    rgbir = find_isprs_tiles("potsdam", tmp_path, bands="RGBIR")
    assert [(t.name, t.split) for t in rgb] == [("2_10", "train"), ("2_13", "val")]
    assert rgb[0].image.name == "top_potsdam_2_10_RGB.tif" and rgbir[0].image.name == "top_potsdam_2_10_RGBIR.tif"
    assert rgb[1].eroded == tmp_path / "5_Labels_all_noBoundary" / "top_potsdam_2_13_label_noBoundary.tif"
    with pytest.raises(InputError, match=r"3_Ortho_IRRG.*found none.*2_Ortho_RGB"):
        find_isprs_tiles("potsdam", tmp_path, bands="IRRG")
    with pytest.raises(ConfigError, match="bands"):
        find_isprs_tiles("vaihingen", tmp_path, bands="RGB")


def test_split_override_from_dict_and_json_file(tmp_path: Path) -> None:
    make_vaihingen(tmp_path, {1: (10, 8), 2: (10, 8), 3: (10, 8)})
    tiles = find_isprs_tiles("vaihingen", tmp_path, splits={"area1": "val", "top_mosaic_09cm_area2.tif": "test"})
    assert [(t.name, t.split) for t in tiles] == [("area1", "val"), ("area2", "test")]
    by_split = tmp_path / "splits.json"
    by_split.write_text(json.dumps({"train": ["2", "3"], "val": ["area1"]}))
    assert [t.split for t in find_isprs_tiles("vaihingen", tmp_path, splits=by_split)] == ["val", "train", "train"]
    assert load_splits("potsdam", {"top_potsdam_6_7_RGB": "train", "2_13": None}) == {"6_7": "train", "2_13": None}
    with pytest.raises(ConfigError, match="split name"):
        load_splits("vaihingen", {"area1": "../evil"})
    with pytest.raises(ConfigError, match="tile names like 'area1'"):
        load_splits("vaihingen", {"nonsense": "train"})
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    with pytest.raises(ConfigError, match=r"bad\.json"):
        load_splits("vaihingen", bad)


def test_root_without_tiles_is_an_error_naming_the_expected_layout(tmp_path: Path) -> None:
    (tmp_path / "something_else").mkdir()
    with pytest.raises(InputError, match=r"top/top_mosaic_09cm_area\{N\}\.tif.*found none.*something_else"):
        find_isprs_tiles("vaihingen", tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        find_isprs_tiles("potsdam", tmp_path / "missing")


def test_image_without_label_names_the_image_and_expected_label(tmp_path: Path) -> None:
    make_vaihingen(tmp_path, {1: (10, 8), 3: (10, 8)})
    label = tmp_path / "gts_for_participants" / "top_mosaic_09cm_area3.tif"
    label.unlink()
    with pytest.raises(InputError, match=r"top_mosaic_09cm_area3\.tif: expected its label at .*gts_for_participants"):
        find_isprs_tiles("vaihingen", tmp_path)
    # a tile left out of every split needs no label
    assert [t.name for t in find_isprs_tiles("vaihingen", tmp_path, splits={"area1": "train"})] == ["area1"]


def test_label_of_another_size_names_both_files_and_sizes(tmp_path: Path) -> None:
    make_vaihingen(tmp_path, {1: (10, 8)})
    write_tif(tmp_path / "gts_for_participants" / "top_mosaic_09cm_area1.tif", np.zeros((8, 11, 3), np.uint8))
    expected = r"gts_for_participants.*area1\.tif: expected .*top.*area1\.tif \(10×8 px\), found 11×8"
    with pytest.raises(InputError, match=expected):
        find_isprs_tiles("vaihingen", tmp_path)


def test_label_with_other_georeferencing_names_both_values(tmp_path: Path) -> None:
    make_vaihingen(tmp_path, {1: (10, 8)})
    eroded = tmp_path / "gts_eroded_for_participants" / "top_mosaic_09cm_area1_noBoundary.tif"
    write_tif(eroded, np.zeros((8, 10, 3), np.uint8), origin=(500000.0 + 1000 + 0.5, 5400000.0))
    with pytest.raises(InputError, match=r"noBoundary\.tif: expected .*\[501000\.0, 0\.09.*found .*\[501000\.5, 0\.09"):
        find_isprs_tiles("vaihingen", tmp_path)
    write_tif(eroded, np.zeros((8, 10, 3), np.uint8), origin=(501000.0, 5400000.0), epsg=32633)
    with pytest.raises(InputError, match=r"expected the CRS .*32632.*found .*32633"):
        find_isprs_tiles("vaihingen", tmp_path)
    write_tif(eroded, np.zeros((8, 10, 3), np.uint8), epsg=None)  # no georeferencing at all: accepted, sizes agree
    assert find_isprs_tiles("vaihingen", tmp_path)[0].eroded == eroded


def test_non_integer_imagery_is_refused(tmp_path: Path) -> None:
    make_vaihingen(tmp_path, {1: (10, 8)})
    image = tmp_path / "top" / "top_mosaic_09cm_area1.tif"
    write_tif(image, np.zeros((8, 10, 3), np.float32), origin=(501000.0, 5400000.0))
    with pytest.raises(InputError, match="expected uint8 or uint16 imagery, found data type float32"):
        find_isprs_tiles("vaihingen", tmp_path)


def test_palette_decoding_black_and_off_palette_pixels() -> None:
    rgb = np.array(
        [
            [PALETTE[0], PALETTE[1], PALETTE[2], PALETTE[3]],
            [PALETTE[4], PALETTE[5], (0, 0, 0), (250, 250, 7)],  # black, a near-yellow
            [(10, 12, 240), (250, 250, 7), (0, 250, 0), (0, 0, 0)],  # near-blue, near-yellow, near-green, black
        ],
        np.uint8,
    )
    eroded = decode_rgb_label(rgb, boundary_is_ignore=True)
    assert eroded.mask.tolist() == [[0, 1, 2, 3], [4, 5, IGNORE_INDEX, CAR], [BLD, CAR, TREE, IGNORE_INDEX]]
    assert eroded.off_palette_pixels == 4
    assert eroded.off_palette_colors == {(250, 250, 7): 2, (10, 12, 240): 1, (0, 250, 0): 1}
    full = decode_rgb_label(rgb, boundary_is_ignore=False)  # black is not a class colour in a full label
    assert full.off_palette_pixels == 6 and full.off_palette_colors[(0, 0, 0)] == 2
    assert full.mask[1, 2] == BLD  # equidistant to blue, green and red: lowest class index wins
    clean = decode_rgb_label(np.array([[PALETTE[3], PALETTE[0]]], np.uint8), boundary_is_ignore=True)
    assert clean.off_palette_pixels == 0 and clean.mask.tolist() == [[TREE, IMP]]


@pytest.mark.parametrize("block_px", [1 << 18, 14])  # whole label in one block / decoded 2 rows at a time
def test_off_palette_pixels_in_a_label_file_are_counted_and_logged(tmp_path, caplog, monkeypatch, block_px) -> None:
    monkeypatch.setattr(isprs, "_LABEL_BLOCK_PX", block_px)
    rgb = encode_rgb_label(np.full((7, 7), LVEG, np.uint8))
    rgb[0, :3] = (255, 250, 250)  # near white
    rgb[5, 6] = rgb[6, 0] = (200, 30, 20)  # near red, in two blocks
    path = write_tif(tmp_path / "label.tif", rgb)
    with caplog.at_level(logging.WARNING):
        decoded = read_label(path, boundary_is_ignore=False)
    assert decoded.off_palette_pixels == 5 and decoded.off_palette_colors == {(255, 250, 250): 3, (200, 30, 20): 2}
    assert decoded.mask[0, :3].tolist() == [IMP] * 3 and decoded.mask[5, 6] == decoded.mask[6, 0] == CLUT
    assert (decoded.mask == LVEG).sum() == 49 - 5
    assert sum(str(path) in r.getMessage() and "5 off-palette" in r.getMessage() for r in caplog.records) == 1


def test_single_band_index_labels_are_read_and_checked(tmp_path: Path) -> None:
    mask = np.array([[0, 1, 5], [255, 3, 4]], np.uint8)
    assert read_label(write_tif(tmp_path / "ok.tif", mask), boundary_is_ignore=True).mask.tolist() == mask.tolist()
    with pytest.raises(InputError, match=r"bad\.tif: expected class indices 0\.\.5 or 255.*found values \[7, 9\]"):
        read_label(write_tif(tmp_path / "bad.tif", np.array([[7, 9, 1]], np.uint8)), boundary_is_ignore=True)


def test_read_image_is_pixel_interleaved(tmp_path: Path) -> None:
    image = np.arange(4 * 5 * 4, dtype=np.uint16).reshape(4, 5, 4)
    assert np.array_equal(read_image(write_tif(tmp_path / "i.tif", image)), image)


def test_erosion_marks_a_disc_around_class_boundaries() -> None:
    mask = np.zeros((9, 12), np.uint8)
    mask[:, 6:] = TREE
    eroded = erode_mask(mask, radius=3)
    # columns 3..8 lie within 3 px of the 5|6 boundary; the tile border is not a boundary
    expected = np.where((np.arange(12) >= 3) & (np.arange(12) <= 8), IGNORE_INDEX, mask[0])
    assert eroded.tolist() == [expected.tolist()] * 9
    dot = np.zeros((9, 9), np.uint8)
    dot[4, 4] = CAR
    ring = erode_mask(dot, radius=2)
    yy, xx = np.mgrid[:9, :9]
    assert np.array_equal(ring == IGNORE_INDEX, (yy - 4) ** 2 + (xx - 4) ** 2 <= 4)  # a disc, not a square
