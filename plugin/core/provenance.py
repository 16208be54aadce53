"""What a map says of how it was made: GeoTIFF metadata written into every map and probability raster.

A map handed on (to a colleague, a situation report, an archive) still names the image it was made from, the
model, the server and transport, and when: QGIS shows it under Layer Properties > Information, `gdalinfo`
prints it, and a later run reads it back (`read_provenance`). TIFFTAG_SOFTWARE and TIFFTAG_DATETIME are the
TIFF tags every GIS reads; the rest are FLOODMAPPER_* items in GDAL's default metadata domain.
"""

from __future__ import annotations

import configparser
import posixpath
import re
import time
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

SOFTWARE_TAG = "TIFFTAG_SOFTWARE"
DATETIME_TAG = "TIFFTAG_DATETIME"  # "YYYY:MM:DD HH:MM:SS", as TIFF has it; UTC here
INPUT_TAG = "FLOODMAPPER_INPUT"
MODEL_TAG = "FLOODMAPPER_MODEL"
SERVER_TAG = "FLOODMAPPER_SERVER"
TRANSPORT_TAG = "FLOODMAPPER_TRANSPORT"
DTYPE_TAG = "FLOODMAPPER_TENSOR_DTYPE"
CLOUD_MASK_TAG = "FLOODMAPPER_CLOUD_MASK"
PROVENANCE_TAGS = (SOFTWARE_TAG, DATETIME_TAG, INPUT_TAG, MODEL_TAG, SERVER_TAG, TRANSPORT_TAG, DTYPE_TAG,
                   CLOUD_MASK_TAG)

_METADATA = Path(__file__).resolve().parents[2] / "metadata.txt"
_SUBDATASET = re.compile(r"^[A-Za-z][A-Za-z0-9_]+:(.+?\.xml)(?::[^/]*)?$")  # DRIVER:path.xml[:subset…]
_PRODUCT_METADATA = re.compile(r"^(MTD_MSI.*\.xml|manifest\.safe)$", re.IGNORECASE)


def plugin_version() -> str:
    """The plugin's version from its metadata.txt ("" when it cannot be read)."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(_METADATA, encoding="utf-8")
        return parser.get("general", "version", fallback="").strip()
    except (OSError, configparser.Error):
        return ""


def file_name(source: str) -> str:
    """The name a source goes by, without the folders it lies in on this computer (they say nothing to whoever
    gets the map) or a URL's query (which may hold a key): '/data/S2A_….SAFE/' -> 'S2A_….SAFE',
    '/vsizip//data/a.zip/b.tif' -> 'b.tif', 'https://host/c.tif?token=…' -> 'c.tif'. A product's metadata file,
    alone or as GDAL's subdataset, goes by its product's folder: 'SENTINEL2_L2A:/d/S2B_….SAFE/MTD_MSIL2A.xml:10m:…'
    -> 'S2B_….SAFE'."""
    text = source.replace("\\", "/")
    subdataset = _SUBDATASET.match(text)
    if subdataset:
        text = subdataset.group(1)
    if "://" in text:
        text = urlsplit(text.split("/vsicurl/", 1)[-1]).path
    path = text.rstrip("/")
    name = posixpath.basename(path)
    if _PRODUCT_METADATA.match(name) and posixpath.basename(posixpath.dirname(path)):
        return posixpath.basename(posixpath.dirname(path))
    return name or source


def provenance_tags(source: str, model: str, server: str, transport: str, dtype: str = "",
                    cloud_mask: str = "", when: Optional[float] = None) -> dict[str, str]:
    """The metadata of a map of `source` made by `model` on `server` (e.g. "vLLM 0.32.0") through `transport`
    ("tensor" with the tensors' `dtype`, or "image"), masked by `cloud_mask` when given, at `when` (now)."""
    tags = {
        **_stamp(when),
        INPUT_TAG: file_name(source),
        MODEL_TAG: model,
        SERVER_TAG: server,
        TRANSPORT_TAG: transport,
    }
    if dtype:
        tags[DTYPE_TAG] = dtype
    if cloud_mask:
        tags[CLOUD_MASK_TAG] = file_name(cloud_mask)
    return {key: value for key, value in tags.items() if value}


def carried_over(tags: dict[str, str]) -> dict[str, str]:
    """The provenance of a map that a new map is made from (a water map compared with reference water): what
    made the water, with the new map's own software and time."""
    return {**{key: value for key, value in tags.items() if key in PROVENANCE_TAGS}, **_stamp()}


def _stamp(when: Optional[float] = None) -> dict[str, str]:
    """The software that makes a map, and when (UTC; `when` in seconds since the epoch, else now)."""
    return {SOFTWARE_TAG: f"Flood Mapper {plugin_version()}".strip(),
            DATETIME_TAG: time.strftime("%Y:%m:%d %H:%M:%S", time.gmtime(when))}


def read_provenance(path: str) -> dict[str, str]:
    """The provenance items of a map on disk ({} when it has none, or cannot be read)."""
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(path) as src:
            tags = src.tags()
    except (RasterioError, OSError):
        return {}
    return {key: value for key, value in tags.items() if key in PROVENANCE_TAGS}


def describe_map(dst, tags: Optional[dict[str, str]], band: str = "water") -> None:
    """Write a map's provenance `tags` and what its band holds into an open GeoTIFF `dst`."""
    if tags:
        dst.update_tags(**tags)
    dst.set_band_description(1, band)
