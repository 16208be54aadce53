"""Every map names how it was made: the input, the model, the server, the transport (and the tensors' dtype), the
cloud mask, the software and the time, as GeoTIFF metadata that QGIS and gdalinfo show; a flood-extent map keeps
the provenance of the water it was made from."""

from __future__ import annotations

import calendar
import configparser
import time
from pathlib import Path

import pytest
import rasterio

from plugin.core.pipeline import map_floods
from plugin.core.provenance import (
    CLOUD_MASK_TAG,
    DATETIME_TAG,
    DTYPE_TAG,
    INPUT_TAG,
    MODEL_TAG,
    SERVER_TAG,
    SOFTWARE_TAG,
    TRANSPORT_TAG,
    carried_over,
    file_name,
    plugin_version,
    provenance_tags,
    read_provenance,
)
from tests.fixtures.world import MODEL, write_scene

ROOT = Path(__file__).resolve().parents[2]


def metadata_version() -> str:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "metadata.txt", encoding="utf-8")
    return parser.get("general", "version")


def band_description(path: str) -> str:
    with rasterio.open(path) as ds:
        return ds.descriptions[0]


def made_between(tags: dict, start: float, end: float) -> bool:
    made = calendar.timegm(time.strptime(tags[DATETIME_TAG], "%Y:%m:%d %H:%M:%S"))  # UTC
    return int(start) - 1 <= made <= end + 1


@pytest.mark.parametrize("source, name", [
    ("/data/event/S2A_MSIL2A_20240101.SAFE/", "S2A_MSIL2A_20240101.SAFE"),
    ("C:\\scenes\\flood.tif", "flood.tif"),
    ("/vsizip//data/a.zip/inner/b.tif", "b.tif"),
    ("https://example.org/cogs/c.tif?token=secret", "c.tif"),
    ("/vsicurl/https://example.org/d.tif?sig=abc", "d.tif"),
    ("SENTINEL2_L2A:/data/S2B.SAFE/MTD_MSIL2A.xml:10m:EPSG_32633", "S2B.SAFE"),
    ("/data/S2B.SAFE/MTD_MSIL2A.xml", "S2B.SAFE"),
    ("C:\\data\\S2A.SAFE\\MTD_MSIL1C.xml", "S2A.SAFE"),
    ("/data/LC09_L2SP_001002_20240101_02_T1_MTL.txt", "LC09_L2SP_001002_20240101_02_T1_MTL.txt"),
])
def test_a_source_is_named_without_its_folders_or_query(source, name):
    assert file_name(source) == name
    assert "secret" not in file_name(source) and "abc" not in file_name(source)


def test_the_tags_name_the_plugin_version_of_metadata_txt_and_leave_out_what_is_unknown():
    assert plugin_version() == metadata_version() != ""
    tags = provenance_tags("/x/scene.tif", "prithvi", "vLLM 0.32.0", "image", when=0)
    assert tags == {SOFTWARE_TAG: f"Flood Mapper {metadata_version()}", DATETIME_TAG: "1970:01:01 00:00:00",
                    INPUT_TAG: "scene.tif", MODEL_TAG: "prithvi", SERVER_TAG: "vLLM 0.32.0",
                    TRANSPORT_TAG: "image"}
    tagged = provenance_tags("/x/scene.tif", "m", "vLLM", "tensor", dtype="float32", cloud_mask="/x/SCL_20m.jp2")
    assert (tagged[DTYPE_TAG], tagged[CLOUD_MASK_TAG]) == ("float32", "SCL_20m.jp2")


def test_carried_over_keeps_what_made_the_water_and_dates_the_new_map():
    old = provenance_tags("a.tif", "m", "vLLM 0.32.0", "tensor", "float32", when=0)
    kept = carried_over({**old, "AREA_OR_POINT": "Area", "FLOODMAPPER_CLASSES": "0=not water"})
    assert {k: kept[k] for k in (INPUT_TAG, MODEL_TAG, SERVER_TAG, TRANSPORT_TAG, DTYPE_TAG)} == {
        INPUT_TAG: "a.tif", MODEL_TAG: "m", SERVER_TAG: "vLLM 0.32.0", TRANSPORT_TAG: "tensor", DTYPE_TAG: "float32"}
    assert "AREA_OR_POINT" not in kept and "FLOODMAPPER_CLASSES" not in kept
    assert kept[DATETIME_TAG] != old[DATETIME_TAG]


def test_read_provenance_of_a_map_without_it_or_no_map_is_empty(tmp_path):
    assert read_provenance(write_scene(tmp_path / "plain.tif")) == {}
    assert read_provenance(str(tmp_path / "missing.tif")) == {}
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    assert read_provenance(str(tmp_path / "bad.tif")) == {}


def test_an_image_to_image_map_names_its_input_model_server_and_transport(world):
    start = time.time()
    map_floods(world.request(), world.client())
    tags = read_provenance(world.output)
    assert {k: tags[k] for k in (SOFTWARE_TAG, INPUT_TAG, MODEL_TAG, SERVER_TAG, TRANSPORT_TAG)} == {
        SOFTWARE_TAG: f"Flood Mapper {metadata_version()}", INPUT_TAG: "scene.tif", MODEL_TAG: MODEL,
        SERVER_TAG: "vLLM 0.32.0+cpu", TRANSPORT_TAG: "image"}
    assert DTYPE_TAG not in tags and CLOUD_MASK_TAG not in tags
    assert made_between(tags, start, time.time())
    assert band_description(world.output) == "water"


def test_a_tensor_map_and_its_probability_name_the_tensors_dtype(tensor_world):
    world = tensor_world
    map_floods(world.request(server_dtype="float32"), world.client())
    for path, band in ((world.output, "water"), (world.probability, "water probability")):
        tags = read_provenance(path)
        assert (tags[TRANSPORT_TAG], tags[DTYPE_TAG], tags[INPUT_TAG], tags[MODEL_TAG]) == (
            "tensor", "float32", "scene.tif", MODEL)
        assert band_description(path) == band


def test_a_cloud_masked_map_names_its_cloud_mask(tensor_world):
    world = tensor_world
    clouds = write_scene(world.tmp / "in" / "clouds.tif", count=1, dtype="uint8", fill=4, nodata=None)
    map_floods(world.request(cloud_mask_path=clouds), world.client())
    assert read_provenance(world.output)[CLOUD_MASK_TAG] == "clouds.tif"


def test_a_flood_extent_map_keeps_the_provenance_of_its_water(world):
    with rasterio.open(world.input) as src:
        data = src.read()
    data[3, :32, :] = 9000  # the pre-event image: land where the event has water
    pre = write_scene(world.tmp / "in" / "before.tif", fill=data)
    map_floods(world.request(pre_event_path=pre), world.client())
    tags = read_provenance(world.output)
    assert (tags[INPUT_TAG], tags[MODEL_TAG], tags[TRANSPORT_TAG]) == ("scene.tif", MODEL, "image")
    with rasterio.open(world.output) as ds:
        assert ds.tags()["FLOODMAPPER_REFERENCE"] == "the pre-event image 'before.tif'"
        assert ds.tags()["FLOODMAPPER_CLASSES"].startswith("0=not water,1=flood water")
        assert ds.descriptions[0] == "flood extent"
