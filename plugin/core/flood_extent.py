"""A water map classified against reference water: flood water, permanent water, and their figures.

    water map (0/1, nodata) + references (reference.py) on the map's own grid
    -> 0 = not water, 1 = flood water (water now, not in the reference), 2 = permanent water (water now and
       in the reference), 255 = nodata
    -> pixel counts and areas per class, and how many valid pixels had no reference (their water is flood)

Everything works on the written map's grid (its file's CRS and transform) window by window, so a map of any
size or extent is classified in bounded memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import numpy as np

from .classes import CLASS_FLOOD, CLASS_NOT_WATER, CLASS_PERMANENT, EXTENT_CLASSES_TAG, NODATA
from .errors import InputError, OutputError
from .output import AtomicOutputs, check_output_path, output_profile, verify_written
from .progress import NullProgress, Progress, check_cancel
from .provenance import carried_over
from .raster import RasterInfo, inspect, iter_windows
from .reference import (
    Grid,
    RasterReference,
    Reference,
    ReferenceReader,
    check_raster_reference,
    overlaps,
)
from .stats import PixelArea, area_of


@dataclass(frozen=True)
class ExtentStats:
    valid_pixels: int
    flood_pixels: int
    permanent_pixels: int
    no_reference_pixels: int  # valid pixels where no reference says water or land
    reference_water_pixels: int  # valid pixels that are water in the reference (water now or not)
    flood_area_km2: float  # NaN without a CRS
    permanent_area_km2: float
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def water_pixels(self) -> int:
        return self.flood_pixels + self.permanent_pixels

    @property
    def water_area_km2(self) -> float:
        return self.flood_area_km2 + self.permanent_area_km2

    @property
    def water_fraction(self) -> float:
        return self.water_pixels / self.valid_pixels if self.valid_pixels else 0.0

    def result_fields(self) -> dict:
        """The figures as MapFloodsResult fields."""
        return dict(water_pixels=self.water_pixels, valid_pixels=self.valid_pixels,
                    water_fraction=self.water_fraction, water_area_km2=self.water_area_km2,
                    flood_pixels=self.flood_pixels, flood_area_km2=self.flood_area_km2,
                    permanent_water_pixels=self.permanent_pixels, permanent_water_area_km2=self.permanent_area_km2,
                    no_reference_pixels=self.no_reference_pixels)


def describe(refs: list[Reference]) -> str:
    """'the pre-event image; the reference water raster (>= 50)': what the map was compared with."""
    parts = []
    for ref in refs:
        if isinstance(ref, RasterReference) and ref.threshold != 1:
            parts.append(f"{ref.label} (water >= {ref.threshold:g})")
        else:
            parts.append(ref.label)
    return "; ".join(parts)


def check_water_map(info: RasterInfo, label: str = "The water map") -> None:
    if info.count != 1:
        raise InputError(
            f"{label} ('{info.path}') has {info.count} bands; a water map has one (1 = water, 0 = not water).",
            "Give a Flood Mapper map or another one-band 0/1 water raster; to map water in an image, use "
            "Map floods.")


def require_crs(grid: Grid) -> None:
    if grid.crs_wkt is None:
        raise InputError("The raster has no CRS, so where the reference water lies on it is unknown.",
                         "Assign a CRS to the raster (Raster > Projections > Assign Projection) and run again.")


def check_references(refs: list[Reference], grid: Grid, warn: Callable[[str], None]) -> int:
    """Before any work: every reference usable (InputError otherwise), a warning for each that misses the map.
    Returns how many missed it."""
    if refs:
        require_crs(grid)
    missed = 0
    for ref in refs:
        if isinstance(ref, RasterReference):
            check_raster_reference(ref)
        elif ref.skipped:
            warn(f"{ref.label.capitalize()}: {ref.skipped} feature(s) that are not polygons (points, lines) "
                 "were left out.")
        if not overlaps(ref, grid):
            warn(no_overlap_message(ref))
            missed += 1
    return missed


def late_warnings(stats: ExtentStats, refs: list[Reference]) -> list[str]:
    """What the classified map shows about the references: none reaches a valid pixel, or none says water."""
    if not refs or not stats.valid_pixels:
        return []
    if stats.no_reference_pixels == stats.valid_pixels:
        return ["The reference water covers none of the raster's valid pixels: every water pixel counts as flood "
                "water. Check that the reference covers the same place."]
    if stats.reference_water_pixels == 0:
        return [f"The reference ({describe(refs)}) marks no water on the raster: every water pixel counts as "
                "flood water. Check REFERENCE_THRESHOLD and the reference."]
    return []


def no_overlap_message(ref: Reference) -> str:
    return (f"{ref.label.capitalize()} does not overlap the raster: there is no reference water there, so "
            "every water pixel counts as flood water. Check that the reference covers the same place.")


def classify(water_map: str, refs: list[Reference], dest: str, progress: Optional[Progress] = None,
             tags: Optional[dict] = None) -> ExtentStats:
    """Write the flood-extent classes of `water_map` into `dest` (a new GeoTIFF on the map's grid; the caller
    makes it atomic, with the water map's provenance and `tags`) and return the figures. Water is any valid value
    >= 1 (a 0/1 map, or an earlier flood-extent map)."""
    import rasterio
    from rasterio.errors import RasterioError

    progress = progress or NullProgress()
    counts = dict(valid=0, flood=0, permanent=0, no_ref=0, covered_water=0)
    area_m2 = {CLASS_FLOOD: 0.0, CLASS_PERMANENT: 0.0}
    try:
        with rasterio.open(water_map) as src:
            grid = Grid(src.crs.to_wkt() if src.crs else None, src.transform, src.width, src.height)
            nodata = NODATA if src.nodata is None else src.nodata
            pixel_area = PixelArea(grid.crs_wkt, grid.transform)
            windows = list(iter_windows(src.width, src.height))
            profile = output_profile(src)
            with ReferenceReader(refs, grid) as reader, rasterio.open(dest, "w", **profile) as dst:
                for i, window in enumerate(windows):
                    check_cancel(progress)
                    values = src.read(1, window=window)
                    valid = values != nodata
                    if np.issubdtype(values.dtype, np.floating):
                        valid &= np.isfinite(values)
                    water = valid & (values >= 1)
                    ref_water, covered = reader.read(window)
                    permanent = water & ref_water
                    flood = water & ~ref_water
                    classes = np.full(valid.shape, NODATA, np.uint8)
                    classes[valid] = CLASS_NOT_WATER
                    classes[flood] = CLASS_FLOOD
                    classes[permanent] = CLASS_PERMANENT
                    dst.write(classes, 1, window=window)
                    counts["valid"] += int(valid.sum())
                    counts["flood"] += int(flood.sum())
                    counts["permanent"] += int(permanent.sum())
                    counts["no_ref"] += int((valid & ~covered).sum())
                    counts["covered_water"] += int((valid & covered & ref_water).sum())
                    cell = pixel_area.rows(window)
                    for value, mask in ((CLASS_FLOOD, flood), (CLASS_PERMANENT, permanent)):
                        area_m2[value] += area_of(mask, cell)
                    progress.set_progress(100.0 * (i + 1) / len(windows))
                dst.update_tags(**{**carried_over(src.tags()),
                                   EXTENT_CLASSES_TAG: "0=not water,1=flood water,2=permanent water,255=nodata",
                                   **(tags or {})})
                dst.set_band_description(1, "flood extent")
    except RasterioError as exc:
        raise OutputError(f"Making the flood extent map failed: {exc}.",
                          "Check free disk space and that the water map and the references are readable.") from None
    known = pixel_area.known
    return ExtentStats(
        valid_pixels=counts["valid"], flood_pixels=counts["flood"], permanent_pixels=counts["permanent"],
        no_reference_pixels=counts["no_ref"], reference_water_pixels=counts["covered_water"],
        flood_area_km2=area_m2[CLASS_FLOOD] / 1e6 if known else math.nan,
        permanent_area_km2=area_m2[CLASS_PERMANENT] / 1e6 if known else math.nan,
    )


def summary(stats: ExtentStats) -> str:
    """One line for the log: the flood and permanent water figures, and the pixels with no reference."""
    def km2(value: float) -> str:
        return f"{value:.3f} km²" if not math.isnan(value) else "area unknown (no CRS)"

    no_ref = stats.no_reference_pixels
    share = no_ref / stats.valid_pixels if stats.valid_pixels else 0.0
    return (f"flood water {stats.flood_pixels:,} px ({km2(stats.flood_area_km2)}), permanent water "
            f"{stats.permanent_pixels:,} px ({km2(stats.permanent_area_km2)}); {no_ref:,} valid px "
            f"({share:.1%}) with no reference (their water counts as flood)")


def compare_water_maps(water_map: str, refs: list[Reference], output_path: str,
                       progress: Optional[Progress] = None) -> ExtentStats:
    """The whole comparison for water maps already made: checks, classes, one atomic output."""
    progress = progress or NullProgress()
    warned: list[str] = []

    def warn(message: str) -> None:
        if message not in warned:
            warned.append(message)
            progress.warning(message)

    if not refs:
        raise InputError("No reference water was given.",
                         "Give a pre-event water map (PRE_EVENT) or a reference water layer (REFERENCE_WATER).")
    info = inspect(water_map)
    check_water_map(info)
    missed = check_references(refs, Grid.of(info), warn)
    for ref in refs:
        if isinstance(ref, RasterReference):
            check_output_path(output_path, ref.path)
    outputs = AtomicOutputs([output_path], keep=water_map)
    try:
        progress.info(f"Comparing {water_map} with {describe(refs)}")
        stats = classify(water_map, refs, outputs.temps[0], progress, tags=reference_tags(refs))
        verify_written(outputs.temps[0], output_path)
        outputs.commit()
    finally:
        outputs.discard()
    if missed < len(refs):
        for message in late_warnings(stats, refs):
            warn(message)
    progress.info("Flood extent: " + summary(stats))
    return replace(stats, warnings=tuple(warned))


def reference_tags(refs: list[Reference]) -> dict:
    """GeoTIFF metadata naming what the map was compared with (the map's provenance)."""
    return {"FLOODMAPPER_REFERENCE": describe(refs)} if refs else {}


def is_extent_map(path: str) -> bool:
    """Whether a map on disk holds flood-extent classes (1 flood, 2 permanent water) rather than 1 = water."""
    import rasterio

    with rasterio.open(path) as src:
        return EXTENT_CLASSES_TAG in src.tags()


def class_areas(path: str) -> dict[int, tuple[int, float]]:
    """Pixels and km² of each water class (1, 2) of a map on disk (km² NaN without a CRS)."""
    import rasterio

    found = {CLASS_FLOOD: [0, 0.0], CLASS_PERMANENT: [0, 0.0]}
    with rasterio.open(path) as src:
        area = PixelArea(src.crs.to_wkt() if src.crs else None, src.transform)
        for window in iter_windows(src.width, src.height):
            values = src.read(1, window=window)
            cell = area.rows(window)
            for value, counts in found.items():
                mask = values == value
                counts[0] += int(mask.sum())
                counts[1] += area_of(mask, cell)
    return {value: (pixels, m2 / 1e6 if area.known else math.nan) for value, (pixels, m2) in found.items()}

