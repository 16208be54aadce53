"""One band file of a download (Landsat, HLS, Sentinel-2) given as INPUT is mapped as the stack of its set: the
files beside it whose names differ only in the band, stacked as *Build virtual raster* stacks them by hand."""

from __future__ import annotations

import os
import tarfile
import tempfile

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from plugin.core import raster
from plugin.core.band_files import band_files_of, write_stack
from plugin.core.errors import InputError
from plugin.core.layer_nodata import NodataRange
from plugin.core.pipeline import map_floods
from plugin.core.sentinel2_product import metadata_of_band_file
from tests.fixtures import band_sets
from tests.fixtures.band_sets import LANDSAT, X0, Y0, coarser, write_band
from tests.fixtures.progress import Recorder
from tests.fixtures.sentinel2_safe import NAME, write_l2a

H, W = 72, 96  # at the finest resolution


def reflectance() -> np.ndarray:
    """BLUE, GREEN, RED, NIR_NARROW, SWIR_1, SWIR_2 (0-1): water (low NIR) in rows 0-35."""
    rng = np.random.default_rng(5)
    refl = rng.uniform(0.05, 0.12, (6, H, W))
    refl[3] = rng.uniform(0.25, 0.35, (H, W))
    refl[3, :36] = 0.03
    return refl


def write_landsat(folder, refl=None, qa=None, scene=LANDSAT) -> dict[str, str]:
    return band_sets.write_landsat(folder, reflectance() if refl is None else refl, qa, scene)


def hand_made_stack(files: list[str], path) -> str:
    """The README's way: gdalbuildvrt -separate -resolution highest."""
    from osgeo import gdal

    gdal.BuildVRT(str(path), files, options=gdal.BuildVRTOptions(separate=True, resolution="highest"))
    return str(path)


def read(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.transform


# ---------------------------------------------------------------------------------------------- the set
def test_a_landsat_band_file_belongs_to_its_seven_surface_reflectance_bands(tmp_path):
    files = write_landsat(tmp_path / "scene")
    found = band_files_of(files["SR_B4"])
    assert found is not None
    assert found.files == tuple(files[f"SR_B{b}"] for b in range(1, 8))  # not ST_B10 or QA_PIXEL
    assert found.bands == ("COASTAL_AEROSOL", "BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2")
    assert found.given == 3 and found.name == f"{LANDSAT}_SR" and found.missing() == []
    assert found.cloud_file == files["QA_PIXEL"]
    assert found.describe() == "B1, B2, B3, B4, B5, B6, B7"


def test_landsat_panchromatic_and_thermal_band_files_are_left_out(tmp_path):
    """Level-1: B8 is panchromatic (15 m), B10 and B11 thermal; the stack stays on the 30 m grid."""
    scene = "LC08_L1TP_190029_20240501_20240502_02_T1"
    values = np.full((24, 32), 9000, np.uint16)
    for band in (1, 2, 3, 4, 5, 6, 7, 9, 10, 11):
        write_band(tmp_path / f"{scene}_B{band}.TIF", values, 30)
    write_band(tmp_path / f"{scene}_B8.TIF", np.full((48, 64), 9000, np.uint16), 15)
    found = band_files_of(str(tmp_path / f"{scene}_B5.TIF"))
    assert found.describe() == "B1, B2, B3, B4, B5, B6, B7, B9"
    assert found.bands[-1] == "CIRRUS" and found.given == 4
    info = raster.inspect(write_stack(found, str(tmp_path)))
    assert (info.count, info.width, info.height, info.transform.a) == (8, 32, 24, 30.0)


def test_hls_l30_band_files_are_read_with_landsat_numbers(tmp_path):
    """HLS L30: B05 is the narrow NIR (OLI's numbering), B10 and B11 thermal; Fmask and the angles are no band."""
    granule = "HLS.L30.T33TWM.2024122T100031.v2.0"
    values = np.full((24, 32), 900, np.int16)
    for name in ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B09", "B10", "B11", "Fmask", "SAA", "VZA"):
        write_band(tmp_path / f"{granule}.{name}.tif", values, 30, nodata=-9999)
    found = band_files_of(str(tmp_path / f"{granule}.B03.tif"))
    assert found.describe() == "B01, B02, B03, B04, B05, B06, B07, B09" and found.given == 2
    assert found.bands[1:7] == ("BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2")
    assert found.name == granule and found.cloud_file == str(tmp_path / f"{granule}.Fmask.tif")


def test_sentinel2_band_files_at_10_20_and_60_m_are_stacked_on_the_10_m_grid(tmp_path):
    """As cloud archives serve a Sentinel-2 scene: B02.tif … B12.tif beside SCL.tif, TCI.tif and AOT.tif."""
    refl = np.rint(reflectance() * 10000).astype(np.uint16)
    for band, row, res in (("B02", 0, 10), ("B03", 1, 10), ("B04", 2, 10), ("B08", 3, 10), ("B8A", 3, 20),
                           ("B11", 4, 20), ("B12", 5, 20), ("B01", 0, 60), ("B05", 1, 20)):
        write_band(tmp_path / f"{band}.tif", coarser(refl[row], res // 10), res)
    for other in ("SCL", "TCI", "AOT"):
        write_band(tmp_path / f"{other}.tif", coarser(refl[0], 2), 20)
    found = band_files_of(str(tmp_path / "B11.tif"))
    assert found.describe() == "B01, B02, B03, B04, B05, B08, B8A, B11, B12"
    assert found.given == 7 and found.name == "bands" and found.cloud_file == str(tmp_path / "SCL.tif")
    info = raster.inspect(write_stack(found, str(tmp_path / "..")))
    assert (info.count, info.width, info.height, info.transform.a, info.transform.c, info.transform.f) == \
        (9, W, H, 10.0, X0, Y0)


def test_band_files_as_the_copernicus_browser_downloads_them(tmp_path):
    """Analytical downloads name each band file by the time range, the product and the band."""
    prefix = "2024-05-01-00_00_2024-05-01-23_59_Sentinel-2_L2A_"
    values = np.full((H, W), 1500, np.uint16)
    for band in ("B02", "B03", "B04", "B08", "B8A", "B11", "B12", "SCL", "True_color"):
        write_band(tmp_path / f"{prefix}{band}_(Raw).tiff", values, 10)
    found = band_files_of(str(tmp_path / f"{prefix}B8A_(Raw).tiff"))
    assert found.describe() == "B02, B03, B04, B08, B8A, B11, B12" and found.given == 4
    assert found.name == "2024-05-01-00_00_2024-05-01-23_59_Sentinel-2_L2A_(Raw)"
    assert found.cloud_file == str(tmp_path / f"{prefix}SCL_(Raw).tiff")


def test_band_files_copied_out_of_a_product_take_each_band_at_its_finest_resolution(tmp_path):
    tile = "T33TWM_20240501T100031"
    values = np.full((H, W), 1500, np.uint16)
    for band, res in (("B02", 10), ("B02", 20), ("B03", 10), ("B11", 20), ("B11", 60), ("SCL", 20)):
        write_band(tmp_path / f"{tile}_{band}_{res}m.jp2", coarser(values, res // 10), res)
    found = band_files_of(str(tmp_path / f"{tile}_B11_20m.jp2"))
    assert [os.path.basename(f) for f in found.files] == [f"{tile}_B02_10m.jp2", f"{tile}_B03_10m.jp2",
                                                          f"{tile}_B11_20m.jp2"]
    assert found.name == tile and found.given == 2 and found.cloud_file == str(tmp_path / f"{tile}_SCL_20m.jp2")
    assert found.missing() == ["RED", "NIR_NARROW", "SWIR_2"]


def test_what_is_no_band_file_of_a_set(tmp_path):
    files = write_landsat(tmp_path / "scene")
    alone = tmp_path / "alone"
    alone.mkdir()
    write_band(alone / "B02.tif", np.ones((8, 8), np.uint16), 10)
    with rasterio.open(tmp_path / "B04.tif", "w", driver="GTiff", width=8, height=8, count=6, dtype="uint16",
                       crs="EPSG:32633", transform=from_origin(X0, Y0, 10, 10)) as dst:  # a stack named B04
        dst.write(np.ones((6, 8, 8), np.uint16))
    write_band(tmp_path / "B03.tif", np.ones((8, 8), np.uint16), 10)
    for source in (str(alone / "B02.tif"), str(tmp_path / "B04.tif"), f"{tmp_path}/scene/{LANDSAT}_QA_PIXEL.TIF",
                   f"{tmp_path}/scene/{LANDSAT}_ST_B10.TIF", "https://example.com/B02.tif", "",
                   files["SR_B2"].replace(".TIF", ".tif.missing")):
        assert band_files_of(source) is None, source


# ---------------------------------------------------------------------------------------------- mapped
def test_a_landsat_band_file_maps_like_the_stack_of_its_set_made_by_hand(tensor_world, tmp_path):
    world = tensor_world
    files = write_landsat(tmp_path / "scene")
    progress = Recorder()
    result = map_floods(world.request(input_path=files["SR_B5"]), world.client(), progress)
    classes, transform = read(world.output)
    assert any(f"INPUT is one of 7 band files in {tmp_path / 'scene'} (B1, B2, B3, B4, B5, B6, B7): they are "
               "stacked" in m for m in progress.infos), progress.infos
    assert any("Landsat Collection 2 Level-2 surface reflectance" in m for m in progress.infos), progress.infos
    assert any(f"{LANDSAT}_QA_PIXEL.TIF lies beside the band files ({files['QA_PIXEL']}); it is not used as a "
               "cloud mask unless given as CLOUD_MASK" in m for m in progress.infos), progress.infos
    assert not progress.warnings, progress.warnings
    assert (classes[:12] == 1).all() and (classes[12:] == 0).all() and result.water_pixels == 12 * W // 3
    assert transform == from_origin(X0, Y0, 30, 30)
    assert os.listdir(tempfile.gettempdir()) == []  # the stack's folder is gone
    probability = read(world.probability)[0]
    stack = hand_made_stack([files[f"SR_B{b}"] for b in range(1, 8)], tmp_path / "stack.vrt")
    map_floods(world.request(input_path=stack), world.client())
    np.testing.assert_array_equal(classes, read(world.output)[0])
    np.testing.assert_array_equal(probability, read(world.probability)[0])


def test_band_files_inside_the_downloaded_tar_are_a_set_too(world, tmp_path):
    """QGIS's Browser adds the .tar's members as /vsitar/ layers; an image-to-image server gets a GeoTIFF."""
    files = write_landsat(tmp_path / "scene")
    archive = tmp_path / f"{LANDSAT}.tar"
    with tarfile.open(archive, "w") as tar:
        for path in sorted((tmp_path / "scene").iterdir()):
            tar.add(path, arcname=path.name)
    member = f"/vsitar/{archive}/{os.path.basename(files['SR_B3'])}"
    found = band_files_of(member)
    assert found.files == tuple(f"/vsitar/{archive}/{os.path.basename(files[f'SR_B{b}'])}" for b in range(1, 8))
    map_floods(world.request(input_path=member), world.client())
    sent = world.jobs()[0].json()["data"]["data"]
    assert sent.endswith(".part.tif") and not os.path.exists(sent)
    classes, _ = read(world.output)
    assert (classes[:12] == 1).all() and (classes[12:] == 0).all()
    assert os.listdir(tempfile.gettempdir()) == []


def test_the_layers_no_data_values_follow_its_band_file_onto_the_stack(tensor_world, tmp_path):
    world = tensor_world
    files = write_landsat(tmp_path / "scene")
    with rasterio.open(files["SR_B2"]) as src:
        blue = src.read(1)
    low = float(blue.min())
    result = map_floods(world.request(input_path=files["SR_B2"], layer_nodata=(NodataRange(1, low, low),)),
                        world.client())
    classes, _ = read(world.output)
    np.testing.assert_array_equal(classes == 255, blue == low)
    assert result.valid_pixels == blue.size - int((blue == low).sum())


def test_a_pre_event_band_file_brings_its_qa_band_when_the_event_is_cloud_masked(tensor_world, tmp_path):
    """Before the flood: water in rows 0-5 (of 24 at 30 m) and a cloud shadow, as dark as water, over rows 8-11
    that its QA_PIXEL flags. With CLOUD_MASK given, the pre-event QA band keeps the shadow from being taken for
    permanent water, as a pre-event product's SCL does."""
    world = tensor_world
    event = write_landsat(tmp_path / "event")
    refl = reflectance()
    refl[3, 18:] = 0.4
    refl[3, 24:36] = 0.03  # the shadow
    qa = np.full((H // 3, W // 3), 21824, np.uint16)
    qa[8:12] |= 1 << 4  # cloud shadow
    before = write_landsat(tmp_path / "before", refl, qa, scene="LC09_L2SP_190029_20240415_20240416_02_T1")
    progress = Recorder()
    result = map_floods(world.request(input_path=event["SR_B4"], pre_event_path=before["SR_B4"],
                                      cloud_mask_path=event["QA_PIXEL"]), world.client(), progress)
    classes = read(world.output)[0]
    assert (classes[:6] == 2).all() and (classes[6:12] == 1).all() and (classes[12:] == 0).all()
    assert result.no_reference_pixels == 4 * W // 3
    assert any("PRE_EVENT_CLOUD_MASK: the pre-event band files' LC09_L2SP_190029_20240415_20240416_02_T1_QA_PIXEL"
               ".TIF" in m and "since CLOUD_MASK is given" in m for m in progress.infos), progress.infos
    assert os.listdir(tempfile.gettempdir()) == []


def test_bands_given_keep_the_file_as_it_is(tensor_world, tmp_path):
    files = write_landsat(tmp_path / "scene")
    with pytest.raises(InputError, match="out of range: the raster has 1 bands"):
        map_floods(tensor_world.request(input_path=files["SR_B2"], bands=[1, 2, 3, 4, 5, 6]), tensor_world.client())


def test_a_set_without_the_models_bands_says_which_are_missing(tensor_world, tmp_path):
    world = tensor_world
    refl = np.rint(reflectance() * 10000).astype(np.uint16)
    for band, row in (("B02", 0), ("B03", 1), ("B04", 2), ("B08", 3)):
        write_band(tmp_path / f"{band}.tif", refl[row], 10)
    progress = Recorder()
    with pytest.raises(InputError, match=r"The raster has 4 band\(s\); the model needs 6") as err:
        map_floods(world.request(input_path=str(tmp_path / "B04.tif")), world.client(), progress)
    assert (f"INPUT was stacked from the band files in {tmp_path} (B02, B03, B04, B08), and none of them gives "
            "SWIR_1, SWIR_2." in err.value.message)
    assert err.value.hint.startswith("Put the band files of the missing bands") and "stack them" not in str(err.value)
    assert any(f"INPUT: no band file in {tmp_path} gives SWIR_1, SWIR_2" in m and "download their band files" in m
               for m in progress.warnings), progress.warnings
    assert os.listdir(tempfile.gettempdir()) == [] and not world.jobs() and not os.path.exists(world.output)


# ------------------------------------------------------------------------------- a product's band file
def test_a_band_file_of_a_product_is_its_product(tensor_world, tmp_path):
    """The R10m B02 file the Browser shows inside a .SAFE (or its .zip) maps the whole product; a no data value
    set on the file's layer applies to B02 of the stack."""
    world = tensor_world
    dn = (np.rint(reflectance() * 10000) + 1000).astype(np.uint16)
    safe = write_l2a(tmp_path / "product", dn)
    zipped = write_l2a(tmp_path / "zipped", dn, zipped=True)
    b02 = str(next(safe.rglob("*_B02_10m.jp2")))
    inside = f"/vsizip/{zipped}/{NAME}.SAFE/" + b02.split(".SAFE/")[1]
    assert metadata_of_band_file(b02) == str(safe / "MTD_MSIL2A.xml")
    assert metadata_of_band_file(inside) == f"/vsizip/{zipped}/{NAME}.SAFE/MTD_MSIL2A.xml"
    assert metadata_of_band_file(str(next(safe.rglob("*_SCL_20m.jp2")))) is None
    low = float(dn[0].min())
    progress = Recorder()
    result = map_floods(world.request(input_path=inside, layer_nodata=(NodataRange(1, low, low),)), world.client(),
                        progress)
    assert any(f"INPUT is the Sentinel-2 L2A product {NAME}: its 12 spectral bands" in m for m in progress.infos)
    assert not progress.warnings, progress.warnings
    classes, _ = read(world.output)
    np.testing.assert_array_equal(classes == 255, dn[0] == low)
    assert result.water_pixels == int(((classes == 1)).sum()) and (classes[:36] != 0).all()
    assert os.listdir(tempfile.gettempdir()) == []
