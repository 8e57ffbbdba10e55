"""Run engine code inside QGIS without changing anybody else's world.

The engine wants GDAL exceptions on (its modules turn them on when first imported) and its dependency environment on
``sys.path``; QGIS and other plugins expect GDAL's default error mode, GDAL's block cache as they set it and their
own ``sys.path``. :func:`engine_scope` gives the engine its settings for the duration of one call and puts everything
back afterwards. (GDAL 3.6, which QGIS 3.22-3.28 ship, has no ``gdal.ExceptionMgr``; this is the same idea.)
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from types import ModuleType

from .environment import PythonEnv, engine_paths, engine_root, install_message


@contextlib.contextmanager
def gdal_state() -> Iterator[None]:
    """GDAL/OGR/OSR exceptions on inside; the previous exception modes and block-cache size restored on exit."""
    from osgeo import gdal, ogr, osr

    turned_on = [module for module in (gdal, ogr, osr) if not module.GetUseExceptions()]
    cache = gdal.GetCacheMax()
    for module in turned_on:
        module.UseExceptions()
    try:
        yield
    finally:
        for module in reversed(turned_on):  # GDAL 3.6 keeps a stack of error handlers: unwind in reverse
            module.DontUseExceptions()
        if gdal.GetCacheMax() != cache:
            gdal.SetCacheMax(cache)


@contextlib.contextmanager
def engine_scope() -> Iterator[PythonEnv]:
    """The engine's imports and GDAL settings for one algorithm run (see the module docstring)."""
    with engine_paths() as env, gdal_state():
        yield env


def import_engine(module: str) -> ModuleType:
    """Import an engine module in the engine's scope; a missing dependency becomes an :class:`ImportError` that says
    what to install."""
    try:
        with engine_scope():
            return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        name = exc.name or module
        if name.split(".")[0] == "engine" and engine_root() is not None:
            raise ImportError(
                f"The pmtl engine at {engine_root()} has no module {name!r}: this plugin version needs a newer engine "
                f"(rebuild the plugin zip with scripts/package_plugin.py)."
            ) from exc
        raise ImportError(install_message([name.split(".")[0]])) from exc
