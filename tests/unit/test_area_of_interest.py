"""The area a job maps, in plain Python: extent -> pixel window, polygons and clouds -> the pixels mapped,
and band files stacked in a VRT recognised by name."""

from __future__ import annotations

import re

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from plugin.core.area_mask import build_mask
from plugin.core.area_of_interest import AreaMask, plan_area
from plugin.core.bands import select_bands
from plugin.core.cloud_values import (
    CloudBands,
    check_cloud_values,
    format_values,
    named_cloud_bands,
    parse_cloud_bits,
    parse_cloud_values,
)
from plugin.core.errors import InputError
from plugin.core.raster import inspect
from tests.fixtures.world import write_scene

X0, Y0, PX = 500000, 5000000, 20  # write_scene's grid: 80x64 px of 20 m from (500000, 5000000)
BANDS = [0, 1, 2, 3, 4, 5]


@pytest.fixture
def scene(tmp_path):
    return inspect(write_scene(tmp_path / "scene.tif"))


def box(x0, y0, x1, y1, holes=()):
    ring = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
    return {"type": "Polygon", "coordinates": [ring, *[[(a, b), (c, b), (c, d), (a, d), (a, b)]
                                                       for a, b, c, d in holes]]}


def window_tuple(area):
    w = area.window
    return int(w.col_off), int(w.row_off), int(w.width), int(w.height)


# ------------------------------------------------------------------------------------------------ extent
def test_extent_on_pixel_edges_is_exactly_those_pixels(scene):
    notes = []
    area = plan_area(scene, (X0 + 10 * PX, Y0 - 40 * PX, X0 + 42 * PX, Y0 - 8 * PX), note=notes.append)
    assert window_tuple(area) == (10, 8, 32, 32) and not area.whole and notes == []
    assert area.transform == from_origin(X0 + 10 * PX, Y0 - 8 * PX, PX, PX)
    # float noise on an edge takes no extra pixel; a touch inside a pixel takes all of it
    noisy = plan_area(scene, (X0 + 10 * PX + 1e-9, Y0 - 40 * PX - 1e-9, X0 + 42 * PX - 1e-9, Y0 - 8 * PX + 1e-9))
    assert window_tuple(noisy) == (10, 8, 32, 32)
    assert window_tuple(plan_area(scene, (X0 + 10.5 * PX, Y0 - 9.5 * PX, X0 + 11.2 * PX, Y0 - 8.7 * PX))) == (
        10, 8, 2, 2)


def test_extent_past_the_raster_is_cut_to_it_and_said(scene):
    notes = []
    area = plan_area(scene, (X0 - 1000, Y0 - 10 * PX, X0 + 5 * PX, Y0 + 1000), note=notes.append)
    assert window_tuple(area) == (0, 0, 5, 10)
    assert notes and "past the raster" in notes[0]
    assert plan_area(scene, (X0 - 1, Y0 - 64 * PX - 1, X0 + 80 * PX + 1, Y0 + 1)).whole


def test_extent_in_another_crs_covers_it_on_the_raster_grid(scene):
    lonlat = transform_bounds("EPSG:32633", "EPSG:4326", X0 + 200, Y0 - 900, X0 + 700, Y0 - 300)
    area = plan_area(scene, lonlat, "EPSG:4326")
    xmin, ymin, xmax, ymax = transform_bounds("EPSG:4326", "EPSG:32633", *lonlat, densify_pts=21)
    c0, r0, w, h = window_tuple(area)
    assert c0 == int((xmin - X0) // PX) and r0 == int((Y0 - ymax) // PX)
    assert c0 + w == -int(-(xmax - X0) // PX) and r0 + h == -int(-(Y0 - ymin) // PX)


@pytest.mark.parametrize("extent, message", [
    ((X0 + 10_000, Y0, X0 + 11_000, Y0 + 1000), "does not overlap the raster"),
    ((X0 + 80 * PX, Y0 - 10 * PX, X0 + 90 * PX, Y0), "does not overlap the raster"),  # touches the edge only
    ((X0, Y0 - 100, X0, Y0), "empty"),
    ((X0 + 100, Y0 - 100, X0, Y0), "minimum above its maximum"),
    ((X0, float("nan"), X0 + 100, Y0), "not finite"),
    (("a", "b", "c", "d"), "not an extent"),
])
def test_a_bad_extent_is_a_clear_error(scene, extent, message):
    with pytest.raises(InputError, match=message) as err:
        plan_area(scene, extent)
    assert err.value.hint


# ---------------------------------------------------------------------------------------------- polygons
def test_mask_window_is_the_polygons_bounds_within_the_extent(scene):
    polygons = [box(X0 + 5 * PX, Y0 - 30 * PX, X0 + 25 * PX, Y0 - 10 * PX),
                box(X0 + 60 * PX, Y0 - 50 * PX, X0 + 70 * PX, Y0 - 40 * PX)]
    assert window_tuple(plan_area(scene, polygons=polygons)) == (5, 10, 65, 40)
    cut = plan_area(scene, (X0, Y0 - 64 * PX, X0 + 40 * PX, Y0), polygons=polygons)
    assert window_tuple(cut) == (5, 10, 20, 20)


def test_mask_polygons_in_another_crs_are_reprojected(scene):
    from rasterio.warp import transform_geom

    square = box(X0 + 5 * PX, Y0 - 30 * PX, X0 + 25 * PX, Y0 - 10 * PX)
    lonlat = transform_geom("EPSG:32633", "EPSG:4326", square)
    area = plan_area(scene, polygons=[lonlat], polygons_crs="EPSG:4326")
    c0, r0, w, h = window_tuple(area)
    assert abs(c0 - 5) <= 1 and abs(r0 - 10) <= 1 and abs(w - 20) <= 2 and abs(h - 20) <= 2


@pytest.mark.parametrize("polygons, message", [
    ([], "no polygons"),
    ([{"type": "Point", "coordinates": [X0, Y0]}, None], "no polygons"),
    ([box(X0 - 900, Y0 + 100, X0 - 100, Y0 + 900)], "do not overlap the raster"),
])
def test_a_mask_without_polygons_or_overlap_is_a_clear_error(scene, polygons, message):
    with pytest.raises(InputError, match=message):
        plan_area(scene, polygons=polygons)


def test_polygons_outside_the_extent_are_said_to_miss_it(scene):
    with pytest.raises(InputError, match="within the extent"):
        plan_area(scene, (X0, Y0 - 10 * PX, X0 + 10 * PX, Y0), polygons=[box(X0 + 50 * PX, Y0 - 60 * PX,
                                                                              X0 + 60 * PX, Y0 - 50 * PX)])


def test_polygon_with_a_hole_maps_the_ring_only(scene):
    ring = box(X0 + 10 * PX, Y0 - 50 * PX, X0 + 50 * PX, Y0 - 10 * PX,
               holes=[(X0 + 20 * PX, Y0 - 40 * PX, X0 + 40 * PX, Y0 - 20 * PX)])
    area = build_mask(scene, plan_area(scene, polygons=[ring]), BANDS)
    assert window_tuple(area) == (10, 10, 40, 40)
    mapped = area.mask.read(Window(0, 0, 40, 40))
    expected = np.ones((40, 40), bool)
    expected[10:30, 10:30] = False
    np.testing.assert_array_equal(mapped, expected)
    assert area.data_pixels == 40 * 40 - 20 * 20 and area.cloud_pixels == 0


def test_polygons_between_pixel_centres_are_a_clear_error(scene):
    sliver = box(X0 + 10 * PX + 1, Y0 - 20 * PX, X0 + 10 * PX + 5, Y0 - 10 * PX)  # no pixel centre inside
    with pytest.raises(InputError, match="no pixel centre"):
        build_mask(scene, plan_area(scene, polygons=[sliver]), BANDS)


# ------------------------------------------------------------------------------------------------ clouds
def write_cloud(path, data, px=40, x0=X0, y0=Y0, crs="EPSG:32633", nodata=None, descriptions=None):
    """A cloud raster of `data` [h, w] (one band) or [bands, h, w]."""
    data = data[np.newaxis] if data.ndim == 2 else data
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=from_origin(x0, y0, px, px), nodata=nodata) as dst:
        dst.write(data)
        if descriptions:
            dst.descriptions = descriptions
    return str(path)


def test_scl_at_twice_the_pixel_size_masks_each_2x2_block(scene, tmp_path):
    scl = np.full((32, 40), 4, np.uint8)  # vegetation
    scl[2:6, 3:9] = 9  # high-probability cloud
    scl[10, 10] = 3  # cloud shadow
    scl[20:22, 0:40] = 8  # medium-probability cloud
    scl[30, 30] = 7  # unclassified: not cloud by default
    area = build_mask(scene, plan_area(scene, cloud_path=write_cloud(tmp_path / "scl.tif", scl)), BANDS)
    mapped = area.mask.read(Window(0, 0, 80, 64))
    expected = ~np.isin(np.repeat(np.repeat(scl, 2, 0), 2, 1), [3, 8, 9, 10])
    np.testing.assert_array_equal(mapped, expected)
    assert area.cloud_pixels == int((~expected).sum()) == 4 * (24 + 1 + 80)
    assert area.data_pixels == 80 * 64 and area.cloud_fraction == pytest.approx(area.cloud_pixels / (80 * 64))


def test_a_01_mask_with_cloud_values_1(scene, tmp_path):
    ones = np.zeros((32, 40), np.uint8)
    ones[:8] = 1
    path = write_cloud(tmp_path / "clouds.tif", ones)
    warnings = []
    area = build_mask(scene, plan_area(scene, cloud_path=path), BANDS, warn=warnings.append)
    assert area.cloud_pixels == 0 and "CLOUD_VALUES=1" in warnings[0]  # the SCL values match nothing here
    area = build_mask(scene, plan_area(scene, cloud_path=path, cloud_values=[1]), BANDS)
    assert area.cloud_pixels == 16 * 80


@pytest.mark.parametrize("name, bits, clear", [  # clear: clear land (flags, none of them cloud)
    ("LC09_L2SP_013032_20231008_20231009_02_T1_QA_PIXEL.TIF", (1, 2, 3, 4), 21824),
    ("HLS.L30.T10SEG.2023123T184856.v2.0.Fmask.tif", (1, 2, 3), 64),
    ("S2B_20240501_T33TWM_QA60.tif", (10, 11), 0),
])
def test_bit_flag_quality_bands_mask_their_cloud_bits(scene, tmp_path, name, bits, clear):
    """QA_PIXEL, Fmask and QA60 values are sums of flags: cloud is a bit set, whatever the other bits say."""
    flags = np.full((32, 40), clear, np.uint16)
    for i, bit in enumerate(bits):
        flags[i * 4:i * 4 + 4] |= 1 << bit  # each cloud bit in rows of its own
    flags[30, :] = clear | 1 << 5 | 1 << 7  # snow, water: not cloud
    path = write_cloud(tmp_path / name, flags)
    area = build_mask(scene, plan_area(scene, cloud_path=path), BANDS)
    assert area.cloud_bands.bits == bits and "bits" in area.describe(scene)
    assert area.cloud_pixels == len(bits) * 4 * 2 * 80  # 4 rows of 40 m each bit, 2x2 pixels of 20 m
    mapped = area.mask.read(Window(0, 0, 80, 64))
    assert not mapped[:len(bits) * 8].any() and mapped[len(bits) * 8:].all()
    # cloud values given: they are matched whole, as the user asked
    values = build_mask(scene, plan_area(scene, cloud_path=path, cloud_values=[clear]), BANDS)
    assert values.cloud_bands.bits == () and values.cloud_pixels == 2 * 80 * (32 - len(bits) * 4 - 1)


@pytest.mark.parametrize("bits, text, clear", [  # a quality band's copy whose file name no longer says what it is
    ((1, 2, 3, 4), "bits:1,2,3,4", 21824),  # Landsat QA_PIXEL: clear land
    ((1, 2, 3), "bits 1-3", 64),  # HLS Fmask
    ((10, 11), "Bits=10, 11", 0),  # Sentinel-2 QA60
])
def test_a_renamed_bit_flag_band_warns_and_takes_its_bits_from_cloud_values(scene, tmp_path, bits, text, clear):
    flags = np.full((32, 40), clear, np.uint16)
    for i, bit in enumerate(bits):
        flags[i * 4:i * 4 + 4] |= 1 << bit
    path = write_cloud(tmp_path / "clipped.tif", flags)
    warnings = []
    unread = build_mask(scene, plan_area(scene, cloud_path=path), BANDS, warn=warnings.append)
    assert unread.cloud_pixels == 0 and len(warnings) == 1
    assert "are no Sentinel-2 scene classes (0 to 11)" in warnings[0] and "nothing was masked" in warnings[0]
    assert "CLOUD_VALUES=bits:1,2,3,4" in warnings[0]
    given = parse_cloud_bits(text)
    assert given == bits
    warnings.clear()
    area = build_mask(scene, plan_area(scene, cloud_path=path, cloud_bits=given), BANDS, warn=warnings.append)
    assert area.cloud_pixels == len(bits) * 4 * 2 * 80 and warnings == []
    assert area.cloud_bands == CloudBands((1,), bits, "CLOUD_VALUES")
    assert f"cloud bits {format_values(bits)} (CLOUD_VALUES) of {path}" in area.describe(scene)


def test_a_cloud_probability_given_the_scene_classes_warns_of_the_pixels_that_merely_equal_them(scene, tmp_path):
    probability = np.tile(np.arange(1, 100, 2.5, dtype=np.float32), (32, 1))  # 1 to 98.5 % across the columns
    path = write_cloud(tmp_path / "s2cloudless.tif", probability)
    warnings = []
    area = build_mask(scene, plan_area(scene, cloud_path=path), BANDS, warn=warnings.append)
    assert area.cloud_pixels == 0 and len(warnings) == 1  # 3, 8, 9, 10: no column is exactly one of them
    probability[:, 4] = 10.0  # now one column is
    path = write_cloud(tmp_path / "s2cloudless_10.tif", probability)
    warnings.clear()
    area = build_mask(scene, plan_area(scene, cloud_path=path), BANDS, warn=warnings.append)
    assert area.cloud_pixels == 2 * 64 and len(warnings) == 1
    assert f"the {2 * 64} pixels masked as cloud merely equal them" in warnings[0]
    assert "needs a threshold first" in warnings[0] and "CLOUD_VALUES=1" in warnings[0]


def test_cloud_bits_are_read_in_the_band_a_description_names(scene, tmp_path):
    data = np.zeros((3, 32, 40), np.uint16)
    data[0:2] = 9  # reflectance-like bands, 9 as an SCL cloud class would be
    data[2, 0:4] = 1 << 3 | 1 << 6
    path = write_cloud(tmp_path / "export.tif", data, descriptions=("B2", "B3", "QA_PIXEL"))
    area = build_mask(scene, plan_area(scene, cloud_path=path, cloud_bits=(3,)), BANDS)
    assert area.cloud_bands == CloudBands((3,), (3,), "CLOUD_VALUES, band 3") and area.cloud_pixels == 8 * 80


def test_bad_cloud_bits_say_how_to_write_them():
    assert parse_cloud_bits("3,8,9,10") is None and parse_cloud_bits("") is None
    for text in ("bits:", "bits:32", "bits:a", "bits:4-1", "bits:1,x"):
        with pytest.raises(InputError, match=f"CLOUD_VALUES '{re.escape(text)}' gives no bit numbers from 0 to 31") \
                as err:
            parse_cloud_bits(text)
        assert "bits:1,2,3,4 for Landsat QA_PIXEL" in err.value.hint


def test_a_cloud_mask_beside_the_area_is_a_warning(scene, tmp_path):
    far = write_cloud(tmp_path / "far.tif", np.full((10, 10), 9, np.uint8), x0=X0 + 100_000)
    warnings = []
    area = build_mask(scene, plan_area(scene, cloud_path=far), BANDS, warn=warnings.append)
    assert area.mask is None and area.cloud_pixels == 0 and area.cloud_path == ""
    assert "does not overlap" in warnings[0]
    half = write_cloud(tmp_path / "half.tif", np.full((32, 20), 9, np.uint8))  # covers the left half
    warnings.clear()
    area = build_mask(scene, plan_area(scene, cloud_path=half), BANDS, warn=warnings.append)
    assert area.cloud_pixels == 40 * 64 and "only part" in warnings[0]


def test_a_cloud_mask_in_another_crs(scene, tmp_path):
    west, south, east, north = transform_bounds("EPSG:32633", "EPSG:4326", X0, Y0 - 64 * PX, X0 + 80 * PX, Y0)
    with rasterio.open(tmp_path / "geo.tif", "w", driver="GTiff", width=100, height=100, count=1, dtype="uint8",
                       crs="EPSG:4326", transform=rasterio.transform.from_bounds(west, south, east, north, 100, 100)
                       ) as dst:
        data = np.zeros((100, 100), np.uint8)
        data[:, :50] = 9
        dst.write(data, 1)
    area = build_mask(scene, plan_area(scene, cloud_path=str(tmp_path / "geo.tif")), BANDS)
    assert 0.4 < area.cloud_fraction < 0.6


def test_all_cloud_is_an_error(scene, tmp_path):
    path = write_cloud(tmp_path / "overcast.tif", np.full((32, 40), 9, np.uint8))
    with pytest.raises(InputError, match="Every pixel of the area with data is cloud"):
        build_mask(scene, plan_area(scene, cloud_path=path), BANDS)


@pytest.mark.parametrize("values", [[], ["a"], [float("inf")], [None]])
def test_cloud_values_must_be_numbers(values):
    with pytest.raises(InputError, match="CLOUD_VALUES"):
        check_cloud_values(values)


def test_cloud_values_text():
    assert parse_cloud_values(" 3,8; 9 10 ") == (3.0, 8.0, 9.0, 10.0) and parse_cloud_values("") == (3, 8, 9, 10)
    assert parse_cloud_values("1") == (1.0,)
    for text in ("3,x", "3,,nan", "cirrus"):
        with pytest.raises(InputError, match=f"CLOUD_VALUES '{text}' is not a list of numbers"):
            parse_cloud_values(text)


def test_an_extent_over_nodata_is_a_clear_error(tmp_path):
    data = np.full((6, 64, 80), 2000, np.uint16)
    data[:, :, :40] = 0  # the left half is nodata
    info = inspect(write_scene(tmp_path / "half.tif", fill=data))
    with pytest.raises(InputError, match="nodata"):
        build_mask(info, plan_area(info, (X0, Y0 - 20 * PX, X0 + 30 * PX, Y0)), BANDS)
    assert build_mask(info, plan_area(info, (X0, Y0 - 20 * PX, X0 + 50 * PX, Y0)), BANDS).mask is None


# ------------------------------------------------------------------------------------------------ the mask
def test_area_mask_bits_round_trip_at_any_offset():
    rng = np.random.default_rng(5)
    truth = rng.random((37, 61)) > 0.5
    mask = AreaMask(61, 37)
    mask.write(Window(0, 0, 32, 37), truth[:, :32])
    mask.write(Window(32, 0, 29, 37), truth[:, 32:])
    for window in (Window(0, 0, 61, 37), Window(3, 5, 17, 9), Window(33, 1, 28, 36), Window(60, 36, 1, 1)):
        c, r, w, h = int(window.col_off), int(window.row_off), int(window.width), int(window.height)
        np.testing.assert_array_equal(mask.read(window), truth[r:r + h, c:c + w])


# ------------------------------------------------------------------------------------------- band names
S2_DRIVER = {"B2": "B2, central wavelength 490 nm", "B3": "B3, central wavelength 560 nm",
             "B4": "B4, central wavelength 665 nm", "B8": "B8, central wavelength 842 nm",
             "B8A": "B8A, central wavelength 865 nm", "B11": "B11, central wavelength 1610 nm",
             "B12": "B12, central wavelength 2190 nm"}


def test_sentinel2_driver_descriptions_choose_the_bands(tmp_path):
    order = ("B12", "B8", "B2", "B11", "B8A", "B4", "B3")
    path = str(tmp_path / "s2.tif")
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=7, dtype="uint16", crs="EPSG:32633",
                       transform=from_origin(X0, Y0, PX, PX)) as ds:
        ds.descriptions = tuple(S2_DRIVER[b] for b in order)
    bands, warnings = select_bands(inspect(path))
    assert [order[b] for b in bands] == ["B2", "B3", "B4", "B8A", "B11", "B12"] and warnings == []


def test_vrt_bands_are_named_by_their_source_files(tmp_path):
    """gdalbuildvrt -separate leaves the bands unnamed; the band files' names (or descriptions) say which is
    which, whatever order the files were stacked in (here sorted by name: B8A last)."""
    files = []
    for name, px in (("B02", 10), ("B03", 10), ("B04", 10), ("B11", 20), ("B12", 20), ("B8A", 20)):
        n = 40 if px == 10 else 20
        path = tmp_path / f"T33TWM_20240501T100031_{name}_{px}m.tif"
        with rasterio.open(path, "w", driver="GTiff", width=n, height=n, count=1, dtype="uint16",
                           crs="EPSG:32633", transform=from_origin(X0, Y0, px, px)) as dst:
            dst.write(np.full((1, n, n), 1000, np.uint16))
            if name == "B11":
                dst.descriptions = (S2_DRIVER["B11"],)
        files.append(path.name)
    sources = "".join(
        f'<VRTRasterBand dataType="UInt16" band="{i + 1}"><SimpleSource><SourceFilename relativeToVRT="1">{f}'
        f'</SourceFilename><SourceBand>1</SourceBand><DstRect xOff="0" yOff="0" xSize="40" ySize="40"/>'
        "</SimpleSource></VRTRasterBand>" for i, f in enumerate(files))
    vrt = tmp_path / "stack.vrt"
    vrt.write_text(f'<VRTDataset rasterXSize="40" rasterYSize="40"><GeoTransform>{X0}, 10, 0, {Y0}, 0, -10'
                   f"</GeoTransform>{sources}</VRTDataset>")
    info = inspect(str(vrt))
    assert info.descriptions[0] == "T33TWM_20240501T100031_B02_10m" and info.descriptions[3] == S2_DRIVER["B11"]
    bands, warnings = select_bands(info)
    assert bands == [0, 1, 2, 5, 3, 4] and warnings == []


def test_sentinel2_msk_classi_masks_opaque_clouds_and_cirrus_not_snow(scene, tmp_path):
    """MSK_CLASSI_B00 (a product's QI_DATA, 60 m): three 0/1 bands, opaque clouds, cirrus, snow and ice."""
    flags = np.zeros((3, 32, 40), np.uint8)
    flags[0, 0:4] = 1  # opaque clouds
    flags[1, 4:8] = 1  # cirrus
    flags[1, 2:6, 0:10] = 1  # cirrus over opaque clouds too: counted once
    flags[2, 20:24] = 1  # snow and ice: not cloud
    path = write_cloud(tmp_path / "MSK_CLASSI_B00.tif", flags)
    area = build_mask(scene, plan_area(scene, cloud_path=path), BANDS)
    assert area.cloud_bands.bands == (1, 2) and "opaque clouds, cirrus" in area.describe(scene)
    mapped = area.mask.read(Window(0, 0, 80, 64))
    assert not mapped[:16].any() and mapped[16:].all()
    assert area.cloud_pixels == 16 * 80
    # one band of it, as exported alone: that band's flags; the snow band is no cloud mask
    opaque = write_cloud(tmp_path / "T33TWM_20240501_MSK_CLASSI_OPAQUE.tif", flags[0])
    assert build_mask(scene, plan_area(scene, cloud_path=opaque), BANDS).cloud_pixels == 8 * 80
    assert named_cloud_bands(str(tmp_path / "T33TWM_20240501_MSK_CLASSI_SNOW_ICE.tif")) is None


def _export_with(cloud_band_name, cloud_band):
    """A Google Earth Engine-like export: reflectance bands (whose values include SCL's cloud classes) and the
    cloud band, each described by its name."""
    data = np.full((4, 32, 40), 9, np.uint16)  # 0.09 % reflectance: 9, a cloud class if read as SCL
    data[3] = cloud_band
    return data, ("B2", "B3", "B4", cloud_band_name)


def test_a_multi_band_export_is_read_by_its_scl_band(scene, tmp_path):
    scl = np.full((32, 40), 4, np.uint16)
    scl[0:4] = 8
    data, names = _export_with("SCL", scl)
    path = write_cloud(tmp_path / "export.tif", data, descriptions=names)
    area = build_mask(scene, plan_area(scene, cloud_path=path), BANDS)
    assert area.cloud_bands.bands == (4,) and "(band 4, SCL)" in area.describe(scene)
    assert area.cloud_pixels == 8 * 80  # band 1 is 9 everywhere: read, it would be all cloud


def test_a_multi_band_export_is_read_by_its_qa60_bits_or_the_values_given(scene, tmp_path):
    qa60 = np.zeros((32, 40), np.uint16)
    qa60[0:4] = 1 << 10  # opaque clouds
    qa60[4:6] = 1 << 11  # cirrus
    data, names = _export_with("QA60", qa60)
    path = write_cloud(tmp_path / "export.tif", data, descriptions=names)
    area = build_mask(scene, plan_area(scene, cloud_path=path), BANDS)
    assert area.cloud_bands.bands == (4,) and area.cloud_bands.bits == (10, 11)
    assert area.cloud_pixels == 12 * 80
    given = build_mask(scene, plan_area(scene, cloud_path=path, cloud_values=[2048]), BANDS)
    assert given.cloud_bands.bands == (4,) and given.cloud_bands.bits == () and given.cloud_pixels == 4 * 80


def test_a_multi_band_export_is_read_by_its_msk_classi_flag_bands(scene, tmp_path):
    data = np.zeros((5, 32, 40), np.uint8)
    data[0:2] = 9  # reflectance-like bands
    data[2, 0:4] = 1  # MSK_CLASSI_OPAQUE
    data[3, 2:6] = 1  # MSK_CLASSI_CIRRUS
    data[4, 10:20] = 1  # MSK_CLASSI_SNOW_ICE: not cloud
    names = ("B2", "B3", "MSK_CLASSI_OPAQUE", "MSK_CLASSI_CIRRUS", "MSK_CLASSI_SNOW_ICE")
    area = build_mask(scene, plan_area(scene, cloud_path=write_cloud(tmp_path / "export.tif", data,
                                                                     descriptions=names)), BANDS)
    assert area.cloud_bands.bands == (3, 4) and area.cloud_bands.bits == (0, 1)
    assert "cloud flags in bands 3, 4 (Sentinel-2 MSK_CLASSI: opaque clouds, cirrus)" in area.describe(scene)
    given = build_mask(scene, plan_area(scene, cloud_path=str(tmp_path / "export.tif"), cloud_values=[1]), BANDS)
    assert given.cloud_bands.bands == (3,) and given.cloud_pixels == 8 * 80  # the opaque clouds' band, matched whole
    assert area.cloud_pixels == 12 * 80
