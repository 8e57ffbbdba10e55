"""Tiled, georeferenced inference of exported ONNX models (needs numpy, GDAL, onnxruntime and jsonschema; no torch).

``predict_raster(model, raster, out_raster=..., out_vector=...)`` → :class:`PredictSummary`; CLI
``python -m engine.predict``.
"""

from engine.predict.pipeline import PredictSummary, predict_raster

__all__ = ["PredictSummary", "predict_raster"]
