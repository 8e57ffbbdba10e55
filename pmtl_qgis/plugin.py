"""The QGIS plugin object: registers the Processing provider and, in QGIS desktop, a Plugins-menu entry for the
dependency installer (QGIS users do not open terminals)."""

from __future__ import annotations

from typing import Any

from qgis.core import QgsApplication

from .provider import PmtlProvider

MENU = "&pmtl"
INSTALL_ALGORITHM = "pmtl:install_dependencies"


class PmtlPlugin:
    """Loaded by QGIS desktop (initGui) and by qgis_process (initProcessing)."""

    def __init__(self, iface: Any = None) -> None:
        self.iface = iface
        self.provider: PmtlProvider | None = None
        self.install_action: Any = None

    def initProcessing(self) -> None:
        if self.provider is None:
            self.provider = PmtlProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:
        self.initProcessing()
        if self.iface is None:
            return
        from qgis.PyQt.QtGui import QIcon
        from qgis.PyQt.QtWidgets import QAction

        from .algorithms.base import ICON_PATH

        self.install_action = QAction(QIcon(str(ICON_PATH)), "Install Python dependencies…", self.iface.mainWindow())
        self.install_action.triggered.connect(self.open_installer)
        self.iface.addPluginToMenu(MENU, self.install_action)

    def open_installer(self) -> None:
        """The installer's Processing dialog (profile choice, pip's log, cancel button)."""
        import processing

        processing.execAlgorithmDialog(INSTALL_ALGORITHM, {})

    def unload(self) -> None:
        if self.install_action is not None and self.iface is not None:
            self.iface.removePluginMenu(MENU, self.install_action)
            self.install_action.deleteLater()
            self.install_action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
