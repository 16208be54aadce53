"""The batch's table of figures: one row per input, in a CSV file beside the maps (a spreadsheet or QGIS opens it).

A situation report wants the flooded area of each scene side by side, not scattered over a console. The figures of
a raster mapped by this run are the run's own; those of a map already there (--skip-existing) are read from the
map, so a run that went on where another stopped still has them all. The model and the time of each map are
those its provenance names.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Optional

from .batch_inputs import Job
from .core.classes import CLASS_FLOOD, CLASS_PERMANENT
from .core.flood_extent import ExtentStats, class_areas, is_extent_map
from .core.jobs import MapFloodsResult, Stats
from .core.output import AtomicOutputs
from .core.polygon_file import polygons_path
from .core.provenance import DATETIME_TAG, MODEL_TAG, read_provenance
from .core.stats import compute_stats

SUMMARY_NAME = "flood_maps.csv"
COLUMNS = ("input", "map", "status", "water_km2", "flood_km2", "permanent_water_km2", "water_pixels",
           "valid_pixels", "cloud_pixels", "seconds", "compared_with", "model", "mapped_at_utc", "polygons", "error")
MAPPED, THERE, OUTSIDE, FAILED, NOT_MAPPED = "mapped", "already there", "outside the area", "failed", "not mapped"


def _km2(value: Optional[float]) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.4f}"


def _figures(stats: Stats | ExtentStats | MapFloodsResult) -> dict[str, str]:
    """A mapped raster's figures; flood and permanent water only when its water was compared with something."""
    row = {"water_km2": _km2(stats.water_area_km2), "water_pixels": str(stats.water_pixels),
           "valid_pixels": str(stats.valid_pixels)}
    if isinstance(stats, ExtentStats):
        row.update(flood_km2=_km2(stats.flood_area_km2), permanent_water_km2=_km2(stats.permanent_area_km2))
    if isinstance(stats, MapFloodsResult):
        row["cloud_pixels"] = str(stats.cloud_pixels)
        if stats.reference:
            row.update(flood_km2=_km2(stats.flood_area_km2), permanent_water_km2=_km2(stats.permanent_water_area_km2),
                       compared_with=stats.reference)
    return row


def _figures_of_map(path: str) -> dict[str, str]:
    """The figures of a map on disk (its clouds are not told apart from its other nodata there)."""
    row = _figures(compute_stats(path))
    if is_extent_map(path):
        areas = class_areas(path)
        row.update(flood_km2=_km2(areas[CLASS_FLOOD][1]), permanent_water_km2=_km2(areas[CLASS_PERMANENT][1]))
    return row


def _made(path: str) -> dict[str, str]:
    """The model and the time a map on disk names in its provenance ("" each when it does not say)."""
    made = read_provenance(path)
    when = made.get(DATETIME_TAG, "")
    if len(when) == 19:  # "YYYY:MM:DD HH:MM:SS", as TIFF has it -> "YYYY-MM-DD HH:MM:SS"
        when = when[:10].replace(":", "-") + when[10:]
    return {"model": made.get(MODEL_TAG, ""), "mapped_at_utc": when}


def row_of(job: Job) -> dict[str, str]:
    row = dict.fromkeys(COLUMNS, "")
    row.update(input=job.input_path, map=os.path.basename(job.output_path))
    if job.polygons is not None or (job.skipped and os.path.isfile(polygons_path(job.output_path))):
        row["polygons"] = os.path.basename(polygons_path(job.output_path))
    if job.skipped:
        row.update(status=THERE, error=job.error or "", **_made(job.output_path))
        try:
            row.update(_figures_of_map(job.output_path))
        except Exception as exc:  # noqa: BLE001 - a map that cannot be read still gets its row
            row["error"] = "; ".join(filter(None, [job.error, f"its figures could not be read: {exc}"]))
    elif job.outside:
        row["status"] = OUTSIDE
    elif job.error:
        row.update(status=FAILED, error=job.error)
    elif job.stats is not None:
        row.update(status=MAPPED, seconds=f"{job.seconds:.1f}", **_figures(job.stats), **_made(job.output_path))
    else:
        row["status"] = NOT_MAPPED
    return row


def write_summary(jobs: list[Job], out_dir: Path) -> Path:
    """The table of `jobs` as `<out_dir>/flood_maps.csv`, written under a temporary name and moved into place."""
    target = out_dir / SUMMARY_NAME
    outputs = AtomicOutputs([str(target)])
    try:
        with open(outputs.temps[0], "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(row_of(job) for job in jobs)
        outputs.commit()
    finally:
        outputs.discard()
    return target
