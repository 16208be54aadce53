"""Offline batch (plugin/batch.py) with the real vLLM engine in the vLLM environment's Python.

Three rasters, one of them corrupt: the two good ones become flood maps on the input grid (0/1, nodata 255
where the input has none), the bad one is reported, the exit code says that not all succeeded, and no
process or temp file is left behind.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from plugin.core.engine import is_demo_model
from plugin.core.settings import DEMO_MODEL_DIR, Settings
from scripts import scenes

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.vllm, pytest.mark.engine]


def test_batch_three_rasters_one_corrupt(tmp_path):
    settings = Settings().with_env()
    model = os.environ.get("FLOODMAPPER_MODEL") or str(DEMO_MODEL_DIR)
    assert Path(settings.vllm_python).exists(), f"no vLLM environment at {settings.vllm_python}"
    a, b, bad = tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "broken.tif"
    # Synthetic scenes with known water (scripts/scenes.py); seeds the demo model never trained on.
    truths = {
        "a_flood.tif": scenes.generate_scene(a, seed=9002, width=512, height=512),
        "b_flood.tif": scenes.generate_scene(b, seed=9003, width=300, height=260, nodata=0, nodata_border=12),
    }
    bad.write_bytes(b"II*\x00" + os.urandom(2000))  # a TIFF header and garbage
    out = tmp_path / "maps"
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [settings.vllm_python, "-m", "plugin.batch", str(a), str(bad), str(b), "--out", str(out),
         "--model", model, "--max-num-seqs", "4"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    print(output[-3000:])
    print(f"batch took {time.monotonic() - t0:.1f} s")
    assert proc.returncode == 1, output[-3000:]
    assert "[2/3] FAILED broken.tif" in output
    assert "[1/3] ok a.tif" in output and "[3/3] ok b.tif" in output
    assert "Done: 2 of 3 raster(s) mapped, 1 failed" in output

    for src_path, name in ((a, "a_flood.tif"), (b, "b_flood.tif")):
        truth = truths[name]
        with rasterio.open(src_path) as src, rasterio.open(out / name) as dst:
            assert (dst.width, dst.height, dst.crs, dst.transform) == (src.width, src.height, src.crs, src.transform)
            assert dst.count == 1 and dst.dtypes[0] == "uint8" and dst.nodata == 255
            data = dst.read(1)
        assert ((data == 255) == (truth == 255)).all(), "output nodata exactly where the input has none"
        assert set(np.unique(data[truth != 255]).tolist()) <= {0, 1}
        if is_demo_model(model):
            iou = scenes.iou(np.where(data == 1, 1, 0), truth)
            print(f"{name}: water IoU {iou:.3f}")
            assert iou > 0.8, f"the demo model should find the scene's water (IoU {iou:.3f})"
    assert sorted(p.name for p in out.iterdir()) == ["a_flood.tif", "b_flood.tif"], "no temp files left"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(proc.pid, 9)
        pytest.fail("the batch left processes of its group running")
