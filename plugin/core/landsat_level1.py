"""Landsat Level-1 values as top-of-atmosphere reflectance, from the scene's MTL file.

Level-1 band files (`LC09_L1TP_013032_20231008_20231009_02_T1_B5.TIF`) hold calibrated numbers. The MTL file
that comes with them (`…_T1_MTL.txt`, or `_MTL.json`) gives each band's REFLECTANCE_MULT_BAND_n and
REFLECTANCE_ADD_BAND_n and the scene's SUN_ELEVATION (USGS Landsat Collection 2 Level-1 data format):
reflectance = (value × mult + add) / sin(sun elevation), one SCALE and OFFSET when the bands share their factors.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from .archive_members import folder_of, is_file, join, read_text
from .errors import InputError
from .landsat import is_reflective, level1_band
from .vrt_sources import source_folders

_MTL_LINE = re.compile(r'^\s*([A-Z0-9_]+)\s*=\s*"?([^"\r\n]*?)"?\s*$', re.MULTILINE)


@dataclass(frozen=True)
class Level1Scaling:
    scale: float
    offset: float
    said: str  # what the log says was applied, and from which file


def toa_scaling(path: str, labels: Sequence[Optional[str]]) -> Optional[Level1Scaling]:
    """The reflectance scaling of a raster of Landsat Level-1 band files; None when its bands are not named so.
    Raises InputError when the MTL file cannot be found or read, or its factors cannot be one SCALE and OFFSET."""
    scenes: dict[str, list[int]] = {}
    for found in filter(None, map(level1_band, labels)):
        scene, band = found
        if is_reflective(scene, band):
            scenes.setdefault(scene, []).append(band)
    if not scenes:
        return None
    fix = ("Keep the scene's _MTL.txt (it comes with the band files) beside them, map the Level-2 surface "
           "reflectance product (L2SP, band files …_SR_B*) instead, or set SCALE and OFFSET.")
    if len(scenes) > 1:
        raise InputError(f"'{path}' stacks band files of several Landsat Level-1 scenes ({', '.join(scenes)}), "
                         "each calibrated by its own MTL file.", "Stack the band files of one scene. " + fix)
    scene, bands = next(iter(scenes.items()))
    mtl = _find_mtl(scene, path)
    if mtl is None:
        raise InputError(f"'{path}' holds Landsat Level-1 band files of {scene}: their values are calibrated "
                         f"numbers, not reflectance, and the scene's MTL file ({scene}_MTL.txt) that turns them "
                         "into reflectance is not beside them.", fix)
    values = _read_mtl(mtl)
    factors = {(_number(values, f"REFLECTANCE_MULT_BAND_{b}", mtl), _number(values, f"REFLECTANCE_ADD_BAND_{b}", mtl))
               for b in bands}
    sun = _number(values, "SUN_ELEVATION", mtl)
    if len(factors) > 1:
        raise InputError(f"The bands of {scene} have different reflectance factors in '{mtl}', which one SCALE "
                         "and OFFSET cannot apply.", "Map the Level-2 surface reflectance product (L2SP) "
                         "instead, or convert the bands to reflectance first.")
    if sun <= 0:
        raise InputError(f"{scene} was taken with the sun below the horizon (SUN_ELEVATION {sun:g} in '{mtl}'): "
                         "its values are no reflectance.", "Map a daytime scene.")
    mult, add = factors.pop()
    sine = math.sin(math.radians(sun))
    return Level1Scaling(mult / sine, add / sine, (
        f"Landsat Level-1 {scene}: top-of-atmosphere reflectance = (value × {mult:g} {'−' if add < 0 else '+'} "
        f"{abs(add):g}) / sin({sun:g}°), from '{mtl}' (SCALE and OFFSET override it)"))


def _number(values: dict[str, str], key: str, mtl: str) -> float:
    try:
        return float(values[key])
    except (KeyError, ValueError):
        raise InputError(f"The MTL file '{mtl}' gives no number for {key}.", "Use the MTL file that came with "
                         "the band files, or set SCALE and OFFSET.") from None


def _find_mtl(scene: str, path: str) -> Optional[str]:
    """The scene's MTL file beside the raster or beside the band files a VRT names, in a folder or in the
    downloaded .tar the band files are read from."""
    folders = [folder_of(path), *source_folders(path)]
    for folder in dict.fromkeys(folders):
        for suffix in ("_MTL.txt", "_MTL.json"):
            for name in (scene + suffix, scene.lower() + suffix.lower()):
                candidate = join(folder, name)
                if is_file(candidate):
                    return candidate
    return None


def _read_mtl(path: str) -> dict[str, str]:
    """The MTL file's KEY = value pairs (the .txt's lines, or the .json's leaves), keys upper case."""
    try:
        text = read_text(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Cannot read the MTL file '{path}': {exc}.", "Check that it is a Landsat MTL file "
                         "and readable.") from None
    if not path.lower().endswith(".json"):
        return {key.upper(): value for key, value in _MTL_LINE.findall(text)}
    try:
        tree = json.loads(text)
    except ValueError as exc:
        raise InputError(f"The MTL file '{path}' is no JSON: {exc}.", "Use the scene's _MTL.txt instead.") from None
    leaves: dict[str, str] = {}

    def walk(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, (dict, list)):
                    walk(value)
                else:
                    leaves[str(key).upper()] = str(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(tree)
    return leaves
