"""GDAL's own Python bindings (`osgeo.gdal`), which stacking band files into a virtual raster needs (BuildVRT,
which rasterio does not offer). QGIS's Python always has them; another Python (a vLLM environment running the
offline batch) may not, and then the stack is refused with the way out instead of an ImportError."""

from __future__ import annotations

from types import ModuleType

from .errors import InputError


def gdal_for(what: str) -> ModuleType:
    """`osgeo.gdal`, or InputError saying that `what` needs it and which Python has it."""
    try:
        from osgeo import gdal
    except ImportError:
        raise InputError(
            f"Stacking {what} needs GDAL's Python bindings (osgeo), and this Python has none.",
            "Run it with QGIS's Python, which has them: python3 where QGIS is installed, or this checkout's "
            ".venv/bin/python (for the batch: .venv/bin/python -m plugin.batch ...).") from None
    return gdal
