"""What a Landsat product's band labels stand for.

Landsat numbers its bands its own way: B5 is the near infrared on OLI (Landsat 8/9, and HLS L30 band files) but
a red edge on Sentinel-2, and TM/ETM+ (Landsat 4-7) differ again. Collection 2 Level-2 surface reflectance
(`SR_B*` bands, as USGS names the files and Google Earth Engine the bands) is stored as
value × 0.0000275 − 0.2, not as reflectance × 10000; Level-1 band files (`…_L1TP_…_B5.TIF`) hold calibrated
numbers that the scene's MTL file turns into reflectance (landsat_level1.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Optional

# Collection 2 Level-2 surface reflectance: reflectance = value × SCALE + OFFSET (USGS Landsat C2 L2 guide)
C2_SR_SCALE = 2.75e-5
C2_SR_OFFSET = -0.2

# Band number -> the model's band name (TerraTorch's HLS names)
OLI_BANDS = {1: "COASTAL_AEROSOL", 2: "BLUE", 3: "GREEN", 4: "RED", 5: "NIR_NARROW", 6: "SWIR_1", 7: "SWIR_2",
             9: "CIRRUS"}
TM_BANDS = {1: "BLUE", 2: "GREEN", 3: "RED", 4: "NIR_BROAD", 5: "SWIR_1", 7: "SWIR_2"}  # TM and ETM+

_SR_BAND = re.compile(r"(?:^|[^A-Za-z0-9])SR_B0?(\d)(?![A-Za-z0-9])", re.IGNORECASE)
_SCENE_ID = re.compile(r"(?:^|[^A-Za-z0-9])L([COTEM])0?\d_", re.IGNORECASE)  # LC09_L2SP_..., LT05_L2SP_...
_HLS_L30_BAND = re.compile(r"HLS\.L30\..*\.B0?(\d{1,2})$", re.IGNORECASE)
# A Level-1 band file: LC09_L1TP_013032_20231008_20231009_02_T1_B5 (the scene ID, then the band)
_LEVEL1_BAND = re.compile(r"(?:^|[^A-Za-z0-9])(L[COTEM]0?\d_L1(?:TP|GT|GS)_\d{6}_\d{8}_\d{8}_\d{2}_[A-Z0-9]{2})"
                          r"_B0?(\d{1,2})(?![A-Za-z0-9])", re.IGNORECASE)


def sr_band(label: Optional[str]) -> Optional[int]:
    """The band number of a Collection 2 Level-2 surface reflectance label (`..._SR_B5`, `SR_B5`), else None."""
    match = _SR_BAND.search(label or "")
    return int(match.group(1)) if match else None


def level1_band(label: Optional[str]) -> Optional[tuple[str, int]]:
    """(scene ID, band number) of a Level-1 band file's label (`LC09_L1TP_…_T1_B5`), else None."""
    match = _LEVEL1_BAND.search(label or "")
    return (match.group(1).upper(), int(match.group(2))) if match else None


def is_reflective(scene_id: str, band: int) -> bool:
    """Whether the scene's band is one the model may take (not thermal or panchromatic)."""
    return band in (OLI_BANDS if scene_id[1] in "CO" else TM_BANDS)


def is_collection2_sr(labels: Sequence[Optional[str]]) -> bool:
    """True when the raster's bands are named as Collection 2 Level-2 surface reflectance (`SR_B*`)."""
    return any(sr_band(label) is not None for label in labels)


def landsat_band_names(labels: Sequence[Optional[str]]) -> Optional[tuple[Optional[str], ...]]:
    """Per band, the model's band name its label stands for, when the labels are a Landsat product's
    (Collection 2 Level-2 `SR_B*`, Level-1 band files, or HLS L30 band files); None when they are not
    (Sentinel-2's numbering then applies)."""
    hls = [_HLS_L30_BAND.search(label or "") for label in labels]
    if any(hls):
        return tuple(OLI_BANDS.get(int(m.group(1))) if m else None for m in hls)
    numbers = [_band_number(label) for label in labels]
    if not any(n is not None for n in numbers):
        return None
    table = OLI_BANDS if _is_oli(labels, numbers) else TM_BANDS
    return tuple(table.get(n) if n is not None else None for n in numbers)


def _band_number(label: Optional[str]) -> Optional[int]:
    """The Landsat band number of a Collection 2 surface reflectance or Level-1 label, else None."""
    number = sr_band(label)
    if number is not None:
        return number
    level1 = level1_band(label)
    return level1[1] if level1 else None


def _is_oli(labels: Sequence[Optional[str]], numbers: list[Optional[int]]) -> bool:
    """OLI (Landsat 8/9) rather than TM/ETM+: said by the scene ID (LC08, LO09, ...), else by an SR_B6 band,
    which only OLI has (band 6 of TM/ETM+ is thermal: ST_B6)."""
    for label in labels:
        match = _SCENE_ID.search(label or "")
        if match:
            return match.group(1).upper() in "CO"
    return 6 in numbers
