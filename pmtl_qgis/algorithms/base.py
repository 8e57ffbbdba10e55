"""What every pmtl algorithm shares: ids and help, declaring parameters, the dependency check, and calling the engine
(in QGIS's process for GDAL/onnxruntime work, in a child process for anything that needs PyTorch)."""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputLayerDefinition,
    QgsProcessingParameterDefinition,
    QgsProperty,
    QgsRasterLayer,
)
from qgis.PyQt.QtCore import QCoreApplication, QVariant
from qgis.PyQt.QtGui import QIcon

from ..engine_process import ProcessResult, engine_command, run_streaming
from ..environment import (
    PLUGIN_DIR,
    PythonEnv,
    engine_root,
    find_python_env,
    install_message,
    missing_modules,
)
from ..environment import subprocess_environment as child_environment
from ..feedback import FeedbackProgress
from ..scope import engine_scope, import_engine
from .params import Spec, spec

HOMEPAGE = "https://github.com/pmtl/pmtl"
DEVICES = ("auto", "cpu", "cuda")
"""Device choices of the engine (auto: CUDA when available, else the CPU)."""
ICON_PATH = PLUGIN_DIR / "icon.svg"
VECTOR_FORMATS = ["gpkg", "shp", "geojson", "fgb"]
"""Vector formats the engine reads as they are; other layers are saved to a GeoPackage first."""


def is_unset(parameters: dict[str, Any], name: str) -> bool:
    """True when an optional parameter was left empty, in any form QGIS passes that: missing, None, '' or blank,
    NULL (a null QVariant: the algorithm dialog's empty optional field), or an output definition or property whose
    value is empty (the Batch Processing panel's and the modeler's empty optional outputs)."""
    return _is_empty(parameters.get(name))


def _is_empty(value: Any) -> bool:
    if isinstance(value, QgsProcessingOutputLayerDefinition):
        return _is_empty(value.sink)
    if isinstance(value, QgsProperty):
        return value.propertyType() == QgsProperty.StaticProperty and _is_empty(value.staticValue())
    if isinstance(value, QVariant):
        return value.isNull() or not value.isValid() or _is_empty(value.value())
    return value is None or (isinstance(value, str) and not value.strip())


def raster_path(layer: QgsRasterLayer | None, what: str) -> str | None:
    """File path behind a raster layer; the engine reads files with GDAL, so other providers are refused."""
    if layer is None:
        return None
    if layer.providerType() != "gdal":
        raise QgsProcessingException(
            f"{what}: layer '{layer.name()}' comes from the '{layer.providerType()}' provider; pmtl needs a raster "
            f"file GDAL can read (save the layer as GeoTIFF first)."
        )
    return layer.source().split("|")[0]


class EngineWarnings(logging.Handler):
    """While active (a ``with`` block), the engine's log warnings go to ``feedback.pushWarning``, rendered by
    ``render`` (parameters named in the dialog's words)."""

    def __init__(self, feedback: QgsProcessingFeedback, render: Callable[[str], str]) -> None:
        super().__init__(logging.WARNING)
        self.feedback = feedback
        self.render = render

    def emit(self, record: logging.LogRecord) -> None:
        self.feedback.pushWarning(self.render(record.getMessage()))

    def __enter__(self) -> EngineWarnings:
        logging.getLogger("engine").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("engine").removeHandler(self)


class PmtlAlgorithm(QgsProcessingAlgorithm):
    """Base class: subclasses set the class attributes and implement ``initAlgorithm`` and ``process``."""

    ALG_ID = ""
    DISPLAY_NAME = ""
    GROUP_ID = ""
    """The group's id; its name in the toolbox is the id capitalised (data → Data)."""
    HELP = ""
    DEVICE = "DEVICE"
    REQUIRED_MODULES: tuple[str, ...] = ()
    """Modules the algorithm needs; checked (without importing) before it runs, with an install message."""
    ENGINE_PARAMS: ClassVar[dict[str, str]] = {}
    """Engine parameter names (the command-line flags' words, e.g. ``scale_max``) whose QGIS parameter is not
    simply the name in capitals; errors and warnings name those parameters by their dialog label."""

    def name(self) -> str:
        return self.ALG_ID

    def displayName(self) -> str:
        return self.tr(self.DISPLAY_NAME)

    def group(self) -> str:
        return self.tr(self.GROUP_ID.capitalize())

    def groupId(self) -> str:
        return self.GROUP_ID

    def shortHelpString(self) -> str:
        return self.tr(self.HELP)

    def helpUrl(self) -> str:
        return HOMEPAGE

    def icon(self) -> QIcon:
        return QIcon(str(ICON_PATH))

    def createInstance(self) -> PmtlAlgorithm:
        return type(self)()

    def tr(self, text: str) -> str:
        return QCoreApplication.translate("pmtl", text)

    # Declaring parameters -------------------------------------------------------------------------------------

    def param(
        self, kind: type, name: str, label: str, *, help: str, advanced: bool = False, **options: Any
    ) -> QgsProcessingParameterDefinition:
        """Add a ``kind`` parameter (keyword ``options`` as in its constructor) with a translated label and help
        text (the dialog's tooltip, ``qgis_process help``); ``advanced`` puts it under Advanced Parameters."""
        parameter = kind(name, self.tr(label), **options)
        parameter.setHelp(self.tr(help))
        if advanced:
            parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(parameter)
        return parameter

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        """The parameters and outputs that :meth:`parameters` lists."""
        for item in self.parameters():
            if item.output:
                self.addOutput(item.build()[0](item.name, self.tr(item.label)))
            else:
                self.add_spec(item)

    def add_spec(self, item: Spec) -> None:
        """Add the parameter ``item`` describes."""
        kind, options = item.build()
        self.param(kind, item.name, item.label, help=item.help, advanced=item.advanced, **options)

    def parameters(self) -> list[Spec]:
        """The algorithm's parameters, in dialog order, one :func:`~pmtl_qgis.algorithms.params.spec` each; then
        its other outputs, one :func:`~pmtl_qgis.algorithms.params.output` each."""
        return []

    def option_spec(self, kind: str, name: str, label: str, options: type, field: str, **extra: Any) -> Spec:
        """A parameter whose default and help come from the engine's options dataclass ``options`` (its ``field``):
        the one place that default is written (see ``engine.core.options``)."""
        engine_options = self.engine_options()
        help = engine_options.help_sentence(options, field)
        return spec(kind, name, label, help, defaultValue=engine_options.default_of(options, field), **extra)

    def engine_options(self) -> ModuleType:
        """``engine.core.options``: the front doors' option dataclasses (standard library only)."""
        return self.engine("engine.core.options")

    def device_spec(self, help: str) -> Spec:
        """The advanced 'Device' choice (auto, cpu, cuda) under the name DEVICE."""
        return spec("enum", self.DEVICE, "Device", help, advanced=True, options=DEVICES, defaultValue=0)

    @staticmethod
    def overwrite_spec(label: str) -> Spec:
        """The advanced 'overwrite' checkbox (OVERWRITE, off) of the algorithms that fill an output folder."""
        help = "Without it, an output folder that already has files is refused."
        return spec("boolean", "OVERWRITE", label, help, advanced=True, defaultValue=False)

    @staticmethod
    def onnx_model_spec(name: str) -> Spec:
        """The 'ONNX model' file parameter of the inference algorithms."""
        help = "A model written by 'Export a checkpoint to ONNX'."
        return spec("file", name, "ONNX model", help, fileFilter="ONNX models (*.onnx)")

    def device(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str:
        return DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)]

    # Checks ---------------------------------------------------------------------------------------------------

    def checkParameterValues(self, parameters: dict[str, Any], context: QgsProcessingContext) -> tuple[bool, str]:
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, message
        missing = missing_modules(self.REQUIRED_MODULES)
        if missing:
            return False, install_message(missing)
        problem = self.check_values(parameters, context)
        return (problem is None, problem or "")

    def check_values(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str | None:
        """Cross-parameter checks; return a message naming the parameter when something is wrong."""
        return None

    # Running --------------------------------------------------------------------------------------------------

    def processAlgorithm(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        """Runs :meth:`process` with the engine's imports and GDAL settings, restored for everybody else after.
        Optional parameters left empty (in whatever form, see :func:`is_unset`) are removed first, so every
        ``parameterAs…`` call sees them as not given; the engine's warnings go to the log as warnings."""
        given = {name: value for name, value in parameters.items() if not self._empty_optional(parameters, name)}
        with engine_scope(), EngineWarnings(feedback, self.engine_text):
            return self.process(given, context, feedback)

    def _empty_optional(self, parameters: dict[str, Any], name: str) -> bool:
        definition = self.parameterDefinition(name)
        optional = definition is not None and bool(definition.flags() & QgsProcessingParameterDefinition.FlagOptional)
        return optional and is_unset(parameters, name)

    def process(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        raise NotImplementedError

    def engine(self, module: str) -> ModuleType:
        """Import an engine module or fail with Processing's error saying what to install."""
        try:
            return import_engine(module)
        except ImportError as exc:
            raise QgsProcessingException(str(exc)) from exc

    @staticmethod
    def progress(feedback: QgsProcessingFeedback) -> FeedbackProgress:
        """The engine's Progress on this feedback: the bar, the log and the Cancel button."""
        return FeedbackProgress(feedback)

    def call_engine(self, function: Callable[..., Any], feedback: QgsProcessingFeedback, **kwargs: Any) -> Any:
        """``function(**kwargs)`` in QGIS's process; engine errors become Processing errors (one line, no
        traceback). Arguments go as given: None is the engine's "use the default"."""
        progress_module = self.engine("engine.core.progress")
        errors = self.engine("engine.core.errors")
        try:
            return function(**kwargs)
        except progress_module.Cancelled as exc:
            raise QgsProcessingException(f"{self.displayName()} was cancelled; no output was written.") from exc
        except errors.PmtlError as exc:
            raise QgsProcessingException(exc.render(self.param_words)) from exc
        except ModuleNotFoundError as exc:
            raise QgsProcessingException(install_message([(exc.name or "?").split(".")[0]])) from exc

    def run_engine(self, module: str, arguments: Sequence[str], feedback: QgsProcessingFeedback) -> ProcessResult:
        """``python -m MODULE ARGUMENTS`` in the dependency environment, streamed into ``feedback``; torch is never
        imported into QGIS, a crash there cannot take QGIS down, Cancel works on every OS."""
        env = self.engine_env()
        return self.run_command(engine_command(env.python, module, arguments), env, feedback)

    def engine_env(self) -> PythonEnv:
        """The dependency environment (its Python has torch), or the Processing error saying what to install."""
        env = find_python_env()
        if env.problem or env.python is None:
            raise QgsProcessingException(install_message(list(self.REQUIRED_MODULES) or ["torch"]))
        return env

    def run_command(self, command: Sequence[str], env: PythonEnv, feedback: QgsProcessingFeedback) -> ProcessResult:
        """Run an engine command line (see :func:`~pmtl_qgis.engine_process.engine_command`) in ``env``; its
        console lines name parameters in the dialog's words."""
        feedback.pushCommandInfo(" ".join(shlex.quote(str(part)) for part in command))
        feedback.pushInfo("Starting the engine (loading PyTorch)…")
        environment, cwd = child_environment(env), engine_root()
        return run_streaming(command, feedback, env=environment, cwd=cwd, render=self.engine_text)

    def check_engine_result(self, result: ProcessResult) -> None:
        """Raise the Processing error for a child that failed, lacked a module, or was cancelled."""
        missing = result.missing_module()
        if missing:
            raise QgsProcessingException(install_message([missing]))
        if result.canceled:
            raise QgsProcessingException(f"{self.displayName()} was cancelled; no output was written.")
        if result.returncode != 0:
            text = self.engine_text(result.error_text())
            raise QgsProcessingException(f"{self.displayName()} failed (exit code {result.returncode}):\n{text}")

    def engine_text(self, text: str) -> str:
        """An engine message (an error event's template, a log warning) with its parameters in the dialog's words."""
        if "[[" not in text:
            return text  # most lines (every console line of a training) name no parameter
        return self.engine("engine.core.errors").render_message(text, self.param_words)

    def param_words(self, name: str) -> str:
        """How this algorithm's dialog names the engine parameter ``name``: its field's label, quoted."""
        definition = self.parameterDefinition(self.ENGINE_PARAMS.get(name, name.upper()))
        label = definition.description() if definition is not None else name.replace("_", " ")
        return f"'{label}'"

    # Reading parameters ---------------------------------------------------------------------------------------

    def optional_number(
        self, parameters: dict[str, Any], name: str, context: QgsProcessingContext, integer: bool = False
    ) -> float | int | None:
        """An optional Number parameter's value, or None when it was left empty (the engine's default applies)."""
        if is_unset(parameters, name):
            return None
        if integer:
            return self.parameterAsInt(parameters, name, context)
        return self.parameterAsDouble(parameters, name, context)

    def engine_numbers(self, parameters: dict[str, Any], context: QgsProcessingContext) -> list[tuple[str, Any]]:
        """``(engine word, value)`` for the Number parameters whose spec names the engine's word and that were
        given, in dialog order (left empty: the engine's default applies)."""
        values: list[tuple[str, Any]] = []
        for item in self.parameters():
            if item.engine and item.kind in ("integer", "double"):
                value = self.optional_number(parameters, item.name, context, integer=item.kind == "integer")
                values += [] if value is None else [(item.engine, value)]
        return values

    def number_flags(self, parameters: dict[str, Any], context: QgsProcessingContext) -> list[str]:
        """Command-line flags ``[flag, value, …]`` for the given Number parameters (see :meth:`engine_numbers`)."""
        return [part for flag, value in self.engine_numbers(parameters, context) for part in (flag, str(value))]

    def optional_file(self, parameters: dict[str, Any], name: str, context: QgsProcessingContext) -> Path | None:
        """An optional file/folder parameter as an existing path, or None when left empty."""
        if is_unset(parameters, name):
            return None
        definition = self.parameterDefinition(name)
        return self.existing_path(self.parameterAsFile(parameters, name, context), definition.description())

    def vector_path(
        self, parameters: dict[str, Any], name: str, context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> str | None:
        """A file OGR reads for a feature source (memory layers and selections are saved to a temporary file)."""
        if is_unset(parameters, name):
            return None
        return self.parameterAsCompatibleSourceLayerPath(parameters, name, context, VECTOR_FORMATS, "gpkg", feedback)

    @staticmethod
    def existing_path(value: str, what: str) -> Path:
        """A path the user gave, checked to exist (message names the parameter)."""
        path = Path(value)
        if not value or not path.exists():
            raise QgsProcessingException(f"{what}: {value!r} does not exist.")
        return path
