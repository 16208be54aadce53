"""The map encoding: one uint8 band, 0 = not water, 1 = water, 255 = no data.

Compared with reference water (flood_extent.py), water splits in two: 1 = flood water (water now, not in
the reference) and 2 = permanent water (water now and in the reference); a map without a reference keeps
0/1/255, and its water counts as flood water.
"""

from __future__ import annotations

NODATA = 255
CLASS_NOT_WATER = 0
CLASS_WATER = 1
CLASS_FLOOD = 1
CLASS_PERMANENT = 2
WATER_CLASSES = (CLASS_FLOOD, CLASS_PERMANENT)
CLASS_NAMES = {CLASS_FLOOD: "flood", CLASS_PERMANENT: "permanent"}  # WATER_POLYGONS' `class` field
EXTENT_CLASSES_TAG = "FLOODMAPPER_CLASSES"  # GeoTIFF metadata of a flood-extent map (classes 0/1/2/255)
