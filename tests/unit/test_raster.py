"""The raster modules: band selection (bands.py), the server's map made ours (server_map.py: remap, nodata, same
grid), atomic outputs (output.py), valid pixels (raster.py) and equal-area statistics (stats.py)."""

from __future__ import annotations

import io
import math
import os

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from plugin.core import output, raster, server_map
from plugin.core.bands import DEFAULT_MODEL_BANDS, describe_choice, select_bands
from plugin.core.errors import Cancelled, InputError, OutputError, ServerError
from plugin.core.raster import RasterInfo, inspect
from plugin.core.server_map import finalize_classes
from plugin.core.stats import compute_stats
from tests.fixtures.landsat_mtl import write_mtl

S1F11 = ("BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2")
S2 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")


def info_with(descriptions, count=None) -> RasterInfo:
    count = count or len(descriptions)
    return RasterInfo("x.tif", 10, 10, count, ("uint16",) * count, None, from_origin(0, 10, 1, 1),
                      (None,) * count, tuple(descriptions), False, True)


def write(path, data, crs="EPSG:32633", transform=None, nodata=None, descriptions=None, mask=None):
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    count, h, w = data.shape
    transform = transform or from_origin(500000, 5000000, 30, 30)
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=count, dtype=data.dtype,
                       crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(data)
        if descriptions:
            dst.descriptions = descriptions
        if mask is not None:
            dst.write_mask(mask.astype(np.uint8) * 255)
    return str(path)


def server_tiff_bytes(classes: np.ndarray, like: str) -> bytes:
    """What TerraTorch's plugin returns: class × 255 as uint8, input grid, nodata=0."""
    with rasterio.open(like) as src:
        profile = dict(driver="GTiff", width=src.width, height=src.height, count=1, dtype="uint8",
                       crs=src.crs, transform=src.transform, nodata=0, compress="lzw")
    buf = io.BytesIO()
    with rasterio.MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write((classes * 255).astype(np.uint8), 1)
        buf.write(mem.read())
    return buf.getvalue()


def no_temp_left(folder) -> bool:
    return not [n for n in os.listdir(folder) if ".part" in n]


@pytest.mark.parametrize("scales, offsets, labels, expected, warned", [
    # the bands' own scaling wins, and agrees with the names here: no warning
    ((2.75e-5,) * 3, (-0.2,) * 3, ("SR_B2", "SR_B3", "SR_B4"), (2.75e-5, -0.2), ""),
    # an alpha or QA band left at GDAL's default (1, 0) does not count
    ((1e-4, 1e-4, 1.0), (-0.1, -0.1, 0.0), ("B02", "B03", "QA"), (1e-4, -0.1), ""),
    # × 0.0001 + 0 is the transports' own rule: nothing to change
    ((1e-4,) * 3, (0.0,) * 3, ("B02", "B03", "B04"), (None, None), ""),
    # the raster's scaling wins over names that say otherwise, with a warning
    ((1e-4,) * 2, (0.0,) * 2, ("T33TWM_20240501T100031_B02", "T33TWM_20240501T100031_B12"), (None, None),
     "names say otherwise"),
    # bands that disagree: none applied, and the names still count
    ((1e-4, 2e-4), (0.0, 0.0), ("SR_B2", "SR_B3"), (2.75e-5, -0.2), "different scales"),
    # GDAL's default everywhere: the names alone
    ((1.0,) * 2, (0.0,) * 2, ("B02", "B03"), (None, None), ""),
])
def test_the_bands_own_scale_and_offset_come_first(scales, offsets, labels, expected, warned):
    from dataclasses import replace

    from plugin.core.product_scaling import scaling_of

    got = scaling_of(replace(info_with(labels), scales=scales, offsets=offsets))
    if expected[0] is None:
        assert (got.scale, got.offset) == expected
    else:
        assert (got.scale, got.offset) == pytest.approx(expected)
    assert (warned in got.warning) if warned else not got.warning
    if expected[0] and not warned:
        assert "GDAL metadata" in got.said


@pytest.mark.parametrize("add_offsets, labels, expected, warned", [
    # the offset GDAL's SENTINEL2 driver puts in each spectral band's metadata; the SCL band has none
    ((-1000.0, -1000.0, None), ("B02", "B03", "SCL"), -0.1, ""),
    # it is the product's own word: band files named as acquired before 2022 do not override it
    ((-1000.0,) * 2, ("T33TWM_20190501T100031_B02", "T33TWM_20190501T100031_B12"), -0.1, ""),
    ((0.0,) * 2, ("B02", "B03"), None, ""),
    ((-1000.0, -500.0), ("T33TWM_20240501T100031_B02", "T33TWM_20240501T100031_B12"), -0.1, "differ"),
])
def test_sentinel2_add_offset_in_the_band_metadata(add_offsets, labels, expected, warned):
    from dataclasses import replace

    from plugin.core.product_scaling import scaling_of

    got = scaling_of(replace(info_with(labels), add_offsets=add_offsets))
    assert got.scale is None
    assert got.offset == (pytest.approx(expected) if expected is not None else None)
    assert (warned in got.warning) if warned else not got.warning
    if not warned:
        assert "in the bands' metadata" in got.said


def test_inspect_reads_the_bands_scaling_metadata(tmp_path):
    path = write(tmp_path / "scaled.tif", np.ones((2, 4, 4), "uint16"))
    with rasterio.open(path, "r+") as dst:
        dst.scales, dst.offsets = (2.75e-5, 2.75e-5), (-0.2, -0.2)
        dst.update_tags(1, BOA_ADD_OFFSET="-1000")
        dst.update_tags(2, RADIO_ADD_OFFSET="-1000")
    info = inspect(path)
    assert info.scales == pytest.approx((2.75e-5,) * 2) and info.offsets == pytest.approx((-0.2,) * 2)
    assert info.add_offsets == (-1000.0, -1000.0)
    assert inspect(write(tmp_path / "plain.tif", np.ones((1, 4, 4), "uint16"))).add_offsets == (None,)


# ----------------------------------------------------------------------------------- band selection
def test_select_by_sen1floods11_names_in_any_order():
    shuffled = ("SWIR_2", "RED", "BLUE", "NIR_NARROW", "GREEN", "SWIR_1", "EXTRA")
    idx, warnings = select_bands(info_with(shuffled))
    assert idx == [2, 4, 1, 3, 5, 0]
    assert warnings == []


def test_select_from_sentinel2_band_names():
    idx, warnings = select_bands(info_with(S2))
    assert idx == [1, 2, 3, 8, 11, 12] and warnings == []


@pytest.mark.parametrize("names", [
    ("b2", "b3", "b4", "b8a", "b11", "b12"),
    ("B02 (Blue)", "B03 - green", "Red B04", "nir_narrow", "SWIR1", "swir 2"),
    ("blue", "green", "red", "Narrow NIR", "SWIR16", "SWIR22"),
])
def test_select_case_insensitive_and_aliases(names):
    idx, warnings = select_bands(info_with(names))
    assert idx == [0, 1, 2, 3, 4, 5] and warnings == []


def test_narrow_nir_is_not_confused_with_broad_nir():
    names = ("B02", "B03", "B04", "NIR", "NIR_NARROW", "B11", "B12")
    idx, _ = select_bands(info_with(names))
    assert idx == [0, 1, 2, 4, 5, 6]


def test_broad_nir_fallback_warns():
    idx, warnings = select_bands(info_with(("B02", "B03", "B04", "B08", "B11", "B12")))
    assert idx == [0, 1, 2, 3, 4, 5]
    assert len(warnings) == 1 and "B08" in warnings[0]


OLI_SCENE = "LC09_L2SP_013032_20231008_20231009_02_T1"


@pytest.mark.parametrize("names, expected", [
    # USGS band files of Landsat 8/9 stacked in a VRT (the file names label the bands), QA and thermal beside
    (tuple(f"{OLI_SCENE}_{b}" for b in ("SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B7", "ST_B10",
                                        "QA_PIXEL")), [1, 2, 3, 4, 5, 6]),
    # a Google Earth Engine export of Landsat 8/9 SR: no scene ID, but SR_B6 (only OLI has one)
    (("SR_B7", "SR_B6", "SR_B5", "SR_B4", "SR_B3", "SR_B2"), [5, 4, 3, 2, 1, 0]),
    # HLS L30 band files: OLI numbers, no SR_ prefix
    (tuple(f"HLS.L30.T10SEG.2023123T184856.v2.0.B{n:02d}" for n in (1, 2, 3, 4, 5, 6, 7)) + (
        "HLS.L30.T10SEG.2023123T184856.v2.0.Fmask",), [1, 2, 3, 4, 5, 6]),
])
def test_landsat_bands_are_read_with_landsat_numbers(names, expected):
    """B5 is the near infrared on OLI, where Sentinel-2's numbering would make it a red edge."""
    idx, warnings = select_bands(info_with(names))
    assert idx == expected and warnings == []


def test_landsat_tm_numbers_and_its_broad_nir():
    names = tuple(f"LT05_L2SP_014032_20110723_20200820_02_T1_SR_B{n}" for n in (1, 2, 3, 4, 5, 7))
    idx, warnings = select_bands(info_with(names))
    assert idx == [0, 1, 2, 3, 4, 5]
    assert len(warnings) == 1 and "TM/ETM+'s B4: band 4" in warnings[0]


L1_SCENE = "LC09_L1TP_013032_20231008_20231009_02_T1"


def test_landsat_level1_band_files_keep_landsat_numbers():
    names = tuple(f"{L1_SCENE}_B{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 10))  # B8 pan, B10 thermal
    assert select_bands(info_with(names))[0] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("json_file", [False, True])
def test_landsat_level1_reflectance_from_the_mtl_file(tmp_path, json_file):
    from plugin.core.landsat_level1 import toa_scaling

    mtl = write_mtl(tmp_path, L1_SCENE, sun=30.0, json_file=json_file)
    labels = tuple(f"{L1_SCENE}_B{n}" for n in (2, 3, 4, 5, 6, 7, 10))
    got = toa_scaling(str(tmp_path / "stack.tif"), labels)
    assert got.scale == pytest.approx(4e-5) and got.offset == pytest.approx(-0.2)  # sin 30° = 1/2
    assert mtl in got.said and "sin(30°)" in got.said
    assert toa_scaling("stack.tif", ("SR_B2", "B03")) is None


def test_landsat_level1_mtl_beside_the_band_files_a_vrt_names(tmp_path):
    from plugin.core.landsat_level1 import toa_scaling

    scene = tmp_path / "scene"
    scene.mkdir()
    files = []
    for band in (2, 3):
        files.append(write(scene / f"{L1_SCENE}_B{band}.TIF", np.full((1, 4, 4), 9000, "uint16")))
    mtl = write_mtl(scene, L1_SCENE)
    vrt = str(tmp_path / "stack.vrt")
    from osgeo import gdal

    gdal.BuildVRT(vrt, files, separate=True).FlushCache()
    info = inspect(vrt)
    assert info.descriptions == (f"{L1_SCENE}_B2", f"{L1_SCENE}_B3")
    assert mtl in toa_scaling(vrt, info.descriptions).said


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_landsat_level1_mtl_inside_the_downloaded_archive(tmp_path, kind):
    """USGS delivers a Level-1 scene as a .tar of its band files and MTL file; QGIS adds its bands as
    /vsitar/ (or /vsizip/) layers, and a VRT stacks them: the MTL file is read from the same archive."""
    import tarfile
    import zipfile

    from osgeo import gdal

    from plugin.core.landsat_level1 import toa_scaling

    names = []
    for band in (2, 3):
        write(tmp_path / f"{L1_SCENE}_B{band}.TIF", np.full((1, 4, 4), 9000, "uint16"))
        names.append(f"{L1_SCENE}_B{band}.TIF")
    write_mtl(tmp_path, L1_SCENE, sun=30.0)
    archive = tmp_path / f"{L1_SCENE}.{kind}"
    if kind == "tar":
        with tarfile.open(archive, "w") as t:
            for name in names + [f"{L1_SCENE}_MTL.txt"]:
                t.add(tmp_path / name, arcname=name)
    else:
        with zipfile.ZipFile(archive, "w") as z:
            for name in names + [f"{L1_SCENE}_MTL.txt"]:
                z.write(tmp_path / name, arcname=f"{L1_SCENE}/{name}")
    for name in names + [f"{L1_SCENE}_MTL.txt"]:
        os.remove(tmp_path / name)  # only the archive is left
    folder = f"/vsitar/{archive}" if kind == "tar" else f"/vsizip/{archive}/{L1_SCENE}"
    vrt = str(tmp_path / "stack.vrt")
    gdal.BuildVRT(vrt, [f"{folder}/{name}" for name in names], separate=True).FlushCache()
    info = inspect(vrt)
    assert info.descriptions == (f"{L1_SCENE}_B2", f"{L1_SCENE}_B3")
    got = toa_scaling(vrt, info.descriptions)
    assert got.scale == pytest.approx(4e-5) and f"from '{folder}/{L1_SCENE}_MTL.txt'" in got.said
    band = toa_scaling(f"{folder}/{names[0]}", (f"{L1_SCENE}_B2",))  # one band file of the archive
    assert band.scale == pytest.approx(4e-5)


def test_landsat_level1_without_its_mtl_or_with_factors_that_differ(tmp_path):
    from plugin.core.landsat_level1 import toa_scaling

    labels = tuple(f"{L1_SCENE}_B{n}" for n in (2, 3, 4, 5, 6, 7))
    with pytest.raises(InputError, match="MTL file") as missing:
        toa_scaling(str(tmp_path / "stack.tif"), labels)
    assert f"{L1_SCENE}_MTL.txt" in missing.value.message and "L2SP" in missing.value.hint
    write_mtl(tmp_path, L1_SCENE, mults={4: 1.9e-5})
    with pytest.raises(InputError, match="different reflectance factors"):
        toa_scaling(str(tmp_path / "stack.tif"), labels)
    with pytest.raises(InputError, match="several Landsat Level-1 scenes"):
        toa_scaling(str(tmp_path / "stack.tif"), (*labels, "LC08_L1TP_013032_20231001_20231009_02_T1_B5"))
    write_mtl(tmp_path, L1_SCENE, sun=-3.0)
    with pytest.raises(InputError, match="below the horizon"):
        toa_scaling(str(tmp_path / "stack.tif"), labels)
    (tmp_path / f"{L1_SCENE}_MTL.txt").write_text("GROUP = LANDSAT_METADATA_FILE\nEND\n")
    with pytest.raises(InputError, match="no number for REFLECTANCE_MULT_BAND_2"):
        toa_scaling(str(tmp_path / "stack.tif"), labels)


def test_sentinel2_file_names_keep_sentinel2_numbers():
    names = tuple(f"T33TWM_20240501T100031_{b}_20m" for b in ("B02", "B03", "B04", "B05", "B8A", "B11", "B12"))
    assert select_bands(info_with(names))[0] == [0, 1, 2, 4, 5, 6]


@pytest.mark.parametrize("descriptions, expected", [
    (tuple(f"LC09_L2SP_013032_20231008_20231009_02_T1_SR_B{b}" for b in range(1, 8)),
     "BLUE (B2), GREEN (B3), RED (B4), NIR_NARROW (B5), SWIR_1 (B6), SWIR_2 (B7)"),
    (tuple(f"T33TWM_20240501T100031_{b}" for b in ("B02_10m", "B03_10m", "B04_10m", "B8A_20m", "B11_20m", "B12_20m")),
     "BLUE (B02_10m), GREEN (B03_10m), RED (B04_10m), NIR_NARROW (B8A_20m), SWIR_1 (B11_20m), SWIR_2 (B12_20m)"),
    (("B4, central wavelength 665 nm", "B3, central wavelength 560 nm", "B2, central wavelength 490 nm",
      "B8, central wavelength 842 nm", "B11", "B12"),
     "BLUE (B2), GREEN (B3), RED (B4), NIR_NARROW (B8), SWIR_1 (B11), SWIR_2 (B12)"),
    (("BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"), "BLUE, GREEN, RED, NIR_NARROW, SWIR_1, SWIR_2"),
    (("Band 1", "Band 2", "Band 3", "Band 4", "Band 5", "Band 6"),
     "BLUE (Band 1), GREEN (Band 2), RED (Band 3), NIR_NARROW (Band 4), SWIR_1 (Band 5), SWIR_2 (Band 6)"),
])
def test_the_log_names_each_chosen_band_by_what_tells_it_apart(descriptions, expected):
    """The log line "the model gets input bands [...]" goes on with these, so a wrong band is seen at once."""
    info = info_with(descriptions)
    bands, _ = select_bands(info)
    assert describe_choice(info, bands, DEFAULT_MODEL_BANDS) == expected
    assert describe_choice(info_with((None,) * 6), [0, 1, 2, 3, 4, 5], ()) == ", ".join(
        f"channel {i}" for i in range(1, 7))


@pytest.mark.parametrize("path, labels, expected", [
    ("SENTINEL2_L2A:/d/S2B_MSIL2A_20240501T100031_N0510_R122_T33TWM_20240501T123456.SAFE/MTD_MSIL2A.xml:10m:"
     "EPSG_32633", ("B4, central wavelength 665 nm",), (-0.1, "baseline 05.10")),
    ("/d/S2A_MSIL1C_20190704T100031_N0207_R122_T33TWM_20190704T120000.SAFE/stack.tif", (None,), (0.0, "02.07")),
    # reprocessed archive: an old acquisition, a new baseline
    ("/d/S2A_MSIL2A_20190704T100031_N0500_R122_T33TWM_20230101T000000.SAFE/x.tif", (None,), (-0.1, "05.00")),
    ("stack.vrt", ("T33TWM_20240501T100031_B02_10m", "T33TWM_20240501T100031_B8A_20m"),
     (-0.1, "acquired on 2024-05-01")),
    ("stack.vrt", ("T33TWM_20220125T100031_B02", "T33TWM_20220125T100031_B12"), (-0.1, "2022-01-25")),
    ("stack.vrt", ("T33TWM_20220124T100031_B02", "T33TWM_20220124T100031_B12"), None),
    ("scene.tif", ("B02", "B03", "B04"), None),
])
def test_sentinel2_offset_from_the_names(path, labels, expected):
    from plugin.core.sentinel2 import offset_of

    got = offset_of(path, labels)
    if expected is None:
        assert got is None
    else:
        assert got[0] == expected[0] and expected[1] in got[1]


def test_unnamed_bands_take_first_n_with_warning():
    idx, warnings = select_bands(info_with((None,) * 8))
    assert idx == [0, 1, 2, 3, 4, 5]
    assert "not named" in warnings[0] and "BLUE" in warnings[0]


def test_unnamed_13_bands_assume_sentinel2_l1c():
    idx, warnings = select_bands(info_with((None,) * 13))
    assert idx == [1, 2, 3, 8, 11, 12]
    assert "Sentinel-2 L1C" in warnings[0]


def test_too_few_bands():
    with pytest.raises(InputError) as ei:
        select_bands(info_with(("RED", "GREEN", "BLUE")))
    assert "3 band(s)" in ei.value.message and "needs 6" in ei.value.message


def test_partial_names_missing_band_is_error():
    with pytest.raises(InputError) as ei:
        select_bands(info_with(("B02", "B03", "B04", "B8A", "B11", "B05")))
    assert "SWIR_2" in ei.value.message and "Bands" in ei.value.hint


def test_explicit_bands_validated():
    info = info_with((None,) * 7)
    assert select_bands(info, [7, 1, 2, 3, 4, 5])[0] == [6, 0, 1, 2, 3, 4]
    with pytest.raises(InputError) as ei:
        select_bands(info, [1, 2, 3, 4, 5, 8])
    assert "8" in ei.value.message and "out of range" in ei.value.message
    with pytest.raises(InputError) as ei:
        select_bands(info, [1, 2, 3])
    assert "3 band numbers" in ei.value.message


def test_select_other_model_band_names():
    idx, warnings = select_bands(info_with(("RED", "GREEN", "BLUE", "NIR")), None, 3, ("BLUE", "GREEN", "RED"))
    assert idx == [2, 1, 0] and warnings == []


# ---------------------------------------------------------------------------------------- inspect
def test_inspect(tmp_path):
    p = write(tmp_path / "a.tif", np.ones((6, 20, 30), np.uint16), nodata=0, descriptions=S1F11)
    info = inspect(p)
    assert (info.width, info.height, info.count) == (30, 20, 6)
    assert info.nodata == (0.0,) * 6 and info.descriptions == S1F11
    assert info.crs and CRS.from_wkt(info.crs) == CRS.from_epsg(32633)
    assert not info.is_geographic and info.is_file and info.driver == "GTiff"


def test_inspect_unreadable(tmp_path):
    (tmp_path / "x.tif").write_text("not a raster")
    with pytest.raises(InputError) as ei:
        inspect(str(tmp_path / "x.tif"))
    assert "Cannot open" in ei.value.message


# ----------------------------------------------------------------------------------------- remap
def test_decode_classes():
    assert server_map.decode_classes(np.array([0, 255, 254], np.uint8)).tolist() == [0, 1, 2]


def test_finalize_remaps_masks_and_keeps_grid(tmp_path):
    h, w = 40, 50
    rng = np.random.default_rng(1)
    data = rng.integers(100, 5000, (7, h, w)).astype(np.uint16)
    data[0, :3, :] = 0  # nodata in a used band (top rows)
    data[5, :, -4:] = 0  # nodata in another used band (right columns)
    data[6, 10:20, 10:20] = 0  # nodata only in an unused band: must NOT mask
    inp = write(tmp_path / "in.tif", data, nodata=0, descriptions=(*S1F11, "EXTRA"))
    classes = (rng.random((h, w)) > 0.6).astype(np.uint8)
    out = str(tmp_path / "out.tif")
    stats = finalize_classes(server_tiff_bytes(classes, inp), inp, [0, 1, 2, 3, 4, 5], out)
    with rasterio.open(out) as o, rasterio.open(inp) as i:
        assert (o.width, o.height, o.crs, o.transform) == (i.width, i.height, i.crs, i.transform)
        assert o.dtypes[0] == "uint8" and o.nodata == 255 and o.count == 1
        assert o.profile["compress"].lower() == "deflate"
        got = o.read(1)
    expected = classes.copy()
    expected[:3, :] = 255
    expected[:, -4:] = 255
    assert np.array_equal(got, expected)
    valid = expected != 255
    assert stats.valid_pixels == int(valid.sum())
    assert stats.water_pixels == int((expected == 1).sum())
    assert stats.water_fraction == pytest.approx(stats.water_pixels / stats.valid_pixels)
    assert stats.water_area_km2 == pytest.approx(stats.water_pixels * 900 / 1e6)
    assert compute_stats(out) == stats
    assert no_temp_left(tmp_path)


def test_nan_and_internal_mask_count_as_nodata(tmp_path):
    data = np.full((6, 8, 8), 0.2, np.float32)
    data[2, 0, 0] = np.nan
    mask = np.ones((8, 8), bool)
    mask[7, 7] = False
    inp = write(tmp_path / "f.tif", data, mask=mask)
    out = str(tmp_path / "o.tif")
    finalize_classes(server_tiff_bytes(np.ones((8, 8), np.uint8), inp), inp, list(range(6)), out)
    got = rasterio.open(out).read(1)
    assert got[0, 0] == 255 and got[7, 7] == 255 and (got == 1).sum() == 62


def test_windowed_processing_matches(tmp_path, monkeypatch):
    monkeypatch.setattr(raster, "BLOCK", 64)
    monkeypatch.setattr(raster.iter_windows, "__defaults__", (64,))
    h, w = 300, 333
    rng = np.random.default_rng(2)
    data = rng.integers(1, 4000, (6, h, w)).astype(np.uint16)
    data[:, 100:130, 200:333] = 0
    inp = write(tmp_path / "in.tif", data, nodata=0)
    classes = (rng.random((h, w)) > 0.5).astype(np.uint8)
    out = str(tmp_path / "out.tif")
    stats = finalize_classes(server_tiff_bytes(classes, inp), inp, list(range(6)), out)
    got = rasterio.open(out).read(1)
    expected = np.where(data[0] == 0, 255, classes)
    assert np.array_equal(got, expected)
    assert stats.water_pixels == int((expected == 1).sum())
    with rasterio.open(out) as o:
        assert o.profile.get("tiled") and o.block_shapes[0] == (256, 256)


def test_server_raster_of_other_size_is_server_error(tmp_path):
    inp = write(tmp_path / "in.tif", np.ones((6, 20, 20), np.uint16))
    other = write(tmp_path / "other.tif", np.ones((6, 20, 24), np.uint16))
    out = tmp_path / "out.tif"
    with pytest.raises(ServerError) as ei:
        finalize_classes(server_tiff_bytes(np.ones((20, 24), np.uint8), other), inp, list(range(6)), str(out))
    assert "24×20 instead of 20×20" in ei.value.message
    assert not out.exists() and no_temp_left(tmp_path)


def test_server_raster_with_other_transform_is_server_error(tmp_path):
    inp = write(tmp_path / "in.tif", np.ones((6, 20, 20), np.uint16))
    moved = write(tmp_path / "moved.tif", np.ones((6, 20, 20), np.uint16),
                  transform=from_origin(500030, 5000000, 30, 30))
    with pytest.raises(ServerError) as ei:
        finalize_classes(server_tiff_bytes(np.ones((20, 20), np.uint8), moved), inp, list(range(6)),
                         str(tmp_path / "out.tif"))
    assert "geotransform" in ei.value.message


def test_server_bytes_not_a_tiff(tmp_path):
    inp = write(tmp_path / "in.tif", np.ones((6, 4, 4), np.uint16))
    with pytest.raises(ServerError) as ei:
        finalize_classes(b"II*\x00garbage", inp, list(range(6)), str(tmp_path / "o.tif"))
    assert "not a readable GeoTIFF" in ei.value.message


def test_output_equal_to_input_refused(tmp_path):
    inp = write(tmp_path / "in.tif", np.ones((6, 4, 4), np.uint16))
    before = open(inp, "rb").read()
    with pytest.raises(OutputError) as ei:
        finalize_classes(server_tiff_bytes(np.ones((4, 4), np.uint8), inp), inp, list(range(6)), inp)
    assert "is the input" in ei.value.message
    assert open(inp, "rb").read() == before
    # the same file through another spelling of the path
    with pytest.raises(OutputError):
        output.check_output_path(str(tmp_path / "." / "in.tif"), inp)


def test_output_folder_problems(tmp_path, monkeypatch):
    inp = write(tmp_path / "in.tif", np.ones((6, 4, 4), np.uint16))
    with pytest.raises(OutputError) as ei:
        output.check_output_path(str(tmp_path / "missing" / "o.tif"), inp)
    assert "does not exist" in ei.value.message
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    # root can write anywhere, so the permission is taken away at the os.access level
    monkeypatch.setattr(output.os, "access", lambda p, m: False if str(p) == str(ro) else real_access(p, m))
    with pytest.raises(OutputError) as ei:
        output.check_output_path(str(ro / "o.tif"), inp)
    assert "not writable" in ei.value.message


@pytest.mark.parametrize("name, named", [("flood.img", "names another format ('.img')"),
                                         ("flood.gpkg", "names another format ('.gpkg')"),
                                         ("flood", "has no file extension")])
def test_output_must_be_named_as_the_geotiff_it_is(tmp_path, name, named):
    inp = write(tmp_path / "in.tif", np.ones((6, 4, 4), np.uint16))
    with pytest.raises(OutputError) as ei:
        output.check_output_path(str(tmp_path / name), inp)
    assert named in ei.value.message and ".tif" in ei.value.hint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]
    for name in ("flood.tif", "flood.TIF", "flood.v2.tiff"):
        output.check_output_path(str(tmp_path / name), inp)


def test_cancel_keeps_old_output_and_leaves_no_temp(tmp_path):
    inp = write(tmp_path / "in.tif", np.ones((6, 16, 16), np.uint16))
    out = tmp_path / "out.tif"
    out.write_bytes(b"old map")
    with pytest.raises(Cancelled):
        finalize_classes(server_tiff_bytes(np.ones((16, 16), np.uint8), inp), inp, list(range(6)), str(out),
                         cancel=lambda: True)
    assert out.read_bytes() == b"old map"
    assert no_temp_left(tmp_path)


def test_an_interrupt_while_the_outputs_are_made_leaves_none_of_them(tmp_path, monkeypatch):
    """Ctrl+C while the second of two temporaries is being made: the first goes too."""
    from plugin.core.model_spec import ModelSpec
    from plugin.core.tensor.writer import MapWriter

    made = []
    real = output.temp_beside

    def temp_beside(target, folder=False):
        if made:
            raise KeyboardInterrupt
        made.append(real(target, folder))
        return made[-1]
    monkeypatch.setattr(output, "temp_beside", temp_beside)
    with pytest.raises(KeyboardInterrupt):
        output.AtomicOutputs([str(tmp_path / "flood.tif"), str(tmp_path / "probability.tif")])
    assert made and sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.setattr(output, "temp_beside", real)

    inp = write(tmp_path / "in.tif", np.ones((6, 16, 16), np.uint16))
    real_open = rasterio.open

    def open_(path, mode="r", **kw):  # the class file is made, the interrupt comes as the probability file is
        if mode.startswith("w") and "probability" in str(path):
            raise KeyboardInterrupt
        return real_open(path, mode, **kw)
    monkeypatch.setattr(rasterio, "open", open_)
    with real_open(inp) as ds, pytest.raises(KeyboardInterrupt):
        MapWriter(ds, str(tmp_path / "flood.tif"), str(tmp_path / "probability.tif"),
                  ModelSpec(channels=6, tile_height=16, tile_width=16, num_classes=2, means=[0.0] * 6, stds=[1.0] * 6))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_replace_is_atomic_over_existing(tmp_path):
    inp = write(tmp_path / "in.tif", np.ones((6, 16, 16), np.uint16))
    out = tmp_path / "out.tif"
    out.write_bytes(b"old map")
    finalize_classes(server_tiff_bytes(np.ones((16, 16), np.uint8), inp), inp, list(range(6)), str(out))
    assert rasterio.open(out).read(1).min() == 1
    assert no_temp_left(tmp_path)


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_reading_back_finds_a_map_cut_short_and_says_what_gdal_saw(tmp_path, dtype):
    class Grid:
        width, height, crs, transform = 700, 600, CRS.from_epsg(32633), from_origin(0, 0, 10, 10)

    path = tmp_path / "map.tif"
    data = np.arange(700 * 600).reshape(600, 700).astype(dtype)
    with rasterio.open(path, "w", **output.output_profile(Grid, dtype=dtype)) as ds:
        ds.write(data, 1)
    output.verify_written(str(path), str(tmp_path / "flood.tif"))  # whole: no error

    os.truncate(path, os.path.getsize(path) * 2 // 3)
    with pytest.raises(OutputError) as err:
        output.verify_written(str(path), str(tmp_path / "flood.tif"))
    assert "Writing the flood map" in err.value.message and "free space" in err.value.hint
    assert "TIFFReadEncodedTile" in err.value.message and "previous exception" not in err.value.message
    assert ".." not in err.value.message


def test_has_valid_pixels(tmp_path):
    data = np.zeros((6, 10, 10), np.uint16)
    p = write(tmp_path / "z.tif", data, nodata=0)
    assert raster.has_valid_pixels(p, list(range(6))) is False
    data[3, 5, 5] = 7
    data[:, 5, 5] = 7
    p2 = write(tmp_path / "one.tif", data, nodata=0)
    assert raster.has_valid_pixels(p2, list(range(6))) is True


def test_zero_in_every_band_is_nodata_when_the_raster_declares_none(tmp_path):
    """Sentinel-2 and Landsat products fill beyond the swath with 0 and band files declare no nodata."""
    data = np.full((6, 8, 8), 900, np.uint16)
    data[:, :, :3] = 0  # the fill
    data[2, 5, 5] = 0  # 0 in one band only: dark, still an observation
    inp = write(tmp_path / "fill.tif", data)
    assert raster.hidden_nodata_of(inp, list(range(6))) == raster.HiddenNodata(zero_fill=True)
    out = str(tmp_path / "o.tif")
    stats = finalize_classes(server_tiff_bytes(np.ones((8, 8), np.uint8), inp), inp, list(range(6)), out)
    got = rasterio.open(out).read(1)
    assert (got[:, :3] == 255).all() and (got[:, 3:] == 1).all()
    assert stats.valid_pixels == 40
    assert raster.has_valid_pixels(write(tmp_path / "zeros.tif", np.zeros((6, 4, 4), np.uint16)),
                                   list(range(6))) is False


def test_a_declared_nodata_value_or_mask_replaces_the_zero_fill_rule(tmp_path):
    data = np.full((6, 8, 8), 900, np.uint16)
    data[:, 0, 0] = 0
    data[:, 7, 7] = 65535
    declared = write(tmp_path / "declared.tif", data, nodata=65535)
    mask = np.ones((8, 8), bool)
    mask[4, 4] = False
    masked = write(tmp_path / "masked.tif", data, mask=mask)
    assert not raster.hidden_nodata_of(declared, list(range(6)))
    assert not raster.hidden_nodata_of(masked, list(range(6)))
    with rasterio.open(declared) as src:
        valid = raster.valid_mask(src, list(range(6)), rasterio.windows.Window(0, 0, 8, 8))
    assert valid[0, 0] and not valid[7, 7] and valid.sum() == 63
    with rasterio.open(masked) as src:
        valid = raster.valid_mask(src, list(range(6)), rasterio.windows.Window(0, 0, 8, 8))
    assert valid[0, 0] and not valid[4, 4] and valid.sum() == 63


def write_with_alpha(path, data, alpha):
    """Model bands then an alpha band as `gdalwarp -dstalpha` writes it: GDAL applies such an alpha as a
    mask only in a 2- or 4-band raster."""
    from rasterio.enums import ColorInterp

    count, h, w = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=count + 1, dtype=data.dtype,
                       crs="EPSG:32633", transform=from_origin(500000, 5000000, 30, 30)) as dst:
        dst.colorinterp = [ColorInterp.gray] + [ColorInterp.undefined] * (count - 1) + [ColorInterp.alpha]
        dst.write(np.concatenate([data, alpha[None].astype(data.dtype)]))
    return str(path)


def test_an_alpha_band_after_the_model_bands_is_nodata(tmp_path):
    data = np.zeros((6, 8, 8), np.uint16)  # 0 outside the cutline, as gdalwarp leaves it
    data[:, :, 4:] = 900
    alpha = np.zeros((8, 8), np.uint16)
    alpha[:, 4:] = 65535
    inp = write_with_alpha(tmp_path / "alpha.tif", data, alpha)
    with rasterio.open(inp) as src:
        assert src.mask_flag_enums[0] == [rasterio.enums.MaskFlags.all_valid]  # GDAL does not apply it
    assert raster.hidden_nodata_of(inp, list(range(6))) == raster.HiddenNodata(alpha=7)
    out = str(tmp_path / "o.tif")
    stats = finalize_classes(server_tiff_bytes(np.ones((8, 8), np.uint8), inp), inp, list(range(6)), out)
    got = rasterio.open(out).read(1)
    assert (got[:, :4] == 255).all() and (got[:, 4:] == 1).all() and stats.valid_pixels == 32


# ----------------------------------------------------------------------------------------- areas
def _all_water(path, width, height, crs, transform):
    return write(path, np.ones((height, width), np.uint8), crs=crs, transform=transform, nodata=255)


def test_geographic_area_of_whole_earth(tmp_path):
    """1° cells over the globe sum to the WGS84 ellipsoid's surface, 510,065,621.7 km²."""
    p = _all_water(tmp_path / "globe.tif", 360, 180, "EPSG:4326", from_origin(-180, 90, 1, 1))
    stats = compute_stats(p)
    assert stats.water_pixels == 360 * 180
    assert stats.water_area_km2 == pytest.approx(510_065_621.7, rel=1e-7)


def test_geographic_area_matches_geodesic_polygon(tmp_path):
    pyproj = pytest.importorskip("pyproj")
    # 0.01° pixels, 100×100 → a 1°×1° square between 60°N and 61°N
    p = _all_water(tmp_path / "sq.tif", 100, 100, "EPSG:4326", from_origin(10, 61, 0.01, 0.01))
    stats = compute_stats(p)
    geod = pyproj.Geod(ellps="WGS84")
    area, _ = geod.polygon_area_perimeter([10, 11, 11, 10], [60, 60, 61, 61])
    assert stats.water_area_km2 == pytest.approx(abs(area) / 1e6, rel=1e-4)
    # and NOT degrees² times a fixed factor: the same square at the equator is twice as big
    q = _all_water(tmp_path / "eq.tif", 100, 100, "EPSG:4326", from_origin(10, 1, 0.01, 0.01))
    assert compute_stats(q).water_area_km2 / stats.water_area_km2 == pytest.approx(2.0, rel=0.02)


def test_projected_area_in_feet(tmp_path):
    p = _all_water(tmp_path / "ft.tif", 10, 10, "EPSG:2227", from_origin(6000000, 2000000, 10, 10))
    us_ft = 1200 / 3937
    assert compute_stats(p).water_area_km2 == pytest.approx(100 * (10 * us_ft) ** 2 / 1e6, rel=1e-9)


def test_no_crs_area_is_nan(tmp_path):
    p = str(tmp_path / "nocrs.tif")
    with rasterio.open(p, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8", nodata=255) as dst:
        dst.write(np.ones((1, 4, 4), np.uint8))
    stats = compute_stats(p)
    assert stats.water_pixels == 16 and math.isnan(stats.water_area_km2)


def test_rotated_geographic_grid_is_close_to_north_up(tmp_path):
    from affine import Affine

    north_up = _all_water(tmp_path / "n.tif", 50, 50, "EPSG:4326", from_origin(10, 46, 0.02, 0.02))
    rotated_t = from_origin(10, 46, 0.02, 0.02) * Affine.rotation(0.001)
    rotated = _all_water(tmp_path / "r.tif", 50, 50, "EPSG:4326", rotated_t)
    assert compute_stats(rotated).water_area_km2 == pytest.approx(compute_stats(north_up).water_area_km2,
                                                                  rel=1e-3)
