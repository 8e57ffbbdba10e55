"""Whole regions: one job over many rasters on dask.distributed (``python -m engine.region``).

``run_region(RegionOptions(model, inputs, out_dir, ...))`` → :class:`RegionSummary`; outputs in ``out_dir``:
``classes/<stem>.tif`` (COG per input), ``classes.vrt``, ``detections.gpkg`` and ``region.json``.
"""

from engine.region.job import RegionOptions, RegionSummary, run_region

__all__ = ["RegionOptions", "RegionSummary", "run_region"]
