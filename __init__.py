"""Flood Mapper QGIS plugin entry point: QGIS calls classFactory; nothing heavy is imported here."""


def classFactory(iface):  # noqa: N802 (QGIS's name)
    from .plugin.qgis_plugin import FloodMapperPlugin

    return FloodMapperPlugin(iface)
