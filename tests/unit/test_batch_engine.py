"""plugin/batch_engine.py: which engine the offline batch maps with, and how the batch goes on when a raster or
the engine fails. The real runs on both engines are tests/e2e/test_batch.py."""

from __future__ import annotations

import csv
import sys

import numpy as np
import pytest

from plugin import batch
from plugin.batch_engine import ENGINE_LOCAL, ENGINE_OFFLINE, choose_engine, local_settings
from plugin.batch_inputs import Job
from plugin.core.errors import EngineError, InputError
from plugin.core.jobs import Stats
from plugin.core.settings import Settings

AVX2 = frozenset({"avx2", "fma"})
FP16 = AVX2 | {"avx512f", "avx512_fp16"}
BF16 = AVX2 | {"avx512f", "avx512_bf16"}


@pytest.fixture
def cpu(monkeypatch):
    """Sets the flags of this computer's CPU as /proc/cpuinfo would give them."""
    def use(flags: frozenset[str]) -> None:
        monkeypatch.setattr("plugin.core.cpu.cpu_flags", lambda cpuinfo="/proc/cpuinfo": flags)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    return use


def test_auto_maps_offline_where_float16_is_fast(cpu):
    cpu(FP16)
    choice = choose_engine("auto", Settings(), "cpu")
    assert choice.engine == ENGINE_OFFLINE
    assert "avx512_fp16" in choice.reason and "IOProcessor" in choice.reason
    assert choose_engine("auto", Settings(), "gpu").engine == ENGINE_OFFLINE
    cpu(FP16 | {"avx512_bf16", "amx_tile", "amx_bf16"})  # an Intel Xeon with AMX: its bfloat16 is left out
    assert choose_engine("auto", Settings(), "cpu").engine == ENGINE_OFFLINE


@pytest.mark.parametrize("flags, dtype", [(AVX2, "float32"), (BF16, "bfloat16")])
def test_auto_maps_on_the_local_engine_where_float16_is_slow(cpu, flags, dtype):
    cpu(flags)
    choice = choose_engine("auto", Settings(), "cpu")
    assert choice.engine == ENGINE_LOCAL
    assert choice.reason.startswith(f"{dtype} (") and "tensor transport" in choice.reason


def test_auto_honours_a_dtype_set_for_the_engine(cpu):
    cpu(FP16)
    assert choose_engine("auto", Settings(dtype="float32"), "cpu").engine == ENGINE_LOCAL
    cpu(AVX2)
    assert choose_engine("auto", Settings(dtype="float16"), "cpu").engine == ENGINE_OFFLINE


def test_forced_engines(cpu):
    cpu(AVX2)
    assert choose_engine("offline", Settings(), "cpu").engine == ENGINE_OFFLINE
    cpu(FP16)
    local = choose_engine("local", Settings(), "cpu")
    assert local.engine == ENGINE_LOCAL and "float16" in local.reason


def test_offline_refuses_a_dtype_it_cannot_run(cpu):
    cpu(AVX2)
    with pytest.raises(EngineError) as err:
        choose_engine("offline", Settings(dtype="float32"), "cpu")
    assert "float16" in err.value.message and "--engine local" in err.value.hint


def test_local_settings_run_this_python_with_the_batch_model():
    settings = local_settings("/models/x", 3, {"FLOODMAPPER_DTYPE": "float32", "FLOODMAPPER_MODEL": "/other"})
    assert settings.vllm_python == sys.executable
    assert (settings.model, settings.max_num_seqs, settings.dtype) == ("/models/x", 3, "float32")


class _Engine:
    """The local engine as the batch sees it, failing as it is told: by raster name."""

    def __init__(self, failures: dict[str, Exception]) -> None:
        self.failures = failures
        self.mapped: list[str] = []
        self.closed = False

    def map(self, input_path, output_path, options, progress):
        self.options = options
        name = input_path.rsplit("/", 1)[-1]
        if name in self.failures:
            raise self.failures[name]
        self.mapped.append(name)
        return Stats(water_pixels=1, valid_pixels=4, water_fraction=0.25, water_area_km2=0.0)

    def close(self) -> None:
        self.closed = True


def _run(engine: _Engine, names: list[str], capsys) -> tuple[int | None, list[Job], str]:
    jobs = [Job(f"/in/{n}", f"/out/{n}") for n in names]
    args = batch.parse_args(["/in", "--out", "/out"])
    lines: list[str] = []
    code = batch.map_on_local_engine(engine, jobs, args, lambda i, job: lines.append(f"{i} {job.error or 'ok'}"))
    return code, jobs, "\n".join(lines) + "\n" + capsys.readouterr().err


def test_a_failing_raster_is_reported_and_the_batch_goes_on(capsys):
    engine = _Engine({"b.tif": InputError("b.tif is unreadable.", "Check it.")})
    code, jobs, out = _run(engine, ["a.tif", "b.tif", "c.tif"], capsys)
    assert code is None and engine.mapped == ["a.tif", "c.tif"] and engine.closed
    assert "2 b.tif is unreadable." in out and "3 ok" in out


def test_an_engine_that_cannot_run_stops_the_batch_and_says_what_was_left(capsys):
    engine = _Engine({"b.tif": EngineError("The local vLLM engine did not start.", "See its log.")})
    code, jobs, out = _run(engine, ["a.tif", "b.tif", "c.tif", "d.tif"], capsys)
    assert code == 2 and engine.mapped == ["a.tif"] and engine.closed
    assert "2 The local vLLM engine did not start." in out
    assert "the batch stops (2 raster(s) not mapped)" in out
    assert jobs[2].error is None and jobs[2].stats is None


def test_a_python_without_vllm_maps_on_the_local_engine_of_the_vllm_environment(cpu):
    cpu(FP16)  # offline would be chosen, were vLLM here
    settings = local_settings("/models/x", 8, {"FLOODMAPPER_VLLM_PYTHON": "/envs/vllm/bin/python"}, in_process=False)
    assert settings.vllm_python == "/envs/vllm/bin/python"
    choice = choose_engine("auto", settings, "cpu", in_process=False)
    assert choice.engine == ENGINE_LOCAL and "no vLLM" in choice.reason and "/envs/vllm/bin/python" in choice.reason
    with pytest.raises(EngineError) as err:
        choose_engine("offline", settings, "cpu", in_process=False)
    assert sys.executable in err.value.message and "--engine local" in err.value.hint


def test_stacking_without_gdal_s_bindings_says_which_python_has_them(monkeypatch, tmp_path):
    from plugin.core.sentinel2_product import read_product, write_stack
    from tests.fixtures.sentinel2_safe import write_l2a

    product = read_product(str(write_l2a(tmp_path, np.full((6, 24, 24), 1500, np.uint16)) / "MTD_MSIL2A.xml"))
    monkeypatch.setitem(sys.modules, "osgeo", None)  # as in a vLLM environment: no GDAL bindings
    with pytest.raises(InputError) as err:
        write_stack(product, str(tmp_path))
    assert "GDAL's Python bindings (osgeo)" in err.value.message and ".venv/bin/python" in err.value.hint


def test_clouds_on_the_offline_engine_are_refused_before_it_loads(tmp_path, monkeypatch, capsys):
    from scripts.scenes import generate_scene

    generate_scene(tmp_path / "a.tif", seed=9413, width=64, height=64)
    monkeypatch.setattr(batch, "has_vllm", lambda: True)
    monkeypatch.setattr(batch, "build_llm", lambda *a: pytest.fail("the engine must not load"))
    assert batch.main([str(tmp_path / "a.tif"), "--out", str(tmp_path / "out"), "--engine", "offline",
                       "--clouds"]) == 2
    assert "--clouds masks clouds in the plugin's pipeline" in capsys.readouterr().err


def test_an_area_on_the_offline_engine_is_refused_before_it_loads(tmp_path, monkeypatch, capsys):
    from scripts.scenes import generate_scene

    generate_scene(tmp_path / "a.tif", seed=9413, width=64, height=64)
    (tmp_path / "area.geojson").write_text(
        '{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": '
        '{"type": "Polygon", "coordinates": [[[15, 45], [15.1, 45], [15.1, 45.1], [15, 45]]]}}]}')
    monkeypatch.setattr(batch, "has_vllm", lambda: True)
    monkeypatch.setattr(batch, "build_llm", lambda *a: pytest.fail("the engine must not load"))
    assert batch.main([str(tmp_path / "a.tif"), "--out", str(tmp_path / "out"), "--engine", "offline",
                       "--area", str(tmp_path / "area.geojson")]) == 2
    assert "--area masks the area of interest in the plugin's pipeline" in capsys.readouterr().err


class _OfflineLLM:
    """vllm.LLM as far as stopping it goes: llm_engine.engine_core.shutdown()."""

    def __init__(self, fails: bool = False) -> None:
        self.stopped = 0
        self.fails = fails
        self.llm_engine = self
        self.engine_core = self

    def shutdown(self) -> None:
        self.stopped += 1
        if self.fails:
            raise RuntimeError("engine core did not answer")


@pytest.mark.parametrize("how", ["a map fails", "Ctrl+C", "stopping fails"])
def test_the_offline_engine_is_stopped_before_the_batch_returns(tmp_path, monkeypatch, capsys, how):
    from scripts.scenes import generate_scene

    generate_scene(tmp_path / "a.tif", seed=9413, width=64, height=64)
    llm = _OfflineLLM(fails=how == "stopping fails")

    def run_one(*args, **kwargs):
        assert llm.stopped == 0, "a raster was mapped on a stopped engine"
        if how == "Ctrl+C":
            raise KeyboardInterrupt
        raise InputError("the raster has no bands the model takes", "choose another raster")

    monkeypatch.setattr(batch, "has_vllm", lambda: True)
    monkeypatch.setattr(batch, "build_llm", lambda *a: llm)
    monkeypatch.setattr(batch, "run_one", run_one)
    code = batch.main([str(tmp_path / "a.tif"), "--out", str(tmp_path / "out"), "--engine", "offline"])
    assert llm.stopped == 1
    assert code == (130 if how == "Ctrl+C" else 1)
    err = capsys.readouterr().err
    assert ("warning: stopping the vLLM engine failed: RuntimeError: engine core did not answer" in err) \
        == (how == "stopping fails")


class _WritingEngine(_Engine):
    """The local engine writing a map for each raster, as the pipeline moves a finished map into place."""

    def map(self, input_path, output_path, options, progress):
        stats = super().map(input_path, output_path, options, progress)
        with open(output_path, "wb") as fh:
            fh.write(b"new map")
        return stats


@pytest.fixture
def three_rasters(tmp_path, monkeypatch):
    """a.tif, b.tif and c.tif, and the local engine the batch would start (a _WritingEngine), made at most once."""
    from scripts.scenes import generate_scene

    for i, name in enumerate("abc"):
        generate_scene(tmp_path / f"{name}.tif", seed=9420 + i, width=32, height=32)
    made: list[_Engine] = []

    def make(failures: dict[str, BaseException], engine: type[_Engine] = _WritingEngine):
        def start(settings):
            assert not made, "one engine for the batch"
            made.append(engine(failures))
            return made[0]
        monkeypatch.setattr(batch, "has_vllm", lambda: False)
        monkeypatch.setattr(batch, "LocalBatch", start)
        return made
    return tmp_path, make


def _earlier_maps(folder, names: str):
    """The output folder with a file where the maps of these rasters (a, b, c) go, as an earlier run left it."""
    out = folder / "maps"
    out.mkdir()
    for name in names:
        (out / f"{name}_flood.tif").write_bytes(b"earlier map")
    return out


def test_skip_existing_maps_only_the_rasters_without_a_map(three_rasters, capsys):
    folder, make = three_rasters
    out = _earlier_maps(folder, "a")
    made = make({})
    assert batch.main([str(folder), "--out", str(out), "--skip-existing"]) == 0
    printed = capsys.readouterr().out
    assert made[0].mapped == ["b.tif", "c.tif"] and made[0].closed
    assert (out / "a_flood.tif").read_bytes() == b"earlier map", "an earlier map is left as it is"
    assert f"[1/3] skipped a.tif: its map {out / 'a_flood.tif'} is already there" in printed
    assert "[2/3] ok b.tif" in printed and "Done: 2 of 3 raster(s) mapped, 1 already there, 0 failed" in printed
    assert f"Figures of each raster: {out / 'flood_maps.csv'}" in printed
    with open(out / "flood_maps.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["map"], r["status"], r["water_pixels"]) for r in rows] == [
        ("a_flood.tif", "already there", ""), ("b_flood.tif", "mapped", "1"), ("c_flood.tif", "mapped", "1")]
    assert rows[0]["error"].startswith("its figures could not be read"), "the earlier 'map' is no raster"


def test_skip_existing_starts_no_engine_when_every_map_is_there(three_rasters, capsys):
    folder, make = three_rasters
    out = _earlier_maps(folder, "abc")
    made = make({})
    assert batch.main([str(folder), "--out", str(out), "--skip-existing"]) == 0
    printed = capsys.readouterr().out
    assert not made and "Engine:" not in printed
    assert "Done: 0 of 3 raster(s) mapped, 3 already there, 0 failed" in printed


def test_without_skip_existing_a_map_there_is_made_again(three_rasters, capsys):
    folder, make = three_rasters
    out = _earlier_maps(folder, "a")
    made = make({})
    assert batch.main([str(folder), "--out", str(out)]) == 0
    assert made[0].mapped == ["a.tif", "b.tif", "c.tif"]
    assert (out / "a_flood.tif").read_bytes() == b"new map"
    assert "Done: 3 of 3 raster(s) mapped, 0 failed" in capsys.readouterr().out


def test_an_interrupted_batch_stops_its_engine_and_says_how_to_go_on(three_rasters, capsys):
    folder, make = three_rasters
    made = make({"b.tif": KeyboardInterrupt()})
    assert batch.main([str(folder), "--out", str(folder / "maps")]) == 130
    printed = capsys.readouterr()
    assert made[0].mapped == ["a.tif"] and made[0].closed, "the engine is stopped"
    assert "Interrupted: 1 raster(s) mapped before it, 2 not" in printed.err
    assert "Run the same command with --skip-existing to map only those." in printed.err
    assert "Done:" not in printed.out
    with open(folder / "maps" / "flood_maps.csv", encoding="utf-8") as fh:
        assert [r["status"] for r in csv.DictReader(fh)] == ["mapped", "not mapped", "not mapped"]


def test_the_pre_event_image_is_left_out_of_the_rasters_and_given_with_each(three_rasters, capsys):
    folder, make = three_rasters
    made = make({})
    assert batch.main([str(folder), "--out", str(folder / "maps"), "--pre-event", str(folder / "a.tif")]) == 0
    printed = capsys.readouterr().out
    assert made[0].mapped == ["b.tif", "c.tif"] and made[0].options.pre_event_path == str(folder / "a.tif")
    assert "Left out: a.tif, the pre-event image (--pre-event), which each raster is compared with" in printed
    assert "Done: 2 of 2 raster(s) mapped, 0 failed" in printed


def test_a_pre_event_image_alone_or_unreadable_is_refused_before_any_engine(three_rasters, capsys):
    folder, make = three_rasters
    made = make({})
    a = str(folder / "a.tif")
    assert batch.main([a, "--out", str(folder / "maps"), "--pre-event", a]) == 2
    assert f"the only input is the pre-event image {a}; give the rasters of the event too." in capsys.readouterr().err
    (folder / "broken.tif").write_bytes(b"II*\x00" + bytes(64))
    assert batch.main([a, "--out", str(folder / "maps"), "--pre-event", str(folder / "broken.tif")]) == 2
    assert "error: --pre-event: " in capsys.readouterr().err
    assert not made


def test_a_pre_event_image_on_the_offline_engine_is_refused_before_it_loads(three_rasters, monkeypatch, capsys):
    folder, _ = three_rasters
    monkeypatch.setattr(batch, "has_vllm", lambda: True)
    monkeypatch.setattr(batch, "build_llm", lambda *a: pytest.fail("the engine must not load"))
    assert batch.main([str(folder / "b.tif"), "--out", str(folder / "maps"), "--engine", "offline",
                       "--pre-event", str(folder / "a.tif")]) == 2
    assert "--pre-event maps the pre-event image in the plugin's pipeline, which the offline engine does not run; " \
           "add --engine local." in capsys.readouterr().err


def _area_over(path, name: str = "area.geojson"):
    """A GeoJSON polygon over the raster at `path` (its bounds, in its CRS)."""
    import json

    import rasterio

    with rasterio.open(path) as src:
        left, bottom, right, top = src.bounds
        crs = src.crs.to_epsg()
    area = path.parent / name
    area.write_text(json.dumps({
        "type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{crs}"}},
        "features": [{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [
            [[left, top], [right, top], [right, bottom], [left, bottom], [left, top]]]}}]}))
    return area


def test_a_raster_the_area_misses_is_skipped_not_failed(three_rasters, capsys):
    """A folder of tiles over a region, given with the area of one place: the tile it misses (c.tif, 120 km east) is
    found from the bounds before the engine starts and left out; one whose stack the area misses (b.tif, as a
    product is found in the run) is left out too. Neither is a failure."""
    from plugin.core.errors import NothingToMap
    from scripts.scenes import generate_scene

    folder, make = three_rasters
    generate_scene(folder / "c.tif", seed=9422, width=32, height=32, centre_lonlat=(16.5, 45.0))
    area = _area_over(folder / "a.tif")
    made = make({"b.tif": NothingToMap("The mask polygons do not overlap the raster.", "")})
    out = folder / "maps"
    assert batch.main([str(folder), "--out", str(out), "--area", str(area)]) == 0
    printed = capsys.readouterr().out
    assert made[0].mapped == ["a.tif"], "c.tif never reaches the engine"
    assert "[2/3] skipped b.tif: the area of interest (--area) does not overlap it" in printed
    assert "[3/3] skipped c.tif: the area of interest (--area) does not overlap it" in printed
    assert "Done: 1 of 3 raster(s) mapped, 2 outside the area, 0 failed" in printed
    with open(out / "flood_maps.csv", encoding="utf-8") as fh:
        assert [(r["map"], r["status"], r["error"]) for r in csv.DictReader(fh)] == [
            ("a_flood.tif", "mapped", ""), ("b_flood.tif", "outside the area", ""),
            ("c_flood.tif", "outside the area", "")]


def test_an_area_that_misses_every_raster_is_an_error_before_any_engine(three_rasters, capsys):
    from scripts.scenes import generate_scene

    folder, make = three_rasters
    far = folder / "far"
    far.mkdir()
    generate_scene(far / "elsewhere.tif", seed=9423, width=32, height=32, centre_lonlat=(16.5, 45.0))
    area = _area_over(far / "elsewhere.tif")
    made = make({})
    assert batch.main([str(folder), "--out", str(folder / "maps"), "--area", str(area)]) == 2
    printed = capsys.readouterr()
    assert not made and "Engine:" not in printed.out
    assert f"the area of interest {area} overlaps none of the 3 raster(s)" in printed.err
    assert "its CRS is set right" in printed.err


class _MapEngine(_Engine):
    """The local engine writing a real map on the raster's grid: a square of water (12 x 12 pixels of 10 m)."""

    def map(self, input_path, output_path, options, progress):
        stats = super().map(input_path, output_path, options, progress)
        _real_map(input_path, output_path)
        return stats


def _real_map(input_path, output_path):
    import rasterio

    from plugin.core.output import output_profile

    with rasterio.open(input_path) as src, rasterio.open(output_path, "w", **output_profile(src)) as dst:
        classes = np.zeros((src.height, src.width), np.uint8)
        classes[4:16, 4:16] = 1
        dst.write(classes, 1)


def test_polygons_beside_each_map_counted_in_the_table(three_rasters, capsys):
    import json

    folder, make = three_rasters
    out = folder / "maps"
    made = make({}, _MapEngine)
    assert batch.main([str(folder), "--out", str(out), "--polygons"]) == 0
    printed = capsys.readouterr().out
    assert made[0].mapped == ["a.tif", "b.tif", "c.tif"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{n}_flood.{ext}" for n in "abc" for ext in ("tif", "geojson")] + ["flood_maps.csv"])
    assert f"[1/3] ok a.tif -> {out / 'a_flood.tif'}: " in printed
    assert f"; 1 water polygon(s) (flood 0.0144 km²) -> {out / 'a_flood.geojson'} (" in printed
    features = json.loads((out / "b_flood.geojson").read_text())["features"]
    assert [(f["properties"]["class"], f["properties"]["pixels"]) for f in features] == [("flood", 144)]
    with open(out / "flood_maps.csv", encoding="utf-8") as fh:
        assert [r["polygons"] for r in csv.DictReader(fh)] == [f"{n}_flood.geojson" for n in "abc"]


def test_skip_existing_traces_the_polygons_a_map_there_lacks_and_keeps_those_there(three_rasters, capsys):
    folder, make = three_rasters
    out = folder / "maps"
    out.mkdir()
    _real_map(folder / "a.tif", out / "a_flood.tif")  # an earlier run's maps: a without polygons, b with them
    _real_map(folder / "b.tif", out / "b_flood.tif")
    (out / "b_flood.geojson").write_text("earlier polygons")
    made = make({}, _MapEngine)
    assert batch.main([str(folder), "--out", str(out), "--skip-existing", "--polygons", "--min-area", "20000"]) == 0
    printed = capsys.readouterr().out
    assert made[0].mapped == ["c.tif"]
    assert f"[1/3] skipped a.tif: its map {out / 'a_flood.tif'} is already there; 0 water polygon(s) -> " \
           f"{out / 'a_flood.geojson'}, 1 under 20000 m² left out" in printed  # the square: 14,400 m²
    assert f"[2/3] skipped b.tif: its map {out / 'b_flood.tif'} is already there\n" in printed
    assert (out / "b_flood.geojson").read_text() == "earlier polygons"
    assert (out / "a_flood.geojson").is_file() and (out / "c_flood.geojson").is_file()
    assert "Done: 1 of 3 raster(s) mapped, 2 already there, 0 failed" in printed


def test_polygons_that_cannot_be_traced_fail_the_raster_and_keep_its_map(three_rasters, capsys):
    folder, make = three_rasters
    out = _earlier_maps(folder, "a")  # a "map" that is no raster
    made = make({}, _MapEngine)
    assert batch.main([str(folder), "--out", str(out), "--skip-existing", "--polygons"]) == 1
    printed = capsys.readouterr().out
    assert made[0].mapped == ["b.tif", "c.tif"]
    assert f"its map {out / 'a_flood.tif'} is written, but not its water polygons: " in printed
    assert (out / "a_flood.tif").read_bytes() == b"earlier map" and not (out / "a_flood.geojson").exists()
    assert "Done: 2 of 3 raster(s) mapped, 1 failed" in printed
    with open(out / "flood_maps.csv", encoding="utf-8") as fh:
        a = next(csv.DictReader(fh))
    assert a["status"] == "already there" and "not its water polygons" in a["error"] and a["polygons"] == ""


def test_min_area_without_polygons_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        batch.parse_args([str(tmp_path), "--out", str(tmp_path / "maps"), "--min-area", "100"])
    assert stop.value.code == 2
    assert "--min-area applies to the water polygons: add --polygons" in capsys.readouterr().err


def test_the_offline_engines_temporary_files_go_to_a_folder_removed_after_it(monkeypatch, tmp_path):
    """vLLM in the batch's process leaves its message queue sockets and vllm_dist_* files in the temporary
    directory: while the engine runs that is a folder of the batch's own, removed after it, and the process's
    temporary directory is restored."""
    import os
    import shutil
    import tempfile

    from plugin import batch_offline

    short = tempfile.mkdtemp(prefix="fm-", dir="/tmp")  # as short as the usual temporary directory
    try:
        monkeypatch.setenv("TMPDIR", short)
        monkeypatch.setattr(tempfile, "tempdir", None)
        with batch_offline.vllm_temporary_folder():
            inside = tempfile.gettempdir()
            assert os.environ["TMPDIR"] == inside and os.path.dirname(inside) == short
            assert os.path.basename(inside).startswith("floodmapper-vllm-")
            open(os.path.join(inside, "vllm_dist_0123"), "wb").close()
        assert os.listdir(short) == []
        assert os.environ["TMPDIR"] == short and tempfile.gettempdir() == short
    finally:
        shutil.rmtree(short)

    deep = tmp_path / ("d" * 90)  # a socket's path there would pass the 107 bytes Linux takes
    deep.mkdir()
    monkeypatch.setenv("TMPDIR", str(deep))
    monkeypatch.setattr(tempfile, "tempdir", None)
    with batch_offline.vllm_temporary_folder():
        assert tempfile.gettempdir() == str(deep) and os.environ["TMPDIR"] == str(deep)
    assert os.listdir(deep) == []
