"""pmtl:install_dependencies: pip installs what pmtl needs into the plugin's folder in the QGIS profile."""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputFolder,
    QgsProcessingOutputString,
    QgsProcessingParameterEnum,
)

from .. import installer
from .base import PmtlAlgorithm

PROFILE_NAMES = tuple(installer.PROFILES)


class InstallDependencies(PmtlAlgorithm):
    ALG_ID = "install_dependencies"
    DISPLAY_NAME = "Install Python dependencies"
    GROUP_ID = "setup"
    REQUIRED_MODULES = ()
    HELP = (
        "Installs the Python packages pmtl needs with pip, run by QGIS's own Python, into a folder of the QGIS "
        "profile (pmtl/pythonX.Y) that the plugin searches after QGIS's own packages: no terminal and no "
        "environment variable needed; the other algorithms find them at once.\n\n"
        "Profiles: 'inference' (onnxruntime, jsonschema: enough for 'Detect and segment'; tens of MB) and "
        "'training' (adds PyTorch and torchvision, onnx, PyYAML, tqdm, SciPy, matplotlib, and Dask for region jobs: "
        "several GB with CUDA). "
        "Only what QGIS's Python lacks is installed; the numpy QGIS's GDAL is built against is kept. pip's output "
        "appears in the log; cancel stops pip.\n\n"
        "Example (qgis_process): qgis_process run pmtl:install_dependencies -- PROFILE=0"
    )

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        profile = QgsProcessingParameterEnum(
            "PROFILE", self.tr("Profile"), [self.tr(name) for name in PROFILE_NAMES], defaultValue=0
        )
        profile.setHelp(self.tr("inference: run models (onnxruntime); training: also train them (PyTorch)."))
        self.addParameter(profile)
        self.addOutput(QgsProcessingOutputFolder("FOLDER", self.tr("Package folder")))
        self.addOutput(QgsProcessingOutputString("INSTALLED", self.tr("Installed requirements")))

    def processAlgorithm(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        """Outside the engine's scope on purpose: it must work when the engine cannot be imported yet."""
        profile = PROFILE_NAMES[self.parameterAsEnum(parameters, "PROFILE", context)]
        folder = installer.managed_dir()
        if folder is None:
            raise QgsProcessingException("Install Python dependencies: no QGIS profile folder to install into.")
        feedback.pushInfo(f"Profile '{profile}' into {folder}")
        try:
            result = installer.install(
                profile,
                folder,
                report=feedback.pushConsoleInfo,
                progress=lambda fraction: feedback.setProgress(100.0 * fraction),
                is_canceled=feedback.isCanceled,
            )
        except installer.InstallCancelled as exc:
            raise QgsProcessingException(str(exc)) from exc
        except installer.InstallError as exc:
            raise QgsProcessingException(f"Install Python dependencies: {exc}") from exc
        if result.installed:
            feedback.pushInfo(f"Installed: {', '.join(result.installed)}")
        if result.already_there:
            feedback.pushInfo(f"Already available: {', '.join(result.already_there)}")
        return {"FOLDER": str(folder), "INSTALLED": ", ".join(result.installed)}
