"""A Sentinel-2 product as downloaded (its .SAFE folder, .zip, metadata file or a GDAL subdataset of it) is
stacked from its band files and mapped like the stack of those files made by hand."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import rasterio

from plugin.core import raster
from plugin.core.bands import choose_bands
from plugin.core.errors import InputError
from plugin.core.pipeline import map_floods
from plugin.core.provenance import INPUT_TAG, read_provenance
from plugin.core.sentinel2_product import BANDS, metadata_of, read_product, write_stack
from tests.fixtures.progress import Recorder
from tests.fixtures.sentinel2_safe import L1C_RES, NAME, write_l1c, write_l2a

H, W = 72, 96  # the product's 10 m grid
X0, Y0 = 500000.0, 4990020.0


def product_values() -> np.ndarray:
    """DN (reflectance x 10000 + 1000) of B02, B03, B04, B8A, B11, B12: water (low NIR) in rows 0-35."""
    rng = np.random.default_rng(11)
    refl = rng.uniform(0.05, 0.12, (6, H, W))
    refl[3] = rng.uniform(0.25, 0.35, (H, W))
    refl[3, :36] = 0.03
    return (np.rint(refl * 10000) + 1000).astype(np.uint16)


@pytest.fixture(scope="module")
def safe(tmp_path_factory):
    return write_l2a(tmp_path_factory.mktemp("product"), product_values())


@pytest.fixture(scope="module")
def zipped(tmp_path_factory):
    return write_l2a(tmp_path_factory.mktemp("product-zip"), product_values(), zipped=True)


def test_the_product_is_recognised_however_it_is_given(safe, zipped):
    from osgeo import gdal

    mtd = str(safe / "MTD_MSIL2A.xml")
    assert metadata_of(str(safe)) == metadata_of(mtd) == mtd
    subdatasets = [name for name, _ in gdal.Open(mtd).GetSubDatasets()]
    assert subdatasets[0].startswith("SENTINEL2_L2A:") and subdatasets[0].endswith(":10m:EPSG_32633")
    assert all(metadata_of(name) == mtd for name in subdatasets)  # 10m, 20m, 60m, TCI
    in_zip = metadata_of(str(zipped))
    assert in_zip == f"/vsizip/{zipped}/{NAME}.SAFE/MTD_MSIL2A.xml"
    zip_subdatasets = [name for name, _ in gdal.Open(str(zipped)).GetSubDatasets()]
    assert zip_subdatasets and all(metadata_of(name) == in_zip for name in zip_subdatasets)


def test_other_rasters_are_no_product(tmp_path, safe):
    scene = tmp_path / "scene.tif"
    scene.write_bytes(b"")
    other_zip = tmp_path / "bands.zip"
    import zipfile

    with zipfile.ZipFile(other_zip, "w") as zf:
        zf.writestr("stack.tif", b"")
    for source in (str(scene), str(tmp_path), str(other_zip), "", "https://example.com/MTD_MSIL2A.xml.tif",
                   f"NETCDF:{safe}/MTD_MSIL2A.xml:band", f"SENTINEL2_L2A:{safe}/stack.vrt:10m:EPSG_32633",
                   str(tmp_path / "MTD_MSIL2A.xml")):
        assert metadata_of(source) is None, source


def test_every_spectral_band_at_its_finest_resolution_in_the_products_order(safe):
    product = read_product(metadata_of(str(safe)))
    assert product.name == NAME and product.level == "L2A" and product.nodata == 0
    assert [(band, res) for band, res, _ in product.bands] == [
        ("B01", 20), ("B02", 10), ("B03", 10), ("B04", 10), ("B05", 20), ("B06", 20), ("B07", 20), ("B08", 10),
        ("B8A", 20), ("B09", 60), ("B11", 20), ("B12", 20)]
    assert product.describe() == ("B02, B03, B04, B08 at 10 m; B01, B05, B06, B07, B8A, B11, B12 at 20 m; "
                                  "B09 at 60 m")
    assert product.add_offsets == {band: -1000.0 for band in
                                   ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
                                    "B11", "B12")}
    assert product.cloud_file.endswith("/R20m/T33TWM_20240501T100031_SCL_20m.jp2")


def test_the_stack_is_on_the_10_m_grid_with_the_bands_values_nodata_and_offsets(safe, tmp_path):
    product = read_product(metadata_of(str(safe)))
    vrt = write_stack(product, str(tmp_path))
    assert os.path.basename(vrt) == f"{NAME}.vrt"
    info = raster.inspect(vrt)
    assert (info.width, info.height, info.count, info.transform.a, info.transform.c, info.transform.f) == \
        (W, H, 12, 10.0, X0, Y0)
    assert info.nodata == (0.0,) * 12 and info.add_offsets == (-1000.0,) * 12
    bands, notes = choose_bands(info, None)
    assert bands == [1, 2, 3, 8, 10, 11]  # B02, B03, B04, B8A, B11, B12 (0-based)
    dn = product_values()
    with rasterio.open(vrt) as src:
        np.testing.assert_array_equal(src.read(2), dn[0])  # B02 at 10 m as it is
        b8a = dn[3].astype(float).reshape(H // 2, 2, W // 2, 2).mean(axis=(1, 3)).round()
        np.testing.assert_array_equal(src.read(9), np.repeat(np.repeat(b8a, 2, axis=0), 2, axis=1))  # 20 m, nearest


def test_a_product_missing_a_band_file_is_refused_naming_the_band(tmp_path):
    safe = write_l2a(tmp_path, product_values())
    next(safe.rglob("*_B11_20m.jp2")).unlink()
    with pytest.raises(InputError, match="incomplete: its band files for B11 are missing") as err:
        read_product(metadata_of(str(safe)))
    assert "Download the product again" in err.value.hint


# ------------------------------------------------------------------------------------------ mapped
def hand_made_stack(folder) -> str:
    """The README's way: the six band files in a VRT (gdalbuildvrt -separate -resolution highest)."""
    from osgeo import gdal

    files = [str(next(folder.rglob(f"*_{band}.jp2"))) for band in
             ("B02_10m", "B03_10m", "B04_10m", "B8A_20m", "B11_20m", "B12_20m")]
    path = str(folder.parent / "stack.vrt")
    gdal.BuildVRT(path, files, options=gdal.BuildVRTOptions(separate=True, resolution="highest"))
    return path


def read(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.transform


def test_a_zipped_product_maps_like_its_band_files_stacked_by_hand(tensor_world, zipped, safe):
    world = tensor_world
    progress = Recorder()
    map_floods(world.request(input_path=str(zipped)), world.client(), progress)
    classes, transform = read(world.output)
    probability, _ = read(world.probability)
    assert any(f"INPUT is the Sentinel-2 L2A product {NAME}: its 12 spectral bands are read from its band files"
               in m for m in progress.infos), progress.infos
    assert any("has a scene classification (SCL)" in m and "not used as a cloud mask" in m for m in progress.infos)
    assert any("processing baseline" in m or "BOA_ADD_OFFSET" in m for m in progress.infos), progress.infos
    assert (classes[:36] == 1).all() and (classes[36:] == 0).all()
    assert os.listdir(tempfile.gettempdir()) == []  # the stack's folder is gone
    assert read_provenance(world.output)[INPUT_TAG] == zipped.name  # the product, not its stack
    map_floods(world.request(input_path=hand_made_stack(safe), offset=-0.1), world.client())
    np.testing.assert_array_equal(classes, read(world.output)[0])
    np.testing.assert_array_equal(probability, read(world.probability)[0])
    assert transform == read(world.output)[1]


def test_the_product_as_cloud_mask_gives_its_scl(tensor_world, tmp_path):
    world = tensor_world
    scl = np.full((H // 2, W // 2), 4, np.uint8)
    scl[20:30, 10:20] = 9  # a cloud over land, at 20 m
    product = write_l2a(tmp_path / "cloudy", product_values(), scl=scl)
    subdataset = f"SENTINEL2_L2A:{product}/MTD_MSIL2A.xml:10m:EPSG_32633"
    progress = Recorder()
    map_floods(world.request(input_path=subdataset, cloud_mask_path=subdataset), world.client(), progress)
    assert read_provenance(world.output)[INPUT_TAG] == os.path.basename(product)  # the product's folder
    classes, _ = read(world.output)
    cloud = np.zeros((H, W), bool)
    cloud[40:60, 20:40] = True
    np.testing.assert_array_equal(classes == 255, cloud)
    assert any("CLOUD_MASK: the product's scene classification (SCL)" in m for m in progress.infos)


def test_an_image_to_image_server_gets_a_geotiff_of_the_stack(world, zipped):
    progress = Recorder()
    map_floods(world.request(input_path=str(zipped)), world.client(), progress)
    sent = world.jobs()[0].json()["data"]["data"]
    assert sent.endswith(".part.tif") and not os.path.exists(sent)
    classes, _ = read(world.output)
    assert (classes[:36] == 1).all() and (classes[36:] == 0).all()
    assert os.listdir(tempfile.gettempdir()) == []


def test_an_l1c_product_has_13_bands_its_radio_offset_and_its_classification_mask(tmp_path):
    safe = write_l1c(tmp_path, product_values())
    product = read_product(metadata_of(str(safe)))
    assert product.level == "L1C" and product.offset_key == "RADIO_ADD_OFFSET"
    assert [band for band, _, _ in product.bands] == list(BANDS)
    assert dict((band, res) for band, res, _ in product.bands) == L1C_RES
    assert product.cloud_file.endswith("/QI_DATA/MSK_CLASSI_B00.jp2")
    info = raster.inspect(write_stack(product, str(tmp_path)))
    assert (info.count, info.width, info.height, info.add_offsets) == (13, W, H, (-1000.0,) * 13)
    assert choose_bands(info, None)[0] == [1, 2, 3, 8, 11, 12]  # B10 sits before B11


def test_a_pre_event_product_is_its_own_cloud_mask_when_the_event_is_cloud_masked(tensor_world, tmp_path, zipped):
    """Before the flood: water in rows 0-17 only, and a cloud shadow (as dark as water) over rows 24-35 that its SCL
    marks 3. Its SCL keeps the shadow from being taken for permanent water, once CLOUD_MASK is given."""
    world = tensor_world
    dn = product_values()
    dn[3, 18:] = 4000
    dn[3, 24:36] = 1300  # the shadow
    scl = np.full((H // 2, W // 2), 4, np.uint8)
    scl[12:18] = 3
    pre = write_l2a(tmp_path / "before", dn, scl=scl)
    progress = Recorder()
    plain = map_floods(world.request(input_path=str(zipped), pre_event_path=str(pre)), world.client(), progress)
    assert (read(world.output)[0][24:36] == 2).all()  # the shadow taken for permanent water
    assert not any("PRE_EVENT_CLOUD_MASK: the pre-event product's" in m for m in progress.infos)
    progress = Recorder()
    masked = map_floods(world.request(input_path=str(zipped), pre_event_path=str(pre), cloud_mask_path=str(zipped)),
                        world.client(), progress)
    classes = read(world.output)[0]
    assert (classes[:18] == 2).all() and (classes[18:36] == 1).all() and (classes[36:] == 0).all()
    assert masked.no_reference_pixels == 12 * W and plain.no_reference_pixels == 0
    assert masked.flood_pixels == plain.flood_pixels + 12 * W
    assert any("PRE_EVENT_CLOUD_MASK: the pre-event product's scene classification (SCL)" in m and
               "since CLOUD_MASK is given" in m for m in progress.infos), progress.infos
    assert os.listdir(tempfile.gettempdir()) == []


def test_a_product_from_before_the_offset_is_read_without_it(tensor_world, tmp_path):
    """Processing baseline 03.01 (2021): values are reflectance x 10000, no BOA_ADD_OFFSET; the product's name in
    the stack's file name says so, and no warning about band files acquired before the offset is given."""
    world = tensor_world
    dn = product_values() - 1000
    safe = write_l2a(tmp_path, dn, offset=False, name="S2A_MSIL2A_20210501T100031_N0301_R122_T33TWM_20210501T123456")
    progress = Recorder()
    result = map_floods(world.request(input_path=str(safe)), world.client(), progress)
    assert any("processing baseline 03.01, before the offset" in m for m in progress.infos), progress.infos
    assert not progress.warnings
    assert "Reflectance scale auto-detected: x0.0001" in progress.infos  # no offset
    assert result.water_pixels == 36 * W


def test_the_layers_no_data_values_follow_its_bands_onto_the_stack(tensor_world, safe):
    """A no data range set on band 3 of the 10 m subdataset layer (B2 there) applies to B02, band 2 of the stack;
    one on band 6 (WVP, no spectral band) is left out with a warning."""
    from plugin.core.layer_nodata import NodataRange

    world = tensor_world
    dn = product_values()
    low = float(dn[0].min())
    subdataset = f"SENTINEL2_L2A:{safe}/MTD_MSIL2A.xml:10m:EPSG_32633"
    progress = Recorder()
    result = map_floods(world.request(input_path=subdataset, layer_nodata=(
        NodataRange(3, low, low), NodataRange(6, 0.0, 100000.0))), world.client(), progress)
    classes, _ = read(world.output)
    np.testing.assert_array_equal(classes == 255, dn[0] == low)
    assert result.valid_pixels == H * W - int((dn[0] == low).sum()) < H * W
    assert any("INPUT: 1 of the layer's additional no data values are on no spectral band" in m
               for m in progress.warnings), progress.warnings
