"""The cloud mask's cloud values: the Sentinel-2 L2A scene classification's cloud classes by default, a user's
list (CLOUD_VALUES) read and checked, or the user's cloud bits ("bits:1,2,3,4"), and which band of the cloud
raster to read, with the cloud bits of the quality bands that are bit flags (Landsat's QA_PIXEL, HLS's Fmask,
Sentinel-2's QA60 and MSK_CLASSI), known by their file names or band descriptions. Nothing here needs numpy or
GDAL, so the algorithm's parameters can be defined before the plugin's packages are installed."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from .errors import InputError

# Sentinel-2 L2A scene classification (SCL): 3 cloud shadow, 8 cloud medium probability, 9 cloud high
# probability, 10 thin cirrus
DEFAULT_CLOUD_VALUES = (3.0, 8.0, 9.0, 10.0)
MAX_SCL_CLASS = 11  # the scene classification's classes are 0 (no data) to 11 (snow)
# Quality rasters whose values are bit flags, by their file names or band descriptions: (name, bits that mark
# cloud, what they are). Landsat Collection 2 QA_PIXEL: bit 1 dilated cloud, 2 cirrus, 3 cloud,
# 4 cloud shadow. HLS v2.0 Fmask: bit 1 cloud, 2 adjacent to cloud or shadow, 3 cloud shadow. Sentinel-2 QA60 (the
# L1C/L2A band as Google Earth Engine gives it): bit 10 opaque clouds, 11 cirrus. Sentinel-2 MSK_CLASSI_B00 (in a
# product's QI_DATA from processing baseline 04.00 on, 60 m) holds one 0/1 flag a band: 1 opaque clouds, 2 cirrus,
# 3 snow and ice; its flag bands 1 and 2 are read as bits 0 and 1 (a single-band MSK_CLASSI_OPAQUE or _CIRRUS
# export, or such bands of a multi-band export, as flags of their own).
QA_BIT_BANDS = (
    (re.compile(r"(?:^|[^A-Za-z0-9])QA_PIXEL(?![A-Za-z0-9])", re.IGNORECASE), (1, 2, 3, 4),
     "Landsat QA_PIXEL bits 1-4: dilated cloud, cirrus, cloud, cloud shadow"),
    (re.compile(r"(?:^|[^A-Za-z0-9])Fmask(?![A-Za-z0-9])", re.IGNORECASE), (1, 2, 3),
     "HLS Fmask bits 1-3: cloud, adjacent to cloud or shadow, cloud shadow"),
    (re.compile(r"(?:^|[^A-Za-z0-9])QA60(?![A-Za-z0-9])", re.IGNORECASE), (10, 11),
     "Sentinel-2 QA60 bits 10-11: opaque clouds, cirrus"),
)
MSK_CLASSI = re.compile(r"(?:^|[^A-Za-z0-9])MSK_CLASSI(?![A-Za-z0-9])(?!_SNOW)", re.IGNORECASE)
MSK_CLASSI_ARE = "Sentinel-2 MSK_CLASSI: opaque clouds, cirrus"
SCL = re.compile(r"(?:^|[^A-Za-z0-9])SCL(?![A-Za-z0-9])", re.IGNORECASE)
HINT = ("Give the cloud mask's cloud values, comma-separated: 3,8,9,10 for a Sentinel-2 L2A scene "
        "classification (SCL), 1 for a 0/1 cloud mask; or the cloud bits of a bit-flag quality band, e.g. "
        "bits:1,2,3,4 for Landsat QA_PIXEL.")
_BITS_TEXT = re.compile(r"^\s*bits?\b\s*[:=]?\s*(?P<bits>.*)$", re.IGNORECASE | re.DOTALL)
_BIT_RANGE = re.compile(r"(\d+)(?:-(\d+))?")
MAX_BIT = 31


@dataclass(frozen=True)
class CloudBands:
    """Which bands of the cloud raster say cloud, and how."""

    bands: tuple[int, ...] = (1,)  # read; several are one 0/1 flag each, packed as bits 0, 1, … in this order
    bits: tuple[int, ...] = ()  # cloud where any of these bits is set; () = the cloud values matched whole
    what: str = ""  # what they are, for the log


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


def parse_cloud_bits(text: str) -> Optional[tuple[int, ...]]:
    """'bits:1,2,3,4' or 'bits 1-4' -> (1, 2, 3, 4): cloud where any of these bits of the cloud mask's values is
    set (a bit-flag quality band whose name no longer says what it is, e.g. a clipped copy of QA_PIXEL); None
    when the text gives cloud values instead."""
    match = _BITS_TEXT.match(text or "")
    if match is None:
        return None
    bits: set[int] = set()
    for part in filter(None, re.split(r"[,;\s]+", match.group("bits").strip())):
        found = _BIT_RANGE.fullmatch(part)
        low, high = (int(found.group(1)), int(found.group(2) or found.group(1))) if found else (1, 0)
        if low > high or high > MAX_BIT:
            bits.clear()
            break
        bits.update(range(low, high + 1))
    if not bits:
        raise InputError(f"CLOUD_VALUES '{text.strip()}' gives no bit numbers from 0 to {MAX_BIT}.",
                         "Write the bits that mark cloud, e.g. bits:1,2,3,4 for Landsat QA_PIXEL (dilated cloud, "
                         "cirrus, cloud, cloud shadow), bits:1-3 for HLS Fmask, bits:10,11 for Sentinel-2 QA60.")
    return tuple(sorted(bits))


def named_cloud_bands(path: str) -> Optional[CloudBands]:
    """How to read a bit-flag quality raster (QA_PIXEL, Fmask, QA60, MSK_CLASSI) that `path` names, else None.

    Their values are sums of flags (e.g. 21824 for clear land in QA_PIXEL), which no list of cloud values
    can match: the bits are tested instead."""
    name = os.path.basename((path or "").rstrip("/"))
    if MSK_CLASSI.search(name):
        return CloudBands((1, 2), (0, 1), MSK_CLASSI_ARE)
    for pattern, bits, what in QA_BIT_BANDS:
        if pattern.search(name):
            return CloudBands((1,), bits, what)
    return None


def described_cloud_bands(descriptions: Sequence[Optional[str]], default_values: bool) -> Optional[CloudBands]:
    """The cloud bands of a raster known by their descriptions (e.g. a Google Earth Engine export of the
    reflectance bands with SCL, QA60 or MSK_CLASSI_OPAQUE and _CIRRUS), else None. The band is chosen whatever
    the cloud values; bit flags are tested only while the values are the default ones (else the values given are
    matched whole, in the first such band)."""
    names = [(i + 1, d or "") for i, d in enumerate(descriptions)]
    flags = [(band, d) for band, d in names if MSK_CLASSI.search(d)]
    if flags and default_values:
        return CloudBands(tuple(band for band, _ in flags), tuple(range(len(flags))), MSK_CLASSI_ARE)
    if flags:  # cloud values given: the first flag band, its values matched whole
        band, d = flags[0]
        return CloudBands((band,), (), f"band {band}, {d}")
    for band, d in names:
        qa = next(((bits, what) for pattern, bits, what in QA_BIT_BANDS if pattern.search(d)), None)
        if qa is not None and default_values:
            return CloudBands((band,), qa[0], f"{qa[1]}, band {band}")
        if qa is not None or SCL.search(d):
            return CloudBands((band,), (), f"band {band}, {d}")
    return None
