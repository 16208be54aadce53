"""scripts/serve-demo starts a real vLLM that turns a GeoTIFF into a flood-map GeoTIFF (image-to-image).

The request is the one TerraTorch's terratorch_segmentation IOProcessor documents; the
answer must sit on the input's grid and hold TerraTorch's class × 255 codes.
"""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import requests
from rasterio.io import MemoryFile

from plugin.core.engine import is_demo_model
from plugin.core.settings import DEMO_MODEL_DIR
from scripts import scenes

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """512² × 6 bands, uint16 reflectance × 10000, EPSG:32633, with rivers and lakes of known extent."""
    path = tmp_path_factory.mktemp("scene") / "scene.tif"
    truth = scenes.generate_scene(path, seed=9001, width=512, height=512, crs="EPSG:32633")
    return path, truth


def pooling(server, path: Path, out_data_format: str) -> tuple[dict, float]:
    payload = {
        "model": server.model,
        "softmax": False,  # vLLM 0.10.2/0.11.0 softmax along the wrong axis otherwise; ignored later
        "data": {"data": str(path), "data_format": "path", "out_data_format": out_data_format,
                 "indices": [0, 1, 2, 3, 4, 5]},
    }
    t0 = time.monotonic()
    r = requests.post(server.url + "/pooling", json=payload, timeout=600)
    elapsed = time.monotonic() - t0
    assert r.status_code == 200, r.text[:2000]
    return r.json(), elapsed


def test_health(vllm_server):
    print(f"server start to /health: {vllm_server.startup_seconds:.1f} s")
    assert requests.get(vllm_server.url + "/health", timeout=10).status_code == 200
    models = requests.get(vllm_server.url + "/v1/models", timeout=10).json()["data"]
    assert [m["id"] for m in models] == [vllm_server.model]


def test_image_to_image_keeps_the_grid(vllm_server, scene):
    path, truth = scene
    timings = []
    answers = []
    for _ in range(2):
        body, seconds = pooling(vllm_server, path, "b64_json")
        timings.append(seconds)
        assert body["data"]["data_format"] == "b64_json"
        answers.append(base64.b64decode(body["data"]["data"]))
    print(f"/pooling 512²: first {timings[0]:.2f} s, second {timings[1]:.2f} s")

    masks = []
    with rasterio.open(path) as src:
        assert src.crs.to_epsg() == 32633 and src.dtypes[0] == "uint16"
        for tiff in answers:
            with MemoryFile(tiff) as mem, mem.open() as out:
                assert out.driver == "GTiff"
                assert out.crs == src.crs
                assert out.transform == src.transform
                assert (out.width, out.height) == (src.width, src.height)
                assert out.count == 1 and out.dtypes[0] == "uint8"
                data = out.read(1)
                assert set(np.unique(data).tolist()) <= {0, 255}
                masks.append(data)
    # Two identical requests may differ by float16 ties in a pixel or so, never more.
    assert np.mean(masks[0] != masks[1]) < 0.001
    if is_demo_model(os.environ.get("FLOODMAPPER_MODEL") or str(DEMO_MODEL_DIR)):
        iou = scenes.iou(masks[0] == 255, truth)
        print(f"water IoU against the scene's truth: {iou:.3f}")
        assert iou > 0.8, f"the demo model should find the scene's water (IoU {iou:.3f})"


def test_path_output_lands_in_the_serve_out_folder(vllm_server, scene):
    path, _ = scene
    body, _ = pooling(vllm_server, path, "path")
    out_path = Path(body["data"]["data"])
    assert out_path.parent == vllm_server.out_dir  # FLOODMAPPER_SERVE_OUT → the IOProcessor's output_path
    with rasterio.open(out_path) as out, rasterio.open(path) as src:
        assert (out.crs, out.transform, out.width, out.height) == (src.crs, src.transform, src.width, src.height)
    out_path.unlink()
