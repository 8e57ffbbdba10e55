"""pmtl:detect_segment: raster + ONNX model [+ AOI] → class-map raster + detections (+ class polygons)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsGeometry,
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingUtils,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorFileWriter,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QVariant

from ..layer_reader import LayerError, prediction_input
from ..styling import name_on_load, style_on_load
from .base import PmtlAlgorithm, is_unset
from .params import ADVANCED_OPTIONAL, Spec, output, spec

PRECISIONS = ("as exported", "fp32", "int8", "fp16")


def detection_fields() -> QgsFields:
    """The detection layer's schema when the engine wrote no file (class, class_id, score)."""
    fields = QgsFields()
    fields.append(QgsField("class", QVariant.String))
    fields.append(QgsField("class_id", QVariant.Int))
    fields.append(QgsField("score", QVariant.Double))
    return fields


class DetectSegment(PmtlAlgorithm):
    ALG_ID = "detect_segment"
    DISPLAY_NAME = "Detect and segment"
    GROUP_ID = "inference"
    REQUIRED_MODULES = ("onnxruntime", "numpy", "osgeo.gdal")
    HELP = (
        "Runs an ONNX model exported by pmtl over an orthophoto of any size, in overlapping tiles, and writes "
        "(1) a class-map raster (the model's classes and colours, same grid and CRS as the input) and (2) one layer "
        "of detected objects (the model's detection classes) as boxes with fields class, class_id and score, "
        "objects cut by tile seams reported once. Optionally the class map as polygons and per-class probabilities.\n\n"
        "Any raster layer works: files and GeoPackage rasters are read with GDAL; XYZ / WMS basemaps and virtual "
        "rasters through QGIS at the model's resolution over the area of interest (needed for world-wide "
        "basemaps); their outputs are on that grid, in the layer's CRS.\n\n"
        "Limit the work to an area with a polygon layer or an extent. 'Bands' maps input bands onto the model's "
        "bands in order (e.g. bands 4,1,2 of an R-G-B-NIR ortho for a NIR-R-G model); 16-bit input is scaled as "
        "the model says, nodata is not predicted, a different resolution is resampled. Uses the GPU when "
        "onnxruntime has CUDA, else the CPU.\n\n"
        "Example (qgis_process): qgis_process run pmtl:detect_segment -- INPUT=/data/ortho.tif "
        "MODEL=/models/student.onnx OUTPUT_RASTER=/out/classes.tif OUTPUT_DETECTIONS=/out/detections.gpkg"
    )

    def parameters(self) -> list[Spec]:
        return [*self._inputs(), *self._tuning(), *self._destinations()]

    def _inputs(self) -> list[Spec]:
        raster = (
            "An orthophoto: any raster layer (a file, a GeoPackage raster, an XYZ / WMS basemap, a virtual "
            "raster). Its band descriptions / colour interpretation are checked against the model's band names."
        )
        bands = "Input band numbers in the model's band order; empty: the first bands as they are."
        aoi = "Only pixels inside these polygons are processed; outside is nodata."
        polygons, several = [QgsProcessing.TypeVectorPolygon], {"optional": True, "allowMultiple": True}
        return [
            spec("raster", "INPUT", "Input raster", raster),
            self.onnx_model_spec("MODEL"),
            spec("band", "BANDS", "Bands (model order)", bands, parentLayerParameterName="INPUT", **several),
            spec("source", "AOI", "Area of interest (polygons)", aoi, types=polygons, optional=True),
            spec("extent", "EXTENT", "Area of interest (extent)", "A rectangle instead of polygons.", optional=True),
        ]

    def _tuning(self) -> list[Spec]:
        overlap, batch = (
            "Empty: the overlap the model recommends.",
            "Tiles per inference batch (empty: the engine's default).",
        )
        score = "Boxes scoring below it are dropped (empty: the model's own, per class: the best F1 on validation)."
        value_max = "Raw value that maps to 1.0 (e.g. 4095 for 12-bit data; empty: as the model was trained)."
        gsd = "A raster whose resolution is further than this factor from the model's is refused (empty: 8)."
        precision = (
            "The precision the model must have (its metadata says which): int8 runs fastest on CPUs, fp16 on "
            "CUDA GPUs; export one with 'Export a checkpoint to ONNX'. 'as exported' accepts any."
        )
        optional, probability = ADVANCED_OPTIONAL, {"minValue": 0.0, "maxValue": 1.0}
        return [
            spec("integer", "OVERLAP", "Tile overlap (px)", overlap, **optional, minValue=0),
            spec("integer", "BATCH_SIZE", "Batch size", batch, **optional, minValue=1),
            spec("double", "SCORE_THRESHOLD", "Detection score threshold", score, **optional, **probability),
            spec("double", "VALUE_MAX", "Input value maximum", value_max, **optional, minValue=1.0),
            spec("double", "MAX_GSD_RATIO", "Largest GSD ratio", gsd, **optional, minValue=1.0),
            self.device_spec("auto: CUDA when onnxruntime has it, else the CPU (the log says which ran)."),
            spec("enum", "PRECISION", "Model precision", precision, options=PRECISIONS, defaultValue=0, advanced=True),
        ]

    def _destinations(self) -> list[Spec]:
        classes = "GeoTIFF, uint8 class index per pixel with the model's class colours; nodata outside the data / AOI."
        boxes = "One box polygon per object with fields class, class_id, score, in the raster's CRS."
        polygons = "The class map as polygons (GDAL polygonize); not written unless asked for."
        probs = "One band per class with the blended softmax probability."
        vector = QgsProcessing.TypeVectorPolygon
        later = {"optional": True, "createByDefault": False}
        return [
            spec("raster_out", "OUTPUT_RASTER", "Class map", classes),
            spec("sink", "OUTPUT_DETECTIONS", "Detections", boxes, type=vector),
            spec("sink", "OUTPUT_POLYGONS", "Class polygons", polygons, type=vector, **later),
            spec("raster_out", "OUTPUT_PROBS", "Class probabilities", probs, **later, advanced=True),
            output("string", "SUMMARY", "Run summary (JSON)"),
        ]

    def check_values(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str | None:
        if not is_unset(parameters, "AOI") and not is_unset(parameters, "EXTENT"):
            return "Give the area of interest as polygons or as an extent, not both."
        return None

    def process(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        layer = self.parameterAsRasterLayer(parameters, "INPUT", context)
        onnx_model = self._open_model(parameters, context, feedback)
        aoi_geometries = self._aoi_geometries(parameters, context, layer.crs())
        raster_input = self._raster_input(layer, onnx_model.info.gsd, aoi_geometries, feedback)
        paths = self._output_paths(parameters, context, onnx_model.info, feedback)
        summary = self.call_engine(
            self.engine("engine.predict").predict_raster,
            feedback,
            model_path=onnx_model,  # opened once: its metadata decided the outputs above
            input_path=raster_input,
            out_raster=paths["raster"],
            out_vector=paths["detections"],
            aoi=self._aoi_file(aoi_geometries, layer.crs(), context),
            bands=self.parameterAsInts(parameters, "BANDS", context) or None,
            overlap=self.optional_number(parameters, "OVERLAP", context, integer=True),
            batch_size=self.optional_number(parameters, "BATCH_SIZE", context, integer=True),
            out_probs=paths["probs"],
            out_polygons=paths["polygons"],
            device=self.device(parameters, context),
            score_thresh=self.optional_number(parameters, "SCORE_THRESHOLD", context),
            value_max=self.optional_number(parameters, "VALUE_MAX", context),
            **self._gsd_limit(parameters, context),
            progress=self.progress(feedback),
        )
        results = self._layers(parameters, context, paths, onnx_model.info, layer)
        summary = summary.as_dict() if hasattr(summary, "as_dict") else summary
        feedback.pushInfo(f"Summary: {json.dumps({k: v for k, v in summary.items() if k != 'warnings'}, default=str)}")
        results["SUMMARY"] = json.dumps(summary, default=str)
        return results

    def _open_model(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> Any:
        """The ONNX model, opened once, checked to have the precision the user asked for."""
        model = self.existing_path(self.parameterAsFile(parameters, "MODEL", context), "ONNX model")
        device = self.device(parameters, context)
        onnx_model = self.call_engine(
            self.engine("engine.predict.model").OnnxModel, feedback, path=model, device=device
        )
        info = onnx_model.info
        precision = info.raw.get("precision", "fp32") if info.source == "pmtl" else "fp32"
        wanted = PRECISIONS[self.parameterAsEnum(parameters, "PRECISION", context)]
        if wanted != PRECISIONS[0] and wanted != precision:
            raise QgsProcessingException(
                f"ONNX model: expected precision {wanted}, {model} is {precision}; export the checkpoint again "
                f"with Precision {wanted} ('Export a checkpoint to ONNX') or set Model precision to 'as exported'"
            )
        feedback.pushInfo(f"Model precision {precision}, onnxruntime provider {onnx_model.provider}")
        return onnx_model

    def _output_paths(
        self, parameters: dict[str, Any], context: QgsProcessingContext, info: Any, feedback: QgsProcessingFeedback
    ) -> dict[str, str | None]:
        """Where the engine writes each output the model's heads can make (None: not written); the vector outputs
        go to temporary GeoPackages first, copied into the sinks after."""
        segments, detects = info.seg_output is not None, info.det_scores_output is not None
        if not segments:
            feedback.pushWarning("The model has no segmentation head: no class map, probabilities or polygons.")
        if not detects:
            feedback.pushWarning("The model has no detection head: the detections layer stays empty.")
        paths: dict[str, str | None] = {"raster": None, "probs": None, "polygons": None, "detections": None}
        if segments:
            paths["raster"] = self.parameterAsOutputLayer(parameters, "OUTPUT_RASTER", context)
            if not is_unset(parameters, "OUTPUT_PROBS"):
                paths["probs"] = self.parameterAsOutputLayer(parameters, "OUTPUT_PROBS", context)
            if not is_unset(parameters, "OUTPUT_POLYGONS"):
                paths["polygons"] = QgsProcessingUtils.generateTempFilename("pmtl_polygons.gpkg")
        if detects:
            paths["detections"] = QgsProcessingUtils.generateTempFilename("pmtl_detections.gpkg")
        return paths

    def _layers(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        paths: dict[str, str | None],
        info: Any,
        layer: Any,
    ) -> dict[str, Any]:
        """The output layers (vectors copied into their sinks), styled in the model's class colours and named after
        the input layer when loaded."""
        seg = (info.head("seg").classes, info.head("seg").colors)
        results: dict[str, Any] = {}
        if paths["raster"]:
            results["OUTPUT_RASTER"] = paths["raster"]
            style_on_load(context, paths["raster"], "class_raster", seg)
        detections = self._copy_to_sink(parameters, context, paths["detections"], "OUTPUT_DETECTIONS", layer.crs())
        results["OUTPUT_DETECTIONS"] = detections
        style_on_load(context, detections, "detections", (info.head("det").classes, info.head("det").colors))
        if paths["polygons"]:
            polygons = self._copy_to_sink(parameters, context, paths["polygons"], "OUTPUT_POLYGONS", layer.crs())
            results["OUTPUT_POLYGONS"] = polygons
            style_on_load(context, polygons, "class_polygons", seg)
        if paths["probs"]:
            results["OUTPUT_PROBS"] = paths["probs"]
        for name, value in results.items():
            name_on_load(context, value, self.parameterDefinition(name).description(), layer)
        return results

    def _gsd_limit(self, parameters: dict[str, Any], context: QgsProcessingContext) -> dict[str, float]:
        """``max_gsd_ratio`` when given (else the engine's default applies)."""
        ratio = self.optional_number(parameters, "MAX_GSD_RATIO", context)
        return {} if ratio is None else {"max_gsd_ratio": ratio}

    @staticmethod
    def _raster_input(
        layer: QgsRasterLayer, gsd: float | None, aoi: list[QgsGeometry], feedback: QgsProcessingFeedback
    ) -> Any:
        """The layer as the engine reads it: a GDAL name, or a provider reader (XYZ, WMS, virtual rasters, …) at the
        model's GSD over the area of interest's bounding box."""
        area = None
        for geometry in aoi:
            if area is None:
                area = QgsRectangle(geometry.boundingBox())
            else:
                area.combineExtentWith(geometry.boundingBox())
        try:
            source = prediction_input(layer, gsd, area)
        except LayerError as exc:
            raise QgsProcessingException(f"Input raster: {exc}") from exc
        if not isinstance(source, str):
            rx, ry = source.geotransform[1], -source.geotransform[5]
            feedback.pushInfo(
                f"Reading {source.name} through its QGIS provider: {source.width} x {source.height} px of "
                f"{rx:.6g} x {ry:.6g} map units ({layer.crs().authid()})"
            )
        return source

    def _aoi_geometries(
        self, parameters: dict[str, Any], context: QgsProcessingContext, crs: QgsCoordinateReferenceSystem
    ) -> list[QgsGeometry]:
        """The area of interest (polygons or extent) in the raster's CRS; empty when none was given."""
        geometries: list[QgsGeometry] = []
        if not is_unset(parameters, "AOI"):
            source = self.parameterAsSource(parameters, "AOI", context)
            transform = QgsCoordinateTransform(source.sourceCrs(), crs, context.transformContext())
            for feature in source.getFeatures():
                geometry = QgsGeometry(feature.geometry())
                if not geometry.isEmpty():
                    geometry.transform(transform)
                    geometries.append(geometry)
            if not geometries:
                raise QgsProcessingException("Area of interest (polygons): the layer has no polygon to process.")
        elif not is_unset(parameters, "EXTENT"):
            geometries.append(self.parameterAsExtentGeometry(parameters, "EXTENT", context, crs))
        return geometries

    @staticmethod
    def _aoi_file(
        geometries: list[QgsGeometry], crs: QgsCoordinateReferenceSystem, context: QgsProcessingContext
    ) -> str | None:
        """The AOI as a GeoPackage in the raster's CRS, for the engine (GDAL) to read."""
        if not geometries:
            return None
        path = QgsProcessingUtils.generateTempFilename("pmtl_aoi.gpkg")
        options = QgsVectorFileWriter.SaveVectorOptions()
        options.driverName = "GPKG"
        writer = QgsVectorFileWriter.create(
            path, QgsFields(), QgsWkbTypes.MultiPolygon, crs, context.transformContext(), options
        )
        for geometry in geometries:
            feature = QgsFeature()
            geometry = QgsGeometry(geometry)
            geometry.convertToMultiType()
            feature.setGeometry(geometry)
            writer.addFeature(feature)
        del writer
        return path

    def _copy_to_sink(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        path: str | None,
        name: str,
        crs: QgsCoordinateReferenceSystem,
    ) -> str:
        """Copy the engine's GeoPackage layer into the Processing sink the user chose (file, memory, …)."""
        source = QgsVectorLayer(path, "engine output", "ogr") if path and Path(path).exists() else None
        fields = QgsFields()
        for field in source.fields() if source is not None and source.isValid() else detection_fields():
            if field.name().lower() != "fid":
                fields.append(field)
        wkb = source.wkbType() if source is not None and source.isValid() else QgsWkbTypes.Polygon
        sink, dest_id = self.parameterAsSink(parameters, name, context, fields, wkb, crs)
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, name))
        if source is not None and source.isValid():
            for feature in source.getFeatures():
                out = QgsFeature(fields)
                out.setGeometry(feature.geometry())
                out.setAttributes([feature[field.name()] for field in fields])
                sink.addFeature(out, QgsFeatureSink.FastInsert)
        return dest_id
