"""map_floods() against the programmable fake server: what the pipeline decides and sends on success.

Failures are rows of tests/unit/test_fault_matrix.py (message, hint, nothing left behind); here are the
successful paths and the decisions the pipeline makes: the payload, the bands, path mapping, nodata, the
transport for a raster's size, the model spec and its bands. The real model on a real vLLM server is
tests/e2e/test_pipeline_image.py and tests/e2e/test_tensor_real.py.
"""

from __future__ import annotations

import io
import math
import os
import tempfile

import numpy as np
import pytest
import rasterio

from plugin.core import image_transport
from plugin.core.errors import InputError, ServerError, TransportUnsupported
from plugin.core.image_source import ServerReach, server_source
from plugin.core.pipeline import map_floods
from plugin.core.raster import inspect
from plugin.core.stats import compute_stats
from plugin.core.transport_choice import image_too_large
from tests.fixtures.fake_http import Reply, vllm_error
from tests.fixtures.fake_vllm import decode_tensor
from tests.fixtures.landsat_mtl import write_mtl
from tests.fixtures.progress import Recorder
from tests.fixtures.world import MODEL, image_answer, model_config, write_scene


def jobs(world) -> list[dict]:
    return [r.json() for r in world.jobs()]


# ------------------------------------------------------------------------------------------ image
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
    (job,) = jobs(world)
    assert job == {"model": MODEL, "softmax": False,
                   "data": {"data": os.path.abspath(world.input), "data_format": "path",
                            "out_data_format": "b64_json", "indices": [0, 1, 2, 3, 4, 5]}}
    assert progress.percent[-1] == 100 and progress.percent == sorted(progress.percent)
    assert any("Request sent" in m for m in progress.infos) and any("Writing" in m for m in progress.infos)
    assert os.listdir(world.out_dir) == ["flood.tif"]
    assert not os.listdir(tempfile.gettempdir())


def test_a_probability_asked_of_image_to_image_is_a_warning_not_a_silence(world):
    progress = Recorder()
    result = map_floods(world.request(probability_path=world.probability), world.client(), progress)
    assert result.transport == "image" and result.probability_path == ""
    assert not os.path.exists(world.probability) and os.path.exists(world.output)
    assert [w for w in progress.warnings if "No water probability" in w and "tensor transport" in w]


def test_the_server_is_asked_once_what_it_is(world):
    map_floods(world.request(), world.client())
    asked = [(r.method, r.path) for r in world.srv.requests]
    assert asked == [("GET", "/v1/models"), ("GET", "/version"), ("POST", "/pooling"), ("POST", "/pooling")]


def test_nodata_border_becomes_output_nodata(world):
    inp = world.tmp / "border.tif"
    write_scene(inp)
    with rasterio.open(inp, "r+") as ds:
        data = ds.read()
        data[:, :5, :], data[:, -5:, :], data[:, :, :5], data[:, :, -5:] = 0, 0, 0, 0
        ds.write(data)
    map_floods(world.request(input_path=str(inp)), world.client())
    with rasterio.open(world.output) as o:
        got = o.read(1)
    border = np.ones(got.shape, bool)
    border[5:-5, 5:-5] = False
    assert (got[border] == 255).all() and (got[~border] != 255).all()


def test_bands_chosen_by_name_are_sent_as_indices(world):
    inp = str(world.tmp / "shuffled.tif")
    write_scene(inp)
    with rasterio.open(inp, "r+") as ds:
        ds.descriptions = ("SWIR_2", "NIR_NARROW", "BLUE", "GREEN", "RED", "SWIR_1")
    map_floods(world.request(input_path=inp), world.client())
    assert jobs(world)[0]["data"]["indices"] == [2, 3, 4, 1, 5, 0]


def test_path_mapping(world):
    seen: list[str] = []

    def server_side(n, body):  # the "server" sees the shared folder under /srv/data
        seen.append(body["data"]["data"])
        body["data"]["data"] = body["data"]["data"].replace("/srv/data", str(world.tmp))
        return image_answer(body)

    world.fault = server_side
    map_floods(world.request(server_can_read_local_files=False, path_map_local=str(world.tmp),
                             path_map_server="/srv/data"), world.client())
    assert seen == ["/srv/data/in/scene.tif"]
    assert os.path.exists(world.output)


def test_no_crs_warns_and_area_is_nan(world):
    inp = write_scene(world.tmp / "nocrs.tif", crs=None)
    progress = Recorder()
    result = map_floods(world.request(input_path=inp), world.client(), progress)
    assert math.isnan(result.water_area_km2) and result.water_pixels == 32 * 80
    assert any("no CRS" in w for w in result.warnings) and result.warnings == progress.warnings


def test_band_out_of_range(world):
    with pytest.raises(InputError, match="out of range"):
        map_floods(world.request(bands=[1, 2, 3, 4, 5, 9]), world.client())
    assert jobs(world) == []


@pytest.mark.parametrize("kind", ["image", "tensor"])
def test_8bit_bands_need_a_scale_and_map_with_one(world, kind):
    """0-255 values are not reflectance: with the scale left to detection nothing is sent; with one, the
    values map as the 16-bit scene they were made from does."""
    world.kind = kind
    with rasterio.open(world.input) as src:
        eight_bit = src.read() // 16
    inp = write_scene(world.tmp / "in" / "tci.tif", dtype="uint8", fill=eight_bit)
    with pytest.raises(InputError, match="8-bit") as info:
        map_floods(world.request(input_path=inp), world.client())
    assert "SCALE" in info.value.hint
    assert jobs(world) == [] and not os.path.exists(world.output)
    map_floods(world.request(input_path=inp, scale=16e-4), world.client())
    with rasterio.open(world.output) as o:
        got = o.read(1)
    sixteen_bit = str(world.out_dir / "sixteen-bit.tif")
    map_floods(world.request(output_path=sixteen_bit, probability_path=""), world.client())
    with rasterio.open(sixteen_bit) as o:
        expected = o.read(1)
    assert (got[:32] == 1).all() and (got == expected).mean() > 0.99  # 1/16 of the levels: a few pixels flip


def _scene_stored_as(world, name: str, stored, **band_metadata) -> str:
    """The world's scene written to in/`name` with its reflectance stored as `stored(reflectance)` (uint16) and
    the given band metadata (descriptions, scales, offsets; descriptions default to the scene's)."""
    with rasterio.open(world.input) as src:
        profile, reflectance, names = src.profile, src.read().astype(np.float64) * 1e-4, src.descriptions
    path = world.tmp / "in" / name
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.round(stored(reflectance)).astype("uint16"))
        dst.descriptions = band_metadata.pop("descriptions", names)
        for key, value in band_metadata.items():
            setattr(dst, key, value)
    return str(path)


def _agreement_with_the_scene(world) -> float:
    """The share of pixels of the last map made to world.output that equal the map of the scene itself."""
    with rasterio.open(world.output) as o:
        got = o.read(1)
    stored = str(world.out_dir / "stored-x10000.tif")
    map_floods(world.request(output_path=stored, probability_path=""), world.client())
    with rasterio.open(stored) as o:
        return float((got == o.read(1)).mean())


@pytest.mark.parametrize("kind", ["image", "tensor"])
def test_landsat_level1_band_files_are_calibrated_by_their_mtl_file(world, kind):
    """Level-1 values are (reflectance × sin(sun elevation) + 0.1) / 0.00002: with the scene's MTL file beside
    them they map as the same reflectance stored × 10000; without it nothing is sent and the error says why."""
    world.kind = kind
    scene, sun = "LC08_L1TP_013032_20230612_20230620_02_T1", 62.5
    inp = _scene_stored_as(world, "level1.tif",
                           lambda reflectance: (reflectance * math.sin(math.radians(sun)) + 0.1) / 2e-5,
                           descriptions=tuple(f"{scene}_B{n}" for n in (2, 3, 4, 5, 6, 7)))
    with pytest.raises(InputError, match="MTL file") as missing:
        map_floods(world.request(input_path=inp), world.client())
    assert "L2SP" in missing.value.hint and jobs(world) == [] and not os.path.exists(world.output)
    write_mtl(world.tmp / "in", scene, sun=sun)
    progress = Recorder()
    map_floods(world.request(input_path=inp), world.client(), progress)
    assert [m for m in progress.infos if "top-of-atmosphere reflectance" in m and "sin(62.5°)" in m]
    assert _agreement_with_the_scene(world) > 0.99


def _stored_as_collection2(reflectance):
    """Reflectance as Landsat Collection 2 Level-2 stores it: reflectance = value × 0.0000275 − 0.2."""
    return (reflectance + 0.2) / 2.75e-5


@pytest.mark.parametrize("kind", ["image", "tensor"])
@pytest.mark.parametrize("metadata, said", [
    # Collection 2 Level-2 SR_B bands hold (reflectance + 0.2) / 0.0000275, as USGS stores them
    ({"descriptions": ("SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B7")}, ("Landsat Collection 2", "0.0000275")),
    # any raster whose GDAL metadata says value × 0.0000275 − 0.2 (as QGIS shows it)
    ({"scales": (2.75e-5,) * 6, "offsets": (-0.2,) * 6}, ("GDAL metadata", "2.75e-05")),
], ids=["landsat-names", "gdal-metadata"])
def test_a_stored_scaling_maps_as_the_scene(world, kind, metadata, said):
    """The same reflectance stored as value × 0.0000275 − 0.2 maps as the scene stored × 10000, with nothing
    set, when its names or its metadata say so; SCALE overrides it."""
    world.kind = kind
    inp = _scene_stored_as(world, "scaled.tif", _stored_as_collection2, **metadata)
    progress = Recorder()
    map_floods(world.request(input_path=inp), world.client(), progress)
    assert [m for m in progress.infos if all(phrase in m for phrase in said)]
    assert _agreement_with_the_scene(world) > 0.99
    overridden = Recorder()
    map_floods(world.request(input_path=inp, output_path=str(world.out_dir / "o.tif"), probability_path="",
                             scale=1e-4), world.client(), overridden)
    assert not [m for m in overridden.infos if said[0] in m]


def _sent_pixels(bodies: list[dict]) -> float:
    """The sum of the magnitudes of the normalised values the tensor requests carried."""
    total = 0.0
    for body in bodies:
        pixels, _ = decode_tensor(body["messages"][0]["content"][0]["image_embeds"]["pixel_values"])
        total += float(np.abs(pixels.astype(np.float64)).sum())
    return total


@pytest.mark.parametrize("day, offset_applied", [("20240501", True), ("20210501", False)])
def test_sentinel2_band_files_from_2022_on_carry_the_offset(world, day, offset_applied):
    """Band files named as acquired from 25 January 2022 on hold reflectance × 10000 + 1000: with OFFSET empty
    they map as the same reflectance without the offset; earlier ones are mapped as they are, with a warning."""
    world.kind = "tensor"
    with rasterio.open(world.input) as src:
        profile, dn = src.profile, src.read()
    inp = world.tmp / "in" / "stack.tif"
    with rasterio.open(inp, "w", **profile) as dst:
        dst.write(dn + 1000 if offset_applied else dn)
        dst.descriptions = tuple(f"T33TWM_{day}T100031_{b}" for b in ("B02", "B03", "B04", "B8A", "B11", "B12"))
    progress = Recorder()
    result = map_floods(world.request(input_path=str(inp)), world.client(), progress)
    sent = _sent_pixels(jobs(world))
    with rasterio.open(world.output) as o:
        got = o.read(1)
    stored = str(world.out_dir / "no-offset.tif")
    map_floods(world.request(output_path=stored, probability_path=""), world.client())
    with rasterio.open(stored) as o:
        assert (got == o.read(1)).all()
    # the model got the same normalised reflectance as for the scene stored without the offset
    assert sent == pytest.approx(_sent_pixels(jobs(world)[len(jobs(world)) // 2:]), rel=1e-3)
    said = [m for m in progress.infos if "reflectance offset -0.1" in m]
    warned = [w for w in result.warnings if "before 25 January 2022" in w and "OFFSET=-0.1" in w]
    assert (bool(said), bool(warned)) == (offset_applied, not offset_applied)


def test_sentinel2_add_offset_in_the_band_metadata_is_applied(world):
    """A GeoTIFF saved from GDAL's SENTINEL2 driver keeps each band's BOA_ADD_OFFSET (−1000) but not the product's
    name: with OFFSET empty the model gets the same reflectance as for the scene stored without the offset."""
    world.kind = "tensor"
    with rasterio.open(world.input) as src:
        profile, dn, names = src.profile, src.read(), src.descriptions
    inp = world.tmp / "in" / "saved-from-safe.tif"
    with rasterio.open(inp, "w", **profile) as dst:
        dst.write(dn + 1000)
        dst.descriptions = names
        for band in range(1, 7):
            dst.update_tags(band, BOA_ADD_OFFSET="-1000")
    progress = Recorder()
    map_floods(world.request(input_path=str(inp)), world.client(), progress)
    sent = _sent_pixels(jobs(world))
    assert [m for m in progress.infos if "add offset -1000 in the bands' metadata" in m]
    map_floods(world.request(output_path=str(world.out_dir / "plain.tif"), probability_path=""), world.client())
    assert sent == pytest.approx(_sent_pixels(jobs(world)[len(jobs(world)) // 2:]), rel=1e-3)


# ----------------------------------------------------------------------------------- raster size
def test_auto_on_an_image_server_with_a_raster_too_large_steers_to_a_tensor_server(world):
    with pytest.raises(TransportUnsupported, match="larger than image-to-image takes") as ei:
        map_floods(world.request(image_max_megapixels=0.005), world.client())
    assert "without '--io-processor-plugin'" in ei.value.hint and "image-mode limit" in ei.value.hint
    assert jobs(world) == []  # only the cheap kind probe, never the raster


def test_image_size_limit_at_the_edge_and_off(tmp_path):
    small = inspect(write_scene(tmp_path / "a.tif", h=50, w=100))
    assert not image_too_large(small, 0.005) and image_too_large(small, 0.00499)
    assert not image_too_large(small, 0)  # 0 = no limit


def test_a_raster_under_the_limit_still_goes_image_to_image(world):
    result = map_floods(world.request(image_max_megapixels=0.006), world.client())
    assert result.transport == "image" and len(jobs(world)) == 1


# ------------------------------------------------------------------------------------- payload pieces
def test_server_source_variants(tmp_path):
    inp = write_scene(tmp_path / "a.tif")
    remote = ServerReach("http://remote:8000")

    def source(path, reach=remote):
        return server_source(inspect(path) if os.path.exists(path) else _info(path), reach)

    assert source("/vsicurl/https://h/x.tif") == ("https://h/x.tif", "url")
    assert source("http://h/x.tif") == ("http://h/x.tif", "url")
    assert source(inp, ServerReach("http://remote:8000", False, str(tmp_path) + "/", "/data/")) == (
        "/data/a.tif", "path")
    with pytest.raises(TransportUnsupported) as ei:
        source("/vsizip/x.zip/a.tif")
    assert "tensor transport" in ei.value.hint
    with pytest.raises(TransportUnsupported, match="cannot read the local file"):
        source(inp)
    assert source(inp, ServerReach("http://127.0.0.1:8000", True)) == (os.path.abspath(inp), "path")


def _info(path):
    from affine import Affine

    from plugin.core.raster import RasterInfo

    return RasterInfo(path, 1, 1, 6, ("uint16",) * 6, None, Affine.identity(), (None,) * 6, (None,) * 6,
                      False, False)


def test_version_quirks():
    assert image_transport.version_quirks("0.11.0")[0] == {"softmax": False}
    assert image_transport.version_quirks("0.32.0+cpu") == ({"softmax": False}, [])
    assert "broken" in image_transport.version_quirks("0.15.1")[1][0]
    assert "predates" in image_transport.version_quirks("0.9.2")[1][0]
    assert image_transport.version_quirks("") == ({"softmax": False}, [])


def test_decode_response_roundtrip(tmp_path):
    inp = write_scene(tmp_path / "a.tif")
    answer = image_answer({"data": {"data": inp, "indices": [0, 1, 2, 3, 4, 5]}}).body
    raw = image_transport.decode_response(answer)
    with rasterio.open(io.BytesIO(raw)) as ds:
        assert ds.read(1).max() == 255


# ----------------------------------------------------------------------------------- tensor
def test_auto_on_a_tensor_server_maps_in_tiles(world):
    world.kind = "tensor"
    result = map_floods(world.request(), world.client())
    assert result.transport == "tensor" and result.probability_path == world.probability
    assert all("messages" in j for j in jobs(world)) and len(jobs(world)) == 9  # 80x64 in 32-px tiles
    with rasterio.open(world.output) as o:
        top = o.read(1)[:32]
    assert (top == 1).mean() > 0.95  # the low-NIR half is water for the fake rule


def test_a_tensor_run_without_pybase64_says_how_to_get_it(world, monkeypatch):
    import sys

    from plugin.core.tensor import codec

    world.kind = "tensor"
    progress = Recorder()
    map_floods(world.request(), world.client(), progress)
    hint = ("base64 by Python's own encoder: pybase64 encodes each tile ~10x faster (Plugins ▸ Flood Mapper ▸ "
            "Install Python dependencies…, or pip install pybase64 with QGIS's Python)")
    assert not any(hint in m for m in progress.infos)
    monkeypatch.setattr(codec, "_fast_b64", None)
    monkeypatch.setitem(sys.modules, "pybase64", None)  # not installed
    progress = Recorder()
    map_floods(world.request(), world.client(), progress)
    assert any(m.startswith("Tensor transport: 80x64 px") and hint in m for m in progress.infos), progress.infos


def test_tensor_spec_from_the_served_folder_when_it_is_on_this_computer(world):
    """The local engine serves a folder: its config.json is the spec, with nothing to set."""
    import json

    folder = world.tmp / "served"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(model_config(tile=64)))
    world.kind = "tensor"
    world.srv.on("GET", "/v1/models", Reply(200, {"object": "list", "data": [
        {"id": "my-model", "object": "model", "root": str(folder)}]}))
    progress = Recorder()
    result = map_floods(world.request(model="my-model", model_spec_source=""), world.client(), progress)
    assert result.transport == "tensor" and len(jobs(world)) == 2  # 80x64 in 64-px tiles with overlap
    assert any("Tensor transport: 80x64 px in 2 tiles of 64x64" in m for m in progress.infos), progress.infos


def test_named_model_spec_sets_the_band_contract_before_any_request(world):
    import json

    three = world.tmp / "three.json"
    config = model_config()
    config["pretrained_cfg"]["input"]["data"]["pixel_values"]["shape"] = [3, 32, 32]
    config["pretrained_cfg"]["model"]["init_args"]["model_args"]["backbone_bands"] = ["RED", "GREEN", "BLUE"]
    config["pretrained_cfg"]["data"]["init_args"] = {"means": [0.1] * 3, "stds": [0.1] * 3}
    three.write_text(json.dumps(config))
    rgb = write_scene(world.tmp / "rgb.tif", count=3)  # named BLUE, GREEN, RED
    world.fault = lambda n, body: Reply(500, vllm_error("stop", 500))
    with pytest.raises(ServerError, match="stop"):
        map_floods(world.request(input_path=rgb, model_spec_source=str(three)), world.client())
    assert jobs(world)[0]["data"]["indices"] == [2, 1, 0]
    # and with too few bands for that spec, nothing reaches the server
    world.srv.requests.clear()
    two = write_scene(world.tmp / "two.tif", count=2)
    with pytest.raises(InputError, match="needs 3"):
        map_floods(world.request(input_path=two, model_spec_source=str(three)), world.client())
    assert world.srv.requests == []


def test_the_local_engine_gets_as_many_tiles_in_flight_as_it_batches(world, monkeypatch):
    """The local engine serves one job at a time and batches up to max-num-seqs requests in a step: with no
    CONCURRENCY set, that many tiles are kept in flight (a remote server, which serves others too, gets 4).
    A CONCURRENCY the user set stands."""
    from plugin.core.backends import LocalBackend
    from plugin.core.settings import Settings
    from tests.fixtures.fake_engine import stand_in_engine

    stand_in_engine(monkeypatch, world.srv.url, world.tmp / "engine.log")
    world.kind = "tensor"
    world.srv.delay = 0.3  # every tile waits, so all that may be in flight are
    backend = LocalBackend(Settings(max_num_seqs=5))
    progress = Recorder()
    result = map_floods(world.request(concurrency=None), backend, progress)
    assert result.transport == "tensor" and len(jobs(world)) == 9
    assert world.srv.max_in_flight == 5
    assert any("5 tiles in flight: the local engine batches 5" in m for m in progress.infos), progress.infos
    assert any("5 in flight" in m for m in progress.infos if m.startswith("Tensor transport:"))

    world.srv.max_in_flight = 0
    map_floods(world.request(concurrency=2), backend)
    assert world.srv.max_in_flight == 2

    world.srv.max_in_flight = 0  # a remote server: the default
    map_floods(world.request(concurrency=None), world.client())
    assert world.srv.max_in_flight == 4
