"""Georeferenced 8-bit GeoTIFF writing (GDAL), atomically: temp name in the same folder, then rename."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from osgeo import gdal, osr

from engine.core.atomic import atomic_path
from engine.synth.domains import EPSG

gdal.UseExceptions()

_COLOR_INTERP = {
    "red": gdal.GCI_RedBand,
    "green": gdal.GCI_GreenBand,
    "blue": gdal.GCI_BlueBand,
    "nir": gdal.GCI_Undefined,
}


def _srs_wkt(epsg: int) -> str:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    return srs.ExportToWkt()


def write_geotiff(
    path: Path, image: np.ndarray, transform: tuple[float, ...], band_names: tuple[str, ...], epsg: int = EPSG
) -> None:
    """Write an (h, w, bands) uint8 array as a pixel-interleaved GeoTIFF with CRS ``epsg`` and ``transform``.

    Band descriptions carry the band names (e.g. nir, red, green) so a reader can check the order.
    """
    h, w, c = image.shape
    image = np.ascontiguousarray(image, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        ds = gdal.GetDriverByName("GTiff").Create(str(tmp), w, h, c, gdal.GDT_Byte, ["INTERLEAVE=PIXEL"])
        try:
            ds.SetGeoTransform(tuple(float(t) for t in transform))
            ds.SetProjection(_srs_wkt(epsg))
            for i, name in enumerate(band_names, start=1):
                band = ds.GetRasterBand(i)
                band.SetDescription(name)
                band.SetColorInterpretation(_COLOR_INTERP[name])
            ds.WriteRaster(
                0,
                0,
                w,
                h,
                image.tobytes(),
                buf_xsize=w,
                buf_ysize=h,
                buf_type=gdal.GDT_Byte,
                band_list=list(range(1, c + 1)),
                buf_pixel_space=c,
                buf_line_space=w * c,
                buf_band_space=1,
            )
            ds.FlushCache()
        finally:
            ds = None
