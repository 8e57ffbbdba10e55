"""Synthetic ISPRS-like twin: layouts and names, georeferencing, determinism, labels, shares, non-triviality."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr
from scipy import ndimage

from engine.core.classes import PALETTE, SEG_CLASSES
from engine.core.errors import ConfigError, InputError
from engine.core.progress import Cancelled
from engine.synth import DOMAINS, generate
from engine.synth.__main__ import main as cli_main
from engine.synth.canvas import cast_shadows
from engine.synth.render import erode_boundaries
from engine.synth.tile import make_tile

gdal.UseExceptions()
V_GSD, P_GSD = DOMAINS["vaihingen"].gsd, DOMAINS["potsdam"].gsd


def read(path: Path) -> np.ndarray:
    """(h, w, bands) array of a raster file."""
    ds = gdal.Open(str(path))
    arr = ds.ReadAsArray()
    return np.moveaxis(arr, 0, -1) if arr.ndim == 3 else arr[..., None]


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def assert_same_files(a: Path, b: Path, listed: Path) -> None:
    """Every file under ``listed`` (but the timing summary) is byte-identical under ``a`` and ``b``."""
    for name in files_under(listed) - {"synth_summary.json"}:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.fixture(scope="module")
def vaihingen_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vaihingen")
    generate("vaihingen", root, seed=3, tiles=3, tile_size_m=200 * V_GSD)
    return root


@pytest.fixture(scope="module")
def potsdam_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("potsdam")
    generate("potsdam", root, seed=3, tiles=2, tile_size_m=160 * P_GSD)
    return root


def test_vaihingen_layout_and_names(vaihingen_root: Path) -> None:
    # 3 tiles: 16/33 of them train -> 1 train, 2 val, the first of the standard lists (REFERENCE §3):
    # train areas 1 3 5 ..., val areas 2 4 6 ...
    expected = set()
    for area in (1, 2, 4):
        expected |= {
            f"top/top_mosaic_09cm_area{area}.tif",
            f"gts_for_participants/top_mosaic_09cm_area{area}.tif",
            f"gts_eroded_for_participants/top_mosaic_09cm_area{area}_noBoundary.tif",
        }
    assert files_under(vaihingen_root) == expected | {"synth_summary.json"}
    splits = json.loads((vaihingen_root / "synth_summary.json").read_text())["splits"]
    assert splits == {f"top_mosaic_09cm_area{n}": s for n, s in ((1, "train"), (2, "val"), (4, "val"))}
    image = read(vaihingen_root / "top/top_mosaic_09cm_area1.tif")
    assert image.shape == (200, 200, 3) and image.dtype == np.uint8
    ds = gdal.Open(str(vaihingen_root / "top/top_mosaic_09cm_area1.tif"))
    assert [ds.GetRasterBand(i).GetDescription() for i in (1, 2, 3)] == ["nir", "red", "green"]


def test_potsdam_layout_names_and_variants(potsdam_root: Path) -> None:
    pattern = re.compile(
        r"^(2_Ortho_RGB/top_potsdam_\d+_\d+_RGB|3_Ortho_IRRG/top_potsdam_\d+_\d+_IRRG|"
        r"4_Ortho_RGBIR/top_potsdam_\d+_\d+_RGBIR|5_Labels_all/top_potsdam_\d+_\d+_label|"
        r"5_Labels_all_noBoundary/top_potsdam_\d+_\d+_label_noBoundary)\.tif$"
    )
    names = files_under(potsdam_root) - {"synth_summary.json"}
    assert len(names) == 10 and all(pattern.match(n) for n in names), names
    tiles = {re.search(r"top_potsdam_(\d+_\d+)_", n).group(1) for n in names}
    # 2 tiles: the first of the standard train list (2_10) and of the val list (2_13)
    assert tiles == {"2_10", "2_13"}
    rc = "2_10"
    rgb = read(potsdam_root / f"2_Ortho_RGB/top_potsdam_{rc}_RGB.tif")
    irrg = read(potsdam_root / f"3_Ortho_IRRG/top_potsdam_{rc}_IRRG.tif")
    rgbir = read(potsdam_root / f"4_Ortho_RGBIR/top_potsdam_{rc}_RGBIR.tif")
    assert rgbir.shape == (160, 160, 4) and rgb.shape == irrg.shape == (160, 160, 3)
    # the variants are band re-orderings of one rendering: RGB = RGBIR[:3], IRRG = (IR, R, G)
    np.testing.assert_array_equal(rgb, rgbir[..., :3])
    np.testing.assert_array_equal(irrg, rgbir[..., [3, 0, 1]])
    assert not np.array_equal(rgbir[..., 3], rgbir[..., 0])


def test_georeferencing(vaihingen_root: Path, potsdam_root: Path) -> None:
    origins: dict[str, set[tuple[float, float]]] = {}
    for root, gsd in ((vaihingen_root, V_GSD), (potsdam_root, P_GSD)):
        for path in root.rglob("*.tif"):
            ds = gdal.Open(str(path))
            srs = osr.SpatialReference(wkt=ds.GetProjection())
            assert srs.IsProjected() and srs.GetAuthorityCode(None) == "32632", path
            gt = ds.GetGeoTransform()
            assert gt[1] == pytest.approx(gsd) and gt[5] == pytest.approx(-gsd) and gt[2] == gt[4] == 0.0
            tile = re.match(r"top_mosaic_09cm_area\d+|top_potsdam_\d+_\d+", path.name).group(0)
            origins.setdefault(tile, set()).add((gt[0], gt[3]))
    assert len(origins) == 5
    # image(s) and labels of a tile share one origin; tiles have different origins
    assert all(len(xy) == 1 for xy in origins.values())
    assert len({next(iter(xy)) for xy in origins.values()}) == 5


def test_labels_use_only_palette_and_eroded_has_black_boundaries(vaihingen_root: Path) -> None:
    palette = {tuple(c) for c in PALETTE}
    label = read(vaihingen_root / "gts_for_participants/top_mosaic_09cm_area2.tif")
    eroded = read(vaihingen_root / "gts_eroded_for_participants/top_mosaic_09cm_area2_noBoundary.tif")
    colours = {tuple(c) for c in np.unique(label.reshape(-1, 3), axis=0)}
    assert colours <= palette and len(colours) >= 4
    eroded_colours = {tuple(c) for c in np.unique(eroded.reshape(-1, 3), axis=0)}
    assert eroded_colours <= palette | {(0, 0, 0)} and (0, 0, 0) in eroded_colours
    # black exactly where a radius-3 disc around the pixel holds more than one class (independent 2-D check)
    index = np.zeros(label.shape[:2], dtype=np.uint8)
    for i, colour in enumerate(PALETTE):
        index[(label == colour).all(-1)] = i
    y, x = np.mgrid[-3:4, -3:4]
    disc = x * x + y * y <= 9
    mixed = ndimage.maximum_filter(index, footprint=disc, mode="nearest") != ndimage.minimum_filter(
        index, footprint=disc, mode="nearest"
    )
    black = (eroded == 0).all(-1)
    np.testing.assert_array_equal(black, mixed)
    np.testing.assert_array_equal(eroded[~black], label[~black])


def test_erosion_by_hand() -> None:
    label = np.zeros((20, 20), dtype=np.uint8)
    label[5:15, 5:15] = 1
    out = erode_boundaries(label, radius=3)
    assert out[9, 2] == 255  # 3 px left of the square's edge column 5
    assert out[9, 1] == 0  # 4 px away
    assert out[9, 7] == 255 and out[9, 8] == 1  # inside: 3 and 4 px from background column 4
    assert out[3, 3] == 255  # (5, 5) is sqrt(8) away
    assert out[2, 2] == 0  # (5, 5) is sqrt(18) away
    assert out[0, 0] == 0 and out[19, 19] == 0  # tile borders are not boundaries
    np.testing.assert_array_equal(out[out != 255], label[out != 255])


def test_cast_shadow_by_hand() -> None:
    height = np.zeros((20, 20), dtype=np.float32)
    height[10, 10] = 5.0
    # sun in the east at 45°: the shadow falls west, as long as the pillar is high (gsd 1 m, tan 45° = 1)
    shadow = cast_shadows(height, gsd=1.0, azimuth_deg=90.0, elevation_deg=45.0)
    expected = np.zeros_like(shadow)
    expected[10, 6:10] = True  # 5 - k > 0.15 for k = 1..4
    np.testing.assert_array_equal(shadow, expected)
    # sun in the south: the shadow falls north (up in the image)
    shadow = cast_shadows(height, gsd=1.0, azimuth_deg=180.0, elevation_deg=45.0)
    assert shadow[6:10, 10].all() and shadow.sum() == 4


def test_deterministic_per_seed(tmp_path: Path, vaihingen_root: Path) -> None:
    again = tmp_path / "again"
    generate("vaihingen", again, seed=3, tiles=3, tile_size_m=200 * V_GSD)
    assert_same_files(again, vaihingen_root, vaihingen_root)
    other = tmp_path / "other"
    generate("vaihingen", other, seed=4, tiles=1, tile_size_m=200 * V_GSD)
    name = "top/top_mosaic_09cm_area1.tif"
    assert not np.array_equal(read(other / name), read(vaihingen_root / name))


def test_tiles_do_not_depend_on_count_or_workers(tmp_path: Path, potsdam_root: Path) -> None:
    one = tmp_path / "one"
    generate("potsdam", one, seed=3, tiles=1, tile_size_m=160 * P_GSD)
    assert_same_files(one, potsdam_root, one)
    par = tmp_path / "par"
    generate("potsdam", par, seed=3, tiles=2, tile_size_m=160 * P_GSD, workers=2)
    assert_same_files(par, potsdam_root, potsdam_root)


@pytest.mark.parametrize(("domain", "size_px"), [("vaihingen", 1000), ("potsdam", 1200)])
def test_class_shares_near_isprs(domain: str, size_px: int) -> None:
    spec = DOMAINS[domain]
    counts = sum(np.bincount(make_tile(spec, t, 0, size_px).label.ravel(), minlength=6) for t in spec.train_tiles[:2])
    share = dict(zip(SEG_CLASSES, counts / counts.sum()))
    bands = {
        "impervious": (0.15, 0.40),
        "building": (0.15, 0.38),
        "low_vegetation": (0.10, 0.38),
        "tree": (0.10, 0.28),
        "car": (0.006, 0.035),
        "clutter": (0.003, 0.07),
    }
    for name, (lo, hi) in bands.items():
        assert lo <= share[name] <= hi, (name, share)


def _pixels(domain: str, seed: int, size_px: int) -> tuple[np.ndarray, np.ndarray]:
    spec = DOMAINS[domain]
    tiles = [make_tile(spec, t, seed, size_px) for t in spec.train_tiles[:2]]
    x = np.concatenate([t.image(spec.bands).reshape(-1, 3) for t in tiles]).astype(np.float32)
    y = np.concatenate([t.label.ravel() for t in tiles]).astype(np.int64)
    return x, y


def _miou(pred: np.ndarray, truth: np.ndarray, n: int = 6) -> float:
    cm = np.bincount(truth * n + pred, minlength=n * n).reshape(n, n)
    inter = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - inter
    present = cm.sum(1) > 0
    return float(np.mean(inter[present] / union[present]))


def test_miou_by_hand() -> None:
    truth = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 1, 1])
    # class 0: 1 / 2, class 1: 2 / 3
    assert _miou(pred, truth, n=2) == pytest.approx((1 / 2 + 2 / 3) / 2)


@pytest.mark.parametrize(("domain", "size_px"), [("vaihingen", 500), ("potsdam", 700)])
def test_colour_only_classifier_is_far_from_solving_it(domain: str, size_px: int) -> None:
    x0, y0 = _pixels(domain, seed=0, size_px=size_px)
    x1, y1 = _pixels(domain, seed=1, size_px=size_px)
    assert set(np.unique(y0)) == set(range(6))  # every class has a fitted mean
    means = np.stack([x0[y0 == c].mean(0) for c in range(6)])
    pred = ((x1[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert _miou(pred, y1) < 0.6
    # even the best per-pixel colour rule (majority class per quantised colour, fitted on seed 0) stays far from
    # the 0.96 accuracy of a trivially separable twin
    key = lambda x: (x.astype(np.int64) // 8) @ np.array([1024, 32, 1])  # noqa: E731
    votes = np.zeros((32768, 6))
    np.add.at(votes, (key(x0), y0), 1)
    assert (votes.argmax(1)[key(x1)] == y1).mean() < 0.9


def test_refuses_non_empty_folder_unless_overwrite(tmp_path: Path) -> None:
    root = tmp_path / "out"
    generate("vaihingen", root, seed=0, tiles=3, tile_size_m=80 * V_GSD)
    with pytest.raises(InputError, match=re.escape(str(root))):
        generate("vaihingen", root, seed=0, tiles=1, tile_size_m=80 * V_GSD)
    (root / "notes.txt").write_text("mine")
    summary = generate("vaihingen", root, seed=0, tiles=1, tile_size_m=80 * V_GSD, overwrite=True)
    assert summary.tiles == ["top_mosaic_09cm_area1"]
    # stale tiles of the earlier run are gone, files that are not ours are kept
    assert len(list(root.rglob("*.tif"))) == 3 and (root / "notes.txt").exists()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(InputError, match="expected a folder"):
        generate("vaihingen", a_file)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"domain": "toronto"}, "domain"),
        ({"domain": "vaihingen", "tiles": 34}, "tiles"),
        ({"domain": "potsdam", "tiles": 0}, "tiles"),
        ({"domain": "vaihingen", "tile_size_m": 1.0}, "tile_size_m"),
        ({"domain": "potsdam", "tile_size_m": float("nan")}, "tile_size_m"),
        ({"domain": "potsdam", "workers": 0}, "workers"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        generate(out_dir=tmp_path / "o", **kwargs)
    assert not (tmp_path / "o").exists()


class _Recorder:
    def __init__(self, cancel_after: int | None = None) -> None:
        self.fractions: list[float | None] = []
        self.cancel_after = cancel_after

    def report(self, fraction: float | None, message: str = "") -> None:
        self.fractions.append(fraction)

    def is_canceled(self) -> bool:
        return self.cancel_after is not None and len(self.fractions) > self.cancel_after


def test_progress_and_cancel(tmp_path: Path) -> None:
    rec = _Recorder()
    summary = generate("vaihingen", tmp_path / "a", tiles=2, tile_size_m=80 * V_GSD, progress=rec)
    assert rec.fractions[-1] == 1.0 and rec.fractions == sorted(rec.fractions)
    assert sum(summary.class_shares.values()) == pytest.approx(1.0) and summary.elapsed_s > 0
    with pytest.raises(Cancelled):
        generate("vaihingen", tmp_path / "b", tiles=3, tile_size_m=80 * V_GSD, progress=_Recorder(cancel_after=1))
    written = [p.name for p in (tmp_path / "b").rglob("*") if p.is_file()]
    assert not any(".partial" in n for n in written) and "synth_summary.json" not in written
    assert len([n for n in written if n.endswith(".tif")]) == 3  # only the first tile was finished


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    args = ["--domain", "potsdam", "--out", str(out), "--seed", "1", "--tiles", "2", "--tile-size-m", "4"]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "potsdam: 2 tiles (1 train, 1 val) of 80 px" in printed and "class shares" in printed
    assert len(list(out.rglob("*.tif"))) == 10
    assert cli_main(args) == 2
    assert "not empty" in capsys.readouterr().err
    assert cli_main([*args, "--overwrite"]) == 0


def test_suburb_is_a_third_domain_in_the_potsdam_layout(tmp_path: Path) -> None:
    """The held-out town (issue 11): coarser GSD, its own sensor balance and autumn vegetation, readable by the
    Potsdam reader (so engine.chip takes it unchanged)."""
    from engine.data.isprs import find_isprs_tiles
    from engine.synth.materials import REFLECTANCE, M, seasonal_reflectance

    spec = DOMAINS["suburb"]
    assert spec.gsd == 0.13 and spec.season == "autumn" and spec.style == "suburb"
    root = tmp_path / "suburb"
    generate("suburb", root, seed=3, tiles=2, tile_size_m=26.0)
    tiles = find_isprs_tiles("potsdam", root, "RGB")
    assert len(tiles) == 2 and {t.split for t in tiles} == {"train", "val"}
    image = gdal.Open(str(tiles[0].image))
    assert image.GetGeoTransform()[1] == pytest.approx(0.13) and image.RasterXSize == 200
    autumn = seasonal_reflectance("autumn")
    assert autumn[int(M.TREE), 3] < REFLECTANCE[int(M.TREE), 3]  # yellowing crowns reflect less NIR
    assert np.array_equal(autumn[int(M.ROOF_RED)], REFLECTANCE[int(M.ROOF_RED)])
    # a different look from the Potsdam twin of the same tile: the band balance tips towards blue
    potsdam = make_tile(DOMAINS["potsdam"], "top_potsdam_2_10", 3, 200)
    suburb = make_tile(spec, "top_potsdam_2_10", 3, 200)
    ratio = lambda arrays: arrays.bands["blue"].mean() / arrays.bands["red"].mean()  # noqa: E731
    assert ratio(suburb) > 1.1 * ratio(potsdam)
