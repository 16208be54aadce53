"""Tensor transport against a fake tensor peer on 127.0.0.1 whose "model" is a per-pixel water rule.

The rule (tests/fixtures/fake_vllm.py) gives each pixel the same logits whatever tile carries it, so
the flood map must equal the rule computed over the whole raster: a misplaced tile, a wrong weight, a lost
or doubled row, a wrong band or scale all show up as disagreement.
"""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform as warp_transform

from plugin.core.errors import Cancelled, EngineDied, InputError, OutputError, ServerError, TransportUnsupported
from plugin.core.jobs import MapFloodsRequest
from plugin.core.model_spec import ModelSpec
from plugin.core.progress import ProgressSpan
from plugin.core.tensor.codec import (
    PayloadEncoder,
    choose_answer,
    choose_encoding,
    decode_logits,
    logits_float32,
    npy_b64,
)
from plugin.core.tensor.inputs import Normaliser
from plugin.core.vllm_api import VllmClient
from scripts.scenes import generate_scene
from tests.fixtures.fake_http import FakeHttpServer, Reply, vllm_error
from tests.fixtures.fake_vllm import FakeVllm, binary_answer, water_logits
from tests.fixtures.jobs import run_tensor
from tests.fixtures.progress import Recorder

MEANS = (0.14, 0.138, 0.124, 0.309, 0.204, 0.119)
STDS = (0.074, 0.074, 0.087, 0.118, 0.098, 0.077)
SIX = [0, 1, 2, 3, 4, 5]


def make_spec(tile=128, **kw):
    base = dict(channels=6, tile_height=tile, tile_width=tile, num_classes=2, means=MEANS, stds=STDS)
    base.update(kw)
    return ModelSpec(**base)


def rule_mask(path, bands=(1, 3), scale=1e-4, offset=0.0):
    """The rule applied to the whole raster (what a perfect stitch gives), 0/1."""
    with rasterio.open(path) as src:
        g = src.read(bands[0] + 1).astype(np.float64) * scale + offset
        n = src.read(bands[1] + 1).astype(np.float64) * scale + offset
    return water_logits(g, n).argmax(0).astype(np.uint8)


def request(tmp_path, inp, peer, **kw):
    return MapFloodsRequest(input_path=str(inp), output_path=str(tmp_path / "out.tif"), server_url=peer.url,
                            model=peer.model, **kw)


@pytest.fixture
def peer():
    with FakeVllm("tensor", MEANS, STDS, expect_dtype="float16") as p:
        yield p


@pytest.fixture
def client(peer):
    with VllmClient(peer.url) as c:
        yield c


def leftovers(folder):
    return [f for f in os.listdir(folder) if f.startswith(".") or ".part" in f or ".tmp" in f]


# ----------------------------------------------------------------------------------- payload pieces
def test_npy_payload_roundtrip_and_no_concatenation_copy():
    x = np.random.default_rng(0).normal(size=(6, 64, 48)).astype(np.float16)
    raw = base64.b64decode(npy_b64(x))
    assert (np.load(io.BytesIO(raw)) == x).all()
    header_len = raw.index(b"\n") + 1
    assert header_len % 192 == 0  # base64 of header and of data can be joined


def test_payload_is_the_vllm_tensor_request():
    spec = make_spec(location_name="location_coords")
    enc = PayloadEncoder("my/model", spec)
    pix = np.zeros((6, 128, 128), np.float16)
    loc = np.array([[15.0, 45.0]], np.float16)
    doc = json.loads(enc.encode(pix, loc))
    assert doc["model"] == "my/model" and doc["encoding_format"] == "base64"
    content = doc["messages"][0]["content"][0]
    assert doc["messages"][0]["role"] == "user" and content["type"] == "image_embeds"
    got = np.load(io.BytesIO(base64.b64decode(content["image_embeds"]["location_coords"])))
    assert got.dtype == np.float16 and got.tolist() == [[15.0, 45.0]]
    with pytest.raises(TypeError, match="float32"):
        enc.encode(pix.astype(np.float32), loc)  # never another dtype than the server runs
    with pytest.raises(ValueError, match="location"):
        enc.encode(pix, None)


def test_an_encoder_takes_pybase64_once_it_imports_and_sends_the_same_bytes(monkeypatch):
    """Without pybase64 the standard library encodes; an Install in the same session counts from the next run."""
    import sys

    from plugin.core.tensor import codec

    spec = make_spec(location_name="location_coords")
    pix = np.random.default_rng(3).standard_normal((6, 128, 128)).astype(np.float16)
    loc = np.array([[15.0, 45.0]], np.float16)
    fast = PayloadEncoder("m", spec)
    assert fast.base64 == "pybase64"  # the test environment has it (requirements/qgis.txt)
    monkeypatch.setattr(codec, "_fast_b64", None)
    monkeypatch.setitem(sys.modules, "pybase64", None)  # as if not installed: `import pybase64` fails
    plain = PayloadEncoder("m", spec)
    assert plain.base64 == "stdlib" and codec.base64_backend() == "stdlib"
    stdlib_body = bytes(plain.body(pix, loc))
    monkeypatch.delitem(sys.modules, "pybase64")  # installed meanwhile
    again = PayloadEncoder("m", spec)
    assert again.base64 == "pybase64" and codec.base64_backend() == "pybase64"
    assert bytes(again.body(pix, loc)) == stdlib_body == bytes(fast.body(pix, loc))


def test_decode_logits_checks_the_answer():
    logits = np.arange(2 * 4 * 3, dtype=np.float32)
    body = json.dumps({"data": [{"data": base64.b64encode(logits.tobytes()).decode()}]}).encode()
    out = decode_logits(body, 2, 4, 3)
    assert out.shape == (2, 4, 3) and out[1, 3, 2] == 23
    with pytest.raises(ServerError, match="bytes of logits"):
        decode_logits(body, 2, 4, 4)
    with pytest.raises(ServerError, match="tensor-mode"):
        decode_logits(b"<html>", 2, 4, 3)
    with pytest.raises(ServerError, match="base64"):
        decode_logits(json.dumps({"data": [{"data": [[0.0]]}]}).encode(), 2, 4, 3)


def test_binary_answers_are_read_in_place_and_checked():
    logits = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    for dtype, endian in (("float32", "little"), ("float16", "little"), ("float32", "big")):
        reply = binary_answer(logits, dtype, endian, True)
        data, headers = reply.body, {**reply.headers, "Content-Type": reply.content_type}
        out = decode_logits(data, 2, 4, 3, headers["Content-Type"], headers["metadata"], dtype)
        assert out.dtype.itemsize == (2 if dtype == "float16" else 4)
        assert (out.astype(np.float32) == logits).all()
    reply = binary_answer(logits, "float16", "little", False)  # "bytes_only": no metadata
    data, headers = reply.body, {**reply.headers, "Content-Type": reply.content_type}
    assert "metadata" not in headers
    assert (decode_logits(data, 2, 4, 3, "application/octet-stream", "", "float16") == logits).all()
    reply = binary_answer(logits, "float32", "little", True)
    data, headers = reply.body, {**reply.headers, "Content-Type": reply.content_type}
    with pytest.raises(ServerError, match=r"shape \[2, 4, 3\].*needs \[2, 4, 4\].*config.json"):
        decode_logits(data, 2, 4, 4, headers["Content-Type"], headers["metadata"])
    with pytest.raises(ServerError, match="bytes of logits"):
        decode_logits(data[:-4], 2, 4, 3, "application/octet-stream", "", "float32")
    with pytest.raises(ServerError, match="unreadable metadata"):
        decode_logits(data, 2, 4, 3, "application/octet-stream", "{not json")
    meta = json.loads(headers["metadata"])
    meta["data"][0]["embed_dtype"] = "fp8_e4m3"
    with pytest.raises(ServerError, match="fp8_e4m3 logits"):
        decode_logits(data, 2, 4, 3, "application/octet-stream", json.dumps(meta))


def test_float16_logits_become_float32_exactly_nan_and_inf_included():
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).reshape(2, 128, 256)
    out = logits_float32(every)
    assert out.dtype == np.float32 and out.shape == (2, 128, 256)
    np.testing.assert_array_equal(out, every.astype(np.float32))  # NaN where NaN, +-inf where +-inf
    assert np.isnan(out).sum() == np.isnan(every).sum() > 0 and np.isinf(out).sum() == 2
    swapped = every.astype(">f2")  # an answer in the other byte order takes numpy's cast
    np.testing.assert_array_equal(logits_float32(swapped), out)
    same = np.ones((2, 4, 3), np.float32)
    assert logits_float32(same) is same


def test_the_body_in_parts_is_the_encoded_body():
    enc = PayloadEncoder("m", make_spec(tile=16, location_name="location_coords"))
    pix = np.arange(6 * 16 * 16, dtype=np.float16).reshape(6, 16, 16)
    loc = np.array([[12.5, 41.9]], np.float32)
    body = enc.body(pix, loc)
    assert bytes(body) == enc.encode(pix, loc)
    doc = json.loads(bytes(body))
    got = np.load(io.BytesIO(base64.b64decode(doc["messages"][0]["content"][0]["image_embeds"]["pixel_values"])))
    np.testing.assert_array_equal(got, pix)
    assert len(body) == len(bytes(body)) and all(body.parts)
    assert b"".join(body) == bytes(body) == b"".join(body)  # iterated again, the same bytes


def test_payload_asks_for_binary_logits_in_the_model_dtype():
    doc = json.loads(PayloadEncoder("m", make_spec(), answer="bytes").encode(np.zeros((6, 128, 128), np.float16)))
    assert (doc["encoding_format"], doc["embed_dtype"], doc["endianness"]) == ("bytes", "float16", "little")
    doc = json.loads(PayloadEncoder("m", make_spec(dtype="float32"), answer="bytes").encode(
        np.zeros((6, 128, 128), np.float32)))
    assert doc["embed_dtype"] == "float32"
    doc = json.loads(PayloadEncoder("m", make_spec()).encode(np.zeros((6, 128, 128), np.float16)))
    assert doc["encoding_format"] == "base64" and "embed_dtype" not in doc  # what every vLLM >= 0.19 takes


@pytest.mark.parametrize("version,answer", [("0.32.0", "bytes"), ("0.11.0", "base64"), ("", "base64")])
def test_logits_format_follows_the_server_version(tmp_path, version, answer):
    assert choose_answer(version) == answer
    inp = tmp_path / "in.tif"
    generate_scene(inp, seed=7, width=200, height=150)
    peer = FakeVllm("tensor", MEANS, STDS, version=version or "0.32.0", expect_dtype="float16")
    with peer as p, VllmClient(p.url) as c:
        stats = run_tensor(request(tmp_path, inp, p), c, make_spec(), SIX, encoding="npy",
                           answer=None if version else "base64")
        assert stats.answer == answer and set(p.answers) == {answer}
        with rasterio.open(tmp_path / "out.tif") as out:
            got = out.read(1)
    assert (got == rule_mask(inp)).mean() >= 0.9999


def test_encoding_follows_the_server_version():
    from plugin.core.versions import version_tuple

    assert version_tuple("0.32.0+cpu") == (0, 32, 0) and version_tuple("v0.11.1rc2") == (0, 11, 1)
    assert version_tuple("") == () and version_tuple("dev") == ()
    assert choose_encoding("0.32.0+cpu") == "npy"
    assert choose_encoding("0.19.0") == "npy"
    assert choose_encoding("0.18.2") == "torch"
    assert choose_encoding("") == "npy"


# ------------------------------------------------------------------------------------- whole runs
def test_a_run_chooses_how_tables_are_gathered_before_its_workers_start(tmp_path, peer, client, monkeypatch):
    from plugin.core.tensor import lookup as lookup_module

    threads = []

    def choose(*args, **kwargs):
        threads.append(threading.current_thread())
        return lookup_module.CANDIDATES[-1]

    monkeypatch.setattr(lookup_module, "_gather", None)
    monkeypatch.setattr(lookup_module, "fastest", choose)
    inp = tmp_path / "in.tif"
    generate_scene(inp, seed=5, width=300, height=260)
    run_tensor(request(tmp_path, inp, peer), client, make_spec(), SIX)
    assert threads == [threading.current_thread()]  # once, in the run's own thread, not in a tile's
    with rasterio.open(tmp_path / "out.tif") as out:
        assert (out.read(1) == rule_mask(inp)).mean() >= 0.9999


@pytest.mark.parametrize("width,height,crs", [
    (700, 555, "EPSG:32633"),  # not a multiple of the tile
    (100, 80, "EPSG:32633"),  # smaller than one tile
    (300, 260, "EPSG:4326"),  # geographic
])
def test_map_equals_the_rule_on_the_exact_input_grid(tmp_path, peer, client, width, height, crs):
    inp = tmp_path / "in.tif"
    generate_scene(inp, seed=5, width=width, height=height, crs=crs)
    prog = Recorder()
    stats = run_tensor(request(tmp_path, inp, peer), client, make_spec(), SIX, prog)
    with rasterio.open(inp) as src, rasterio.open(tmp_path / "out.tif") as out:
        assert (out.width, out.height, out.crs, out.transform) == (src.width, src.height, src.crs, src.transform)
        assert out.dtypes[0] == "uint8" and out.nodata == 255
        got = out.read(1)
    expected = rule_mask(inp)
    assert (got == expected).mean() >= 0.9999  # fp16 rounding may flip a pixel right on the rule's boundary
    assert stats.valid_pixels == width * height
    assert stats.water_pixels == int((got == 1).sum())
    assert stats.water_area_km2 > 0
    assert set(peer.dtypes) == {"float16"} and all(s == (6, 128, 128) for s in peer.shapes)
    assert stats.requests == stats.tiles == len(peer.jobs)
    assert prog.percent[-1] == 100.0 and prog.percent == sorted(prog.percent)
    assert any("ETA" in m for m in prog.infos)
    assert leftovers(tmp_path) == []


def test_overlap_and_no_overlap_give_the_same_map_for_a_context_free_model(tmp_path, peer, client):
    inp = tmp_path / "in.tif"
    generate_scene(inp, seed=7, width=400, height=333)
    run_tensor(request(tmp_path, inp, peer, overlap=0.0), client, make_spec(), SIX)
    with rasterio.open(tmp_path / "out.tif") as o:
        a = o.read(1)
    n0 = len(peer.jobs)
    run_tensor(request(tmp_path, inp, peer, overlap=0.25), client, make_spec(), SIX)
    with rasterio.open(tmp_path / "out.tif") as o:
        b = o.read(1)
    assert n0 == 4 * 3 and len(peer.jobs) - n0 > n0  # overlap means more tiles
    assert (a == b).mean() >= 0.9999


def test_overlap_blending_hides_tile_edge_errors(tmp_path):
    """A model that is wrong within 6 px of every tile edge: seams without overlap, none with it."""
    inp = tmp_path / "in.tif"
    generate_scene(inp, seed=11, width=500, height=500)
    expected = rule_mask(inp)
    biased = FakeVllm("tensor", MEANS, STDS, edge_bias=10.0, edge_px=6, expect_dtype="float16")
    with biased as p, VllmClient(p.url) as c:
        run_tensor(request(tmp_path, inp, p, overlap=0.0), c, make_spec(), SIX)
        with rasterio.open(tmp_path / "out.tif") as o:
            seams = o.read(1)
        run_tensor(request(tmp_path, inp, p, overlap=0.25), c, make_spec(), SIX)
        with rasterio.open(tmp_path / "out.tif") as o:
            blended = o.read(1)
    interior = np.zeros_like(expected, bool)
    interior[6:-6, 6:-6] = True  # raster borders are tile edges in both runs
    assert (seams != expected)[interior].mean() > 0.05
    assert (blended != expected)[interior].mean() < 0.0005


def test_nodata_is_255_and_does_not_disturb_neighbours(tmp_path, peer, client):
    inp = tmp_path / "in.tif"
    truth = generate_scene(inp, seed=2, width=300, height=200, nodata=0, nodata_border=13)
    stats = run_tensor(request(tmp_path, inp, peer, probability_path=str(tmp_path / "p.tif")), client,
                       make_spec(), SIX)
    with rasterio.open(tmp_path / "out.tif") as o, rasterio.open(tmp_path / "p.tif") as pr:
        got, prob = o.read(1), pr.read(1)
        assert pr.dtypes[0] == "float32" and pr.nodata == -1.0
    assert ((got == 255) == (truth == 255)).all()
    valid = truth != 255
    assert (got[valid] == rule_mask(inp)[valid]).mean() >= 0.9999
    assert stats.valid_pixels == int(valid.sum())
    assert (prob[~valid] == -1).all()
    assert ((prob[valid] > 0.5) == (got[valid] == 1)).mean() >= 0.9999


def test_all_nodata_tiles_send_no_request(tmp_path, peer, client):
    inp = tmp_path / "in.tif"
    generate_scene(inp, seed=2, width=400, height=300, nodata=0, nodata_border=130)  # only the middle is data
    stats = run_tensor(request(tmp_path, inp, peer, overlap=0.0), client, make_spec(), SIX)
    assert stats.tiles == 12 and len(peer.jobs) < 12


def test_zero_fill_without_declared_nodata_is_nodata_and_sends_no_request(tmp_path, peer, client):
    """Band files of a partial Sentinel-2 tile: 0 beyond the swath and no nodata value declared."""
    inp = tmp_path / "in.tif"
    truth = generate_scene(inp, seed=2, width=400, height=300, nodata=0, nodata_border=130)
    with rasterio.open(inp, "r+") as dst:
        dst.nodata = None
    with rasterio.open(inp) as src:
        assert src.nodata is None
    prog = Recorder()
    stats = run_tensor(request(tmp_path, inp, peer, overlap=0.0), client, make_spec(), SIX, prog)
    with rasterio.open(tmp_path / "out.tif") as o:
        got = o.read(1)
    assert ((got == 255) == (truth == 255)).all()
    assert stats.valid_pixels == int((truth != 255).sum())
    assert stats.tiles == 12 and stats.requests == len(peer.jobs) < 12
    # the fill's tiles leave the count: progress ends at the tiles sent, 100 %
    tiles = [m.split(",")[0] for m in prog.infos if m.startswith("Tile ")]
    assert tiles[-1] == f"Tile {stats.requests}/{stats.requests}", tiles
    assert prog.percent[-1] == pytest.approx(100.0)


def test_an_alpha_band_beyond_the_fourth_is_nodata(tmp_path, peer, client):
    from rasterio.enums import ColorInterp

    scene = tmp_path / "scene.tif"
    truth = generate_scene(scene, seed=2, width=300, height=200)
    alpha = np.full((200, 300), 255, np.uint16)
    alpha[:, :100] = 0
    inp = tmp_path / "alpha.tif"
    with rasterio.open(scene) as src:
        profile = src.profile
        profile.update(count=7)
        with rasterio.open(inp, "w", **profile) as dst:
            dst.colorinterp = [ColorInterp.gray] + [ColorInterp.undefined] * 5 + [ColorInterp.alpha]
            dst.write(np.concatenate([src.read(), alpha[None]]))
    stats = run_tensor(request(tmp_path, inp, peer), client, make_spec(), SIX)
    with rasterio.open(tmp_path / "out.tif") as o:
        got = o.read(1)
    assert (got[:, :100] == 255).all() and (got[:, 100:] != 255).all()
    assert (got[:, 100:] == rule_mask(scene)[:, 100:]).mean() >= 0.9999
    assert stats.valid_pixels == 200 * 200 and (truth != 255).all()


def test_dtype_float32_model_gets_float32(tmp_path):
    inp = tmp_path / "in.tif"
    generate_scene(inp, seed=1, width=200, height=150)
    with FakeVllm("tensor", MEANS, STDS, expect_dtype="float32") as p, VllmClient(p.url) as c:
        run_tensor(request(tmp_path, inp, p), c, make_spec(dtype="float32"), SIX)
        assert set(p.dtypes) == {"float32"} and not p.dead


def test_a_float16_server_never_sees_float32_even_with_a_wrong_scale(tmp_path, peer, client):
    """Scale 1 on x10000 data gives normalised values far beyond fp16's range: clipped, never inf/NaN."""
    inp = tmp_path / "in.tif"
    generate_scene(inp, seed=1, width=150, height=150)
    run_tensor(request(tmp_path, inp, peer, scale=1.0), client, make_spec(), SIX)
    assert set(peer.dtypes) == {"float16"} and not peer.dead


def test_scale_autodetect_and_explicit_offset(tmp_path, peer, client):
    f32 = tmp_path / "f32.tif"
    generate_scene(f32, seed=4, width=200, height=200, dtype="float32")
    s = run_tensor(request(tmp_path, f32, peer), client, make_spec(), SIX)
    assert s.scale == 1.0
    with rasterio.open(tmp_path / "out.tif") as o:
        assert (o.read(1) == rule_mask(f32, scale=1.0)).mean() >= 0.9999
    # S2 L2A processing baseline 04.00: DN = reflectance * 10000 + 1000
    off = tmp_path / "off.tif"
    generate_scene(off, seed=4, width=200, height=200, offset=1000)
    s = run_tensor(request(tmp_path, off, peer, scale=1e-4, offset=-0.1), client, make_spec(), SIX)
    assert (s.scale, s.offset) == (1e-4, -0.1)
    with rasterio.open(tmp_path / "out.tif") as o:
        assert (o.read(1) == rule_mask(off, offset=-0.1)).mean() >= 0.9999


def test_scale_windows_each_decode_one_block_of_the_file(tmp_path):
    """The scale is estimated from 9 windows of 256 px; each starts on a 512-px block of the file (inside an
    area too, whose offsets are not block multiples), so none makes GDAL decode four compressed blocks."""
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from plugin.core.area_of_interest import Area
    from plugin.core.tensor.reader import detect_scale

    path = tmp_path / "tiled.tif"
    data = np.full((6, 2048, 2048), 2500, np.float32)  # floats: all 9 windows are read (values may be negative)
    with rasterio.open(path, "w", driver="GTiff", width=2048, height=2048, count=6, dtype="float32", tiled=True,
                       blockxsize=512, blockysize=512, compress="deflate",
                       transform=from_origin(0, 0, 10, 10)) as dst:
        dst.write(data)

    class Spy:
        def __init__(self, ds):
            self.ds, self.windows = ds, []

        def __getattr__(self, name):
            return getattr(self.ds, name)

        def read(self, bands, window):
            self.windows.append(window)
            return self.ds.read(bands, window=window)

    def blocks(w):
        cols = {c // 512 for c in (w.col_off, w.col_off + w.width - 1)}
        rows = {r // 512 for r in (w.row_off, w.row_off + w.height - 1)}
        return len(cols) * len(rows)

    area = Area(Window(100, 300, 1800, 1700), from_origin(1000, -3000, 10, 10), False)
    with rasterio.open(path) as ds:
        for where in (None, area):
            spy = Spy(ds)
            assert detect_scale(spy, [1, 2, 3, 4, 5, 6], where) == 1e-4
            assert len(spy.windows) == 9 and all(w.width == w.height == 256 for w in spy.windows)
            assert [blocks(w) for w in spy.windows] == [1] * 9, spy.windows
            if where is not None:  # still inside the area
                assert all(w.col_off >= 100 and w.col_off + 256 <= 1900 for w in spy.windows)
                assert all(w.row_off >= 300 and w.row_off + 256 <= 2000 for w in spy.windows)


def _window_reads(ds, bands, area=None):
    """detect_scale's result on `ds`, and the windows it read."""
    from plugin.core.tensor.reader import detect_scale

    reads = []

    class Spy:
        def __getattr__(self, name):
            return getattr(ds, name)

        def read(self, bands, window):
            reads.append(window)
            return ds.read(bands, window=window)

    return detect_scale(Spy(), bands, area), reads


def test_scale_windows_of_a_striped_file_spread_over_its_width(tmp_path):
    """A striped GeoTIFF (GDAL's default layout) decodes a whole row wherever a window lies in it: the windows keep
    their places across the width instead of all moving to its left edge."""
    from rasterio.transform import from_origin

    path = tmp_path / "striped.tif"
    with rasterio.open(path, "w", driver="GTiff", width=1024, height=1024, count=1, dtype="float32",
                       transform=from_origin(0, 0, 10, 10)) as dst:
        dst.write(np.full((1, 1024, 1024), 0.2, np.float32))
    with rasterio.open(path) as ds:
        assert ds.block_shapes[0][1] == 1024
        scale, windows = _window_reads(ds, [1])
    assert scale == 1.0
    reads = [(int(w.col_off), int(w.row_off)) for w in windows]
    assert sorted({x for x, _ in reads}) == [0, 384, 768] and len(set(reads)) == 9, reads


def test_scale_counts_only_the_pixels_with_data_in_every_band(tmp_path):
    """A pixel without data in one band is left out of the mean with all its bands: here those pixels hold
    20000 in the other bands, which would make the mean of reflectances 0-1 look like digital numbers."""
    from rasterio.transform import from_origin

    values = np.full((3, 1024, 1024), 0.25, np.float32)
    no_data = np.zeros(1024, bool)
    no_data[::4] = True  # every fourth column, in every window the scale reads
    values[:, :, no_data] = 20000.0
    values[0, :, no_data] = -9999.0  # band 1's nodata
    values[1, 900:, :] = np.nan  # and NaN in band 2 below row 900
    path = tmp_path / "partial.tif"
    with rasterio.open(path, "w", driver="GTiff", width=1024, height=1024, count=3, dtype="float32",
                       transform=from_origin(0, 0, 10, 10), nodata=-9999) as dst:
        dst.write(values)
    with rasterio.open(path) as ds:
        scale, windows = _window_reads(ds, [1, 2, 3])
    assert len(windows) == 9
    assert scale == 1.0


def test_digital_numbers_settle_the_scale_in_the_first_window_and_never_change_it(tmp_path):
    """Unsigned values cannot pull the mean down, so reading stops once the windows left could not bring it to 1:
    one window for digital numbers in the thousands. The scale is the one all 9 windows give (the same values
    as signed integers, which are read whole), whatever the values: near a mean of 1, or large only in the last
    window."""
    from rasterio.transform import from_origin

    rng = np.random.default_rng(11)

    def draw(p):  # values 0-3 with these probabilities
        return rng.choice(4, (3, 1024, 1024), p=p).astype(np.uint16)

    late = np.zeros((3, 1024, 1024), np.uint16)
    late[:, -256:, -256:] = 3000  # only the last window is not 0: the mean of the 9 is 333
    cases = [  # name, values, scale, windows read as unsigned (None: not fixed)
        ("digital numbers", np.full((3, 1024, 1024), 2500, np.uint16), 1e-4, 1),
        ("mean 0.9", draw((0.5, 0.2, 0.2, 0.1)), 1.0, 9),
        ("mean 1.1", draw((0.4, 0.25, 0.2, 0.15)), 1e-4, None),
        ("mean 1.0", draw((0.3, 0.4, 0.3, 0.0)), None, None),
        ("large in the last window only", late, 1e-4, 9),
    ]
    for name, values, scale, unsigned_reads in cases:
        got = {}
        for dtype in ("uint16", "int32"):
            path = tmp_path / f"{dtype}.tif"
            with rasterio.open(path, "w", driver="GTiff", width=1024, height=1024, count=3, dtype=dtype,
                               transform=from_origin(0, 0, 10, 10), nodata=60000,  # 0 is a value
                               tiled=True, blockxsize=256, blockysize=256) as dst:
                dst.write(values.astype(dtype))
            with rasterio.open(path) as ds:
                scale_got, windows = _window_reads(ds, [1, 2, 3])
            got[dtype] = scale_got, len(windows)
        assert got["int32"][1] == 9, name
        assert got["uint16"][0] == got["int32"][0], f"{name}: the early stop changed the scale"
        if scale is not None:
            assert got["uint16"][0] == scale, name
        if unsigned_reads is not None:
            assert got["uint16"][1] == unsigned_reads, name


def test_reads_decode_on_every_core_unless_the_user_set_gdal_threads(tmp_path, peer, client, monkeypatch):
    """GDAL decodes the blocks of a read on all cores during a run, and only then; a GDAL_NUM_THREADS the
    user set (environment or QGIS's GDAL options) is kept."""
    from rasterio._env import get_gdal_config

    import plugin.core.tensor.runner as runner

    seen = []
    real = runner.read_tile

    def spy(*args, **kwargs):
        seen.append(str(get_gdal_config("GDAL_NUM_THREADS")))
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "read_tile", spy)
    monkeypatch.delenv("GDAL_NUM_THREADS", raising=False)
    inp = tmp_path / "in.tif"
    generate_scene(inp, seed=2, width=200, height=150)
    run_tensor(request(tmp_path, inp, peer), client, make_spec(), SIX)
    assert seen and set(seen) == {"ALL_CPUS"}
    assert get_gdal_config("GDAL_NUM_THREADS") is None
    for mine in ("1", "0"):
        seen.clear()
        with rasterio.Env(GDAL_NUM_THREADS=mine):
            run_tensor(request(tmp_path, inp, peer), client, make_spec(), SIX)
        assert seen and set(seen) == {mine}


def test_band_selection_from_a_13_band_file(tmp_path, peer, client):
    inp = tmp_path / "s2.tif"
    generate_scene(inp, seed=6, width=200, height=180, bands="s2l1c")
    sel = [1, 2, 3, 8, 11, 12]
    run_tensor(request(tmp_path, inp, peer), client, make_spec(), sel)
    with rasterio.open(tmp_path / "out.tif") as o:
        assert (o.read(1) == rule_mask(inp, bands=(2, 8))).mean() >= 0.9999
    with pytest.raises(InputError, match="6 bands"):
        run_tensor(request(tmp_path, inp, peer), client, make_spec(), [1, 2, 3])
    with pytest.raises(InputError, match="do not exist"):
        run_tensor(request(tmp_path, inp, peer), client, make_spec(), [1, 2, 3, 8, 11, 13])


def test_location_coords_are_each_tile_centre(tmp_path):
    inp = tmp_path / "in.tif"
    generate_scene(inp, seed=3, width=256, height=256, centre_lonlat=(12.0, 41.0))
    spec = make_spec(location_name="location_coords")
    with FakeVllm("tensor", MEANS, STDS, expect_dtype="float16") as p, VllmClient(p.url) as c:
        run_tensor(request(tmp_path, inp, p, overlap=0.0), c, spec, SIX)
        locs = sorted(tuple(loc.ravel()) for loc in p.locations)
    with rasterio.open(inp) as src:
        xs, ys = src.xy([64, 64, 192, 192], [64, 192, 64, 192], offset="ul")
        lons, lats = warp_transform(src.crs, "EPSG:4326", xs, ys)
    expected = sorted(zip(lons, lats))
    assert len(locs) == 4
    for (lon, lat), (elon, elat) in zip(locs, expected):
        assert abs(lon - elon) < 0.02 and abs(lat - elat) < 0.02  # fp16 at 12-41 degrees: ~0.01-0.03


def test_location_model_needs_a_crs(tmp_path, peer, client):
    inp = tmp_path / "nocrs.tif"
    with rasterio.open(inp, "w", driver="GTiff", width=64, height=64, count=6, dtype="uint16") as dst:
        dst.write(np.full((6, 64, 64), 1000, np.uint16))
    with pytest.raises(InputError, match="no CRS"):
        run_tensor(request(tmp_path, inp, peer), client, make_spec(location_name="location_coords"), SIX)
    assert len(peer.jobs) == 0


def test_concurrency_is_bounded(tmp_path):
    inp = tmp_path / "in.tif"
    generate_scene(inp, seed=8, width=500, height=500)
    with FakeVllm("tensor", MEANS, STDS, delay=0.15, expect_dtype="float16") as p, VllmClient(p.url) as c:
        run_tensor(request(tmp_path, inp, p, overlap=0.0, concurrency=3), c, make_spec(), SIX)
        assert len(p.jobs) == 16
        assert p.max_in_flight == 3


def test_the_next_tiles_are_ready_while_the_first_wait_on_the_server(tmp_path, monkeypatch):
    """A slot freed by an answer is refilled by a tile already read and encoded: while `concurrency` requests
    wait on the server, as many more tiles are made ready. The wire still carries `concurrency` at most."""
    from plugin.core.tensor import codec

    inp = tmp_path / "in.tif"
    generate_scene(inp, seed=8, width=500, height=500)
    answered = []  # for each tile encoded, how many answers the server had sent by then (the version first)
    body = codec.PayloadEncoder.body

    def counting(self, *args):
        answered.append(p.completed)
        return body(self, *args)

    monkeypatch.setattr(codec.PayloadEncoder, "body", counting)
    with FakeVllm("tensor", MEANS, STDS, delay=0.5, expect_dtype="float16") as p, VllmClient(p.url) as c:
        run_tensor(request(tmp_path, inp, p, overlap=0.0, concurrency=3), c, make_spec(), SIX)
        assert len(p.jobs) == 16 and p.max_in_flight == 3
    assert answered[:6] == [answered[0]] * 6, answered  # 3 on the wire, 3 more ready, no tile answered yet
    with rasterio.open(tmp_path / "out.tif") as ds:  # tiles may come back in any order: the map is whole
        assert (ds.read(1) == rule_mask(inp)).mean() >= 0.9999


def test_the_tiles_read_ahead_wait_until_the_first_requests_are_out(tmp_path, monkeypatch):
    """The first `concurrency` tiles are read and sent before any tile is read ahead: the first requests do not
    share the cores with the reads ahead."""
    import plugin.core.tensor.runner as runner

    inp = tmp_path / "in.tif"
    generate_scene(inp, seed=8, width=500, height=500)
    events = []
    read, send = runner.read_tile, runner._Tiles._send

    def reading(*args, **kwargs):
        events.append("read")
        return read(*args, **kwargs)

    def sending(self, *args):
        events.append("post")
        return send(self, *args)

    monkeypatch.setattr(runner, "read_tile", reading)
    monkeypatch.setattr(runner._Tiles, "_send", sending)
    with FakeVllm("tensor", MEANS, STDS, delay=0.3, expect_dtype="float16") as p, VllmClient(p.url) as c:
        run_tensor(request(tmp_path, inp, p, overlap=0.0, concurrency=3), c, make_spec(), SIX)
        assert len(p.jobs) == 16 and p.max_in_flight == 3
    reads = [i for i, e in enumerate(events) if e == "read"]
    posts = [i for i, e in enumerate(events) if e == "post"]
    assert len(reads) == len(posts) == 16
    assert reads[3] > posts[2], events  # the fourth tile is read once the third request is out


def test_the_workers_read_the_raster_the_run_opened(tmp_path, peer, client, monkeypatch):
    """The input is opened in the caller's thread only: a raster with a CRS opened in a fresh worker thread costs
    it milliseconds of CPU before its first tile (GDAL's coordinate system database, set up per thread)."""
    real = rasterio.open
    opened = []

    def spy(path, *args, **kwargs):
        if str(path) == str(inp):
            opened.append(threading.current_thread())
        return real(path, *args, **kwargs)

    monkeypatch.setattr(rasterio, "open", spy)
    inp = tmp_path / "in.tif"
    generate_scene(inp, seed=2, width=300, height=260)
    run_tensor(request(tmp_path, inp, peer), client, make_spec(), SIX)
    assert opened and set(opened) == {threading.current_thread()}
    with real(tmp_path / "out.tif") as ds:
        assert (ds.read(1) == rule_mask(inp)).mean() >= 0.9999


def test_cancel_stops_within_a_second_and_leaves_nothing(tmp_path):
    inp = tmp_path / "in.tif"
    generate_scene(inp, seed=8, width=500, height=500)
    out = tmp_path / "out.tif"
    with FakeVllm("tensor", MEANS, STDS, delay=20.0, expect_dtype="float16") as p, VllmClient(p.url) as c:
        prog = Recorder(lambda r: len(p.jobs) >= 2)
        t0 = time.monotonic()
        with pytest.raises(Cancelled):
            run_tensor(request(tmp_path, inp, p, concurrency=2), c, make_spec(), SIX, prog)
        returned = time.monotonic()
        assert prog.cancelled_at is not None
        assert returned - prog.cancelled_at < 1.0
        assert returned - t0 < 5.0
        deadline = time.monotonic() + 2.0  # the peer notices both hang-ups: the requests were dropped
        while len(p.disconnects) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(p.disconnects) == 2 and len(p.jobs) == 2  # both dropped, none answered
        assert len(p.jobs) == 2  # nothing sent after the cancel
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_server_error_midway_leaves_the_old_output_untouched(tmp_path):
    inp = tmp_path / "in.tif"
    generate_scene(inp, seed=8, width=500, height=500)
    out = tmp_path / "out.tif"
    out.write_bytes(b"previous map")
    with FakeVllm("tensor", MEANS, STDS, expect_dtype="float16") as p, VllmClient(p.url, retries=0) as c:
        p.fault = lambda n, body: Reply(500, vllm_error("injected failure", 500)) if n >= 5 else None
        with pytest.raises(ServerError, match="injected failure"):
            run_tensor(request(tmp_path, inp, p), c, make_spec(), SIX)
    assert out.read_bytes() == b"previous map"
    assert leftovers(tmp_path) == []


def test_plugin_server_answers_tensor_requests_with_an_empty_500(tmp_path):
    inp = tmp_path / "in.tif"
    generate_scene(inp, seed=8, width=100, height=100)
    with FakeHttpServer() as srv, VllmClient(srv.url, retries=0) as c:
        srv.on("GET", "/version", Reply(200, {"version": "0.32.0"}))
        srv.on("POST", "/pooling", Reply(500, vllm_error("", 500, "InternalServerError")))
        req = MapFloodsRequest(input_path=str(inp), output_path=str(tmp_path / "o.tif"), server_url=srv.url,
                               model="m")
        with pytest.raises(TransportUnsupported, match="IOProcessor"):
            run_tensor(req, c, make_spec(), SIX)
    assert leftovers(tmp_path) == []


def test_wrong_logits_size_is_a_server_error(tmp_path, peer, client):
    inp = tmp_path / "in.tif"
    generate_scene(inp, seed=8, width=100, height=100)
    peer.num_classes = 3  # answers 3 x H x W where the spec says 2
    with pytest.raises(ServerError, match="model spec"):
        run_tensor(request(tmp_path, inp, peer), client, make_spec(), SIX)


def test_old_server_gets_torch_save_tensors_without_torch(tmp_path):
    inp = tmp_path / "in.tif"
    generate_scene(inp, seed=8, width=100, height=100)
    with FakeVllm("tensor", MEANS, STDS, version="0.18.1", expect_dtype="float16") as p, VllmClient(p.url) as c:
        stats = run_tensor(request(tmp_path, inp, p), c, make_spec(), SIX)
        assert stats.encoding == "torch" and len(p.jobs) > 0 and set(p.dtypes) == {"float16"} and not p.dead


def test_bfloat16_server_gets_bfloat16_tensors(tmp_path):
    inp = tmp_path / "in.tif"
    generate_scene(inp, seed=8, width=100, height=100)
    with FakeVllm("tensor", MEANS, STDS, expect_dtype="bfloat16") as p, VllmClient(p.url) as c:
        stats = run_tensor(request(tmp_path, inp, p), c, make_spec(dtype="bfloat16"), SIX)
        assert stats.encoding == "torch" and set(p.dtypes) == {"bfloat16"} and not p.dead
        # the rule's answer through bfloat16 equals the float32 rule on all but the closest calls
        with rasterio.open(stats.output_path) as ds:
            got = ds.read(1)
    with FakeVllm("tensor", MEANS, STDS, expect_dtype="float32") as p, VllmClient(p.url) as c:
        out32 = tmp_path / "f32.tif"
        run_tensor(MapFloodsRequest(input_path=str(inp), output_path=str(out32), server_url=p.url, model=p.model),
                   c, make_spec(dtype="float32"), SIX)
        with rasterio.open(out32) as ds:
            ref = ds.read(1)
    assert (got == ref).mean() > 0.99


def test_a_wrong_dtype_is_reported_as_the_server_engine_dying(tmp_path):
    inp = tmp_path / "in.tif"
    generate_scene(inp, seed=8, width=100, height=100)
    with FakeVllm("tensor", MEANS, STDS, expect_dtype="float32") as p, VllmClient(p.url, retries=0) as c:
        with pytest.raises(EngineDied) as err:
            run_tensor(request(tmp_path, inp, p), c, make_spec(tile=64, dtype="float16"), SIX)
    assert "The engine of the vLLM server" in err.value.message and "must be restarted" in err.value.message
    assert "sent float16 tensors of shape [6, 64, 64]" in err.value.message
    assert "--dtype" in err.value.hint and "SERVER_DTYPE" in err.value.hint
    assert not list(tmp_path.glob("*.part*")) and not (tmp_path / "out.tif").exists()


def test_output_must_not_be_the_input(tmp_path, peer, client):
    inp = tmp_path / "in.tif"
    generate_scene(inp, seed=8, width=64, height=64)
    req = MapFloodsRequest(input_path=str(inp), output_path=str(inp), server_url=peer.url, model=peer.model)
    with pytest.raises(OutputError, match="input"):
        run_tensor(req, client, make_spec(), SIX)


def test_progress_span_and_eta(tmp_path, peer, client):
    inp = tmp_path / "in.tif"
    generate_scene(inp, seed=9, width=300, height=300)
    prog = Recorder()
    run_tensor(request(tmp_path, inp, peer, overlap=0.0), client, make_spec(), SIX, prog, ProgressSpan(5, 95))
    assert prog.percent[0] >= 5 and prog.percent[-1] == 95 and prog.percent == sorted(prog.percent)
    assert len(prog.percent) >= 4  # one step per tile (9 tiles), at least every few
    assert any("tiles/s" in m and "ETA" in m for m in prog.infos)


def test_runs_from_a_worker_thread_like_a_qgis_task(tmp_path, peer, client):
    inp = tmp_path / "in.tif"
    generate_scene(inp, seed=9, width=300, height=300)
    box = {}
    t = threading.Thread(target=lambda: box.update(s=run_tensor(request(tmp_path, inp, peer), client,
                                                                make_spec(), SIX)))
    t.start()
    t.join(30)
    assert box["s"].tiles > 1 and (tmp_path / "out.tif").exists()


@pytest.mark.parametrize("reply,error", [
    (Reply(200, {"data": [{"data": "A" * 1000}]}, truncate=100), ServerError),  # torn body
    (Reply(drop=True), Exception),  # hang-up without an answer
])
def test_broken_answers_are_mapped_and_leave_nothing(tmp_path, reply, error):
    from plugin.core.errors import FloodMapperError

    inp = tmp_path / "in.tif"
    generate_scene(inp, seed=8, width=100, height=100)
    with FakeHttpServer() as srv, VllmClient(srv.url, retries=0) as c:
        srv.on("GET", "/version", Reply(200, {"version": "0.32.0"}))
        srv.on("POST", "/pooling", reply)
        req = MapFloodsRequest(input_path=str(inp), output_path=str(tmp_path / "o.tif"), server_url=srv.url,
                               model="m")
        with pytest.raises(FloodMapperError) as info:
            run_tensor(req, c, make_spec(), SIX)
        assert isinstance(info.value, error)
    assert leftovers(tmp_path) == [] and not (tmp_path / "o.tif").exists()


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16"])
def test_lookup_table_normalisation_equals_the_arithmetic(dtype):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(0)
    raw = rng.integers(info.min, int(info.max) + 1, (6, 40, 40)).astype(dtype)
    valid = rng.random((40, 40)) > 0.1
    spec = make_spec()
    lut = Normaliser(spec, 1e-4, -0.1, dtype)
    assert lut.lut is not None
    got = lut(raw, valid)
    expected = (raw.astype(np.float64) * 1e-4 - 0.1 - np.array(MEANS)[:, None, None]) / np.array(STDS)[:, None, None]
    expected = np.clip(expected, -65504, 65504).astype(np.float16)
    expected[:, ~valid] = 0
    assert got.dtype == np.float16
    assert (got == expected).all()
    arithmetic = Normaliser(spec, 1e-4, -0.1)(raw, valid)  # float32 path, one rounding more
    assert np.allclose(arithmetic.astype(np.float32), got.astype(np.float32), rtol=2e-3, atol=1e-3)


def test_int16_raster_runs_through_the_lookup_table(tmp_path, peer, client):
    inp = tmp_path / "i16.tif"
    generate_scene(inp, seed=12, width=150, height=140, dtype="int16")
    run_tensor(request(tmp_path, inp, peer), client, make_spec(), SIX)
    with rasterio.open(tmp_path / "out.tif") as o:
        assert (o.read(1) == rule_mask(inp)).mean() >= 0.9999
