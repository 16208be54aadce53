"""plugin/batch_summary.py: the batch's table of figures, one row per input, from the run or from the map there."""

from __future__ import annotations

import csv
import math
import os
import stat

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from plugin.batch_inputs import Job
from plugin.batch_summary import COLUMNS, SUMMARY_NAME, row_of, write_summary
from plugin.core.flood_extent import EXTENT_CLASSES_TAG, ExtentStats
from plugin.core.jobs import MapFloodsResult, Stats
from plugin.core.provenance import provenance_tags


def _map(path, classes: np.ndarray, extent: bool = False, tags: dict | None = None) -> str:
    """A class map on a 10 m UTM grid: each pixel 100 m²; `tags`: its provenance."""
    profile = dict(driver="GTiff", width=classes.shape[1], height=classes.shape[0], count=1, dtype="uint8",
                   nodata=255, crs="EPSG:32633", transform=from_origin(500000, 5000000, 10, 10))
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(classes, 1)
        if extent:
            ds.update_tags(**{EXTENT_CLASSES_TAG: "0=not water,1=flood water,2=permanent water,255=nodata"})
        ds.update_tags(**(tags or {}))
    return str(path)


def _read(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == COLUMNS
        return list(reader)


def test_one_row_per_input_with_its_status_and_figures(tmp_path):
    compared = MapFloodsResult(output_path="", water_pixels=300, valid_pixels=1000, water_fraction=0.3,
                               water_area_km2=0.03, transport="tensor", model="m", cloud_pixels=50,
                               reference="the pre-event image 'before.tif'", flood_pixels=200, flood_area_km2=0.02,
                               permanent_water_pixels=100, permanent_water_area_km2=0.01)
    plain = MapFloodsResult(output_path="", water_pixels=7, valid_pixels=10, water_fraction=0.7,
                            water_area_km2=math.nan, transport="image", model="m")
    jobs = [Job("/in/during.tif", str(tmp_path / "during_flood.tif"), seconds=12.34, stats=compared),
            Job("/in/plain.tif", str(tmp_path / "plain_flood.tif"), stats=plain),
            Job("/in/offline.tif", str(tmp_path / "offline_flood.tif"),
                stats=ExtentStats(valid_pixels=10, flood_pixels=2, permanent_pixels=3, no_reference_pixels=0,
                                  reference_water_pixels=3, flood_area_km2=0.0002, permanent_area_km2=0.0003)),
            Job("/in/water.tif", str(tmp_path / "water_flood.tif"), stats=Stats(4, 8, 0.5, 0.0004)),
            Job("/in/broken.tif", str(tmp_path / "broken_flood.tif"), error="broken.tif is unreadable."),
            Job("/in/later.tif", str(tmp_path / "later_flood.tif"))]
    path = write_summary(jobs, tmp_path)
    assert path == tmp_path / SUMMARY_NAME
    assert sorted(os.listdir(tmp_path)) == [SUMMARY_NAME], "no temp file left"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~_umask(), "readable by others, as the maps are"
    rows = _read(path)
    assert [r["status"] for r in rows] == ["mapped", "mapped", "mapped", "mapped", "failed", "not mapped"]
    during, plain_row, offline, water, broken, later = rows
    assert during == {"input": "/in/during.tif", "map": "during_flood.tif", "status": "mapped", "water_km2": "0.0300",
                      "flood_km2": "0.0200", "permanent_water_km2": "0.0100", "water_pixels": "300",
                      "valid_pixels": "1000", "cloud_pixels": "50", "seconds": "12.3",
                      "compared_with": "the pre-event image 'before.tif'", "model": "", "mapped_at_utc": "",
                      "polygons": "", "error": ""}
    assert plain_row["water_km2"] == "" and plain_row["flood_km2"] == "" and plain_row["cloud_pixels"] == "0", \
        "no CRS: no area; nothing compared: no flood column"
    assert (offline["flood_km2"], offline["permanent_water_km2"]) == ("0.0002", "0.0003")
    assert offline["water_km2"] == "0.0005"
    assert (water["water_km2"], water["flood_km2"], water["cloud_pixels"]) == ("0.0004", "", "")
    assert broken["error"] == "broken.tif is unreadable." and broken["water_km2"] == ""
    assert later["error"] == "" and later["water_pixels"] == ""


def test_a_map_already_there_gets_its_figures_from_the_map(tmp_path):
    water = np.zeros((20, 30), np.uint8)
    water[:5] = 1
    water[-2:] = 255
    extent = np.zeros((20, 30), np.uint8)
    extent[:4] = 1
    extent[4:6] = 2
    made = provenance_tags("/in/a.tif", "prithvi-sen1floods11", "vLLM 0.32.0", "tensor", "float32",
                           when=1764600000)  # 2025-12-01 14:40:00 UTC
    jobs = [Job("/in/a.tif", _map(tmp_path / "a_flood.tif", water, tags=made), skipped=True),
            Job("/in/b.tif", _map(tmp_path / "b_flood.tif", extent, extent=True), skipped=True)]
    (tmp_path / "c_flood.tif").write_bytes(b"not a map")
    jobs.append(Job("/in/c.tif", str(tmp_path / "c_flood.tif"), skipped=True))
    a, b, c = _read(write_summary(jobs, tmp_path))
    assert a["status"] == "already there" and a["water_pixels"] == "150" and a["valid_pixels"] == "540"
    assert float(a["water_km2"]) == pytest.approx(150 * 100 / 1e6) and a["flood_km2"] == ""
    assert float(b["flood_km2"]) == pytest.approx(120 * 100 / 1e6)
    assert float(b["permanent_water_km2"]) == pytest.approx(60 * 100 / 1e6) and b["water_pixels"] == "180"
    assert c["status"] == "already there" and c["error"].startswith("its figures could not be read")
    assert (a["model"], a["mapped_at_utc"]) == ("prithvi-sen1floods11", "2025-12-01 14:40:00")
    assert (b["model"], b["mapped_at_utc"], c["model"]) == ("", "", ""), "a map that does not say: left empty"


def test_a_mapped_row_names_the_model_its_map_names(tmp_path):
    water = np.zeros((4, 4), np.uint8)
    made = provenance_tags("/in/a.tif", "demo", "vLLM 0.32.0", "image", when=0)
    job = Job("/in/a.tif", _map(tmp_path / "a_flood.tif", water, tags=made), stats=Stats(0, 16, 0.0, 0.0016))
    assert (row_of(job)["model"], row_of(job)["mapped_at_utc"]) == ("demo", "1970-01-01 00:00:00")


def test_a_row_of_a_job_left_as_it_was():
    row = row_of(Job("/in/x.tif", "/out/x_flood.tif"))
    assert row["status"] == "not mapped" and set(row) == set(COLUMNS)


def _umask() -> int:
    from plugin.core.output import _umask
    return _umask()
