"""Data stage: ISPRS tiles and labels, detection boxes, the chip store, torch datasets and augmentations.

Submodules are imported explicitly (``engine.data.isprs`` needs GDAL, ``engine.data.chipstore`` does not), so
reading chips works on machines without GDAL.
"""
