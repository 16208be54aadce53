"""A long tensor run keeps its finished rows, and the same job run again goes on from them, giving exactly the map
of a run that never stopped. Against the fake server of tests/fixtures/world.py, whose rule "model" gives the same
answer for the same tile every time; the keeping starts at once here (KEEP_AFTER_S 0) instead of after a minute.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import rasterio

from plugin.core.errors import Cancelled, ServerError
from plugin.core.pipeline import map_floods
from plugin.core.tensor import checkpoint
from plugin.core.tensor.tiling import RowBandStitcher, TileGrid
from tests.fixtures.fake_http import Reply, vllm_error
from tests.fixtures.progress import Recorder
from tests.fixtures.world import World, write_scene

TILES = 42  # a 200x160 scene in 32-px tiles with the default overlap: 6 rows of 7


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "KEEP_AFTER_S", 0.0)
    w = World(tmp_path, "tensor")
    w.input = write_scene(tmp_path / "in" / "big.tif", h=160, w=200)
    yield w
    w.close()


def read(path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def undisturbed(world) -> tuple[np.ndarray, np.ndarray, object]:
    """The class map and probability of a run of the same job that never stopped (in its own folder)."""
    folder = world.tmp / "undisturbed"
    folder.mkdir()
    result = map_floods(world.request(output_path=str(folder / "flood.tif"),
                                      probability_path=str(folder / "p.tif")), world.client())
    return read(folder / "flood.tif"), read(folder / "p.tif"), result


def kept_folders(world) -> list[str]:
    return sorted(n for n in os.listdir(world.out_dir) if n.startswith(checkpoint.PREFIX))


def stop_at_job(world, n_stop: int) -> ServerError:
    """Run the job with the server refusing every job from the `n_stop`-th on; the error raised."""
    world.fault = lambda n, body: Reply(400, vllm_error("the model is being replaced")) if n >= n_stop else None
    with pytest.raises(ServerError) as err:
        map_floods(world.request(), world.client())
    world.fault = None
    return err.value


def test_a_stopped_run_goes_on_from_its_kept_rows_to_the_same_map(world):
    classes, probability, whole = undisturbed(world)
    first_jobs = len(world.jobs())
    error = stop_at_job(world, first_jobs + 25)
    assert "no output was written" in error.message and "map rows (of 160) are kept in" in error.message
    assert "run the same job again to go on from there" in error.message
    assert not os.path.exists(world.output) and not os.path.exists(world.probability)
    assert len(kept_folders(world)) == 1
    before = len(world.jobs())
    progress = Recorder()
    result = map_floods(world.request(), world.client(), progress)
    sent = len(world.jobs()) - before
    assert 0 < sent <= TILES - 14, "the tiles of the kept bands are not sent again"
    assert any(m.startswith("Going on from an earlier run of this job that stopped") for m in progress.infos)
    np.testing.assert_array_equal(read(world.output), classes)
    np.testing.assert_array_equal(read(world.probability), probability)
    assert (result.water_pixels, result.valid_pixels) == (whole.water_pixels, whole.valid_pixels)
    assert result.water_area_km2 == pytest.approx(whole.water_area_km2)
    assert kept_folders(world) == [], "the kept rows go once the map is complete"
    assert sorted(os.listdir(world.out_dir)) == ["flood-probability.tif", "flood.tif"]


def test_a_cancelled_run_keeps_its_rows_too(world):
    """Without a probability raster this time: the class rows alone are kept."""
    classes, _, _ = undisturbed(world)
    cancel_at = len(world.jobs()) + 30  # the first four bands are done by then
    progress = Recorder(lambda r: len(world.jobs()) >= cancel_at)
    with pytest.raises(Cancelled):
        map_floods(world.request(probability_path=""), world.client(), progress)
    kept = [m for m in progress.infos if "are kept in" in m]
    assert kept and kept[-1].startswith("Its first ") and len(kept_folders(world)) == 1
    assert not os.path.exists(world.output)
    before = len(world.jobs())
    map_floods(world.request(probability_path=""), world.client())
    assert len(world.jobs()) - before < TILES - 14
    np.testing.assert_array_equal(read(world.output), classes)
    assert kept_folders(world) == []


def test_another_job_on_the_same_output_starts_afresh(world):
    stop_at_job(world, 25)
    (folder,) = kept_folders(world)
    before = len(world.jobs())
    progress = Recorder()
    map_floods(world.request(overlap=0.25), world.client(), progress)  # other tiles: other rows
    assert not any(m.startswith("Going on from") for m in progress.infos)
    assert len(world.jobs()) - before > TILES, "every tile of the other tiling is sent"
    assert folder in kept_folders(world), "the first job's rows stay for it (until they are stale)"


def test_an_input_changed_since_starts_afresh(world):
    stop_at_job(world, 25)
    with rasterio.open(world.input, "r+") as ds:
        data = ds.read()
        data[3, :40] = 9000  # the flood went back in the first rows
        ds.write(data)
    os.utime(world.input, ns=(time.time_ns(), time.time_ns() + 10**9))
    before = len(world.jobs())
    progress = Recorder()
    map_floods(world.request(), world.client(), progress)
    assert not any(m.startswith("Going on from") for m in progress.infos)
    assert len(world.jobs()) - before == TILES


def test_kept_rows_that_are_damaged_are_not_used(world):
    classes, _, _ = undisturbed(world)
    stop_at_job(world, len(world.jobs()) + 25)
    (name,) = kept_folders(world)
    state = world.out_dir / name / checkpoint.STATE
    kept = json.loads(state.read_text())
    os.remove(world.out_dir / name / f"rows-{kept['bands'][0]}.npy")
    progress = Recorder()
    map_floods(world.request(), world.client(), progress)
    assert not any(m.startswith("Going on from") for m in progress.infos)
    np.testing.assert_array_equal(read(world.output), classes)
    assert kept_folders(world) == []


def test_a_run_whose_rows_cannot_be_kept_goes_on_without(world, monkeypatch):
    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.Checkpoint, "keep", full)
    progress = Recorder()
    map_floods(world.request(), world.client(), progress)
    assert [w for w in progress.warnings if "cannot be kept" in w and "No space left on device" in w]
    assert os.path.exists(world.output) and kept_folders(world) == []


def test_a_short_run_keeps_nothing(world, monkeypatch):
    monkeypatch.setattr(checkpoint, "KEEP_AFTER_S", 3600.0)
    error = stop_at_job(world, 25)
    assert "are kept" not in error.message and kept_folders(world) == []


def test_kept_rows_nobody_went_on_with_go_after_two_weeks(tmp_path):
    old, fresh = tmp_path / f"{checkpoint.PREFIX}old", tmp_path / f"{checkpoint.PREFIX}fresh"
    old.mkdir()
    fresh.mkdir()
    (tmp_path / "flood.tif").write_bytes(b"a map")
    weeks = time.time() - checkpoint.STALE_AFTER_S - 60
    os.utime(old, (weeks, weeks))
    assert checkpoint.remove_stale(str(tmp_path)) == [str(old)]
    assert sorted(os.listdir(tmp_path)) == [fresh.name, "flood.tif"]


def test_a_stitcher_that_goes_on_from_a_flushed_band_emits_the_same_rows():
    grid = TileGrid.build(70, 90, 32, 32, 8, 8)
    rng = np.random.default_rng(3)
    logits = {tile.index: rng.normal(size=(2, 32, 32)).astype(np.float32) for tile in grid}
    valid = np.ones((32, 32), bool)

    def rows_of(stitcher_rows: dict):
        return lambda y0, acc, ok: stitcher_rows.__setitem__(y0, acc.copy())

    whole: dict = {}
    states: list = []
    stitcher = RowBandStitcher(grid, 2, rows_of(whole),
                               on_flushed=lambda nxt, first, end, carry: states.append((nxt, end, carry)))
    for tile in grid:
        stitcher.add(tile, logits[tile.index], valid)
    next_row, rows_done, carry = states[1]  # stopped after two bands
    carry = (carry[0].copy(), carry[1].copy()) if carry is not None else None
    rest: dict = {}
    resumed = RowBandStitcher(grid, 2, rows_of(rest), next_row, rows_done, carry)
    for tile in grid:
        if tile.row >= next_row:
            resumed.add(tile, logits[tile.index], valid)
    assert resumed.finished and resumed.rows_emitted == 90 and set(rest) == {y for y in whole if y >= rows_done}
    for y0, acc in rest.items():
        np.testing.assert_array_equal(acc, whole[y0])


def test_a_sentinel2_product_goes_on_too(world):
    """A product is mapped through a stack made afresh in a temporary folder by each run: the run is known again by
    the product itself."""
    from tests.fixtures.sentinel2_safe import write_l2a

    rng = np.random.default_rng(5)
    dn = rng.integers(1500, 2500, (6, 144, 96)).astype(np.uint16)
    dn[3, :60] = 1300  # water (low NIR) in the first rows
    product = str(write_l2a(world.tmp / "product", dn, zipped=True))
    stop = len(world.jobs()) + 12  # 144x96 in 32-px tiles: 5 rows of 4, so the first two bands are done by then
    world.fault = lambda n, body: Reply(400, vllm_error("the model is being replaced")) if n >= stop else None
    with pytest.raises(ServerError) as error:
        map_floods(world.request(input_path=product), world.client())
    assert "are kept in" in error.value.message, error.value.message
    world.fault = None
    before = len(world.jobs())
    progress = Recorder()
    map_floods(world.request(input_path=product), world.client(), progress)
    assert any(m.startswith("Going on from an earlier run of this job that stopped") for m in progress.infos)
    assert len(world.jobs()) - before < 20
    assert kept_folders(world) == []


def test_a_crash_between_a_band_s_files_leaves_the_state_before_it(tmp_path):
    """The next band's carry written, the state not yet: the kept state is the one before, with its own carry."""
    kept = checkpoint.Checkpoint(str(tmp_path / "flood.tif"), "k", probability=False)
    kept.start()
    carry_2 = (np.full((2, 4, 8), 2.0, np.float32), np.ones((4, 8), bool))
    kept.keep(0, np.zeros((10, 8), np.uint8), None)
    kept.flushed(2, 10, [0], carry_2, {"water": 1, "valid": 80, "water_m2": 100.0})
    np.savez(kept._carry_file(3), acc=np.full((2, 4, 8), 3.0, np.float32), valid=np.zeros((4, 8), bool))
    kept.keep(10, np.ones((6, 8), np.uint8), None)  # the crash comes before flushed(3, ...)
    resumed = checkpoint.Checkpoint(str(tmp_path / "flood.tif"), "k", probability=False).load()
    assert (resumed.next_row, resumed.rows_done, resumed.bands) == (2, 10, [0])
    np.testing.assert_array_equal(resumed.carry[0], carry_2[0])
    assert resumed.stats == {"water": 1, "valid": 80, "water_m2": 100.0}
    assert checkpoint.Checkpoint(str(tmp_path / "flood.tif"), "other", probability=False).load() is None
