"""Chipping your own rasters: polygons in another CRS, class rasters with nodata, AOI, splits, bad input.

Expected masks come from GDAL's own rasterisation of the label file (gdal.Rasterize on the image grid, which
reprojects the layer itself), expected boxes from polygon envelopes computed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, ogr, osr
from scipy import ndimage

from engine.chip.__main__ import main as chip_main
from engine.chip.splits import SplitPlan
from engine.chip.userdata import LabelSource, chip_images
from engine.core.classes import BACKGROUND, IGNORE_INDEX
from engine.core.errors import ConfigError, InputError
from engine.data.chipstore import open_chip_dataset
from engine.data.labels import disc, erode_mask

gdal.UseExceptions()
ogr.UseExceptions()

GSD = 0.5
ORIGIN = (500000.0, 5400000.0)  # UTM 32N
W, H = 96, 80
HOUSE = [(10, 8), (30, 8), (30, 20), (10, 20)]  # pixel rings (x, y)
SHED = [(40, 10), (60, 30), (45, 40)]  # a triangle: envelope x 40..60, y 10..40
BARN = [(70, 50), (90, 50), (90, 70), (70, 70)]


def utm() -> osr.SpatialReference:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32632)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def wgs84() -> osr.SpatialReference:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def to_map(x: float, y: float, origin=ORIGIN, gsd=GSD) -> tuple[float, float]:
    return origin[0] + x * gsd, origin[1] - y * gsd


def write_image(path: Path, bands: int = 3, dtype=np.uint8, nodata=None, seed: int = 0, width=W, height=H) -> Path:
    rng = np.random.default_rng(seed)
    top = 255 if dtype == np.uint8 else 2047
    data = rng.integers(1, top, (bands, height, width)).astype(dtype)
    kind = gdal.GDT_Byte if dtype == np.uint8 else gdal.GDT_UInt16
    ds = gdal.GetDriverByName("GTiff").Create(str(path), width, height, bands, kind, ["PHOTOMETRIC=MINISBLACK"])
    ds.SetGeoTransform((ORIGIN[0], GSD, 0, ORIGIN[1], 0, -GSD))
    ds.SetProjection(utm().ExportToWkt())
    for b in range(bands):
        band = ds.GetRasterBand(b + 1)
        if nodata is not None:
            band.SetNoDataValue(nodata)
            data[b, :, :16] = nodata  # a nodata strip on the left
        band.WriteArray(data[b])
    ds = None
    return path


def write_polygons(path: Path, rings, values, srs: osr.SpatialReference | None = None, field="kind") -> Path:
    """Polygons given as pixel rings of the image grid, written in ``srs`` (default WGS 84: not the image's; a
    local CRS gets the UTM coordinates as they are)."""
    srs = wgs84() if srs is None else srs
    to_target = None if srs.IsLocal() else osr.CoordinateTransformation(utm(), srs)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = ds.CreateLayer("labels", srs, ogr.wkbPolygon)
    if field:
        layer.CreateField(ogr.FieldDefn(field, ogr.OFTString))
    for ring_px, value in zip(rings, values):
        ring = ogr.Geometry(ogr.wkbLinearRing)
        for x, y in [*ring_px, ring_px[0]]:
            ring.AddPoint_2D(*to_map(x, y))
        polygon = ogr.Geometry(ogr.wkbPolygon)
        polygon.AddGeometry(ring)
        if to_target is not None:
            polygon.Transform(to_target)
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(polygon)
        if field:
            feature.SetField(field, value)
        layer.CreateFeature(feature)
    ds = None
    return path


def gdal_mask(image: Path, labels: Path, classes: dict[str, int]) -> np.ndarray:
    """GDAL's own rasterisation of the label file on the image grid: 0 background, class id per 'kind'."""
    ref = gdal.Open(str(image))
    out = gdal.GetDriverByName("MEM").Create("", ref.RasterXSize, ref.RasterYSize, 1, gdal.GDT_Byte)
    out.SetGeoTransform(ref.GetGeoTransform())
    out.SetProjection(ref.GetProjection())
    for name, value in classes.items():
        gdal.Rasterize(out, str(labels), burnValues=[value], where=f"kind = '{name}'")
    return out.ReadAsArray()


@pytest.fixture
def scene(tmp_path: Path) -> dict[str, Path]:
    return {
        "image": write_image(tmp_path / "ortho.tif"),
        "labels": write_polygons(tmp_path / "labels.gpkg", [HOUSE, SHED, BARN], ["house", "shed", "house"]),
    }


def all_chips(data):
    for split in data.splits:
        for chip, mask, boxes in zip(data.chips(split), data.masks(split), data.boxes(split)):
            yield split, chip, mask, boxes


def test_vector_labels_in_another_crs_give_gdals_masks_and_envelope_boxes(scene, tmp_path: Path):
    out = tmp_path / "chips"
    plan = SplitPlan("block", val=0.0, block=64)
    summary = chip_images([scene["image"]], out, LabelSource("both", str(scene["labels"]), "kind"), size=32,
                          stride=32, plan=plan, min_area=1)  # fmt: skip
    data = open_chip_dataset(out)
    m = data.manifest
    assert m["task"] == "both" and m["seg_classes"] == [BACKGROUND, "house", "shed"]
    assert m["det_classes"] == ["house", "shed"] and len(m["det_colors"]) == 2
    assert [r["value"] for r in m["class_tables"]["det"]] == ["house", "shed"]
    expected_mask = gdal_mask(scene["image"], scene["labels"], {"house": 1, "shed": 2})
    assert (expected_mask > 0).sum() > 600  # the polygons really are there
    # hand-computed envelopes (pixels) of the polygons, clipped to each chip
    envelopes = {"house": [(10, 8, 30, 20), (70, 50, 90, 70)], "shed": [(40, 10, 60, 40)]}
    seen = 0
    for _, chip, mask, (boxes, labels) in all_chips(data):
        x, y, w, h = chip["window"]
        np.testing.assert_array_equal(mask[:h, :w], expected_mask[y : y + h, x : x + w])
        want = []
        for name, boxes_px in envelopes.items():
            for x0, y0, x1, y1 in boxes_px:
                c = (max(x0 - x, 0), max(y0 - y, 0), min(x1 - x, w), min(y1 - y, h))
                if c[2] > c[0] and c[3] > c[1]:
                    want.append((*c, m["det_classes"].index(name)))
        got = [(*b, int(lab)) for b, lab in zip(boxes.tolist(), labels.tolist())]
        np.testing.assert_allclose(sorted(got), sorted(want), atol=1e-4) if want else None
        assert len(got) == len(want)
        seen += len(got)
    assert seen == sum(summary.boxes_per_class.values()) >= 5  # the triangle and barn span several chips
    assert sum(data.splits.values()) == 3 * 3  # 96×80 px at 32: 3 columns, 3 rows (last row flush)


def test_class_raster_with_nodata_on_a_coarser_grid_is_warped_nearest(tmp_path: Path):
    image = write_image(tmp_path / "pan.tif", bands=1, dtype=np.uint16)
    coarse = np.full((H // 2, W // 2), 3, np.uint8)
    coarse[:, 24:] = 7
    coarse[30:, :] = 0  # nodata
    path = tmp_path / "landcover.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(path), W // 2, H // 2, 1, gdal.GDT_Byte)
    ds.SetGeoTransform((ORIGIN[0], 2 * GSD, 0, ORIGIN[1], 0, -2 * GSD))
    ds.SetProjection(utm().ExportToWkt())
    ds.GetRasterBand(1).SetNoDataValue(0)
    ds.GetRasterBand(1).WriteArray(coarse)
    ds = None
    classes = tmp_path / "classes.yaml"
    classes.write_text("- {name: field, value: 3, colour: [250, 220, 0]}\n- {name: forest, value: 7}\n")
    out = tmp_path / "chips"
    plan = SplitPlan("tile", val=0.0)
    labels = LabelSource("seg", str(path), classes_file=str(classes))
    chip_images([image], out, labels, size=16, stride=16, plan=plan)
    data = open_chip_dataset(out)
    assert data.seg_classes == ["field", "forest"] and data.manifest["seg_colors"][0] == [250, 220, 0]
    assert data.det_classes == [] and data.bands == ["band1"] and data.value_scaling["dtype"] == "uint16"
    fine = np.repeat(np.repeat(coarse, 2, 0), 2, 1)
    expected = np.select([fine == 3, fine == 7], [0, 1], IGNORE_INDEX).astype(np.uint8)
    rows = set()
    for _, chip, mask, _ in all_chips(data):
        x, y, w, h = chip["window"]
        np.testing.assert_array_equal(mask, expected[y : y + h, x : x + w])
        rows.add(y)
    assert max(rows) < 60  # chips wholly in the nodata rows (y >= 60) are skipped
    assert len(rows) == 4


def test_aoi_restricts_labels_and_detection_chips(scene, tmp_path: Path):
    aoi = write_polygons(tmp_path / "aoi.gpkg", [[(0, 0), (64, 0), (64, 32), (0, 32)]], [None], field=None)
    plan = SplitPlan("block", val=0.0)
    spec = LabelSource("seg", str(scene["labels"]), "kind", aoi=str(aoi))
    chip_images([scene["image"]], tmp_path / "seg", spec, size=32, stride=32, plan=plan)
    seg = open_chip_dataset(tmp_path / "seg")
    windows = sorted(tuple(c["window"]) for c in seg.manifest["chips"])
    # a chip flush with the AOI edge (x 64..96) only touches it along a line: no labelled pixel → skipped
    assert windows == [(0, 0, 32, 32), (32, 0, 32, 32)]
    spec = LabelSource("det", str(scene["labels"]), "kind", aoi=str(aoi))
    chip_images([scene["image"]], tmp_path / "det", spec, size=32, stride=16, plan=plan)
    det = open_chip_dataset(tmp_path / "det")
    for chip in det.manifest["chips"]:
        x, y, w, h = chip["window"]
        assert x + w <= 64 and y + h <= 32  # wholly inside the AOI
    assert det.manifest["task"] == "det" and det.seg_classes == []
    assert (np.asarray(det.masks("train")) == IGNORE_INDEX).all()


def test_block_splits_are_reproducible_and_never_share_pixels(scene, tmp_path: Path):
    spec = LabelSource("seg", str(scene["labels"]), "kind")
    plan = SplitPlan("block", val=0.3, test=0.3, seed=5, block=48)
    runs = []
    for name in ("a", "b"):
        chip_images([scene["image"]], tmp_path / name, spec, size=32, stride=16, plan=plan)
        runs.append(open_chip_dataset(tmp_path / name).manifest)
    assert runs[0]["chips"] == runs[1]["chips"]
    chips = runs[0]["chips"]
    assert {c["split"] for c in chips} == {"train", "val", "test"}
    owner = np.full((H, W), "", object)
    for c in chips:
        x, y, w, h = c["window"]
        region = owner[y : y + h, x : x + w]
        assert set(region[region != ""].ravel()) <= {c["split"]}
        region[...] = c["split"]
    assert runs[0]["split"]["dropped_overlapping_chips"] > 0


def test_imagery_only_chips_of_a_folder_skip_nodata(tmp_path: Path):
    folder = tmp_path / "orthos"
    folder.mkdir()
    write_image(folder / "a.tif", bands=4, nodata=0, seed=1)
    write_image(folder / "b.tif", bands=4, seed=2)
    out = tmp_path / "chips"
    chip_main(["--image", str(folder), "--task", "none", "--out", str(out), "--size", "16", "--stride", "16",
               "--split-by", "tile", "--val-fraction", "0"])  # fmt: skip
    data = open_chip_dataset(out)
    assert data.task == "none" and data.arrays == ("images",) and not (out / "train" / "masks.npy").exists()
    assert all(c["boxes"] == [] for c in data.manifest["chips"])
    per_tile = {t: sum(c["tile"] == t for c in data.manifest["chips"]) for t in ("a", "b")}
    assert per_tile == {"a": 5 * 5, "b": 6 * 5}  # a's left 16 px column is nodata
    assert data.images("train").shape == (55, 16, 16, 4)


def test_imagery_only_chips_all_go_to_train_unless_a_share_is_asked_for(tmp_path: Path):
    """Training reads only the train split of unlabelled chips: by default none is held out (CLI and Python API),
    where labelled chips keep ChipOptions.val_fraction for validation; a share the caller gives is honoured."""
    image = str(write_image(tmp_path / "a.tif", seed=1))
    grid = ["--size", "16", "--stride", "16"]

    def splits(out: Path) -> dict[str, int]:
        manifest = open_chip_dataset(out).manifest
        return {s: sum(c["split"] == s for c in manifest["chips"]) for s in {c["split"] for c in manifest["chips"]}}

    assert chip_main(["--image", image, "--task", "none", "--out", str(tmp_path / "cli"), *grid]) == 0
    assert list(splits(tmp_path / "cli")) == ["train"]
    assert open_chip_dataset(tmp_path / "cli").manifest["split"]["val_fraction"] == 0.0
    chip_images([image], tmp_path / "api", LabelSource("none"), size=16, stride=16)
    assert list(splits(tmp_path / "api")) == ["train"]
    asked = ["--val-fraction", "0.3", "--block", "16"]
    assert chip_main(["--image", image, "--task", "none", "--out", str(tmp_path / "asked"), *grid, *asked]) == 0
    assert splits(tmp_path / "asked")["val"] > 0


def test_imagery_at_two_gsds_is_refused_before_chipping_with_how_to_resample(tmp_path: Path, capsys):
    folder = tmp_path / "orthos"
    folder.mkdir()
    write_image(folder / "a.tif", seed=1)
    coarse = gdal.Open(str(write_image(folder / "b.tif", seed=2)), gdal.GA_Update)
    coarse.SetGeoTransform((ORIGIN[0], 2 * GSD, 0, ORIGIN[1], 0, -2 * GSD))
    coarse = None
    out = tmp_path / "chips"
    code = chip_main(["--image", str(folder), "--task", "none", "--out", str(out), "--size", "16", "--stride", "16",
                      "--split-by", "tile", "--val-fraction", "0"])  # fmt: skip
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert code != 0 and len(errors) == 1 and "b.tif" in errors[0] and "gdalwarp -tr" in errors[0]
    assert not (out / "manifest.json").exists()


def test_cli_one_line_errors_and_nothing_left_behind(scene, tmp_path: Path, capsys):
    image, labels = str(scene["image"]), str(scene["labels"])
    out = tmp_path / "out"

    def fails(*args: str) -> str:
        assert chip_main(["--image", image, "--out", str(out), "--size", "32", "--stride", "32", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
        assert not out.exists() or not any(out.iterdir())
        return err

    assert "expected a class field 'type', found fields ['kind']" in fails("--labels", labels, "--task", "seg",
                                                                           "--class-field", "type")  # fmt: skip
    far = write_polygons(tmp_path / "far.gpkg", [[(1000, 1000), (1010, 1000), (1010, 1010)]], ["house"])
    assert "expected labels overlapping" in fails("--labels", str(far), "--task", "det", "--class-field", "kind")
    local = osr.SpatialReference()
    local.SetLocalCS("site grid")
    odd = write_polygons(tmp_path / "local.gpkg", [HOUSE], ["house"], srs=local)
    assert "cannot be transformed" in fails("--labels", str(odd), "--task", "seg")
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps([{"name": "house", "value": "house"}]))
    err = fails("--labels", labels, "--task", "seg", "--class-field", "kind", "--classes", str(classes))
    assert "class values ['shed'] are not in the class table" in err
    aoi = write_polygons(tmp_path / "aoi.gpkg", [[(0, 0), (8, 0), (8, 8), (0, 8)]], [None], field=None)
    assert "expected at least one chip" in fails("--labels", labels, "--task", "det", "--aoi", str(aoi))
    assert "--task" in fails("--labels", labels)


def test_invalid_geometries_are_repaired_or_skipped_and_counted(scene, tmp_path: Path):
    bowtie = [(10, 10), (30, 30), (30, 10), (10, 30)]  # self-intersecting: MakeValid makes two triangles
    path = write_polygons(tmp_path / "bad.gpkg", [bowtie, HOUSE], ["house", "house"])
    chip_images([scene["image"]], tmp_path / "c", LabelSource("det", str(path), class_name="building"), size=32,
                stride=32, plan=SplitPlan("tile", val=0.0))  # fmt: skip
    m = open_chip_dataset(tmp_path / "c").manifest
    assert m["labels"]["repaired_geometries"] == 1 and m["det_classes"] == ["building"]


def test_isprs_cli_still_requires_its_root(tmp_path: Path, capsys):
    assert chip_main(["--dataset", "vaihingen", "--out", str(tmp_path / "x")]) == 2
    assert "--root" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        SplitPlan("block", val=0.7, test=0.5)
    with pytest.raises(InputError, match="found nothing there"):
        chip_images([tmp_path / "missing.tif"], tmp_path / "y", LabelSource("none"))


def test_class_raster_detection_boxes_are_its_blobs_and_isprs_rasters_still_chip(tmp_path: Path):
    image = write_image(tmp_path / "rgbi.tif", bands=4)
    values = np.zeros((H, W), np.uint8)
    values[10:22, 5:25] = 5  # a pond
    values[40:60, 50:58] = 9  # a hedge
    path = tmp_path / "classes.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(path), W, H, 1, gdal.GDT_Byte)
    ds.SetGeoTransform((ORIGIN[0], GSD, 0, ORIGIN[1], 0, -GSD))
    ds.SetProjection(utm().ExportToWkt())
    ds.GetRasterBand(1).WriteArray(values)
    ds = None
    chip_images([image], tmp_path / "c", LabelSource("both", str(path)), size=96, stride=96,
                plan=SplitPlan("tile", val=0.0))  # fmt: skip
    data = open_chip_dataset(tmp_path / "c")
    assert data.seg_classes == [BACKGROUND, "class_5", "class_9"] and data.det_classes == ["class_5", "class_9"]
    boxes, labels = data.boxes("train")[0]
    assert boxes.tolist() == [[5, 10, 25, 22], [50, 40, 58, 60]] and labels.tolist() == [0, 1]
    # an ISPRS RGB label raster through the new CLI: the ISPRS class table
    rgb = tmp_path / "isprs.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(rgb), W, H, 3, gdal.GDT_Byte)
    ds.SetGeoTransform((ORIGIN[0], GSD, 0, ORIGIN[1], 0, -GSD))
    ds.SetProjection(utm().ExportToWkt())
    for b, level in enumerate((0, 0, 255)):  # all blue: building
        ds.GetRasterBand(b + 1).Fill(level)
    ds = None
    chip_images([image], tmp_path / "i", LabelSource("seg", str(rgb)), size=32, stride=32,
                plan=SplitPlan("tile", val=0.0))  # fmt: skip
    isprs = open_chip_dataset(tmp_path / "i")
    assert isprs.seg_classes[1] == "building" and (np.asarray(isprs.masks("train")) == 1).all()


def _erode_by_min_max(mask: np.ndarray, radius: int) -> np.ndarray:
    """The definition of the eroded label: a pixel keeps its class when min == max over its disc (border replicated)."""
    if radius <= 0:
        return mask.copy()
    footprint = disc(radius)
    low = ndimage.minimum_filter(mask, footprint=footprint, mode="nearest")
    high = ndimage.maximum_filter(mask, footprint=footprint, mode="nearest")
    return np.where(low == high, mask, np.uint8(IGNORE_INDEX)).astype(np.uint8)


def test_fast_erosion_equals_the_min_max_filter_definition():
    rng = np.random.default_rng(0)
    for trial in range(150):
        h, w = rng.integers(1, 40, 2)
        radius = int(rng.integers(0, 5))
        if trial % 2:
            mask = (rng.integers(0, 6, (h, w)) * (rng.random((h, w)) < 0.1)).astype(np.uint8)
        else:
            blocks = rng.integers(0, 4, (h // 4 + 1, w // 4 + 1))
            mask = np.kron(blocks, np.ones((4, 4), int))[:h, :w].astype(np.uint8)
        np.testing.assert_array_equal(erode_mask(mask, radius), _erode_by_min_max(mask, radius))
