"""Flood Mapper: the plugin's code. `core` imports no qgis; the rest is thin QGIS glue."""
