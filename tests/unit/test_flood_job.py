"""map_floods() with a pre-event image or reference water, against the programmable fake server: two runs of the
same transport, classes that are exactly the two water maps compared, all-or-none outputs, checks before any
request. The real model on real servers is tests/qgis/test_flood_extent_real.py."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import rasterio

from plugin.core.errors import InputError, ServerError
from plugin.core.jobs import MapFloodsRequest, MapFloodsResult
from plugin.core.pipeline import map_floods
from tests.fixtures.fake_http import Reply, vllm_error
from tests.fixtures.landsat_values import as_collection2
from tests.fixtures.progress import Recorder
from tests.fixtures.world import World, write_scene


@pytest.fixture(params=["image", "tensor"])
def world(request, tmp_path, monkeypatch):
    private_tmp = tmp_path / "private-tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    w = World(tmp_path, request.param)
    yield w
    w.close()


def pre_event_scene(world, rows: int = 16, **kw) -> str:
    """The world's scene before the flood: the fake models' water (low NIR) only in the top `rows` rows."""
    with rasterio.open(world.input) as src:
        data = src.read()
    data[3, rows:32, :] = 9000  # bright NIR: land for both fake models, where the event has water
    return write_scene(world.tmp / "in" / "pre.tif", fill=data, **kw)


def read(path):
    with rasterio.open(path) as ds:
        return ds.read(1)


def water_of(world, path: str) -> np.ndarray:
    """The plain water map of `path` through the same world (no reference)."""
    out = str(world.out_dir / f"plain-{os.path.basename(path)}")
    map_floods(world.request(input_path=path, output_path=out, probability_path=""), world.client())
    return read(out)


def leftovers(world) -> list[str]:
    return sorted(p for p in os.listdir(world.out_dir) if p.startswith(".")) + os.listdir(tempfile.gettempdir())


def test_pre_event_classes_are_the_two_water_maps_compared(world):
    pre = pre_event_scene(world)
    progress = Recorder()
    result = map_floods(world.request(pre_event_path=pre), world.client(), progress)
    jobs = len(world.jobs())
    assert jobs == 2 if world.kind == "image" else jobs >= 2 and jobs % 2 == 0  # as many tiles for both images
    got = read(world.output)
    now, before = water_of(world, world.input), water_of(world, pre)
    expected = np.where(now == 1, np.where(before == 1, 2, 1), now)
    np.testing.assert_array_equal(got, expected)
    assert (got[:16] == 2).all() and (got[16:32] == 1).all()
    assert result.flood_pixels == int((got == 1).sum()) and result.permanent_water_pixels == int((got == 2).sum())
    assert result.water_pixels == result.flood_pixels + result.permanent_water_pixels
    assert result.flood_area_km2 == pytest.approx(result.flood_pixels * 400 / 1e6)
    assert result.no_reference_pixels == 0 and "pre-event image 'pre.tif'" in result.reference
    assert any(m.startswith("Pre-event image: ") for m in progress.infos)
    assert any(m.startswith("Flood extent: flood water") for m in progress.infos)
    assert progress.percent == sorted(progress.percent) and progress.percent[-1] == 100
    if world.kind == "tensor":  # the event's probability, moved into place with the classes
        with rasterio.open(world.probability) as ds:
            assert ((ds.read(1) > 0.5) == np.isin(got, (1, 2))).all()
    assert leftovers(world) == []


def test_the_pre_event_image_goes_the_same_way(world):
    """Same model, same transport (forced), same bands."""
    map_floods(world.request(pre_event_path=pre_event_scene(world), bands=[1, 2, 3, 4, 5, 6]), world.client())
    bodies = [r.json() for r in world.jobs()]
    if world.kind == "image":
        assert [b["data"]["data"] for b in bodies] == [os.path.abspath(world.input),
                                                       os.path.abspath(world.tmp / "in" / "pre.tif")]
        assert bodies[0]["data"]["indices"] == bodies[1]["data"]["indices"] and bodies[0]["model"] == bodies[1]["model"]
    else:
        assert all("messages" in b for b in bodies)


def test_a_failing_pre_event_run_writes_nothing(world):
    older = b"an older map that must survive"
    with open(world.output, "wb") as fh:
        fh.write(older)
    event_jobs = 1 if world.kind == "image" else 9  # the event's request(s) succeed, the pre-event's fail
    world.fault = lambda number, body: (Reply(500, vllm_error("the pre-event run broke"))
                                        if number > event_jobs else None)
    with pytest.raises(ServerError) as err:
        map_floods(world.request(pre_event_path=pre_event_scene(world), concurrency=1), world.client())
    assert "the pre-event run broke" in err.value.message
    assert len(world.jobs()) == event_jobs + 1
    with open(world.output, "rb") as fh:
        assert fh.read() == older
    assert not os.path.exists(world.probability) and leftovers(world) == []


def test_bad_pre_event_bands_cost_no_request(world):
    pre = write_scene(world.tmp / "in" / "pre4.tif", count=4)
    with pytest.raises(InputError) as err:
        map_floods(world.request(pre_event_path=pre), world.client())
    assert "4 band(s)" in err.value.message and "same bands" in err.value.message
    assert world.srv.requests == [] and not os.path.exists(world.output) and leftovers(world) == []


def landsat_pre_event(world, name="pre_landsat.tif") -> str:
    """pre_event_scene's reflectance as a Landsat 9 Collection 2 Level-2 export stores it: SR_B1 (coastal) first,
    then SR_B2 ... SR_B7 in reverse order, values (reflectance + 0.2) / 0.0000275."""
    with rasterio.open(pre_event_scene(world)) as src:
        profile, reflectance = src.profile, src.read().astype(np.float64) * 1e-4
    order = [5, 4, 3, 2, 1, 0]  # SR_B7 (SWIR 2) ... SR_B2 (blue)
    stored = as_collection2(np.concatenate([reflectance[:1], reflectance[order]]))
    profile.update(count=7)
    path = world.tmp / "in" / name
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(stored)
        dst.descriptions = ("SR_B1", "SR_B7", "SR_B6", "SR_B5", "SR_B4", "SR_B3", "SR_B2")
    return str(path)


def test_a_pre_event_image_of_another_product_is_mapped_with_its_own_bands_and_scaling(world):
    same = map_floods(world.request(pre_event_path=pre_event_scene(world)), world.client())
    expected = read(world.output)
    progress = Recorder()
    result = map_floods(world.request(pre_event_path=landsat_pre_event(world)), world.client(), progress)
    np.testing.assert_array_equal(read(world.output), expected)
    assert (result.flood_pixels, result.permanent_water_pixels) == (same.flood_pixels, same.permanent_water_pixels)
    assert any(m.startswith("The pre-event image is another product (7 band(s) (SR_B1, SR_B7") for m in progress.infos)
    assert any(m.startswith("Pre-event image: Landsat Collection 2") for m in progress.infos), progress.infos
    assert any(m.startswith("Pre-event image: Input:") and "input bands [7, 6, 5, 4, 3, 2]" in m
               for m in progress.infos), progress.infos
    assert progress.warnings == [] and leftovers(world) == []


def test_another_product_with_bands_or_scale_given(world):
    landsat = landsat_pre_event(world)
    with pytest.raises(InputError) as err:
        map_floods(world.request(pre_event_path=landsat, bands=[1, 2, 3, 4, 5, 6]), world.client())
    assert "BANDS (1, 2, 3, 4, 5, 6) picks the same band numbers in both" in err.value.message
    assert "Leave BANDS empty" in err.value.hint and world.srv.requests == [] and leftovers(world) == []
    progress = Recorder()
    map_floods(world.request(pre_event_path=landsat, scale=1e-4), world.client(), progress)
    assert any("SCALE and OFFSET apply to both" in w for w in progress.warnings), progress.warnings


def test_pre_event_elsewhere_is_not_mapped_and_everything_is_flood(world):
    pre = pre_event_scene(world)
    with rasterio.open(pre, "r+") as ds:
        ds.transform = rasterio.transform.from_origin(900000, 5000000, 20, 20)
    progress = Recorder()
    result = map_floods(world.request(pre_event_path=pre), world.client(), progress)
    assert result.flood_pixels == result.water_pixels > 0 and result.permanent_water_pixels == 0
    assert any("does not overlap" in w and "not mapped" in w for w in progress.warnings)
    assert not any(m.startswith("Pre-event image") for m in progress.infos)
    assert len(progress.warnings) == 1, progress.warnings


def test_reference_raster_and_pre_event_are_united(world):
    """Reference water on the bottom rows (where the fake models see land): no water there now, so no
    permanent water is invented; the top rows stay permanent through the pre-event image."""
    ref = world.tmp / "in" / "ref.tif"
    data = np.zeros((64, 80), np.uint8)
    data[16:24] = 1
    with rasterio.open(world.input) as src:
        profile = dict(driver="GTiff", width=80, height=64, count=1, dtype="uint8", crs=src.crs,
                       transform=src.transform, nodata=255)
    with rasterio.open(ref, "w", **profile) as dst:
        dst.write(data, 1)
    result = map_floods(world.request(pre_event_path=pre_event_scene(world), reference_path=str(ref)),
                        world.client())
    got = read(world.output)
    assert (got[:24] == 2).all() and (got[24:32] == 1).all()
    assert "pre-event image 'pre.tif'" in result.reference and "reference water 'ref.tif'" in result.reference


def test_without_reference_the_flood_is_the_water():
    result = MapFloodsResult("o.tif", 10, 40, 0.25, 0.004, "image", "m")
    assert (result.flood_pixels, result.flood_area_km2, result.permanent_water_pixels) == (10, 0.004, 0)
    assert result.no_reference_pixels == 40 and result.reference == ""
    assert not MapFloodsRequest("i.tif", "o.tif", "").wants_flood_extent()
    assert MapFloodsRequest("i.tif", "o.tif", "", reference_path="r.tif").wants_flood_extent()
