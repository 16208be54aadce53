"""A map's water polygons as GeoJSON: WGS 84 longitude/latitude, one feature per connected area of one class,
areas that add up to the map's water area as the batch's table measures it, written whole or not at all."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds

from plugin.core import polygon_file
from plugin.core.errors import InputError, OutputError
from plugin.core.polygon_file import polygons_path, write_water_geojson
from plugin.core.stats import PixelArea, compute_stats


def _map(path, classes, crs="EPSG:32633", transform=None):
    transform = transform or from_origin(500000, 4600000, 10.0, 10.0)
    with rasterio.open(path, "w", driver="GTiff", width=classes.shape[1], height=classes.shape[0], count=1,
                       dtype="uint8", nodata=255, crs=crs, transform=transform) as ds:
        ds.write(classes, 1)
    return str(path)


def _lake_and_speck():
    classes = np.zeros((40, 50), np.uint8)
    classes[5:25, 5:30] = 1          # a lake ...
    classes[10:15, 10:15] = 0        # ... with an island
    classes[30:32, 40:41] = 1        # a 2-pixel speck
    classes[0:3, 45:50] = 255        # nodata is not water
    return classes


def _features(path):
    with open(path, encoding="utf-8") as fh:
        collection = json.load(fh)
    assert collection["type"] == "FeatureCollection"
    return collection["features"]


def test_polygons_are_in_wgs84_on_the_map_and_add_up_to_its_water(tmp_path):
    path = _map(tmp_path / "scene_flood.tif", _lake_and_speck())
    target = polygons_path(path)
    assert target == str(tmp_path / "scene_flood.geojson")
    written = write_water_geojson(path, target)
    features = _features(target)
    assert (written.kept, written.dropped, len(features)) == (2, 0, 2)
    assert sorted(f["properties"]["pixels"] for f in features) == [2, 475]
    assert {f["properties"]["class"] for f in features} == {"flood"}  # no reference: all water counts as flood
    lake = max(features, key=lambda f: f["properties"]["pixels"])
    assert len(lake["geometry"]["coordinates"]) == 2, "the island stays a hole"
    # areas measured on the map's grid, as the table measures the water: they add up to it
    total = sum(f["properties"]["area_m2"] for f in features)
    assert total == pytest.approx(compute_stats(path).water_area_km2 * 1e6) == pytest.approx(477 * 100.0)
    assert written.m2["flood"] == pytest.approx(total) and written.m2["permanent"] == 0
    # longitude, latitude (RFC 7946), inside the map's bounds on the Earth
    with rasterio.open(path) as ds:
        west, south, east, north = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
    points = np.array([p for f in features for ring in f["geometry"]["coordinates"] for p in ring])
    assert (points[:, 0] >= west - 1e-6).all() and (points[:, 0] <= east + 1e-6).all()
    assert (points[:, 1] >= south - 1e-6).all() and (points[:, 1] <= north + 1e-6).all()
    assert 14.9 < west < 15.1 and 41.4 < south < 41.6  # UTM 33N at 500 km east, 4600 km north


def test_gdal_reads_the_file_as_a_wgs84_polygon_layer(tmp_path):
    from osgeo import ogr

    path = _map(tmp_path / "scene_flood.tif", _lake_and_speck())
    write_water_geojson(path, polygons_path(path))
    source = ogr.Open(polygons_path(path))
    layer = source.GetLayer(0)
    assert layer.GetFeatureCount() == 2
    assert ogr.GT_Flatten(layer.GetGeomType()) == ogr.wkbPolygon
    srs = layer.GetSpatialRef()
    assert (srs.GetAuthorityName(None), srs.GetAuthorityCode(None)) == ("EPSG", "4326")
    names = [layer.GetLayerDefn().GetFieldDefn(i).GetName() for i in range(layer.GetLayerDefn().GetFieldCount())]
    assert names == ["id", "class", "area_m2", "pixels"]
    assert all(f.GetGeometryRef().IsValid() for f in layer)


def test_small_areas_are_left_out(tmp_path):
    path = _map(tmp_path / "scene_flood.tif", _lake_and_speck())
    written = write_water_geojson(path, polygons_path(path), min_area_m2=500.0)  # the speck is 200 m²
    assert (written.kept, written.dropped) == (1, 1)
    assert [f["properties"]["pixels"] for f in _features(polygons_path(path))] == [475]


def test_flood_and_permanent_water_are_told_apart(tmp_path):
    classes = np.zeros((20, 20), np.uint8)
    classes[2:6, 2:6] = 1   # flood
    classes[10:13, 10:20] = 2  # permanent
    path = _map(tmp_path / "extent.tif", classes)
    written = write_water_geojson(path, polygons_path(path))
    by_class = {f["properties"]["class"]: f["properties"]["area_m2"] for f in _features(polygons_path(path))}
    assert by_class == {"flood": 1600.0, "permanent": 3000.0}
    assert written.m2 == {"flood": 1600.0, "permanent": 3000.0}


def test_areas_on_a_geographic_grid_are_those_of_the_ellipsoid(tmp_path):
    """In degrees, a pixel's area shrinks towards the poles: each polygon's area is the sum of its pixels' areas on
    the ellipsoid, row by row, as the table has the water's."""
    classes = np.zeros((60, 40), np.uint8)
    classes[0:60, 3:4] = 1           # a north-south channel, one pixel wide
    classes[20:50, 10:35] = 1        # a lake ...
    classes[30:35, 15:20] = 0        # ... with an island
    transform = from_origin(10.0, 61.0, 0.001, 0.001)
    path = _map(tmp_path / "north.tif", classes, crs="EPSG:4326", transform=transform)
    write_water_geojson(path, polygons_path(path))
    features = _features(polygons_path(path))
    pixel = PixelArea(rasterio.crs.CRS.from_epsg(4326).to_wkt(), transform)
    cells = pixel.rows(rasterio.windows.Window(0, 0, 40, 60))  # (rows, 1)
    for feature in features:
        cols = (3, 4) if feature["properties"]["pixels"] == 60 else (10, 35)
        mask = np.zeros_like(classes, bool)
        mask[:, cols[0]:cols[1]] = classes[:, cols[0]:cols[1]] == 1
        assert feature["properties"]["area_m2"] == pytest.approx(float((mask * cells).sum()), abs=0.01)
    total = sum(f["properties"]["area_m2"] for f in features)
    assert total == pytest.approx(compute_stats(path).water_area_km2 * 1e6, abs=0.02)
    per_pixel = total / sum(f["properties"]["pixels"] for f in features)
    assert 5900 < per_pixel < 6200  # 0.001° is ~111 m north-south and ~54 m east-west at 61° N


def test_a_map_without_a_crs_is_refused_with_the_way_out(tmp_path):
    path = tmp_path / "nocrs.tif"
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8", nodata=255) as ds:
        ds.write(np.ones((1, 8, 8), np.uint8))
    with pytest.raises(InputError, match="no coordinate reference system") as err:
        write_water_geojson(str(path), polygons_path(str(path)))
    assert "Assign Projection" in err.value.hint
    assert not (tmp_path / "nocrs.geojson").exists()


def test_an_interrupt_or_a_failed_write_leaves_the_earlier_file_and_no_other(tmp_path, monkeypatch):
    path = _map(tmp_path / "scene_flood.tif", _lake_and_speck())
    target = polygons_path(path)
    with open(target, "w", encoding="utf-8") as fh:
        fh.write("earlier")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(polygon_file.json, "dumps", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_water_geojson(path, target)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(polygon_file.json, "dumps", disk_full)
    with pytest.raises(OutputError, match="Writing the water polygons file .* failed: .*No space left"):
        write_water_geojson(path, target)
    assert open(target, encoding="utf-8").read() == "earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene_flood.geojson", "scene_flood.tif"]
