"""The flood map's encoding: one uint8 band, 0 = not water, 1 = water, 255 = no data."""

from __future__ import annotations

NODATA = 255
CLASS_NOT_WATER = 0
CLASS_WATER = 1
