"""The flood-extent comparison (plugin/core/flood_extent.py, reference.py, reference_files.py) on small rasters
whose expected classes are known pixel by pixel."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform_geom

from plugin.core.errors import InputError
from plugin.core.flood_extent import class_areas, compare_water_maps, is_extent_map
from plugin.core.reference import PolygonReference, RasterReference, polygons_from
from plugin.core.reference_files import read_polygons, reference_from_path
from plugin.core.stats import compute_stats
from tests.fixtures.progress import Recorder
from tests.fixtures.references import write_vector

UTM = "EPSG:32633"
X0, Y0 = 500000.0, 5000400.0  # top-left of the 40x40 map at 10 m


def write(path, data, transform, crs=UTM, nodata=255):
    data = np.asarray(data)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[-1], height=data.shape[-2],
                       count=1 if data.ndim == 2 else data.shape[0], dtype=data.dtype, crs=crs,
                       transform=transform, nodata=nodata) as dst:
        dst.write(data if data.ndim == 3 else data[None])
    return str(path)


@pytest.fixture
def water_map(tmp_path):
    """40x40 at 10 m: water in columns 10-29, nodata on row 0."""
    data = np.zeros((40, 40), np.uint8)
    data[:, 10:30] = 1
    data[0] = 255
    return write(tmp_path / "water.tif", data, from_origin(X0, Y0, 10, 10))


def classes_of(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.tags()


def test_raster_reference_on_a_coarser_grid_covering_half(tmp_path, water_map):
    """A 20 m reference over the western half, water in its top half, nodata on one block: classes, counts,
    areas and the pixels with no reference are exactly what the grids say."""
    ref = np.zeros((20, 10), np.uint8)  # 20 rows x 10 cols at 20 m = the map's columns 0-19
    ref[:10] = 1  # the map's rows 0-19
    ref[15, :5] = 255  # the map's rows 30-31, columns 0-9: nodata, no reference
    reference = write(tmp_path / "ref.tif", ref, from_origin(X0, Y0, 20, 20))
    out = tmp_path / "extent.tif"
    stats = compare_water_maps(water_map, [RasterReference(reference)], str(out), Recorder())

    got, tags = classes_of(out)
    expected = np.zeros((40, 40), np.uint8)
    expected[:, 10:30] = 1
    expected[:20, 10:20] = 2
    expected[0] = 255
    np.testing.assert_array_equal(got, expected)
    assert tags["FLOODMAPPER_CLASSES"].startswith("0=not water,1=flood water,2=permanent water")
    assert stats.permanent_pixels == 19 * 10 and stats.flood_pixels == 39 * 20 - 190
    assert stats.no_reference_pixels == 39 * 20 + 2 * 10  # the east half, and the nodata block
    assert stats.flood_area_km2 == pytest.approx(stats.flood_pixels * 100 / 1e6)
    assert stats.permanent_area_km2 == pytest.approx(190 * 100 / 1e6)
    assert class_areas(str(out)) == {1: (stats.flood_pixels, pytest.approx(stats.flood_area_km2)),
                                     2: (190, pytest.approx(stats.permanent_area_km2))}
    assert is_extent_map(str(out)) and not is_extent_map(water_map)
    water = compute_stats(str(out))  # the plain water figures count both classes
    assert water.water_pixels == stats.water_pixels and water.water_area_km2 == pytest.approx(stats.water_area_km2)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_polygons_in_another_crs_burn_the_same_pixels(tmp_path, water_map):
    """A square lake given in EPSG:4326 marks the same pixels as the same square in the map's CRS."""
    ring = [(X0 + 50, Y0 - 50), (X0 + 250, Y0 - 50), (X0 + 250, Y0 - 250), (X0 + 50, Y0 - 250), (X0 + 50, Y0 - 50)]
    dense = [tuple(np.add(a, np.multiply(np.subtract(b, a), t))) for a, b in zip(ring, ring[1:])
             for t in np.linspace(0, 1, 10, endpoint=False)] + [ring[0]]
    square = {"type": "Polygon", "coordinates": [dense]}
    in_utm = PolygonReference([square], rasterio.crs.CRS.from_string(UTM).to_wkt())
    lonlat = transform_geom(UTM, "EPSG:4326", square)
    in_4326 = PolygonReference([lonlat], rasterio.crs.CRS.from_epsg(4326).to_wkt())
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    sa = compare_water_maps(water_map, [in_utm], str(a))
    sb = compare_water_maps(water_map, [in_4326], str(b))
    got_a, got_b = classes_of(a)[0], classes_of(b)[0]
    np.testing.assert_array_equal(got_a, got_b)
    assert (got_a[5:25, 10:25] == 2).all() and sa.permanent_pixels == 20 * 15 - 0
    assert sa.no_reference_pixels == sb.no_reference_pixels == 0  # polygons: outside them is land


def test_references_are_united(tmp_path, water_map):
    left = np.zeros((40, 40), np.uint8)
    left[:, :15] = 1
    raster = write(tmp_path / "left.tif", left, from_origin(X0, Y0, 10, 10))
    right = {"type": "Polygon", "coordinates": [[(X0 + 250, Y0), (X0 + 400, Y0), (X0 + 400, Y0 - 400),
                                                 (X0 + 250, Y0 - 400), (X0 + 250, Y0)]]}
    out = tmp_path / "out.tif"
    compare_water_maps(water_map, [RasterReference(raster), PolygonReference([right], None)], str(out))
    got = classes_of(out)[0]
    assert (got[1:, 10:15] == 2).all() and (got[1:, 25:30] == 2).all() and (got[1:, 15:25] == 1).all()


def test_threshold_must_lie_within_the_raster_range(tmp_path, water_map):
    occurrence = write(tmp_path / "occ.tif", np.full((40, 40), 60, np.uint8), from_origin(X0, Y0, 10, 10))
    out = tmp_path / "out.tif"
    for bad, words in ((300, "no pixel"), (0, "every pixel"), (-5, "every pixel"), (float("nan"), "not a number")):
        with pytest.raises(InputError) as err:
            compare_water_maps(water_map, [RasterReference(occurrence, bad)], str(out))
        assert words in err.value.message and "50 for the JRC" in err.value.hint
    assert not out.exists()
    stats = compare_water_maps(water_map, [RasterReference(occurrence, 50)], str(out))
    assert stats.flood_pixels == 0 and stats.permanent_pixels == 39 * 20
    floats = write(tmp_path / "f.tif", np.full((40, 40), 0.7, np.float32), from_origin(X0, Y0, 10, 10), nodata=None)
    compare_water_maps(water_map, [RasterReference(floats, 1e6)], str(out))  # any finite threshold for floats


def test_a_threshold_that_finds_no_water_warns(tmp_path, water_map):
    occurrence = write(tmp_path / "occ.tif", np.full((40, 40), 30, np.uint8), from_origin(X0, Y0, 10, 10))
    progress = Recorder()
    stats = compare_water_maps(water_map, [RasterReference(occurrence, 50)], str(tmp_path / "o.tif"), progress)
    assert stats.permanent_pixels == 0 and stats.flood_pixels == 39 * 20
    assert any("marks no water" in w and "REFERENCE_THRESHOLD" in w for w in progress.warnings), progress.warnings


def test_no_overlap_warns_once_and_everything_is_flood(tmp_path, water_map):
    far = write(tmp_path / "far.tif", np.ones((40, 40), np.uint8), from_origin(X0 + 90000, Y0, 10, 10))
    progress = Recorder()
    out = tmp_path / "o.tif"
    stats = compare_water_maps(water_map, [RasterReference(far)], str(out), progress)
    assert stats.flood_pixels == 39 * 20 and stats.permanent_pixels == 0 and stats.no_reference_pixels == 39 * 40
    assert len(progress.warnings) == 1 and "does not overlap" in progress.warnings[0], progress.warnings
    assert out.exists()


def test_bad_references_are_refused_before_anything_is_written(tmp_path, water_map):
    out = tmp_path / "out.tif"
    six = write(tmp_path / "six.tif", np.ones((6, 40, 40), np.uint16), from_origin(X0, Y0, 10, 10), nodata=0)
    with pytest.raises(InputError) as err:
        compare_water_maps(water_map, [RasterReference(six)], str(out))
    assert "6 bands" in err.value.message and "PRE_EVENT" in err.value.hint
    with pytest.raises(InputError) as err:
        compare_water_maps(six, [RasterReference(water_map)], str(out))
    assert "6 bands" in err.value.message and "Map floods" in err.value.hint
    no_crs = tmp_path / "nocrs.tif"
    with rasterio.open(no_crs, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8") as dst:
        dst.write(np.ones((1, 4, 4), np.uint8))
    with pytest.raises(InputError) as err:
        compare_water_maps(water_map, [RasterReference(str(no_crs))], str(out))
    assert "no CRS" in err.value.message
    with pytest.raises(InputError) as err:
        compare_water_maps(water_map, [], str(out))
    assert "No reference" in err.value.message
    with pytest.raises(InputError) as err:
        polygons_from([{"type": "LineString", "coordinates": [(0, 0), (1, 1)]}], None, "the rivers")
    assert "not polygons" in err.value.message and "buffered" in err.value.hint
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_mixed_geometries_keep_the_polygons_and_say_what_was_left_out(tmp_path, water_map):
    square = {"type": "Polygon", "coordinates": [[(X0, Y0), (X0 + 100, Y0), (X0 + 100, Y0 - 100), (X0, Y0)]]}
    line = {"type": "LineString", "coordinates": [(X0, Y0), (X0 + 10, Y0 - 10)]}
    collection = {"type": "GeometryCollection", "geometries": [square, line]}
    ref = polygons_from([collection, line], None, "the mixed layer")
    assert len(ref.shapes) == 1 and ref.skipped == 1
    progress = Recorder()
    compare_water_maps(water_map, [ref], str(tmp_path / "o.tif"), progress)
    assert any("1 feature(s) that are not polygons" in w for w in progress.warnings)


def test_reference_files_read_with_gdal(tmp_path):
    lake = {"type": "Polygon", "coordinates": [[(15.0, 45.0), (15.01, 45.0), (15.01, 45.01), (15.0, 45.0)]]}
    path = write_vector(tmp_path / "water.gpkg", [lake, lake], "EPSG:4326")
    ref = read_polygons(path)
    assert len(ref.shapes) == 2 and ref.shapes[0]["type"] in ("Polygon", "MultiPolygon")
    assert rasterio.crs.CRS.from_wkt(ref.crs_wkt).to_epsg() == 4326
    assert len(read_polygons(path + "|layername=water").shapes) == 2
    assert isinstance(reference_from_path(path), PolygonReference)
    points = write_vector(tmp_path / "points.gpkg", [{"type": "Point", "coordinates": (15.0, 45.0)}], "EPSG:4326",
                          "Point")
    with pytest.raises(InputError) as err:
        reference_from_path(points)
    assert "Point" in err.value.message and "not polygons" in err.value.message
    with pytest.raises(InputError) as err:
        reference_from_path(str(tmp_path / "missing.gpkg"))
    assert "does not exist" in err.value.message


def test_geographic_map_areas_are_ellipsoidal(tmp_path):
    data = np.ones((50, 50), np.uint8)
    transform = from_origin(15.0, 60.0, 0.001, 0.001)
    water_map = write(tmp_path / "geo.tif", data, transform, crs="EPSG:4326")
    half = np.zeros((50, 50), np.uint8)
    half[:25] = 1
    ref = write(tmp_path / "half.tif", half, transform, crs="EPSG:4326")
    stats = compare_water_maps(water_map, [RasterReference(ref)], str(tmp_path / "o.tif"))
    plain = compute_stats(water_map)
    assert stats.water_area_km2 == pytest.approx(plain.water_area_km2, rel=1e-9)
    assert stats.permanent_area_km2 < stats.flood_area_km2  # the northern half: smaller cells at 60° N
    assert stats.permanent_area_km2 == pytest.approx(plain.water_area_km2 / 2, rel=0.01)
