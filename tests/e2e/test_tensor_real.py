"""Tensor transport against the REAL vLLM server (no IOProcessor plugin), checked against image-to-image.

The demo model served by scripts/serve-demo runs with `--dtype float16`, so every tensor goes as float16
(a float32 one would kill the server). With overlap 0 the client cuts exactly the tiles the IOProcessor
cuts (same origin, reflect padding at the far edges), so the two transports must agree up to float16
rounding ties; with overlap, blending must leave no seam along tile borders.
"""

from __future__ import annotations

import base64
import os
import time

import numpy as np
import pytest
import rasterio
import requests
from rasterio.io import MemoryFile

from plugin.core.client import VllmClient
from plugin.core.errors import Cancelled
from plugin.core.model_spec import load_model_spec, resolve_model_spec
from plugin.core.pipeline import MapFloodsRequest
from plugin.core.scenes import generate_scene
from plugin.core.tensor_transport import run_tensor

pytestmark = pytest.mark.vllm

SIX = [0, 1, 2, 3, 4, 5]
SERVE_DTYPE = "float16"  # scripts/serve-demo passes --dtype float16


def demo_spec(server):
    source = os.environ.get("FLOODMAPPER_MODEL", "")  # serve-demo serves this folder when it is set
    spec = load_model_spec(source) if source else resolve_model_spec("", server.model)
    return spec.with_dtype(SERVE_DTYPE)


def tensor_map(server, inp, out, **kw):
    with VllmClient(server.url) as client:
        req = MapFloodsRequest(input_path=str(inp), output_path=str(out), server_url=server.url,
                               model=server.model, **kw)
        stats = run_tensor(req, client, demo_spec(server), SIX)
    with rasterio.open(out) as o:
        return o.read(1), stats


def image_map(server, inp):
    """The IOProcessor's answer for the same raster, as classes 0/1."""
    payload = {"model": server.model, "softmax": False,
               "data": {"data": str(inp), "data_format": "path", "out_data_format": "b64_json",
                        "indices": SIX}}
    r = requests.post(server.url + "/pooling", json=payload, timeout=900)
    assert r.status_code == 200, r.text[:500]
    with MemoryFile(base64.b64decode(r.json()["data"]["data"])) as mem, mem.open() as ds:
        return (ds.read(1) // 255).astype(np.uint8)


def test_tensor_agrees_with_image_to_image_without_overlap(vllm_server, vllm_tensor_server, tmp_path):
    inp = tmp_path / "scene.tif"
    generate_scene(inp, seed=21, width=600, height=520)  # not a multiple of the tile either way
    tensor, stats = tensor_map(vllm_tensor_server, inp, tmp_path / "t.tif", overlap=0.0)
    image = image_map(vllm_server, inp)
    assert tensor.shape == image.shape
    agree = float((tensor == image).mean())
    print(f"tensor vs image-to-image agreement: {agree:.6f} ({stats.tiles} tiles, {stats.seconds:.1f} s)")
    assert agree >= 0.999
    assert 0 < stats.water_pixels < stats.valid_pixels  # a real map, not one class everywhere
    assert stats.encoding == "npy"  # vLLM 0.32 takes raw .npy bytes: no torch on the client
    assert stats.answer == "bytes"  # and answers raw float16 logits (no base64, half the size)
    assert requests.get(vllm_tensor_server.url + "/health", timeout=10).status_code == 200


def _changes(mask, axis):
    """Per column boundary (pixel index b: between b-1 and b), how often the class changes, over valid pairs."""
    m = mask if axis == 1 else mask.T
    left, right = m[:, :-1], m[:, 1:]
    ok = (left != 255) & (right != 255)
    diff = (left != right) & ok
    return diff.sum(0), ok.sum(0)  # index i is boundary b = i + 1


def test_overlap_leaves_no_seam_at_tile_borders(vllm_tensor_server, tmp_path):
    """Class changes along tile borders are no more frequent than along any other line of the patch grid.

    A ViT changes class more often on its 16-px patch grid than between, so the reference is the busiest
    residue class of columns mod 16 (borders excluded), not the mean over all columns.
    """
    inp = tmp_path / "scene.tif"
    generate_scene(inp, seed=33, width=700, height=700)
    mask, stats = tensor_map(vllm_tensor_server, inp, tmp_path / "o.tif")
    tile, ov = stats.tile_size, stats.overlap
    assert ov > 0
    stride = tile - ov
    size = mask.shape[0]
    starts = np.arange(stride, size - 1, stride)
    borders = np.unique(np.concatenate([starts, starts - stride + tile]))
    borders = borders[(borders > 0) & (borders < size)]
    for axis in (0, 1):
        changes, pairs = _changes(mask, axis)
        b = np.arange(1, size)
        at = np.isin(b, borders)
        at_borders = changes[at].sum() / pairs[at].sum()
        reference = max(changes[(b % 16 == r) & ~at].sum() / pairs[(b % 16 == r) & ~at].sum() for r in range(16))
        print(f"axis {axis}: class changes at tile borders {at_borders:.4f}, busiest other grid line class "
              f"{reference:.4f}, all lines {changes.sum() / pairs.sum():.4f}")
        assert at_borders <= 1.5 * reference + 0.003


@pytest.mark.parametrize("name,width,height,crs,nodata_border", [
    ("not-a-multiple", 300, 270, "EPSG:32633", 0),
    ("smaller-than-a-tile", 100, 90, "EPSG:32633", 0),
    ("nodata", 280, 260, "EPSG:32633", 12),
    ("geographic", 260, 300, "EPSG:4326", 0),
])
def test_output_has_the_exact_input_grid(vllm_tensor_server, tmp_path, name, width, height, crs, nodata_border):
    inp = tmp_path / f"{name}.tif"
    truth = generate_scene(inp, seed=5, width=width, height=height, crs=crs,
                           nodata=0 if nodata_border else None, nodata_border=nodata_border)
    out = tmp_path / f"{name}-out.tif"
    mask, stats = tensor_map(vllm_tensor_server, inp, out)
    with rasterio.open(inp) as src, rasterio.open(out) as o:
        assert (o.width, o.height) == (src.width, src.height)
        assert o.crs == src.crs and o.transform == src.transform
        assert o.nodata == 255 and o.dtypes[0] == "uint8"
    assert ((mask == 255) == (truth == 255)).all()
    assert set(np.unique(mask)) <= {0, 1, 255}
    assert stats.valid_pixels == int((truth != 255).sum())


def test_cancel_against_the_real_server_keeps_it_healthy(vllm_tensor_server, tmp_path):
    inp = tmp_path / "scene.tif"
    generate_scene(inp, seed=9, width=1024, height=1024)

    class CancelSoon:
        cancelled_at = None

        def set_progress(self, p):
            pass

        def info(self, m):
            pass

        def warning(self, m):
            pass

        def is_canceled(self):
            if self.cancelled_at is None and time.monotonic() - t0 > 1.0:
                self.cancelled_at = time.monotonic()
            return self.cancelled_at is not None

    prog = CancelSoon()
    out = tmp_path / "c.tif"
    with VllmClient(vllm_tensor_server.url) as client:
        req = MapFloodsRequest(input_path=str(inp), output_path=str(out), server_url=vllm_tensor_server.url,
                               model=vllm_tensor_server.model)
        t0 = time.monotonic()
        with pytest.raises(Cancelled):
            run_tensor(req, client, demo_spec(vllm_tensor_server), SIX, prog)
        assert time.monotonic() - prog.cancelled_at < 1.0
    assert not out.exists() and not [f for f in os.listdir(tmp_path) if f.startswith(".")]
    assert requests.get(vllm_tensor_server.url + "/health", timeout=10).status_code == 200
