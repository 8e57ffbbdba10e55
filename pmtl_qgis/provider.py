"""The pmtl Processing provider: registers the algorithms and the 'Python interpreter' setting."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms import ALGORITHMS
from .algorithms.base import ICON_PATH
from .environment import ENV_VAR, SETTING_NAME


class PmtlProvider(QgsProcessingProvider):
    """Provider id ``pmtl``: algorithms are ``pmtl:generate_synthetic``, ``pmtl:chip_isprs``, ``pmtl:train``, …"""

    def id(self) -> str:
        return "pmtl"

    def name(self) -> str:
        return "pmtl (detection + segmentation)"

    def longName(self) -> str:
        return "pmtl: partial multi-task detection and segmentation of aerial imagery"

    def icon(self) -> QIcon:
        return QIcon(str(ICON_PATH))

    def load(self) -> bool:
        self._add_setting()
        self.refreshAlgorithms()
        return True

    def unload(self) -> None:
        try:
            from processing.core.ProcessingConfig import ProcessingConfig
        except ImportError:
            return
        if SETTING_NAME in ProcessingConfig.settings:
            ProcessingConfig.removeSetting(SETTING_NAME)

    def loadAlgorithms(self) -> None:
        for algorithm in ALGORITHMS:
            self.addAlgorithm(algorithm())

    def supportedOutputRasterLayerExtensions(self) -> list[str]:
        return ["tif"]

    def _add_setting(self) -> None:
        """Settings › Options › Processing › Providers › pmtl › Python interpreter (when the Processing plugin runs)."""
        try:
            from processing.core.ProcessingConfig import ProcessingConfig, Setting
        except ImportError:
            return
        ProcessingConfig.settingIcons[self.name()] = self.icon()
        ProcessingConfig.addSetting(
            Setting(
                self.name(),
                SETTING_NAME,
                f"Python interpreter with torch and onnxruntime (overridden by the {ENV_VAR} environment variable)",
                "",
                valuetype=Setting.FILE,
            )
        )
        ProcessingConfig.readSettings()
