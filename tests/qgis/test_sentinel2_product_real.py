"""floodmapper:map_floods on a Sentinel-2 L2A product as downloaded, in real QGIS on the real demo model: the .zip
given as text (qgis_process, processing.run) with the product as its own cloud mask, and the 10 m subdataset
QGIS adds when the .zip is dropped on the map, given as a project layer. No subdataset holds the model's six
bands; the plugin stacks them from the product's band files at 10 m."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from scripts.scenes import iou, synthesize
from tests.fixtures.processing_log import run_logged, run_on_layer
from tests.fixtures.sentinel2_safe import NAME, write_l2a

pytestmark = [pytest.mark.vllm, pytest.mark.qgis_versions]

ROOT = Path(__file__).resolve().parents[2]
MIN_IOU = 0.85  # as tests/qgis/test_area_real.py's band files at 10 and 20 m
W, H = 384, 324
X0, Y0 = 500000.0, 4990020.0


def _product(folder: Path, seed: int, zipped: bool, cloud: bool = False):
    refl, truth = synthesize(seed, W, H)  # BLUE, GREEN, RED, NIR_NARROW, SWIR_1, SWIR_2 = B02 ... B12
    dn = (np.rint(refl * 10000) + 1000).clip(1, 65535).astype(np.uint16)  # processing baseline 04.00 on
    scl = None
    if cloud:
        scl = np.full((H // 2, W // 2), 4, np.uint8)
        scl[100:130, 20:80] = 8  # a cloud, at 20 m
    return write_l2a(folder, dn, x0=X0, y0=Y0, scl=scl, zipped=zipped), truth


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.transform


def test_the_downloaded_zip_is_mapped_with_its_own_scl(provider_loaded, vllm_tensor_server, tmp_path):
    archive, truth = _product(tmp_path, seed=9501, zipped=True, cloud=True)
    out = tmp_path / "flood.tif"
    result, log = run_logged("floodmapper:map_floods", {
        "INPUT": str(archive), "CLOUD_MASK": str(archive), "BACKEND": 0, "SERVER_URL": vllm_tensor_server.url,
        "TRANSPORT": 2, "MODEL_SPEC": str(ROOT / "resources" / "demo_model"), "OUTPUT": str(out)})
    assert f"INPUT is the Sentinel-2 L2A product {NAME}: its 12 spectral bands" in log, log
    assert "CLOUD_MASK: the product's scene classification (SCL)" in log, log
    assert "the model gets input bands [2, 3, 4, 9, 11, 12]" in log, log  # B02, B03, B04, B8A, B11, B12
    assert "reflectance offset -0.1" in log, log
    classes, transform = _read(out)
    assert transform == from_origin(X0, Y0, 10, 10) and classes.shape == (H, W)
    cloud = np.zeros((H, W), bool)
    cloud[200:260, 40:160] = True
    np.testing.assert_array_equal(classes == 255, cloud)
    assert iou(classes, np.where(cloud, 255, truth)) >= MIN_IOU
    assert result["CLOUD_PIXELS"] == int(cloud.sum())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([archive.name, out.name, "flood.qml"])


def test_the_10_m_subdataset_layer_maps_the_whole_product(provider_loaded, vllm_server, tmp_path):
    from qgis.core import QgsRasterLayer

    safe, truth = _product(tmp_path, seed=9502, zipped=False)
    layer = QgsRasterLayer(f"SENTINEL2_L2A:{safe}/MTD_MSIL2A.xml:10m:EPSG_32633", "10 m", "gdal")
    # B4, B3, B2, B8 (and AOT, WVP with GDAL 3.7+): not what the model reads
    assert layer.isValid() and layer.bandCount() in (4, 6)
    out = tmp_path / "flood.tif"
    result, log = run_on_layer(layer, {"BACKEND": 0, "SERVER_URL": vllm_server.url, "TRANSPORT": 1,
                                       "OUTPUT": str(out)})
    assert f"INPUT is the Sentinel-2 L2A product {NAME}" in log, log
    assert "temporary GeoTIFF" in log, log  # the image server reads the stack's copy
    assert "has a scene classification (SCL)" in log and "not used as a cloud mask" in log, log
    classes, transform = _read(out)
    assert transform == from_origin(X0, Y0, 10, 10)
    assert iou(classes, truth) >= MIN_IOU
    assert result["VALID_PIXELS"] == W * H
