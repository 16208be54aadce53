"""The cloud mask's cloud values: the Sentinel-2 L2A scene classification's cloud classes by default, a user's
list (CLOUD_VALUES) read and checked, and the cloud bits of the quality bands that are bit flags (Landsat's
QA_PIXEL, HLS's Fmask), known by their names. Nothing here needs numpy or GDAL, so the algorithm's parameters
can be defined before the plugin's packages are installed."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from typing import Optional

from .errors import InputError

# Sentinel-2 L2A scene classification (SCL): 3 cloud shadow, 8 cloud medium probability, 9 cloud high
# probability, 10 thin cirrus
DEFAULT_CLOUD_VALUES = (3.0, 8.0, 9.0, 10.0)
# Quality rasters whose values are bit flags, by their file names: (name, bits that mark cloud, what they are,
# flag bands). Landsat Collection 2 QA_PIXEL: bit 1 dilated cloud, 2 cirrus, 3 cloud, 4 cloud shadow. HLS v2.0
# Fmask: bit 1 cloud, 2 adjacent to cloud or shadow, 3 cloud shadow. Sentinel-2 QA60 (the L1C/L2A band as Google
# Earth Engine gives it): bit 10 opaque clouds, 11 cirrus. Sentinel-2 MSK_CLASSI_B00 (in a product's QI_DATA from
# processing baseline 04.00 on, 60 m) holds one 0/1 flag a band: 1 opaque clouds, 2 cirrus, 3 snow and ice; its
# flag bands 1 and 2 are read as bits 0 and 1 (a single-band MSK_CLASSI_OPAQUE or _CIRRUS export as bit 0).
QA_BIT_BANDS = (
    (re.compile(r"(?:^|[^A-Za-z0-9])QA_PIXEL(?![A-Za-z0-9])", re.IGNORECASE), (1, 2, 3, 4),
     "Landsat QA_PIXEL bits 1-4: dilated cloud, cirrus, cloud, cloud shadow", ()),
    (re.compile(r"(?:^|[^A-Za-z0-9])Fmask(?![A-Za-z0-9])", re.IGNORECASE), (1, 2, 3),
     "HLS Fmask bits 1-3: cloud, adjacent to cloud or shadow, cloud shadow", ()),
    (re.compile(r"(?:^|[^A-Za-z0-9])QA60(?![A-Za-z0-9])", re.IGNORECASE), (10, 11),
     "Sentinel-2 QA60 bits 10-11: opaque clouds, cirrus", ()),
    (re.compile(r"(?:^|[^A-Za-z0-9])MSK_CLASSI(?![A-Za-z0-9])(?!_SNOW)", re.IGNORECASE), (0, 1),
     "Sentinel-2 MSK_CLASSI bands 1-2: opaque clouds, cirrus", (1, 2)),
)
HINT = ("Give the cloud mask's cloud values, comma-separated: 3,8,9,10 for a Sentinel-2 L2A scene "
        "classification (SCL), 1 for a 0/1 cloud mask.")


def format_values(values: Sequence[float]) -> str:
    """(3.0, 8.0) -> '3, 8'."""
    return ", ".join(f"{v:g}" for v in values)


def check_cloud_values(values: Sequence[float]) -> tuple[float, ...]:
    """The cloud values as finite numbers; InputError for anything else (or none)."""
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if not out or not all(math.isfinite(v) for v in out):
        raise InputError(f"CLOUD_VALUES {list(values)!r} is not a list of numbers.", HINT)
    return out


def parse_cloud_values(text: str) -> tuple[float, ...]:
    """'3,8, 9;10' -> (3.0, 8.0, 9.0, 10.0); '' -> the default (the SCL cloud classes)."""
    text = (text or "").strip()
    if not text:
        return DEFAULT_CLOUD_VALUES
    parts = [p for p in re.split(r"[,;\s]+", text) if p]
    try:
        return check_cloud_values([float(p) for p in parts])
    except (ValueError, InputError):
        raise InputError(f"CLOUD_VALUES '{text}' is not a list of numbers.", HINT) from None


def qa_cloud_bits(path: str) -> Optional[tuple[tuple[int, ...], str, tuple[int, ...]]]:
    """(cloud bits, what they are, flag bands) when `path` names a bit-flag quality raster (QA_PIXEL, Fmask,
    QA60, MSK_CLASSI), else None. Flag bands: the raster's bands that are one 0/1 flag each, band n read as bit
    n - 1; () = band 1 holds the flags.

    Their values are sums of flags (e.g. 21824 for clear land in QA_PIXEL), which no list of cloud values
    can match: the bits are tested instead."""
    name = os.path.basename((path or "").rstrip("/"))
    for pattern, bits, what, flag_bands in QA_BIT_BANDS:
        if pattern.search(name):
            return bits, what, flag_bands
    return None
