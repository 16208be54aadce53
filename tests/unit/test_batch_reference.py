"""The batch's `--reference`: from the engine's map to the flood-extent classes, with a stand-in for
`vllm.LLM` that writes what TerraTorch's IOProcessor writes (class x 255 on the input's grid) from the scene's
known water. The real engine's maps are tests/e2e/test_batch.py; reading the reference in the vLLM environment
is tests/e2e/test_batch_reference.py."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio

from plugin import batch, batch_inputs, batch_offline
from scripts.scenes import class_iou, flood_classes, generate_pair
from tests.fixtures.references import water_shapes, write_vector


class IOProcessorOutput:
    """`llm.encode(prompt)` as the IOProcessor answers it offline: a GeoTIFF path in `out_path`."""

    def __init__(self, water: np.ndarray) -> None:
        self.water = water

    def encode(self, prompt, pooling_task, use_tqdm):
        data = prompt["data"]
        with rasterio.open(data["data"]) as src:
            profile = dict(driver="GTiff", width=src.width, height=src.height, count=1, dtype="uint8",
                           crs=src.crs, transform=src.transform)
        path = os.path.join(data["out_path"], "offline.tiff")
        with rasterio.open(path, "w", **profile) as dst:
            dst.write((self.water == 1).astype(np.uint8) * 255, 1)
        return [SimpleNamespace(outputs=SimpleNamespace(data=path))]


def test_reference_polygons_split_the_engine_water(tmp_path):
    pre, post = tmp_path / "pre.tif", tmp_path / "scene.tif"
    pre_truth, post_truth = generate_pair(pre, post, seed=9165, width=128, height=128)
    gpkg = write_vector(tmp_path / "water.gpkg", water_shapes(pre_truth, pre, "EPSG:4326"), "EPSG:4326")
    refs = batch_inputs.load_reference(gpkg, 1.0)
    out = tmp_path / "maps"
    out.mkdir()
    (job,) = batch_inputs.plan([str(post)], out)
    stats = batch_offline.run_one(IOProcessorOutput(post_truth), job, [0, 1, 2, 3, 4, 5], str(tmp_path), refs)
    with rasterio.open(job.output_path) as ds:
        classes = ds.read(1)
        assert ds.tags()["FLOODMAPPER_REFERENCE"] == "the reference water 'water.gpkg'"
    truth = flood_classes(pre_truth, post_truth)
    assert class_iou(classes, truth, 1) > 0.99 and class_iou(classes, truth, 2) > 0.99
    assert stats.flood_pixels == int((classes == 1).sum()) and stats.no_reference_pixels == 0
    assert os.listdir(out) == ["scene_flood.tif"]


def test_unusable_reference_stops_the_batch(tmp_path, capsys):
    scene = tmp_path / "scene.tif"
    generate_pair(tmp_path / "pre.tif", scene, seed=9165, width=32, height=32)
    occurrence = tmp_path / "occ.tif"
    with rasterio.open(scene) as src:
        profile = dict(driver="GTiff", width=32, height=32, count=1, dtype="uint8", crs=src.crs,
                       transform=src.transform)
    with rasterio.open(occurrence, "w", **profile) as dst:
        dst.write(np.full((1, 32, 32), 80, np.uint8))
    code = batch.main([str(scene), "--out", str(tmp_path / "maps"), "--reference", str(occurrence),
                       "--reference-threshold", "300"])
    assert code == 2
    assert "REFERENCE_THRESHOLD 300" in capsys.readouterr().err
    assert os.listdir(tmp_path / "maps") == []


@pytest.mark.parametrize("threshold", ["50", "0.5"])
def test_reference_threshold_is_parsed(threshold):
    args = batch.parse_args(["a.tif", "--out", "o", "--reference", "r.tif", "--reference-threshold", threshold])
    assert args.reference == "r.tif" and args.reference_threshold == float(threshold)
