"""Small cross-cutting QGIS helpers: logging to the message log, settings, auth, translations."""
