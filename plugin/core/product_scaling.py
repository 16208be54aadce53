"""The reflectance scaling a raster carries or its names imply, for SCALE and OFFSET left empty.

The bands' own scale and offset (GDAL's raster metadata, which QGIS applies to the values it shows) come first,
then Sentinel-2's add offset in the bands' metadata (as GDAL's SENTINEL2 driver gives it, and a GeoTIFF saved
from it keeps). Else the names: Landsat Level-1 band files are calibrated by their scene's MTL file
(landsat_level1.py); Landsat Collection 2 Level-2 surface reflectance (`SR_B*` bands) is value × 0.0000275 − 0.2;
Sentinel-2 from processing baseline 04.00 on is value × 0.0001 − 0.1. Anything else keeps the × 10000 rule of
the transports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

from . import sentinel2
from .errors import InputError
from .landsat import C2_SR_OFFSET, C2_SR_SCALE, is_collection2_sr
from .landsat_level1 import toa_scaling
from .raster import RasterInfo


@dataclass(frozen=True)
class ProductScaling:
    scale: Optional[float] = None  # None: detected as the transports do (× 0.0001 for integer reflectance)
    offset: Optional[float] = None
    said: str = ""  # what the log says was chosen, and why
    warning: str = ""  # what the names leave open, or where the raster and its names disagree


TIMES_10000 = (1e-4, 0.0)  # the transports' rule for integer reflectance


def scaling_of(info: RasterInfo) -> ProductScaling:
    """The scaling the raster's bands carry, else the one its names imply."""
    stored = stored_scaling(info)
    if not stored:
        return _tagged_offset(info) or scaling_from_names(info)
    try:
        named = scaling_from_names(info)
    except InputError:  # what the names lack (a Level-1 scene's MTL file) the raster's own scaling gives
        named = ProductScaling()
    if len(stored) > 1:
        pairs = ", ".join(_formula(s, o) for s, o in sorted(stored))
        return _warned(named, f"The raster's bands carry different scales and offsets ({pairs}), so none of "
                              "them is applied. Set SCALE and OFFSET to those of the model's bands.")
    scale, offset = stored.pop()
    said = (f"The raster's bands carry scale {scale:g} and offset {offset:g} (GDAL metadata, which QGIS applies "
            f"to the values it shows): reflectance = {_formula(scale, offset)} (SCALE and OFFSET override it)")
    warning = ""
    if named.said and not _same((scale, offset), (named.scale or TIMES_10000[0], named.offset or 0.0)):
        warning = (f"The raster's own scale and offset ({_formula(scale, offset)}) are applied, though its names "
                   f"say otherwise ({named.said}). If the names are right, set SCALE and OFFSET.")
    if _same((scale, offset), TIMES_10000):
        return ProductScaling(said=said, warning=warning)  # what the transports do anyway: nothing to change
    return ProductScaling(scale, offset, said, warning)


def _tagged_offset(info: RasterInfo) -> Optional[ProductScaling]:
    """The offset Sentinel-2's band metadata gives (BOA_ADD_OFFSET, RADIO_ADD_OFFSET: −1000 from processing
    baseline 04.00 on, at the × 10000 scale); None when no band has it."""
    values = sorted({value for value in info.add_offsets if value is not None})
    if not values:
        return None
    if len(values) > 1:
        return _warned(scaling_from_names(info), f"The bands' Sentinel-2 add offsets differ "
                       f"({', '.join(f'{v:g}' for v in values)}), so none of them is applied. Set OFFSET (e.g. -0.1 "
                       "for −1000).")
    offset = values[0] * TIMES_10000[0]
    return ProductScaling(None, offset or None, f"Sentinel-2 add offset {values[0]:g} in the bands' metadata "
                          f"(BOA_ADD_OFFSET or RADIO_ADD_OFFSET): reflectance offset {offset:g} (OFFSET overrides it)")


def stored_scaling(info: RasterInfo) -> set[tuple[float, float]]:
    """The bands' own (scale, offset) pairs other than GDAL's default (1, 0)."""
    pairs = set()
    for scale, offset in zip(info.scales, info.offsets):
        if scale is None or offset is None or not (math.isfinite(scale) and math.isfinite(offset)):
            continue
        if scale and not _same((scale, offset), (1.0, 0.0)) and not any(_same((scale, offset), p) for p in pairs):
            pairs.add((float(scale), float(offset)))
    return pairs


def _warned(named: ProductScaling, warning: str) -> ProductScaling:
    """The names' scaling, with the raster's metadata left unapplied and the warning that says why."""
    return replace(named, warning=" ".join(filter(None, (named.warning, warning))))


def _formula(scale: float, offset: float) -> str:
    sign = "−" if offset < 0 else "+"
    return f"value × {scale:g} {sign} {abs(offset):g}"


def _same(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return math.isclose(a[0], b[0], rel_tol=1e-6) and math.isclose(a[1], b[1], rel_tol=1e-6, abs_tol=1e-12)


def scaling_from_names(info: RasterInfo) -> ProductScaling:
    """What the raster's path and band labels say of its scaling."""
    level1 = toa_scaling(info.path, info.descriptions)
    if level1 is not None:
        return ProductScaling(level1.scale, level1.offset, level1.said)
    if is_collection2_sr(info.descriptions):
        return ProductScaling(C2_SR_SCALE, C2_SR_OFFSET, "Landsat Collection 2 Level-2 surface reflectance "
                              f"(SR_B bands): reflectance = value × {C2_SR_SCALE:.7f} − {-C2_SR_OFFSET:g} (SCALE "
                              "and OFFSET override it)")
    known = sentinel2.offset_of(info.path, info.descriptions)
    if known is not None:
        offset, why = known
        if offset:
            return ProductScaling(None, offset, f"{why}: reflectance offset {offset:g} (the −1000 of processing "
                                                "baseline 04.00 and later; OFFSET overrides it)")
        return ProductScaling(said=f"{why}: reflectance offset 0 (OFFSET overrides it)")
    day = sentinel2.acquired_before_offset(info.descriptions)
    if day is not None:
        return ProductScaling(warning=(
            f"Sentinel-2 acquired on {day.isoformat()}, before 25 January 2022: its values carry the −1000 offset "
            "only if the product was reprocessed (processing baseline 05.00 or later, N0500 in the product's "
            "name), which the band files do not say. No offset is applied; for a reprocessed product set "
            "OFFSET=-0.1."))
    return ProductScaling()
