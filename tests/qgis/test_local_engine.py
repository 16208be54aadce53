"""BACKEND = local engine: the plugin starts vLLM itself, reuses it, recovers from a crash and leaves nothing.

Each engine start costs ~1 min on this CPU, so one test walks the whole lifecycle in order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from scripts.scenes import class_iou, flood_classes, generate_pair, generate_scene, iou
from tests.fixtures.engine_processes import engine_leftovers, engine_pids

pytestmark = [pytest.mark.vllm, pytest.mark.engine]

ROOT = Path(__file__).resolve().parents[2]


def _map(src, out):
    import processing

    t0 = time.monotonic()
    result = processing.run("floodmapper:map_floods", {"INPUT": str(src), "BACKEND": 1, "OUTPUT": str(out)})
    return result, time.monotonic() - t0


def test_engine_lifecycle_through_the_plugin(qgis_app, qgis_iface, qgis_processing, tmp_path, capsys, monkeypatch):
    """The engine runs float32 (FLOODMAPPER_DTYPE), so that the rasters go in tiles on any CPU: the kill in step 3
    comes while tiles are under way (a CPU with fast float16 would map each raster by one image-to-image request)."""
    from qgis.core import QgsApplication

    import floodmapper
    from floodmapper.plugin.core import engines as engine_mod

    monkeypatch.setenv("FLOODMAPPER_DTYPE", "float32")
    before = engine_pids()
    plugin = floodmapper.classFactory(qgis_iface)
    plugin.initGui()
    logged: list[str] = []
    QgsApplication.messageLog().messageReceived.connect(lambda m, tag, lvl: logged.append(m))
    scenes = []
    for i, seed in enumerate((5101, 5102)):
        src = tmp_path / f"s{i}.tif"
        scenes.append((src, generate_scene(src, seed=seed, width=256, height=256)))

    # 1. first run starts the engine
    result1, first = _map(scenes[0][0], tmp_path / "f0.tif")
    assert engine_mod.running_engines(), "the plugin's engine registry has no running engine"
    started = engine_pids() - before
    assert started, "no engine process was started"
    with rasterio.open(tmp_path / "f0.tif") as ds:
        assert iou(ds.read(1), scenes[0][1]) >= 0.85

    # 2. second run reuses it: same processes, no second start-up
    result2, second = _map(scenes[1][0], tmp_path / "f1.tif")
    assert engine_pids() - before == started
    assert second < first
    with capsys.disabled():
        print(f"\nlocal engine: first run {first:.1f} s (engine start included), second run {second:.1f} s")

    # 2b. a flood against its pre-event image: both images on the same engine, no second start
    import processing

    pre, post = tmp_path / "pre.tif", tmp_path / "post.tif"
    truth = flood_classes(*generate_pair(pre, post, seed=5106, width=256, height=256))
    processing.run("floodmapper:map_floods", {"INPUT": str(post), "PRE_EVENT": str(pre), "BACKEND": 1,
                                              "OUTPUT": str(tmp_path / "extent.tif")})
    assert engine_pids() - before == started
    with rasterio.open(tmp_path / "extent.tif") as ds:
        classes = ds.read(1)
    flood, permanent = class_iou(classes, truth, 1), class_iou(classes, truth, 2)
    with capsys.disabled():
        print(f"local engine, flood against the pre-event image: flood IoU {flood:.3f}, permanent {permanent:.3f}")
    assert flood >= 0.8 and permanent >= 0.8

    # 3. the engine is killed in the middle of a run (kill -9 of its group, as an OOM kill does): the run says
    #    so, starts it again on the same port and goes on from the tiles not yet done
    import processing
    from qgis.core import QgsProcessingFeedback

    big = tmp_path / "big.tif"
    big_truth = generate_scene(big, seed=5107, width=768, height=768)
    victim = max(started)
    pgid = os.getpgid(victim)

    class KillMidRun(QgsProcessingFeedback):
        fired = False

        def setProgress(self, percent):  # noqa: N802 (Qt naming)
            super().setProgress(percent)
            if percent > 30 and not self.fired:
                self.fired = True
                os.killpg(pgid, signal.SIGKILL)

    feedback = KillMidRun()
    logged.clear()
    t0 = time.monotonic()
    result3 = processing.run("floodmapper:map_floods", {"INPUT": str(big), "BACKEND": 1,
                                                        "OUTPUT": str(tmp_path / "f2.tif")}, feedback=feedback)
    with capsys.disabled():
        print(f"local engine killed mid-run: the run went on and took {time.monotonic() - t0:.0f} s")
    assert feedback.fired and Path(result3["OUTPUT"]).exists()
    QgsApplication.processEvents()  # log messages from the job's worker threads arrive queued
    assert any("exited" in m.lower() and "restarting" in m.lower() for m in logged), logged[-10:]
    with rasterio.open(result3["OUTPUT"]) as ds:
        assert iou(ds.read(1), big_truth) >= 0.85
    restarted = engine_pids() - before
    assert restarted and not (restarted & started)

    # 4. unload: no engine process of ours is left
    QgsApplication.messageLog().messageReceived.disconnect()
    plugin.unload()
    deadline = time.monotonic() + 30
    while engine_pids() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert engine_pids() - before == set()
    assert engine_mod.running_engines() == []


@pytest.mark.parametrize("configured", [False, True], ids=["nothing-configured", "env-vars-and-keep-alive"])
def test_qgis_process_local_engine_leaves_no_process(configured, tmp_path):
    """qgis_process runs no exit hooks: the engine stops when it exits, or, kept (keep-alive), is reused by the
    next qgis_process and stops by itself once idle; either way its files (its own, vLLM's) go with it."""
    from plugin.core.settings import DEMO_MODEL_DIR, default_vllm_python

    src = tmp_path / "scene.tif"
    truth = generate_scene(src, seed=5201 if configured else 5202, width=256, height=256)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOODMAPPER_")}
    env["FLOODMAPPER_QGIS_STATE"] = str(tmp_path / "qgis")
    keep_minutes = 1.0
    if configured:
        env["FLOODMAPPER_VLLM_PYTHON"] = default_vllm_python()
        env["FLOODMAPPER_MODEL"] = str(DEMO_MODEL_DIR)
        env["FLOODMAPPER_DTYPE"] = "float32"
        env["FLOODMAPPER_HOME"] = str(tmp_path / "home")  # its own kept-engine records
        env["FLOODMAPPER_ENGINE_KEEP_ALIVE"] = str(keep_minutes)
        # and an image-to-image limit below this raster's 0.066 MP: the engine must start in tensor mode
        ini = tmp_path / "qgis" / "profile" / "profiles" / "default" / "QGIS" / "QGIS3.ini"
        ini.parent.mkdir(parents=True)
        ini.write_text("[PythonPlugins]\nfloodmapper=true\nprocessing=true\n\n"
                       "[floodmapper]\nimage_max_megapixels=0.05\n")
    before = engine_pids()
    leftovers_before = engine_leftovers()

    def run(out: Path) -> tuple[str, float]:
        t0 = time.monotonic()
        proc = subprocess.run(
            ["bash", "-c", f'"{ROOT}/scripts/qgis-process" run floodmapper:map_floods -- '
                           f'INPUT="{src}" BACKEND=1 OUTPUT="{out}"'],
            capture_output=True, text=True, env=env, timeout=900, start_new_session=True,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        with rasterio.open(out) as ds:
            classes = ds.read(1)
        assert set(np.unique(classes)) <= {0, 1, 255}
        assert iou(classes, truth) >= 0.85
        return proc.stdout, time.monotonic() - t0

    first, first_s = run(tmp_path / "flood.tif")
    if configured:  # float32 goes in tiles: the engine ran without the IOProcessor plugin, in float32
        assert "Tensor transport:" in first, first[-3000:]
        assert "Tensors in float32: the local engine runs float32" in first, first[-3000:]
        assert f"kept {keep_minutes:g} minutes after the last run" in first, first[-3000:]
        kept = engine_pids() - before
        assert kept, "the kept engine must outlive the qgis_process that started it"
        second, second_s = run(tmp_path / "flood-again.tif")
        assert "Reusing the local vLLM engine kept running" in second, second[-3000:]
        assert "Starting the local vLLM engine" not in second, second[-3000:]
        print(f"qgis_process with the engine start: {first_s:.0f} s; reusing the kept engine: {second_s:.0f} s")
        assert engine_pids() - before == kept, "the second run reused the engine, it started none"
        records = list((tmp_path / "home" / "engines").glob("*.json"))
        assert len(records) == 1
        idle_from = time.monotonic()
        deadline = idle_from + keep_minutes * 60 + 60  # its idle time, a poll and the stop's grace
        while engine_pids() - before and time.monotonic() < deadline:
            time.sleep(1)
        assert engine_pids() - before == set(), "the kept engine must stop by itself once idle"
        assert time.monotonic() - idle_from >= keep_minutes * 60 - 10, "it stopped before its idle time"
        assert not records[0].exists()
        log = (tmp_path / "home" / "logs").glob("vllm-engine-*.log")
        assert any("kept engine stopping: unused for" in p.read_text() for p in log)
        assert engine_leftovers() - leftovers_before == set(), "the kept engine left files behind"
        return
    deadline = time.monotonic() + 45  # the watch's poll, vLLM's shutdown, SIGKILL after 20 s
    while engine_pids() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert engine_pids() - before == set(), "qgis_process left an engine running"
    assert engine_leftovers() - leftovers_before == set(), "the engine left files behind"
