"""Offline batch (plugin/batch.py) with the real vLLM engine in the vLLM environment's Python, on both of its
engines: vLLM in the batch's process (IOProcessor, float16) and the plugin's local engine (tensor transport).

Three rasters, one of them corrupt: the two good ones become flood maps on the input grid (0/1, nodata 255
where the input has none), the bad one is reported, the exit code says that not all succeeded, and no
process or temp file is left behind.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from plugin.core.engine import is_demo_model
from plugin.core.provenance import (
    DTYPE_TAG,
    INPUT_TAG,
    MODEL_TAG,
    SERVER_TAG,
    TRANSPORT_TAG,
    file_name,
    read_provenance,
)
from plugin.core.settings import DEMO_MODEL_DIR, Settings
from scripts import scenes
from tests.fixtures.engine_processes import engine_leftovers, engine_pids

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.vllm, pytest.mark.engine]

MODEL = os.environ.get("FLOODMAPPER_MODEL") or str(DEMO_MODEL_DIR)


def _batch(tmp_path: Path, engine_args: list[str], env: dict[str, str] | None = None) -> tuple[str, dict, Path]:
    """Runs the batch on three rasters, one corrupt; its output, the scenes' known water and the output folder."""
    settings = Settings().with_env()
    assert Path(settings.vllm_python).exists(), f"no vLLM environment at {settings.vllm_python}"
    a, b, bad = tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "broken.tif"
    # Synthetic scenes with known water (scripts/scenes.py); seeds the demo model never trained on.
    truths = {
        "a_flood.tif": scenes.generate_scene(a, seed=9002, width=512, height=512),
        "b_flood.tif": scenes.generate_scene(b, seed=9003, width=300, height=260, nodata=0, nodata_border=12),
    }
    bad.write_bytes(b"II*\x00" + os.urandom(2000))  # a TIFF header and garbage
    out = tmp_path / "maps"
    leftovers = engine_leftovers()
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [settings.vllm_python, "-m", "plugin.batch", str(a), str(bad), str(b), "--out", str(out),
         "--model", MODEL, "--max-num-seqs", "4", *engine_args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    try:
        output, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    print(output[-3000:])
    print(f"batch took {time.monotonic() - t0:.1f} s")
    assert proc.returncode == 1, output[-3000:]
    assert "[2/3] FAILED broken.tif" in output
    assert "[1/3] ok a.tif" in output and "[3/3] ok b.tif" in output
    assert "Done: 2 of 3 raster(s) mapped, 1 failed" in output
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(proc.pid, 9)
        pytest.fail("the batch left processes of its group running")
    deadline = time.monotonic() + 30  # a local engine's group ends after the batch's (its parent watch)
    while engine_leftovers() - leftovers and time.monotonic() < deadline:
        time.sleep(0.5)
    assert engine_leftovers() - leftovers == set(), "the batch's engine left files in the temporary directory"
    return output, truths, out


def _check_maps(tmp_path: Path, truths: dict, out: Path) -> None:
    for name, truth in truths.items():
        with rasterio.open(tmp_path / name.replace("_flood", "")) as src, rasterio.open(out / name) as dst:
            assert (dst.width, dst.height, dst.crs, dst.transform) == (src.width, src.height, src.crs, src.transform)
            assert dst.count == 1 and dst.dtypes[0] == "uint8" and dst.nodata == 255
            data = dst.read(1)
        assert ((data == 255) == (truth == 255)).all(), "output nodata exactly where the input has none"
        assert set(np.unique(data[truth != 255]).tolist()) <= {0, 1}
        if is_demo_model(MODEL):
            iou = scenes.iou(np.where(data == 1, 1, 0), truth)
            print(f"{name}: water IoU {iou:.3f}")
            assert iou > 0.8, f"the demo model should find the scene's water (IoU {iou:.3f})"
    assert sorted(p.name for p in out.iterdir()) == ["a_flood.tif", "b_flood.tif", "flood_maps.csv"], \
        "no temp files left"


def _table(out: Path) -> list[dict]:
    """The rows of the batch's table of figures."""
    import csv

    with open(out / "flood_maps.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_batch_three_rasters_one_corrupt(tmp_path):
    output, truths, out = _batch(tmp_path, ["--engine", "offline"])
    assert "Engine: --engine offline: vLLM in this process, float16" in output
    _check_maps(tmp_path, truths, out)
    made = read_provenance(str(out / "a_flood.tif"))
    assert (made[INPUT_TAG], made[MODEL_TAG], made[TRANSPORT_TAG]) == ("a.tif", file_name(MODEL), "image")
    assert made[SERVER_TAG].startswith("vLLM 0.") and made[SERVER_TAG].endswith(" (offline engine)")


def test_batch_on_a_workstation_cpu_maps_in_float32_on_the_local_engine(tmp_path):
    """oneDNN held to AVX2, as on most workstations: float16 would run one to two orders of magnitude slower than
    float32 there, so `--engine auto` maps through the local engine in float32 (tensor transport), which is
    started once for the batch and stopped at its end."""
    before = engine_pids()
    output, truths, out = _batch(tmp_path, [], env={"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert "Engine: float32 (this CPU has neither" in output and "the local engine" in output
    assert output.count("Starting the local vLLM engine") == 1, "one engine for the whole batch"
    assert output.count("npy tensors in float32") == 2, "both good rasters went as float32 tiles"
    _check_maps(tmp_path, truths, out)
    made = read_provenance(str(out / "b_flood.tif"))
    assert (made[INPUT_TAG], made[TRANSPORT_TAG], made[DTYPE_TAG]) == ("b.tif", "tensor", "float32")
    deadline = time.monotonic() + 30
    while engine_pids() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not engine_pids() - before, "the batch's local engine was stopped at its end"


def test_batch_maps_a_folder_of_sentinel2_downloads_with_their_own_clouds(tmp_path):
    """A folder as a disaster-response team fills it from the Copernicus Data Space and USGS: an L2A product's .zip
    (and the .SAFE unpacked from it) and an L1C product's .SAFE folder (B02-B04 at 10 m, B8A-B12 at 20 m, values x
    10000 + 1000), a Landsat Collection 2 scene's band files (SR_B1-B7, ST_B10, QA_PIXEL at 30 m), another Landsat
    scene as the .tar USGS serves, and a plain GeoTIFF. Run by QGIS's Python, which has no vLLM, the batch maps on
    the local engine; with `--clouds` each product is stacked and scaled as the plugin does, its own classification
    (SCL, MSK_CLASSI) its cloud mask; the Landsat scene is one raster, stacked and scaled, its QA_PIXEL its cloud
    mask and not mapped on its own; the .tar is mapped from inside as one scene; the GeoTIFF is mapped with a
    warning that it has none."""
    import tarfile

    from scripts.scenes import synthesize
    from tests.fixtures.band_sets import LANDSAT, QA_CLEAR, QA_CLOUD, write_landsat
    from tests.fixtures.sentinel2_safe import L1C_NAME, NAME, write_l1c, write_l2a

    downloads = tmp_path / "downloads"
    refl, truth = synthesize(9411, 384, 324)  # BLUE, GREEN, RED, NIR_NARROW, SWIR_1, SWIR_2 = B02 ... B12
    dn = (np.rint(refl * 10000) + 1000).clip(1, 65535).astype(np.uint16)
    scl = np.full((162, 192), 4, np.uint8)
    scl[100:130, 20:80] = 9  # a cloud (20 m), rows 200-259 and columns 40-159 at 10 m
    write_l2a(downloads, dn, scl=scl, zipped=True)
    write_l2a(downloads, dn, scl=scl)  # unpacked beside its .zip, as often: the same scene, mapped once
    classi = np.zeros((2, 54, 64), np.uint8)
    classi[0, 10:20, 5:15] = 1  # an opaque cloud (60 m), rows 60-119 and columns 30-89 at 10 m
    write_l1c(downloads, dn, classi=classi)
    plain_truth = scenes.generate_scene(downloads / "plain.tif", seed=9412, width=256, height=256)
    qa = np.full((108, 128), QA_CLEAR, np.uint16)
    qa[20:40, 10:40] = QA_CLOUD  # a cloud on the Landsat scene's 30 m grid
    write_landsat(downloads, refl, qa)
    bundled = "LC08_L2SP_190029_20240509_20240510_02_T1"
    with tarfile.open(downloads / f"{bundled}.tar", "w") as tar:
        for path in write_landsat(tmp_path / "bundle", refl, scene=bundled).values():
            tar.add(path, arcname=os.path.basename(path))
    out = tmp_path / "floods"
    proc = subprocess.run(  # QGIS's Python: GDAL's bindings stack the products, vLLM runs in its own environment
        [sys.executable, "-m", "plugin.batch", str(downloads), "--out", str(out), "--model", MODEL, "--clouds"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Done: 5 of 5 raster(s) mapped, 0 failed" in proc.stdout
    assert "Engine: this Python has no vLLM: the local engine" in proc.stdout
    assert f"Left out: 2 file(s) that come with a set of band files ({LANDSAT}_QA_PIXEL.TIF, {LANDSAT}_ST_B10.TIF)" \
        in proc.stdout
    assert f"ok {LANDSAT}_SR (7 band files: B1, B2, B3, B4, B5, B6, B7) -> " in proc.stdout
    assert f"ok {bundled}_SR (7 band files: B1, B2, B3, B4, B5, B6, B7) -> " in proc.stdout
    assert f"Left out: {NAME}.zip, the same scene as {NAME}.SAFE, which is mapped" in proc.stdout
    assert "warning: --clouds: neither a Sentinel-2 product nor a set of band files" in proc.stdout
    for name, rows, cols in ((NAME, slice(200, 260), slice(40, 160)), (L1C_NAME, slice(60, 120), slice(30, 90))):
        with rasterio.open(out / f"{name}_flood.tif") as ds:
            assert (ds.width, ds.height, ds.res) == (384, 324, (10.0, 10.0))
            classes = ds.read(1)
        cloud = np.zeros(truth.shape, bool)
        cloud[rows, cols] = True
        np.testing.assert_array_equal(classes == 255, cloud, err_msg=f"{name}: no data exactly under its cloud")
        assert f"({int(cloud.sum())} cloud pixels left out" in proc.stdout
        if is_demo_model(MODEL):
            iou = scenes.iou(np.where(classes == 1, 1, 0), np.where(cloud, 0, truth))
            print(f"{name}: water IoU {iou:.3f}")
            assert iou > 0.8, f"the demo model should find the product's water (IoU {iou:.3f})"
    with rasterio.open(out / f"{LANDSAT}_SR_flood.tif") as ds:
        assert (ds.width, ds.height, ds.res) == (128, 108, (30.0, 30.0))
        landsat = ds.read(1)
    np.testing.assert_array_equal(landsat == 255, qa == QA_CLOUD, err_msg="Landsat: no data exactly under its cloud")
    if is_demo_model(MODEL):
        iou = scenes.iou(np.where(landsat == 1, 1, 0), np.where(qa == QA_CLOUD, 0, truth[::3, ::3]))
        print(f"{LANDSAT}: water IoU {iou:.3f}")
        assert iou > 0.7, f"the demo model should find the Landsat scene's water (IoU {iou:.3f})"
    with rasterio.open(out / f"{bundled}_SR_flood.tif") as ds:
        assert (ds.width, ds.height, ds.res) == (128, 108, (30.0, 30.0))
        bundled_map = ds.read(1)
    assert not (bundled_map == 255).any(), "its QA_PIXEL is clear everywhere"
    if is_demo_model(MODEL):
        iou = scenes.iou(np.where(bundled_map == 1, 1, 0), truth[::3, ::3])
        print(f"{bundled} (.tar): water IoU {iou:.3f}")
        assert iou > 0.7, f"the demo model should find the bundled scene's water (IoU {iou:.3f})"
    with rasterio.open(out / "plain_flood.tif") as ds:
        plain = ds.read(1)
    assert ((plain == 255) == (plain_truth == 255)).all()
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{NAME}_flood.tif", f"{L1C_NAME}_flood.tif",
                                                            f"{LANDSAT}_SR_flood.tif", f"{bundled}_SR_flood.tif",
                                                            "plain_flood.tif", "flood_maps.csv"]), \
        "no temp files left"


def test_batch_maps_only_inside_the_area_of_interest(tmp_path):
    """--area: a flood's area of interest as a GeoJSON polygon (in the scenes' UTM CRS), an L over the left half of
    one scene, missing the other. Run by the vLLM environment's Python, auto takes the local engine (the area is
    masked in the plugin's pipeline). As with the plugin's MASK, the map covers the polygon's bounds on the raster's
    grid, nodata exactly outside the polygon, and only those tiles are sent; the scene the area misses is skipped,
    found from the bounds before the engine starts, and is no failure. The engine runs float32, so that the tiles
    go by the tensor transport on any CPU (a CPU with fast float16 would send the area's image in one request)."""
    import json

    settings = Settings().with_env()
    scene, far, out = tmp_path / "scene.tif", tmp_path / "far.tif", tmp_path / "maps"
    truth = scenes.generate_scene(scene, seed=9004, width=512, height=512)
    scenes.generate_scene(far, seed=9005, width=256, height=256, centre_lonlat=(16.5, 45.0))  # ~120 km east
    with rasterio.open(scene) as src:
        x0, y0, res = src.transform.c, src.transform.f, src.transform.a
    # columns 0-255 of rows 0-255, columns 0-127 of rows 256-511
    left, right, top, bottom = x0 - 50, x0 + 256 * res, y0 + 50, y0 - 512 * res - 50
    x_mid, y_mid = x0 + 128 * res, y0 - 256 * res
    area = tmp_path / "area.geojson"
    area.write_text(json.dumps({
        "type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}},
        "features": [{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [
            [[left, top], [right, top], [right, y_mid], [x_mid, y_mid], [x_mid, bottom], [left, bottom],
             [left, top]]]}}]}))
    proc = subprocess.run(
        [settings.vllm_python, "-m", "plugin.batch", str(scene), str(far), "--out", str(out), "--model", MODEL,
         "--area", str(area)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900,
        env={**os.environ, "FLOODMAPPER_DTYPE": "float32"})
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Engine: --area, which the plugin's pipeline does: the local engine" in proc.stdout
    assert "Tensor transport: 256x512 px" in proc.stdout, "only the area's tiles are sent"
    assert "[1/2] ok scene.tif" in proc.stdout
    assert "[2/2] skipped far.tif: the area of interest (--area) does not overlap it" in proc.stdout
    assert "Done: 1 of 2 raster(s) mapped, 1 outside the area, 0 failed" in proc.stdout
    assert [(r["map"], r["status"]) for r in _table(out)] == [("scene_flood.tif", "mapped"),
                                                              ("far_flood.tif", "outside the area")]
    with rasterio.open(scene) as src, rasterio.open(out / "scene_flood.tif") as ds:
        assert (ds.width, ds.height, ds.transform) == (256, 512, src.transform), "the area's bounds on the grid"
        classes = ds.read(1)
    outside = np.zeros((512, 256), bool)
    outside[256:, 128:] = True
    np.testing.assert_array_equal(classes == 255, outside, err_msg="nodata exactly outside the polygon")
    if is_demo_model(MODEL):
        iou = scenes.iou(np.where(classes == 1, 1, 0), np.where(outside, 255, truth[:, :256]))
        print(f"inside the area: water IoU {iou:.3f}")
        assert iou > 0.8, f"the demo model should find the water inside the area (IoU {iou:.3f})"
    assert sorted(p.name for p in out.iterdir()) == ["flood_maps.csv", "scene_flood.tif"], "no temp files left"


def test_a_batch_stopped_by_ctrl_c_maps_the_rest_with_skip_existing(tmp_path):
    """Ctrl+C in the terminal (SIGINT to the batch's process group) while the second of two rasters is being
    mapped: the batch says what was mapped and how to go on, exits 130, stops its local engine and leaves the
    first map and no part of the second. The same command with --skip-existing maps the second only. The engine
    runs float32, so that the second raster goes in tiles (tensor transport) on any CPU, and the interrupt comes
    while they are under way."""
    import signal

    truths = {"a_flood.tif": scenes.generate_scene(tmp_path / "a.tif", seed=9430, width=256, height=256),
              "b_flood.tif": scenes.generate_scene(tmp_path / "b.tif", seed=9431, width=3072, height=3072)}
    out = tmp_path / "maps"
    command = [sys.executable, "-m", "plugin.batch", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"),
               "--out", str(out), "--model", MODEL]
    env = {**os.environ, "FLOODMAPPER_DTYPE": "float32"}
    before = engine_pids()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True,  # its own group, as a terminal's foreground job has
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal has
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.strip().startswith("Tensor transport:") and any("[1/2] ok a.tif" in seen for seen in lines):
                os.killpg(proc.pid, signal.SIGINT)  # the second raster's tiles are under way
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    output = "".join(lines)
    print(output[-3000:])
    assert proc.returncode == 130, output[-3000:]
    assert "[2/2]" not in output and "Traceback" not in output
    assert "Interrupted: 1 raster(s) mapped before it, 1 not (the one under way left no map behind). Run the same " \
           "command with --skip-existing to map only those." in output
    assert sorted(p.name for p in out.iterdir()) == ["a_flood.tif", "flood_maps.csv"], \
        "the first map, and no part of the second"
    assert [(r["map"], r["status"]) for r in _table(out)] == [("a_flood.tif", "mapped"), ("b_flood.tif", "not mapped")]
    deadline = time.monotonic() + 30
    while engine_pids() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not engine_pids() - before, "the interrupted batch stopped its local engine"
    first = (out / "a_flood.tif").stat().st_mtime_ns

    proc2 = subprocess.run(command + ["--skip-existing"], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=900, env=env)
    print(proc2.stdout[-3000:])
    assert proc2.returncode == 0, proc2.stdout[-3000:]
    assert f"[1/2] skipped a.tif: its map {out / 'a_flood.tif'} is already there" in proc2.stdout
    assert "[2/2] ok b.tif" in proc2.stdout and "Done: 1 of 2 raster(s) mapped, 1 already there, 0 failed" \
        in proc2.stdout
    assert (out / "a_flood.tif").stat().st_mtime_ns == first, "the earlier map is left as it is"
    _check_maps(tmp_path, truths, out)
    a, b = _table(out)
    assert (a["status"], b["status"]) == ("already there", "mapped")
    with rasterio.open(out / "a_flood.tif") as ds:
        assert int(a["water_pixels"]) == int((ds.read(1) == 1).sum()), "figures read from the map there"


def test_batch_compares_a_series_with_one_pre_event_image(tmp_path):
    """--pre-event: a folder holding the image before the flood, one during it and one after the water went back
    (the same as before). The pre-event image is left out of the rasters; each of the others is compared with it on
    the local engine: flood water (1) and water already there (2) as in the scenes' truth, and no flood at all in
    the image after. With --polygons, each map's flood and permanent water as GeoJSON beside it, adding up to the
    table's areas."""
    import json

    from scripts.scenes import class_iou, flood_classes, generate_pair

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    pre_truth, during_truth = generate_pair(downloads / "before.tif", downloads / "during.tif", seed=9440,
                                            width=256, height=256)
    scenes.generate_scene(downloads / "later.tif", seed=9440, width=256, height=256, flood=False)
    out = tmp_path / "floods"
    proc = subprocess.run(
        [sys.executable, "-m", "plugin.batch", str(downloads), "--out", str(out), "--model", MODEL,
         "--pre-event", str(downloads / "before.tif"), "--polygons"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Left out: before.tif, the pre-event image (--pre-event), which each raster is compared with" \
        in proc.stdout
    assert "Done: 2 of 2 raster(s) mapped, 0 failed" in proc.stdout
    assert proc.stdout.count("Mapping the pre-event image") == 2
    assert sorted(p.name for p in out.iterdir()) == ["during_flood.geojson", "during_flood.tif", "flood_maps.csv",
                                                      "later_flood.geojson", "later_flood.tif"], "no temp files left"
    during_row, later_row = _table(out)
    for row in (during_row, later_row):
        features = json.loads((out / row["polygons"]).read_text())["features"]
        for name, column in (("flood", "flood_km2"), ("permanent", "permanent_water_km2")):
            km2 = sum(f["properties"]["area_m2"] for f in features if f["properties"]["class"] == name) / 1e6
            assert f"{km2:.4f}" == row[column], (row["map"], name)
    assert "water polygon(s) (flood " in proc.stdout and f"-> {out / 'during_flood.geojson'}" in proc.stdout
    assert float(during_row["flood_km2"]) > 0 and later_row["flood_km2"] == "0.0000" < later_row["permanent_water_km2"]
    assert during_row["compared_with"] == "the pre-event image 'before.tif'"
    made = read_provenance(str(out / "during_flood.tif"))  # the extent map keeps what made its water
    # the transport the engine took for this CPU (image-to-image where float16 is its dtype), as the log says
    transport = "image" if re.search(r"Local engine: .*image-to-image", proc.stdout) else "tensor"
    assert (made[INPUT_TAG], made[TRANSPORT_TAG]) == ("during.tif", transport)
    assert during_row["model"] == made[MODEL_TAG] != "" and during_row["mapped_at_utc"][:2] == "20"
    with rasterio.open(out / "during_flood.tif") as ds:
        during = ds.read(1)
        assert ds.tags()["FLOODMAPPER_REFERENCE"] == "the pre-event image 'before.tif'"
    with rasterio.open(out / "later_flood.tif") as ds:
        later = ds.read(1)
    assert (later == 2).sum() > 0.02 * later.size, "the river and lakes are water already there before"
    assert (later == 1).sum() <= 0.01 * (later == 2).sum(), "no flood once the water went back"
    if is_demo_model(MODEL):
        truth = flood_classes(pre_truth, during_truth)
        flood, permanent = class_iou(during, truth, 1), class_iou(during, truth, 2)
        print(f"during_flood.tif: flood water IoU {flood:.3f}, permanent water IoU {permanent:.3f}")
        assert flood > 0.8 and permanent > 0.8, "the demo model should tell the flood from the water before"
