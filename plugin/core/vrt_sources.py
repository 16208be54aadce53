"""What each band of a virtual raster (VRT) stack is, read from its source: the source band's description,
else the source file's name.

QGIS's *Build virtual raster* (gdalbuildvrt -separate) from downloaded Sentinel-2 band files leaves the VRT's
bands without descriptions; their sources still say which band each is (`T33TWM_20240501T100031_B8A_20m.jp2`,
or a description such as `B8A, central wavelength 865 nm`), so the automatic band choice can use them.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Optional
from xml.etree import ElementTree

from .archive_members import folder_of

log = logging.getLogger("floodmapper.raster")

_FILENAME = re.compile(r"<SourceFilename(?P<attrs>[^>]*)>(?P<name>[^<]+)</SourceFilename>")
_BAND = re.compile(r"<SourceBand>\s*(\d+)\s*</SourceBand>")


def band_labels(src: Any) -> tuple[Optional[str], ...]:
    """Per band of the open VRT `src`: its description, else its single source's; None when neither says."""
    labels: list[Optional[str]] = []
    folder = os.path.dirname(os.path.abspath(src.name))
    for index, description in enumerate(src.descriptions, start=1):
        labels.append(description or _source_label(src, index, folder))
    return tuple(labels)


def source_folders(path: str) -> list[str]:
    """The folders of the files a VRT's bands come from, inside an archive for its members ([] when it is no VRT
    file or cannot be read)."""
    if not path.lower().endswith(".vrt") or not os.path.isfile(path):
        return []
    try:
        with open(path, encoding="utf-8") as vrt:
            text = vrt.read()
    except (OSError, UnicodeDecodeError) as exc:
        log.debug("VRT %s: %s", path, exc)
        return []
    folder = os.path.dirname(os.path.abspath(path))
    folders: list[str] = []
    for match in _FILENAME.finditer(text):
        source_folder = folder_of(_source_path(match, folder))
        if source_folder not in folders:
            folders.append(source_folder)
    return folders


def source_pixels(src: Any, band: int) -> float:
    """Pixels of the source files a read of the whole `band` (1-based) of the open VRT `src` decodes: a 20 m band
    file in a 10 m stack holds a quarter of the raster's. inf when a source does not say (no SrcRect).

    Raises ValueError, TypeError or ElementTree.ParseError on a source GDAL describes otherwise."""
    total = 0.0
    for xml in src.tags(band, ns="vrt_sources").values():
        rect = ElementTree.fromstring(xml).find("SrcRect")  # noqa: S314 - the input's own VRT, one source's XML
        if rect is None:
            return float("inf")
        total += float(rect.get("xSize")) * float(rect.get("ySize"))
    return total


def _source_label(src: Any, index: int, folder: str) -> Optional[str]:
    import rasterio
    from rasterio.errors import RasterioError

    sources = src.tags(index, ns="vrt_sources")
    if len(sources) != 1:  # a band mosaicked from several files: no single name
        return None
    xml = next(iter(sources.values()))
    match = _FILENAME.search(xml)
    if match is None:
        return None
    path = _source_path(match, folder)
    band = _BAND.search(xml)
    try:
        with rasterio.open(path) as source:
            description = source.descriptions[int(band.group(1)) - 1 if band else 0]
    except (RasterioError, IndexError, ValueError) as exc:
        log.debug("VRT source %s of band %d: %s", path, index, exc)
        description = None
    return description or os.path.splitext(os.path.basename(path))[0]


def _source_path(match: re.Match, folder: str) -> str:
    """The file a <SourceFilename> names, resolved against the VRT's folder when it is relative to it."""
    path = match.group("name").strip()
    if 'relativeToVRT="1"' in match.group("attrs") and not os.path.isabs(path):
        path = os.path.join(folder, path)
    return path
