"""The QGIS plugin object: it only registers the Processing provider (no dock, no iface use)."""

from __future__ import annotations

from typing import Any

from qgis.core import QgsApplication

from .provider import PmtlProvider


class PmtlPlugin:
    """Loaded by QGIS desktop (initGui) and by qgis_process (initProcessing)."""

    def __init__(self, iface: Any = None) -> None:
        self.iface = iface
        self.provider: PmtlProvider | None = None

    def initProcessing(self) -> None:
        if self.provider is None:
            self.provider = PmtlProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:
        self.initProcessing()

    def unload(self) -> None:
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
