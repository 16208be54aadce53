"""No data values a QGIS layer adds to its raster's own: Layer Properties ▸ Transparency ▸ Additional no data value.

QGIS shows such pixels as transparent but does not write them into the file, so GDAL's masks do not know them.
Each is a range of one band's values (a single value is a range from it to itself); a bound that is NaN is open,
as in QGIS's QgsRasterRange. A pixel whose value in a used band falls in one of that band's ranges has no data.
The ranges are built without numpy (the QGIS glue does so before the plugin's packages are checked).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class NodataRange:
    band: int  # 1-based band of the raster
    low: float  # NaN: no lower bound
    high: float  # NaN: no upper bound
    include_low: bool = True
    include_high: bool = True

    def covers(self, values: np.ndarray) -> np.ndarray:
        """bool, the shape of `values`: where they fall in the range (NaN values never do)."""
        import numpy as np

        inside = np.ones(values.shape, dtype=bool)
        if not math.isnan(self.low):
            inside &= values >= self.low if self.include_low else values > self.low
        if not math.isnan(self.high):
            inside &= values <= self.high if self.include_high else values < self.high
        if math.isnan(self.low) and math.isnan(self.high):
            inside &= ~np.isnan(values)
        return inside

    def describe(self) -> str:
        if self.low == self.high:
            return f"{self.low:g}"
        low = "−∞" if math.isnan(self.low) else f"{self.low:g}"
        high = "+∞" if math.isnan(self.high) else f"{self.high:g}"
        opens = "[" if self.include_low and not math.isnan(self.low) else "("
        closes = "]" if self.include_high and not math.isnan(self.high) else ")"
        return f"{opens}{low}, {high}{closes}"


def used(ranges: Sequence[NodataRange], band_indices: Sequence[int]) -> tuple[NodataRange, ...]:
    """The ranges of the used bands (0-based `band_indices`), in band order."""
    bands = {i + 1 for i in band_indices}
    return tuple(sorted((r for r in ranges if r.band in bands), key=lambda r: r.band))


def describe(ranges: Sequence[NodataRange]) -> str:
    """'band 1: 65535; band 4: [0, 10]' for the log."""
    by_band: dict[int, list[str]] = {}
    for r in ranges:
        by_band.setdefault(r.band, []).append(r.describe())
    return "; ".join(f"band {band}: {', '.join(values)}" for band, values in sorted(by_band.items()))


def covered(ranges: Sequence[NodataRange], bands: Sequence[int], data: np.ndarray) -> np.ndarray:
    """bool [h, w]: the pixels one of the `ranges` marks, given `data` [C, h, w] of the 1-based `bands`."""
    import numpy as np

    out = np.zeros(data.shape[1:], dtype=bool)
    for r in ranges:
        if r.band in bands:
            out |= r.covers(data[list(bands).index(r.band)])
    return out
