"""The reflectance scaling a product's names imply, for SCALE and OFFSET left empty.

Landsat Collection 2 Level-2 surface reflectance (`SR_B*` bands) is value × 0.0000275 − 0.2; Sentinel-2 from
processing baseline 04.00 on is value × 0.0001 − 0.1. Anything else keeps the × 10000 rule of the transports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from . import sentinel2
from .landsat import C2_SR_OFFSET, C2_SR_SCALE, is_collection2_sr
from .raster import RasterInfo


@dataclass(frozen=True)
class NamedScaling:
    scale: Optional[float] = None  # None: detected as the transports do (× 0.0001 for integer reflectance)
    offset: Optional[float] = None
    said: str = ""  # what the log says was chosen, and why
    warning: str = ""  # what the names leave open


def scaling_from_names(info: RasterInfo) -> NamedScaling:
    """What the raster's path and band labels say of its scaling."""
    if is_collection2_sr(info.descriptions):
        return NamedScaling(C2_SR_SCALE, C2_SR_OFFSET, "Landsat Collection 2 Level-2 surface reflectance (SR_B "
                            f"bands): reflectance = value × {C2_SR_SCALE:.7f} − {-C2_SR_OFFSET:g} (SCALE and "
                            "OFFSET override it)")
    known = sentinel2.offset_of(info.path, info.descriptions)
    if known is not None:
        offset, why = known
        if offset:
            return NamedScaling(None, offset, f"{why}: reflectance offset {offset:g} (the −1000 of processing "
                                              "baseline 04.00 and later; OFFSET overrides it)")
        return NamedScaling(said=f"{why}: reflectance offset 0 (OFFSET overrides it)")
    day = sentinel2.acquired_before_offset(info.descriptions)
    if day is not None:
        return NamedScaling(warning=(
            f"Sentinel-2 acquired on {day.isoformat()}, before 25 January 2022: its values carry the −1000 offset "
            "only if the product was reprocessed (processing baseline 05.00 or later, N0500 in the product's "
            "name), which the band files do not say. No offset is applied; for a reprocessed product set "
            "OFFSET=-0.1."))
    return NamedScaling()
