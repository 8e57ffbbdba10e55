"""pmtl QGIS plugin: a Processing provider over the pmtl engine (see environment.py for how it finds torch)."""


def classFactory(iface):
    """QGIS calls this with its interface object (None inside qgis_process)."""
    from .plugin import PmtlPlugin

    return PmtlPlugin(iface)
