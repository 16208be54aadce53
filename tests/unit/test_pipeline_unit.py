"""map_floods() with the image transport against the programmable fake server (fault injection).

The fake /pooling answers the way the TerraTorch plugin does (a base64 GeoTIFF of class × 255 on the
input's grid, here from a simple NIR threshold) so that the pipeline's own work — validation, transport
choice, cancel, remap, nodata, atomic write, clean-up — can be checked for every failure. The real model on
a real vLLM server is tests/e2e/test_pipeline_image.py.

Every failure case asserts the message and that no output and no temp file is left behind.
"""

from __future__ import annotations

import base64
import io
import math
import os
import tempfile
import time

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from plugin.core import image_transport
from plugin.core.client import VllmClient
from plugin.core.errors import (
    Cancelled,
    ConnectionFailed,
    FloodMapperError,
    InputError,
    OutputError,
    ServerError,
    TransportUnsupported,
)
from plugin.core.pipeline import MapFloodsRequest, map_floods
from plugin.core.raster import compute_stats
from tests.fixtures.fake_http import FakeHttpServer, Reply, closed_port, models_body, vllm_error

MODEL = "test-model"
S1F11 = ("BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2")
PLUGIN_400 = vllm_error("1 validation error for RequestData\ndata_format\n  Input should be 'path' or 'url'")
TENSOR_400 = vllm_error("Invalid plugin request type")


class Recorder:
    def __init__(self, cancel_after: float | None = None) -> None:
        self.infos: list[str] = []
        self.warnings: list[str] = []
        self.percent: list[float] = []
        self.t0 = time.monotonic()
        self.cancel_after = cancel_after

    def set_progress(self, percent: float) -> None:
        self.percent.append(percent)

    def info(self, message: str) -> None:
        self.infos.append(message)

    def warning(self, message: str) -> None:
        self.warnings.append(message)

    def is_canceled(self) -> bool:
        return self.cancel_after is not None and time.monotonic() - self.t0 > self.cancel_after


def write_scene(path, h=64, w=80, border=0, crs="EPSG:32633", nodata=0, count=6, fill=None):
    rng = np.random.default_rng(3)
    data = rng.integers(1500, 4000, (count, h, w)).astype(np.uint16)
    if count > 3:
        data[3, : h // 2, :] = 300  # NIR low in the top half: "water" for the fake model
    if fill is not None:
        data[:] = fill
    if border:
        data[:, :border, :] = nodata
        data[:, -border:, :] = nodata
        data[:, :, :border] = nodata
        data[:, :, -border:] = nodata
    kwargs = {"crs": crs} if crs else {}
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=count, dtype="uint16",
                       transform=from_origin(500000, 5000000, 20, 20), nodata=nodata, **kwargs) as dst:
        dst.write(data)
        dst.descriptions = S1F11[:count] if count <= 6 else (*S1F11, *[f"X{i}" for i in range(count - 6)])
    return str(path)


def plugin_like_answer(request_json: dict, shape_override=None) -> dict:
    """What terratorch_segmentation returns for the request: classes × 255 on the input grid, nodata 0."""
    d = request_json["data"]
    with rasterio.open(d["data"]) as src:
        nir = src.read(d["indices"][3] + 1)
        profile = dict(driver="GTiff", width=src.width, height=src.height, count=1, dtype="uint8",
                       crs=src.crs, transform=src.transform, nodata=0, compress="lzw")
    if shape_override:
        profile.update(height=shape_override[0], width=shape_override[1])
        nir = np.resize(nir, shape_override)
    classes = (nir < 1000).astype(np.uint8)
    with rasterio.MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(classes * 255, 1)
        tiff = mem.read()
    return {"request_id": "pooling-1", "created_at": 0,
            "data": {"data_format": "b64_json", "data": base64.b64encode(tiff).decode(), "request_id": "x"}}


class World:
    """A fake server + paths + private temp dir for one test."""

    def __init__(self, tmp_path, kind="image") -> None:
        self.tmp = tmp_path
        self.srv = FakeHttpServer().start()
        self.kind = kind
        self.pooling_reply: Reply | None = None  # None: answer like the plugin
        self.srv.on("GET", "/v1/models", Reply(200, models_body(MODEL)))
        self.srv.on("GET", "/version", Reply(200, {"version": "0.32.0+cpu"}))
        self.srv.on("POST", "/pooling", self._pooling)
        self.input = write_scene(tmp_path / "in.tif")
        self.out_dir = tmp_path / "out"
        self.out_dir.mkdir()
        self.output = str(self.out_dir / "flood.tif")

    def _pooling(self, rec) -> Reply:
        body = rec.json()
        if body.get("data", {}).get("data_format") == "floodmapper-probe":
            return Reply(400, PLUGIN_400 if self.kind == "image" else TENSOR_400)
        if self.pooling_reply is not None:
            return self.pooling_reply
        return Reply(200, plugin_like_answer(body))

    def jobs(self) -> list[dict]:
        return [r.json() for r in self.srv.calls("POST", "/pooling")
                if r.json().get("data", {}).get("data_format") != "floodmapper-probe"]

    def request(self, **kw) -> MapFloodsRequest:
        kw.setdefault("server_can_read_local_files", True)
        kw.setdefault("model", MODEL)
        return MapFloodsRequest(input_path=kw.pop("input_path", self.input),
                                output_path=kw.pop("output_path", self.output),
                                server_url=self.srv.url, **kw)

    def client(self, **kw) -> VllmClient:
        kw.setdefault("retries", 0)
        kw.setdefault("read_timeout", 10)
        return VllmClient(self.srv.url, **kw)

    def nothing_left(self) -> bool:
        leftovers = [n for n in os.listdir(self.out_dir) if n != "old.tif"]
        return not leftovers and not os.listdir(tempfile.gettempdir())


@pytest.fixture
def world(tmp_path, monkeypatch):
    private_tmp = tmp_path / "private-tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    w = World(tmp_path)
    yield w
    w.srv.stop()


# ------------------------------------------------------------------------------------------ success
def test_success_writes_map_and_sends_the_contract_payload(world):
    progress = Recorder()
    result = map_floods(world.request(), world.client(), progress)
    assert result.transport == "image" and result.model == MODEL and result.server_version == "0.32.0+cpu"
    with rasterio.open(world.output) as o, rasterio.open(world.input) as i:
        assert (o.width, o.height, o.crs, o.transform) == (i.width, i.height, i.crs, i.transform)
        got = o.read(1)
    assert set(np.unique(got)) == {0, 1}
    assert (got[:32] == 1).all() and (got[32:] == 0).all()
    stats = compute_stats(world.output)
    assert (result.water_pixels, result.valid_pixels) == (stats.water_pixels, stats.valid_pixels) == (32 * 80,
                                                                                                      64 * 80)
    assert result.water_area_km2 == pytest.approx(32 * 80 * 400 / 1e6)
    (job,) = world.jobs()
    assert job == {"model": MODEL, "softmax": False,
                   "data": {"data": os.path.abspath(world.input), "data_format": "path",
                            "out_data_format": "b64_json", "indices": [0, 1, 2, 3, 4, 5]}}
    assert progress.percent[-1] == 100 and progress.percent == sorted(progress.percent)
    assert any("Request sent" in m for m in progress.infos) and any("Writing" in m for m in progress.infos)
    assert world.nothing_left() or os.listdir(world.out_dir) == ["flood.tif"]
    assert not os.listdir(tempfile.gettempdir())


def test_nodata_border_becomes_output_nodata(world):
    inp = write_scene(world.tmp / "border.tif", border=5)
    map_floods(world.request(input_path=inp), world.client())
    got = rasterio.open(world.output).read(1)
    border = np.ones(got.shape, bool)
    border[5:-5, 5:-5] = False
    assert (got[border] == 255).all() and (got[~border] != 255).all()


def test_bands_chosen_by_name_are_sent_as_indices(world):
    inp = str(world.tmp / "shuffled.tif")
    write_scene(inp)
    with rasterio.open(inp, "r+") as ds:
        ds.descriptions = ("SWIR_2", "NIR_NARROW", "BLUE", "GREEN", "RED", "SWIR_1")
    map_floods(world.request(input_path=inp), world.client())
    assert world.jobs()[0]["data"]["indices"] == [2, 3, 4, 1, 5, 0]


def test_path_mapping(world):
    def server_side(rec):  # the "server" sees the shared folder under /srv/data
        body = rec.json()
        if body["data"]["data_format"] == "floodmapper-probe":
            return Reply(400, PLUGIN_400)
        seen.append(body["data"]["data"])
        body["data"]["data"] = body["data"]["data"].replace("/srv/data", str(world.tmp))
        return Reply(200, plugin_like_answer(body))

    seen: list[str] = []
    world.srv.on("POST", "/pooling", server_side)
    map_floods(world.request(server_can_read_local_files=False, path_map_local=str(world.tmp),
                             path_map_server="/srv/data"), world.client())
    assert seen == ["/srv/data/in.tif"]
    assert os.path.exists(world.output)


def test_no_crs_warns_and_area_is_nan(world):
    inp = write_scene(world.tmp / "nocrs.tif", crs=None)
    progress = Recorder()
    result = map_floods(world.request(input_path=inp), world.client(), progress)
    assert math.isnan(result.water_area_km2) and result.water_pixels == 32 * 80
    assert any("no CRS" in w for w in result.warnings) and result.warnings == progress.warnings


# ------------------------------------------------------------------------------------------ failures
def _fails(world, exc_type, match, request=None, client=None, progress=None, requests_made=None):
    old = world.out_dir / "old.tif"
    old.write_bytes(b"an older map")
    with pytest.raises(exc_type) as ei:
        map_floods(request or world.request(), client or world.client(), progress)
    text = f"{ei.value.message} {ei.value.hint}"
    assert match in text, text
    assert not os.path.exists(world.output)
    assert world.nothing_left(), (os.listdir(world.out_dir), os.listdir(tempfile.gettempdir()))
    assert old.read_bytes() == b"an older map"
    if requests_made is not None:
        assert len(world.srv.requests) == requests_made
    return ei.value


def test_output_equal_to_input(world):
    _fails(world, OutputError, "is the input", world.request(output_path=world.input), requests_made=0)


def test_output_folder_missing(world):
    _fails(world, OutputError, "does not exist",
           world.request(output_path=str(world.tmp / "nope" / "x.tif")), requests_made=0)


def test_output_folder_not_writable(world, monkeypatch):
    from plugin.core import raster

    real = os.access
    monkeypatch.setattr(raster.os, "access",
                        lambda p, m: False if str(p) == str(world.out_dir) else real(p, m))
    _fails(world, OutputError, "not writable", requests_made=0)


def test_all_nodata_input(world):
    inp = write_scene(world.tmp / "empty.tif", fill=0)
    _fails(world, InputError, "is nodata", world.request(input_path=inp), requests_made=0)


def test_too_few_bands(world):
    inp = write_scene(world.tmp / "rgb.tif", count=3)
    _fails(world, InputError, "needs 6", world.request(input_path=inp), requests_made=0)


def test_band_out_of_range(world):
    _fails(world, InputError, "out of range", world.request(bands=[1, 2, 3, 4, 5, 9]), requests_made=0)


def test_unreadable_input(world):
    bad = world.tmp / "bad.tif"
    bad.write_text("nope")
    _fails(world, InputError, "Cannot open", world.request(input_path=str(bad)), requests_made=0)


def test_forced_image_with_unreachable_file_fails_before_any_request(world):
    _fails(world, TransportUnsupported, "path mapping",
           world.request(server_can_read_local_files=False, transport="image"), requests_made=0)


def test_auto_with_unreachable_file_on_image_server(world):
    err = _fails(world, TransportUnsupported, "path mapping", world.request(server_can_read_local_files=False))
    assert "cannot read the local file" in err.message
    assert world.jobs() == []


def test_forced_image_on_tensor_server(world):
    world.kind = "tensor"
    err = _fails(world, TransportUnsupported, "without the TerraTorch IOProcessor plugin",
                 world.request(transport="image"))
    assert "tensor" in err.hint and world.jobs() == []


def test_forced_tensor_on_image_server(world):
    _fails(world, TransportUnsupported, "runs the TerraTorch IOProcessor plugin", world.request(transport="tensor"))


def test_forced_image_on_a_raster_too_large_for_it_fails_before_any_request(world):
    # 64x80 = 5120 px against a 0.005 MP (5000 px) limit
    err = _fails(world, InputError, "larger than image-to-image takes",
                 world.request(transport="image", image_max_megapixels=0.005), requests_made=0)
    assert "80×64 px" in err.message and "TRANSPORT=tensor" in err.hint and "clip" in err.hint


def test_auto_on_an_image_server_with_a_raster_too_large_steers_to_a_tensor_server(world):
    err = _fails(world, TransportUnsupported, "larger than image-to-image takes",
                 world.request(image_max_megapixels=0.005))
    assert "without '--io-processor-plugin'" in err.hint and "image-mode limit" in err.hint
    assert world.jobs() == []  # only the cheap kind probe, never the raster


def test_image_size_limit_at_the_edge_and_off():
    from plugin.core.pipeline import image_too_large

    assert not image_too_large(5000, 5000, 25.0) and image_too_large(5000, 5001, 25.0)
    assert not image_too_large(100_000, 100_000, 0)  # 0 = no limit


def test_a_raster_under_the_limit_still_goes_image_to_image(world):
    result = map_floods(world.request(image_max_megapixels=0.006), world.client())
    assert result.transport == "image" and len(world.jobs()) == 1


def test_unknown_transport(world):
    _fails(world, InputError, "Unknown transport", world.request(transport="carrier-pigeon"), requests_made=0)


def test_unknown_model(world):
    _fails(world, InputError, "it serves: test-model", world.request(model="other"))


def test_server_not_running(world):
    _fails(world, ConnectionFailed, "refused", client=VllmClient(f"http://127.0.0.1:{closed_port()}", retries=0))


@pytest.mark.parametrize("reply, exc_type, match", [
    (Reply(400, vllm_error("The output path '/x' does not exist")), ServerError, "The output path '/x'"),
    (Reply(500, vllm_error("[Errno 2] No such file or directory: '/in.tif'", 500)), ServerError,
     "No such file or directory"),
    (Reply(503, "overloaded", content_type="text/plain"), ServerError, "unavailable"),
    (Reply(200, {"data": {}}), ServerError, "has no image"),
    (Reply(200, {"data": {"data_format": "path", "data": "/srv/out/x.tiff"}}), ServerError, "not the b64_json"),
    (Reply(200, {"data": {"data_format": "b64_json", "data": "%%%not base64"}}), ServerError, "not valid base64"),
    (Reply(200, {"data": {"data_format": "b64_json", "data": base64.b64encode(b"PNG....").decode()}}),
     ServerError, "not a GeoTIFF"),
    (Reply(200, "<html>login</html>", content_type="text/html"), ServerError, "not JSON"),
    (Reply(200, {"data": {"data": "A" * 4000}}, truncate=50), ServerError, "truncated"),
    (Reply(drop=True), ConnectionFailed, "closed the connection"),  # re-sent once: 2 jobs
    (Reply(401, {"detail": "Unauthorized"}), ServerError, "authentication configuration"),
])
def test_pooling_failures_leave_nothing(world, reply, exc_type, match):
    world.pooling_reply = reply
    err = _fails(world, exc_type, match)
    assert isinstance(err, FloodMapperError)
    assert len(world.jobs()) == (2 if reply.drop else 1)


def test_server_raster_on_another_grid(world):
    world.srv.on("POST", "/pooling", lambda rec: (
        Reply(400, PLUGIN_400) if rec.json()["data"]["data_format"] == "floodmapper-probe"
        else Reply(200, plugin_like_answer(rec.json(), shape_override=(60, 80)))))
    _fails(world, ServerError, "does not match the input raster's grid")


def test_read_timeout(world):
    world.pooling_reply = Reply(200, {"data": {}}, delay=3)
    _fails(world, ConnectionFailed, "read timeout", client=world.client(read_timeout=0.5))


def test_model_needing_location_without_crs(world):
    inp = write_scene(world.tmp / "nocrs.tif", crs=None)
    world.pooling_reply = Reply(500, vllm_error("Could not infer dtype of NoneType", 500))
    _fails(world, InputError, "Assign a CRS", world.request(input_path=inp))


def test_cancel_while_waiting(world):
    world.pooling_reply = Reply(200, {"data": {}}, delay=30)
    progress = Recorder(cancel_after=1.0)
    t0 = time.monotonic()
    _fails(world, Cancelled, "Cancelled", progress=progress, client=world.client(read_timeout=60))
    assert time.monotonic() - t0 < 3
    deadline = time.monotonic() + 2
    while not world.srv.disconnects and time.monotonic() < deadline:
        time.sleep(0.05)
    assert world.srv.disconnects == ["/pooling"]


def test_cancel_before_start(world):
    _fails(world, Cancelled, "Cancelled", progress=Recorder(cancel_after=-1), requests_made=0)


# ------------------------------------------------------------------------------------- payload pieces
def test_server_source_variants(tmp_path):
    inp = write_scene(tmp_path / "a.tif")
    base = dict(output_path=str(tmp_path / "o.tif"), server_url="http://remote:8000")
    assert image_transport.server_source(MapFloodsRequest(input_path="/vsicurl/https://h/x.tif", **base)) == (
        "https://h/x.tif", "url")
    assert image_transport.server_source(MapFloodsRequest(input_path="http://h/x.tif", **base)) == (
        "http://h/x.tif", "url")
    mapped = MapFloodsRequest(input_path=inp, path_map_local=str(tmp_path) + "/", path_map_server="/data/", **base)
    assert image_transport.server_source(mapped) == ("/data/a.tif", "path")
    with pytest.raises(TransportUnsupported) as ei:
        image_transport.server_source(MapFloodsRequest(input_path="/vsizip/x.zip/a.tif", **base))
    assert "tensor transport" in ei.value.hint
    vrt = tmp_path / "a.vrt"
    vrt.write_text("<VRTDataset/>")
    with pytest.raises(TransportUnsupported) as ei:
        image_transport.server_source(MapFloodsRequest(input_path=str(vrt), server_can_read_local_files=True,
                                                       **base))
    assert "VRT" in ei.value.message


def test_version_quirks():
    assert image_transport.version_quirks("0.11.0")[0] == {"softmax": False}
    assert image_transport.version_quirks("0.32.0+cpu") == ({"softmax": False}, [])
    assert "broken" in image_transport.version_quirks("0.15.1")[1][0]
    assert "predates" in image_transport.version_quirks("0.9.2")[1][0]
    assert image_transport.version_quirks("") == ({"softmax": False}, [])


def test_decode_response_roundtrip(tmp_path):
    inp = write_scene(tmp_path / "a.tif")
    answer = plugin_like_answer({"data": {"data": inp, "indices": [0, 1, 2, 3, 4, 5]}})
    raw = image_transport.decode_response(answer)
    with rasterio.open(io.BytesIO(raw)) as ds:
        assert ds.read(1).max() == 255


# ----------------------------------------------------------------------------------- tensor hook
def test_auto_on_tensor_server_goes_through_the_tensor_hook(world, monkeypatch):
    import types

    from plugin.core import model_spec, raster, tensor_transport

    world.kind = "tensor"
    spec = model_spec.ModelSpec(channels=6, tile_height=64, tile_width=64, num_classes=2, means=(0.1,) * 6,
                                stds=(0.1,) * 6, bands=("SWIR_2", "RED", "GREEN", "BLUE", "NIR_NARROW", "SWIR_1"))
    calls = []

    def fake_run(request, client, spec_, bands, progress, model=None, progress_span=(0.0, 100.0)):
        calls.append((spec_, bands, model))
        return types.SimpleNamespace(stats=raster.Stats(3, 4, 0.75, 0.5), warnings=["from tensor"])

    monkeypatch.setattr(tensor_transport, "run_tensor", fake_run)
    monkeypatch.setattr(model_spec, "resolve_model_spec", lambda source, name, session=None: spec)
    result = map_floods(world.request(), world.client())
    assert calls == [(spec, [5, 2, 1, 0, 3, 4], MODEL)]  # bands picked in the spec's order
    assert result.transport == "tensor" and result.water_pixels == 3 and "from tensor" in result.warnings
    assert world.jobs() == []  # only the probe went to /pooling


def test_tensor_spec_from_the_served_folder_when_it_is_on_this_computer(world, monkeypatch):
    """The local engine serves a folder: its config.json is the spec, with nothing to set."""
    import types

    from plugin.core import raster, tensor_transport
    from plugin.core.settings import DEMO_MODEL_DIR

    world.kind = "tensor"
    world.srv.on("GET", "/v1/models", Reply(200, {"object": "list", "data": [
        {"id": "my-model", "object": "model", "root": str(DEMO_MODEL_DIR)}]}))
    seen = []

    def fake_run(request, client, spec_, bands, progress, model=None, progress_span=(0.0, 100.0)):
        seen.append(spec_)
        return types.SimpleNamespace(stats=raster.Stats(1, 2, 0.5, 0.1), warnings=[])

    monkeypatch.setattr(tensor_transport, "run_tensor", fake_run)
    map_floods(world.request(model="my-model"), world.client())
    assert seen and seen[0].source.endswith("demo_model/config.json") and seen[0].tile_height == 256


def test_auto_on_tensor_server_without_model_spec(world):
    from plugin.core.errors import ModelSpecError

    world.kind = "tensor"
    _fails(world, ModelSpecError, "model spec")
    assert world.jobs() == []


def test_named_model_spec_sets_the_band_contract_before_any_request(world, monkeypatch):
    from plugin.core import model_spec

    spec = model_spec.ModelSpec(channels=3, tile_height=64, tile_width=64, num_classes=2, means=(0.1,) * 3,
                                stds=(0.1,) * 3, bands=("RED", "GREEN", "BLUE"))
    monkeypatch.setattr(model_spec, "resolve_model_spec", lambda source, name, session=None: spec)
    rgb = write_scene(world.tmp / "rgb.tif", count=3)  # named BLUE, GREEN, RED
    world.srv.on("POST", "/pooling", lambda rec: Reply(400, PLUGIN_400)
                 if rec.json()["data"]["data_format"] == "floodmapper-probe" else Reply(500, vllm_error("stop", 500)))
    _fails(world, ServerError, "stop", world.request(input_path=rgb, model_spec_source="/some/config.json"))
    assert world.jobs()[0]["data"]["indices"] == [2, 1, 0]
    # and with too few bands for that spec, nothing reaches the server
    world.srv.requests.clear()
    one = write_scene(world.tmp / "one.tif", count=2)
    _fails(world, InputError, "needs 3", world.request(input_path=one, model_spec_source="/some/config.json"),
           requests_made=0)
