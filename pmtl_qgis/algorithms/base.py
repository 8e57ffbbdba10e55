"""What every pmtl algorithm shares: ids and help, the dependency check, and calling the engine safely."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterDefinition,
)
from qgis.PyQt.QtCore import QCoreApplication, QVariant
from qgis.PyQt.QtGui import QIcon

from ..environment import PLUGIN_DIR, import_engine, install_message, missing_modules
from ..feedback import FeedbackProgress

HOMEPAGE = "https://github.com/pmtl/pmtl"
DEVICES = ("auto", "cpu", "cuda")
"""Device choices of the engine (auto: CUDA when available, else the CPU)."""
ICON_PATH = PLUGIN_DIR / "icon.svg"


def advanced(parameter: QgsProcessingParameterDefinition) -> QgsProcessingParameterDefinition:
    """Flag a parameter as expert-only (shown under 'Advanced Parameters')."""
    parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
    return parameter


def with_help(parameter: QgsProcessingParameterDefinition, text: str) -> QgsProcessingParameterDefinition:
    """Attach a help string (the tooltip in the dialog, the description in ``qgis_process help``)."""
    parameter.setHelp(text)
    return parameter


def is_unset(parameters: dict[str, Any], name: str) -> bool:
    """True when an optional parameter was left empty: missing, None, '' or QGIS's NULL (a null QVariant, which
    the algorithm dialog passes for an empty optional field)."""
    value = parameters.get(name)
    if isinstance(value, QVariant):
        value = None if value.isNull() or not value.isValid() else value.value()
    return value is None or (isinstance(value, str) and not value.strip())


class PmtlAlgorithm(QgsProcessingAlgorithm):
    """Base class: subclasses set the class attributes and implement ``initAlgorithm`` / ``processAlgorithm``."""

    ALG_ID = ""
    DISPLAY_NAME = ""
    GROUP_ID = ""
    GROUP_NAME = ""
    HELP = ""
    REQUIRED_MODULES: tuple[str, ...] = ()
    """Modules the algorithm needs; checked (without importing) before it runs, with an install message."""

    def name(self) -> str:
        return self.ALG_ID

    def displayName(self) -> str:
        return self.tr(self.DISPLAY_NAME)

    def group(self) -> str:
        return self.tr(self.GROUP_NAME)

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

    def engine(self, module: str) -> ModuleType:
        """Import an engine module or fail with Processing's error saying what to install."""
        try:
            return import_engine(module)
        except ImportError as exc:
            raise QgsProcessingException(str(exc)) from exc

    def call_engine(self, function: Callable[..., Any], feedback: QgsProcessingFeedback, **kwargs: Any) -> Any:
        """Call an engine function with the feedback as its progress; engine errors become Processing errors.

        ``None`` values of optional arguments are left out (the engine's defaults apply). Options the installed
        engine does not accept are dropped with a warning, so an older engine still runs.
        """
        progress_module = self.engine("engine.core.progress")
        errors = self.engine("engine.core.errors")
        accepted = inspect.signature(function).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
        call = {}
        for key, value in kwargs.items():
            required = key in accepted and accepted[key].default is inspect.Parameter.empty
            if value is None and not required:
                continue
            if takes_any or key in accepted:
                call[key] = value
            else:
                feedback.pushWarning(f"This engine's {function.__name__}() has no option {key!r}: ignored.")
        if "progress" in accepted:
            call["progress"] = FeedbackProgress(feedback)
        try:
            return function(**call)
        except progress_module.Cancelled as exc:
            raise QgsProcessingException(f"{self.displayName()} was cancelled; no output was written.") from exc
        except errors.PmtlError as exc:
            raise QgsProcessingException(str(exc)) from exc
        except ModuleNotFoundError as exc:
            raise QgsProcessingException(install_message([(exc.name or "?").split(".")[0]])) from exc

    def optional_number(
        self, parameters: dict[str, Any], name: str, context: QgsProcessingContext, integer: bool = False
    ) -> float | int | None:
        """An optional Number parameter's value, or None when it was left empty (the engine's default applies)."""
        if is_unset(parameters, name):
            return None
        if integer:
            return self.parameterAsInt(parameters, name, context)
        return self.parameterAsDouble(parameters, name, context)

    @staticmethod
    def existing_path(value: str, what: str) -> Path:
        """A path the user gave, checked to exist (message names the parameter)."""
        path = Path(value)
        if not value or not path.exists():
            raise QgsProcessingException(f"{what}: {value!r} does not exist.")
        return path
