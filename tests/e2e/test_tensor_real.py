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

from plugin.core.errors import Cancelled
from plugin.core.jobs import MapFloodsRequest
from plugin.core.model_spec import load_model_spec, resolve_model_spec
from plugin.core.vllm_api import VllmClient
from scripts.scenes import generate_scene
from tests.fixtures.jobs import run_tensor

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


def _borders(size, tile, overlap):
    """Raster lines where a tile starts or ends (line b: between pixel rows/columns b-1 and b)."""
    stride = tile - overlap
    starts = np.arange(stride, size - 1, stride)
    lines = np.unique(np.concatenate([starts, starts - stride + tile]))
    return lines[(lines > 0) & (lines < size)]


def _changes_at(mask, lines):
    """(class changes, valid pairs) across the given lines, over rows and columns together."""
    changes = pairs = 0
    for m in (mask, mask.T):
        a, b = m[lines - 1], m[lines]
        ok = (a != 255) & (b != 255)
        changes += int(((a != b) & ok).sum())
        pairs += int(ok.sum())
    return changes, pairs


def _seam_excess(server, tmp_path, inp, size, shift, overlap):
    """Class-change rate on each run's own tile borders / the rate on the same lines in the other run.

    The same scene is mapped twice: whole (grid A) and without its first `shift` rows and columns (grid B,
    whose tile borders fall elsewhere). The content along a line is the same in both runs, so a seam shows
    as more class changes on a run's own borders than on the same lines in the other run; rivers and field
    edges that happen to lie on a border count in both and cancel out.
    """
    from rasterio.windows import Window

    cut = tmp_path / f"cut-{overlap}.tif"
    with rasterio.open(inp) as ds:
        window = Window(shift, shift, size - shift, size - shift)
        profile = dict(ds.profile, width=size - shift, height=size - shift, transform=ds.window_transform(window))
        with rasterio.open(cut, "w", **profile) as dst:
            dst.write(ds.read(window=window))
    a, stats = tensor_map(server, inp, tmp_path / f"a-{overlap}.tif", overlap=overlap)
    b, _ = tensor_map(server, cut, tmp_path / f"b-{overlap}.tif", overlap=overlap)
    a = a[shift:, shift:]  # grid A on B's area
    tile, ov = stats.tile_size, stats.overlap
    lines_a = _borders(size, tile, ov)
    lines_a = lines_a[lines_a > shift + 1] - shift
    lines_b = _borders(size - shift, tile, ov)
    own = np.add(_changes_at(a, lines_a), _changes_at(b, lines_b))
    other = np.add(_changes_at(b, lines_a), _changes_at(a, lines_b))
    return (own[0] / own[1]) / max(other[0] / other[1], 1e-6), own, other, ov


def test_overlap_leaves_no_seam_at_tile_borders(vllm_tensor_server, tmp_path):
    """With the default overlap, tile borders carry no more class changes than the same lines cut elsewhere;
    without overlap the same measure shows the seams (so it can tell)."""
    size, shift = 700, 112  # 112 = half a stride: grid B's borders sit between grid A's
    inp = tmp_path / "scene.tif"
    generate_scene(inp, seed=33, width=size, height=size)
    ratio, own, other, ov = _seam_excess(vllm_tensor_server, tmp_path, inp, size, shift, None)
    print(f"overlap {ov} px: class changes on own tile borders {own[0]}/{own[1]}, same lines in the other "
          f"grid {other[0]}/{other[1]}: ratio {ratio:.2f}")
    assert ov > 0
    assert ratio <= 1.3
    ratio0, own0, other0, _ = _seam_excess(vllm_tensor_server, tmp_path, inp, size, shift, 0.0)
    print(f"overlap 0: {own0[0]}/{own0[1]} vs {other0[0]}/{other0[1]}: ratio {ratio0:.2f}")
    assert ratio0 >= 2.0  # seams without overlap: the measure sees them


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
    """Cancelled once the first tiles are back (not after a fixed time: a fast CPU maps the whole raster in a
    second), the run stops within seconds, leaves no file and the server stays healthy."""
    inp = tmp_path / "scene.tif"
    generate_scene(inp, seed=9, width=2048, height=2048)

    class CancelSoon:
        cancelled_at = None

        def set_progress(self, p):
            if self.cancelled_at is None and p > 0:  # tiles are back, and most are still to come
                self.cancelled_at = time.monotonic()

        def info(self, m):
            pass

        def warning(self, m):
            pass

        def is_canceled(self):
            return self.cancelled_at is not None

    prog = CancelSoon()
    out = tmp_path / "c.tif"
    with VllmClient(vllm_tensor_server.url) as client:
        req = MapFloodsRequest(input_path=str(inp), output_path=str(out), server_url=vllm_tensor_server.url,
                               model=vllm_tensor_server.model)
        with pytest.raises(Cancelled):
            run_tensor(req, client, demo_spec(vllm_tensor_server), SIX, prog)
        delay = time.monotonic() - prog.cancelled_at
        print(f"cancel took effect after {delay:.2f} s")
        assert delay < 3.0  # the run takes far longer; cancel cuts the requests in flight, on a busy machine too
    assert not out.exists() and not [f for f in os.listdir(tmp_path) if f.startswith(".")]
    assert requests.get(vllm_tensor_server.url + "/health", timeout=10).status_code == 200


def test_a_cancelled_run_goes_on_from_its_kept_rows_to_the_same_map(vllm_tensor_server, tmp_path, monkeypatch):
    """The real server, one tile in flight (so each tile's logits are the same in every run): a run cancelled
    midway keeps its finished bands (from the first minute here instead of after it), and the same job run again
    sends only the rest and gives byte for byte the map of a run that never stopped."""
    from plugin.core.tensor import checkpoint
    from tests.fixtures.progress import Recorder

    monkeypatch.setattr(checkpoint, "KEEP_AFTER_S", 0.0)
    inp = tmp_path / "scene.tif"
    generate_scene(inp, seed=4242, width=700, height=900)
    (tmp_path / "whole").mkdir()
    whole_map, whole = tensor_map(vllm_tensor_server, inp, tmp_path / "whole" / "flood.tif", concurrency=1)
    out = tmp_path / "flood.tif"
    progress = Recorder(lambda r: any(m.startswith("This run is long") for m in r.infos))  # after the first band
    with VllmClient(vllm_tensor_server.url) as client, pytest.raises(Cancelled):
        req = MapFloodsRequest(input_path=str(inp), output_path=str(out), server_url=vllm_tensor_server.url,
                               model=vllm_tensor_server.model, concurrency=1)
        run_tensor(req, client, demo_spec(vllm_tensor_server), SIX, progress)
    kept = [m for m in progress.infos if "map rows (of 900) are kept in" in m]
    assert kept and not out.exists(), progress.infos[-5:]
    resumed_map, resumed = tensor_map(vllm_tensor_server, inp, out, concurrency=1)
    print(f"undisturbed: {whole.requests} requests; after the cancel: {resumed.requests}")
    assert 0 < resumed.requests < whole.requests
    assert resumed_map.tobytes() == whole_map.tobytes()
    assert (resumed.water_pixels, resumed.valid_pixels) == (whole.water_pixels, whole.valid_pixels)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(checkpoint.PREFIX)]
    assert requests.get(vllm_tensor_server.url + "/health", timeout=10).status_code == 200
