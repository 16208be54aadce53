"""floodmapper:map_floods on one band file of a download, in real QGIS on the real demo model: the plugin stacks
the band files beside it as QGIS's own Build virtual raster does, so the layer of any one band file (Sentinel-2
band files at 10 and 20 m, image-to-image) or its path as text (Landsat Collection 2 band files, tensor) maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from scripts.scenes import iou, synthesize
from tests.fixtures.landsat_values import as_collection2
from tests.fixtures.processing_log import run_logged, run_on_layer

pytestmark = [pytest.mark.vllm, pytest.mark.qgis_versions]

MIN_IOU = 0.85  # as tests/qgis/test_area_real.py's stack of band files at 10 and 20 m
X0, Y0 = 500000.0, 4990000.0
S2_BANDS = (("B02", 10), ("B03", 10), ("B04", 10), ("B8A", 20), ("B11", 20), ("B12", 20))  # BLUE … SWIR_2


def _write(path: Path, data: np.ndarray, res: int, nodata=None) -> str:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                       dtype="uint16", crs="EPSG:32633", transform=from_origin(X0, Y0, res, res),
                       nodata=nodata) as dst:
        dst.write(data, 1)
    return str(path)


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.transform


def _sentinel2_band_files(folder: Path, seed: int, width: int, height: int):
    """Six band files as copied out of a product acquired in 2024 (the −1000 offset), and the truth at 10 m."""
    folder.mkdir()
    refl, truth = synthesize(seed, width, height)
    dn = (np.rint(refl * 10000) + 1000).clip(1, 65535).astype(np.uint16)
    files = []
    for data, (band, res) in zip(dn, S2_BANDS):
        if res == 20:
            data = data.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3)).astype(np.uint16)
        files.append(_write(folder / f"T33TWM_20240501T100031_{band}_{res}m.tif", data, res))
    return files, truth


def test_the_layer_of_one_sentinel2_band_file_maps_like_its_stack_made_by_hand(provider_loaded, vllm_server,
                                                                              tmp_path):
    import processing
    from qgis.core import QgsRasterLayer

    files, truth = _sentinel2_band_files(tmp_path / "bands", seed=9601, width=384, height=320)
    layer = QgsRasterLayer(files[1], "B03", "gdal")
    assert layer.isValid() and layer.bandCount() == 1
    out = tmp_path / "flood.tif"
    result, log = run_on_layer(layer, {"BACKEND": 0, "SERVER_URL": vllm_server.url, "TRANSPORT": 1,
                                       "OUTPUT": str(out)})
    assert f"INPUT is one of 6 band files in {tmp_path / 'bands'} (B02, B03, B04, B8A, B11, B12)" in log, log
    assert "the model gets input bands [1, 2, 3, 4, 5, 6]" in log, log
    assert "Sentinel-2 acquired on 2024-05-01 (in the band files' names): reflectance offset -0.1" in log, log
    assert "temporary GeoTIFF" in log, log  # the image server reads the stack's copy
    classes, transform = _read(out)
    assert transform == from_origin(X0, Y0, 10, 10) and classes.shape == (320, 384)
    assert iou(classes, truth) >= MIN_IOU
    assert result["VALID_PIXELS"] == 384 * 320
    by_hand = processing.run("gdal:buildvirtualraster", {"INPUT": files, "RESOLUTION": 1, "SEPARATE": True,
                                                         "OUTPUT": str(tmp_path / "stack.vrt")})["OUTPUT"]
    run_logged("floodmapper:map_floods", {"INPUT": by_hand, "BACKEND": 0, "SERVER_URL": vllm_server.url,
                                          "TRANSPORT": 1, "OUTPUT": str(tmp_path / "by-hand.tif")})
    assert (classes == _read(tmp_path / "by-hand.tif")[0]).mean() >= 0.999  # float16 ties may flip a pixel
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["bands", "flood.tif", "flood.qml", "stack.vrt", "by-hand.tif", "by-hand.qml"])


def test_a_landsat_band_file_given_as_text_with_its_qa_band_as_cloud_mask(provider_loaded, vllm_tensor_server,
                                                                         tmp_path):
    refl, truth = synthesize(9602, 256, 224)  # BLUE, GREEN, RED, NIR_NARROW, SWIR_1, SWIR_2
    stored = as_collection2(np.concatenate([refl[:1], refl]))  # SR_B1 (coastal) too
    scene = "LC09_L2SP_013032_20231008_20231009_02_T1"
    folder = tmp_path / scene
    folder.mkdir()
    for band, data in enumerate(stored, start=1):
        _write(folder / f"{scene}_SR_B{band}.TIF", data, 30, nodata=0)
    qa = np.full((224, 256), 21824, np.uint16)  # clear land: flags, none of them cloud
    qa[:32, :64] |= 1 << 3  # cloud
    qa_path = _write(folder / f"{scene}_QA_PIXEL.TIF", qa, 30, nodata=1)
    out = tmp_path / "flood.tif"
    result, log = run_logged("floodmapper:map_floods", {
        "INPUT": str(folder / f"{scene}_SR_B5.TIF"), "CLOUD_MASK": qa_path, "BACKEND": 0,
        "SERVER_URL": vllm_tensor_server.url, "TRANSPORT": 2,
        "MODEL_SPEC": str(Path(__file__).resolve().parents[2] / "resources" / "demo_model"), "OUTPUT": str(out)})
    assert f"INPUT is one of 7 band files in {folder} (B1, B2, B3, B4, B5, B6, B7)" in log, log
    assert "the model gets input bands [2, 3, 4, 5, 6, 7]" in log, log
    assert "Landsat Collection 2 Level-2 surface reflectance" in log, log
    classes, transform = _read(out)
    assert transform == from_origin(X0, Y0, 30, 30) and classes.shape == (224, 256)
    cloud = np.zeros(classes.shape, bool)
    cloud[:32, :64] = True
    np.testing.assert_array_equal(classes == 255, cloud)
    assert iou(classes, np.where(cloud, 255, truth)) >= MIN_IOU
    assert result["CLOUD_PIXELS"] == int(cloud.sum())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([scene, "flood.tif", "flood.qml"])
