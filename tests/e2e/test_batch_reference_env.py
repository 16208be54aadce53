"""Offline batch with `--reference` in the vLLM environment's Python (pyogrio reads the polygons there): a good
reference is read before any raster, an unusable one stops the batch before the engine starts. The glue from
the engine's map to the classes is tests/unit/test_batch_reference.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from plugin.core.settings import Settings
from scripts.scenes import generate_pair
from tests.fixtures.references import water_shapes, write_vector

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.vllm  # the vLLM environment's Python; no engine is started


def _batch(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    python = Settings().with_env().vllm_python
    assert Path(python).exists(), f"no vLLM environment at {python}"
    proc = subprocess.Popen([python, "-m", "plugin.batch", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    return subprocess.CompletedProcess(proc.args, proc.returncode, output)


def test_batch_reads_a_polygon_reference_in_the_vllm_environment(tmp_path):
    """A good reference is read (pyogrio, another CRS) before any raster; here the only raster is corrupt, so
    the batch reports it and ends without starting the engine. The comparison itself after a real engine run
    is the same core code the plugin's tests run on the real servers (tests/qgis/test_flood_extent_real.py)."""
    pre, post = tmp_path / "pre.tif", tmp_path / "scene.tif"
    pre_truth, _ = generate_pair(pre, post, seed=9165, width=64, height=64)
    reference = write_vector(tmp_path / "water.gpkg", water_shapes(pre_truth, pre, "EPSG:4326"), "EPSG:4326")
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00" + os.urandom(200))
    done = _batch([str(broken), "--out", str(tmp_path / "maps"), "--reference", reference], timeout=120)
    assert done.returncode == 1, done.stdout
    assert "[1/1] FAILED broken.tif" in done.stdout and "error: --reference" not in done.stdout
    assert "Loading the model" not in done.stdout


def test_batch_unusable_reference_stops_before_the_engine(tmp_path):
    scene = tmp_path / "scene.tif"
    generate_pair(tmp_path / "pre.tif", scene, seed=9165, width=32, height=32)
    lines = write_vector(tmp_path / "rivers.gpkg", [
        {"type": "LineString", "coordinates": [(15.0, 45.0), (15.001, 45.001)]}], "EPSG:4326", "LineString")
    done = _batch([str(scene), "--out", str(tmp_path / "maps"), "--reference", lines], timeout=120)
    assert done.returncode == 2, done.stdout
    assert "--reference" in done.stdout and "not polygons" in done.stdout
    assert "Loading the model" not in done.stdout
    assert list((tmp_path / "maps").iterdir()) == []
