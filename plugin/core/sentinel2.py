"""Whether a Sentinel-2 product's values carry the −1000 offset, from its names.

From processing baseline 04.00 (every product acquired from 25 January 2022 on, and the reprocessed archive,
Collection-1, baseline 05.00 and later) L1C and L2A values are reflectance × 10000 + 1000: reflectance =
value × 0.0001 − 0.1. The product's name gives its baseline (`S2B_MSIL2A_20240501T100031_N0510_…`); a band
file's name gives its acquisition date (`T33TWM_20240501T100031_B02_10m.jp2`), which settles it for the
acquisitions from that day on.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from typing import Optional

OFFSET = -0.1  # −1000 at the × 10000 scale (BOA_ADD_OFFSET, RADIO_ADD_OFFSET)
FIRST_OFFSET_DAY = datetime.date(2022, 1, 25)  # processing baseline 04.00 in operation

_PRODUCT = re.compile(r"S2[A-Z]_MSIL(?:1C|2A)_\d{8}T\d{6}_N(\d{2})(\d{2})_", re.IGNORECASE)
_BAND_FILE = re.compile(r"(?:^|[^A-Za-z0-9])T\d{2}[A-Z]{3}_(\d{8})T\d{6}_B(?:0?\d|8A|1[0-2])(?![A-Za-z0-9])",
                        re.IGNORECASE)


def offset_of(path: str, labels: Sequence[Optional[str]]) -> Optional[tuple[float, str]]:
    """(offset, why) when the names say whether the values carry the offset; None when they do not say (not
    named as Sentinel-2, or acquired before 25 January 2022 with no baseline in sight)."""
    product = _PRODUCT.search(path or "")
    if product:
        baseline = f"{product.group(1)}.{product.group(2)}"
        if int(product.group(1)) >= 4:
            return OFFSET, f"Sentinel-2 processing baseline {baseline} (in the product's name)"
        return 0.0, f"Sentinel-2 processing baseline {baseline}, before the offset (in the product's name)"
    days = _band_file_days(labels)
    if days and min(days) >= FIRST_OFFSET_DAY:
        return OFFSET, f"Sentinel-2 acquired on {min(days).isoformat()} (in the band files' names)"
    return None


def acquired_before_offset(labels: Sequence[Optional[str]]) -> Optional[datetime.date]:
    """The acquisition day of Sentinel-2 band files named as acquired before 25 January 2022, else None."""
    days = [d for d in _band_file_days(labels) if d < FIRST_OFFSET_DAY]
    return min(days) if days else None


def _band_file_days(labels: Sequence[Optional[str]]) -> list[datetime.date]:
    """The acquisition days in the labels named as Sentinel-2 band files."""
    days = [_day(m.group(1)) for m in (_BAND_FILE.search(label or "") for label in labels) if m]
    return [d for d in days if d is not None]


def _day(text: str) -> Optional[datetime.date]:
    try:
        return datetime.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        return None
