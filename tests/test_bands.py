"""Band names against a model's or a dataset's, 16-bit range warnings, and errors that name parameters in each front
door's words (engine.core.bands, engine.core.errors)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from osgeo import gdal

from engine.core.bands import StatedBands, check_band_names, known_band, mapping_hint, range_warning, raster_band_names
from engine.core.errors import (
    ConfigError,
    InputError,
    error_event,
    keyword_logger,
    param_ref,
    python_api,
    render_message,
)

RGB = ["red", "green", "blue"]


def test_band_name_spellings():
    assert [known_band(n) for n in ("Red", "R", "Near-Infrared", "NIR", "ir", "Gray", "", None, "band1")] == [
        "red", "red", "nir", "nir", "nir", None, None, None, None,
    ]  # fmt: skip


def test_a_described_mismatch_is_an_error_naming_both_lists_and_the_mapping():
    stated = StatedBands(("nir", "red", "green"), (True, True, True))
    fix = mapping_hint(stated, RGB)
    with pytest.raises(InputError) as raised:
        check_band_names(stated, RGB, "raster 'irrg.tif'", "the model expects", fix)
    message = str(raised.value)  # the command line's words
    assert "its bands are ['nir', 'red', 'green']" in message and "expects ['red', 'green', 'blue']" in message
    assert "map them in --bands (raster band numbers in the model's order), e.g. 2,3,?" in message
    assert "the raster has no band named ['blue']" in message
    # the user mapped the bands: their choice, a warning
    assert len(check_band_names(stated, RGB, "r", "the model expects", fix, strict=False)) == 1


def test_a_colour_interpretation_mismatch_alone_is_a_warning():
    """GeoTIFF writers call any 3-band 8-bit image red, green, blue: real Vaihingen NIR-R-G tiles say so too."""
    stated = StatedBands(("red", "green", "blue"), (False, False, False))
    warnings = check_band_names(stated, ["nir", "red", "green"], "r", "the model expects", "fix")
    assert len(warnings) == 1 and warnings[0].endswith("(if the colour interpretation is right)")


def test_unnamed_bands_and_unnamed_model_bands_are_warnings_and_a_match_is_silent():
    assert check_band_names(StatedBands((None, "green", None), (False,) * 3), RGB, "r", "the model expects", "f")[
        0
    ].startswith("r: cannot check bands [1, 3]")
    assert (
        "cannot check its bands"
        in check_band_names(StatedBands.of(RGB), ["band1", "band2"], "r", "the model expects", "f")[0]
    )
    assert check_band_names(StatedBands.of(["R", "G", "B"]), RGB, "r", "the model expects", "f") == []


def test_a_raster_states_descriptions_first_then_colour_interpretation():
    dataset = gdal.GetDriverByName("MEM").Create("", 4, 4, 3, gdal.GDT_Byte)
    dataset.GetRasterBand(1).SetDescription("nir")
    dataset.GetRasterBand(2).SetColorInterpretation(gdal.GCI_GreenBand)
    stated = raster_band_names(dataset)
    assert stated.names == ("nir", "green", None) and stated.described == (True, False, False)
    assert stated.pick([2, 1]) == StatedBands(("green", "nir"), (False, True))


@pytest.mark.parametrize(
    ("dtype", "values", "scale", "expected"),
    [
        (
            "uint16",
            (12.0, 6615.0),
            65535.0,
            "range over 12..6615 but are scaled by a maximum of 65535, so they use 10 %",
        ),
        ("uint16", (0.0, 16383.0), 4095.0, "so they saturate"),
        ("uint16", (0.0, 60000.0), 65535.0, None),
        ("uint8", (0.0, 40.0), 255.0, None),
        ("float32", (0.0, np.inf), 1.0, None),
    ],
)
def test_16_bit_and_float_range_warnings(dtype, values, scale, expected):
    warning = range_warning("raster 'x.tif'", dtype, values, scale, "value_max")
    if expected is None:
        assert warning is None
    else:  # logged, rendered by the front door (the CLIs' log filter: flags)
        assert expected in warning and "set --value-max to" in render_message(warning)


def test_errors_name_parameters_in_each_front_doors_words():
    error = ConfigError(f"{param_ref('value_max')}: expected a value > 0, found -1; see {param_ref('bands')}")
    assert str(error) == "--value-max: expected a value > 0, found -1; see --bands"
    assert error.params == ["value_max", "bands"]
    assert error.render(lambda name: f"'{name.title()}'") == "'Value_Max': expected a value > 0, found -1; see 'Bands'"
    assert error_event(error) == {"message": str(error), "template": error.template}
    assert error_event(OSError("disk")) == {"message": "disk", "template": "disk"}
    assert render_message("a [[task]] b [not a ref] [[x-y]]") == "a --task b [not a ref] [[x-y]]"
    with pytest.raises(ConfigError) as raised, python_api():  # raised by a public Python function: its keywords
        raise error
    assert str(raised.value) == "'value_max': expected a value > 0, found -1; see 'bands'"
    assert error_event(raised.value)["message"] == "--value-max: expected a value > 0, found -1; see --bands"


class _Listener(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_api_warnings_name_keywords_unless_a_front_door_listens_on_the_engine_logger(caplog):
    """A Python caller reads keyword names; a handler on the ``engine`` logger (the QGIS plugin's) gets the
    template to render in its dialog's words."""
    logger = keyword_logger("engine.test_words")
    assert keyword_logger("engine.test_words").filters == logger.filters and len(logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger="engine.test_words"):
        logger.warning("set %s to override", param_ref("value_max"))
        front_door = _Listener()
        logging.getLogger("engine").addHandler(front_door)
        try:
            logger.warning("set %s to override", param_ref("value_max"))
        finally:
            logging.getLogger("engine").removeHandler(front_door)
    assert [r.getMessage() for r in caplog.records] == ["set 'value_max' to override", "set [[value_max]] to override"]
    assert front_door.messages == ["set [[value_max]] to override"]


def test_the_chip_cli_warns_about_16_bit_range_with_its_flag(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from qgis_helpers import write_geotiff

    data = np.full((3, 64, 64), 400, np.uint16)
    data[:, 0, 0] = 4000
    path = write_geotiff(tmp_path / "ortho16.tif", data, gsd=0.5)
    command = [
        sys.executable,
        "-m",
        "engine.chip",
        "--image",
        str(path),
        "--task",
        "none",
        "--out",
        str(tmp_path / "c"),
    ]
    done = subprocess.run([*command, "--size", "32", "--stride", "32"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "uint16 values range over 400..4000 but are scaled by a maximum of 65535" in done.stderr
    assert "set --scale-max to the sensor's maximum" in done.stderr and "[[" not in done.stderr
