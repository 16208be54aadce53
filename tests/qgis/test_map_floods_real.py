"""floodmapper:map_floods in real QGIS against a real vLLM server (the demo model, image-to-image)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from scripts.scenes import generate_scene, iou

# QGIS-facing: also run on QGIS 3.40 and the newest QGIS (scripts/test-qgis-versions)
pytestmark = [pytest.mark.vllm, pytest.mark.qgis_versions]

ROOT = Path(__file__).resolve().parents[2]
MIN_IOU = 0.85  # the demo model's quality gate (>= 0.9 on held-out scenes) lives in tests/e2e


def _grid(path):
    with rasterio.open(path) as ds:
        return ds.crs, ds.transform, ds.width, ds.height


def _classes(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.nodata


def _info_recorder(logs: list[str]):
    """A Processing feedback that also keeps every info line in `logs`."""
    from qgis.core import QgsProcessingFeedback

    class Feedback(QgsProcessingFeedback):
        def pushInfo(self, info):  # noqa: N802 (Qt API)
            logs.append(info)
            super().pushInfo(info)

    return Feedback()


def _params(src, out, server, **extra):
    params = {"INPUT": str(src), "BACKEND": 0, "SERVER_URL": server.url, "OUTPUT": str(out)}
    params.update(extra)
    return params


def test_map_floods_styled_layer_and_figures(provider_loaded, main_window_iface, vllm_server, tmp_path):
    import processing
    from qgis.core import QgsPalettedRasterRenderer, QgsProject

    src = tmp_path / "scene.tif"
    truth = generate_scene(src, seed=9101, width=320, height=288)
    out = tmp_path / "flood.tif"
    result = processing.runAndLoadResults("floodmapper:map_floods", _params(src, out, vllm_server))

    assert _grid(out) == _grid(src)
    classes, nodata = _classes(out)
    assert nodata == 255
    assert set(np.unique(classes)) <= {0, 1, 255}
    water = int((classes == 1).sum())
    valid = int((classes != 255).sum())
    assert result["WATER_PIXELS"] == water
    assert result["VALID_PIXELS"] == valid
    assert result["WATER_FRACTION"] == pytest.approx(water / valid)
    with rasterio.open(out) as ds:
        pixel_km2 = abs(ds.transform.a * ds.transform.e) / 1e6
    assert result["WATER_AREA_KM2"] == pytest.approx(water * pixel_km2, rel=1e-6)
    assert iou(classes, truth) >= MIN_IOU

    layers = QgsProject.instance().mapLayersByName("scene – flood")
    assert len(layers) == 1
    renderer = layers[0].renderer()
    assert isinstance(renderer, QgsPalettedRasterRenderer)
    labels = {c.value: (c.label, c.color.alpha()) for c in renderer.classes()}
    assert labels[1][0] == "Water" and labels[1][1] == 255
    assert labels[0][0] == "Not water" and labels[0][1] == 0
    from floodmapper.plugin.toolbelt.compat import layer_abstract

    assert "km²" in layer_abstract(layers[0]) and "km²" in layers[0].metadata().abstract()
    assert (tmp_path / "flood.qml").exists()  # the style travels with the file
    QgsProject.instance().removeMapLayer(layers[0].id())


def test_nodata_border_maps_to_output_nodata(provider_loaded, vllm_server, tmp_path):
    import processing

    src = tmp_path / "bordered.tif"
    truth = generate_scene(src, seed=9102, width=256, height=256, nodata=0, nodata_border=12)
    out = tmp_path / "bordered-flood.tif"
    processing.run("floodmapper:map_floods", _params(src, out, vllm_server))
    classes, _ = _classes(out)
    np.testing.assert_array_equal(classes == 255, truth == 255)
    assert iou(classes, truth) >= MIN_IOU


def test_raster_without_crs_is_mapped_and_says_its_area_is_unknown(provider_loaded, main_window_iface,
                                                                     vllm_server, tmp_path):
    """No CRS, no pixel area: the map is made, the area output is empty and the log and abstract say why."""
    import processing
    from qgis.core import QgsProcessingContext, QgsProject

    from floodmapper.plugin.toolbelt.compat import layer_abstract

    scene, src = tmp_path / "scene.tif", tmp_path / "nocrs.tif"
    truth = generate_scene(scene, seed=9112, width=256, height=256)
    with rasterio.open(scene) as ds:
        profile, data, descriptions = ds.profile, ds.read(), ds.descriptions
    profile.pop("crs")
    with rasterio.open(src, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = descriptions
    logs: list[str] = []
    out = tmp_path / "nocrs-flood.tif"
    result = processing.runAndLoadResults("floodmapper:map_floods", _params(src, out, vllm_server),
                                          context=QgsProcessingContext(), feedback=_info_recorder(logs))
    classes, _ = _classes(out)
    assert iou(classes, truth) >= MIN_IOU and result["WATER_PIXELS"] == int((classes == 1).sum())
    assert result["WATER_AREA_KM2"] is None or result["WATER_AREA_KM2"] != result["WATER_AREA_KM2"]
    summary = next(line for line in logs if line.startswith("Flood map of nocrs"))
    assert "area unknown (no CRS)" in summary and "nan" not in summary, summary
    layer = QgsProject.instance().mapLayersByName("nocrs – flood")[0]
    assert "area unknown (no CRS)" in layer_abstract(layer) and "nan" not in layer_abstract(layer)
    QgsProject.instance().removeMapLayer(layer.id())


def test_batch_rows_are_independent(provider_loaded, vllm_server, tmp_path):
    """As the batch dialog runs it: one context per row; a bad row fails clearly, the others are mapped."""
    from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingException, QgsProcessingFeedback

    rows = []
    for i, seed in enumerate((9103, 9104)):
        path = tmp_path / f"row{i}.tif"
        generate_scene(path, seed=seed, width=256, height=256)
        rows.append(path)
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00 this is not a GeoTIFF")
    rows.insert(1, broken)

    alg = QgsApplication.processingRegistry().algorithmById("floodmapper:map_floods")
    outputs, failures = [], []
    for i, path in enumerate(rows):
        context, feedback = QgsProcessingContext(), QgsProcessingFeedback()
        out = tmp_path / f"row{i}-flood.tif"
        params = _params(path, out, vllm_server)
        ok, message = alg.checkParameterValues(params, context)
        if not ok:
            failures.append((path, message))
            continue
        try:
            res, ok = alg.run(params, context, feedback)
        except QgsProcessingException as err:
            failures.append((path, str(err)))
            continue
        if ok:
            outputs.append(res["OUTPUT"])
        else:
            failures.append((path, "run returned not ok"))
    assert len(outputs) == 2 and all(Path(o).exists() for o in outputs)
    assert len(failures) == 1 and failures[0][0] == broken
    assert "INPUT" in failures[0][1] or "raster" in failures[0][1].lower()
    assert not (tmp_path / "row1-flood.tif").exists()


def test_output_over_input_is_refused(provider_loaded, vllm_server, tmp_path):
    import processing
    from qgis.core import QgsProcessingException

    src = tmp_path / "keep.tif"
    generate_scene(src, seed=9105, width=64, height=64)
    before = src.read_bytes()
    with pytest.raises(QgsProcessingException) as err:
        processing.run("floodmapper:map_floods", _params(src, src, vllm_server))
    assert "input" in str(err.value).lower()
    assert src.read_bytes() == before


def test_cancel_stops_at_once_and_leaves_nothing(provider_loaded, vllm_server, tmp_path):
    from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingException, QgsProcessingFeedback

    src = tmp_path / "big.tif"
    generate_scene(src, seed=9106, width=2048, height=2048)  # ~64 tiles: far longer than the cancel delay
    out = tmp_path / "big-flood.tif"
    alg = QgsApplication.processingRegistry().algorithmById("floodmapper:map_floods")
    context, feedback = QgsProcessingContext(), QgsProcessingFeedback()
    cancelled_at = []

    def cancel_soon():
        time.sleep(1.0)
        cancelled_at.append(time.monotonic())
        feedback.cancel()

    threading.Thread(target=cancel_soon, daemon=True).start()
    with pytest.raises(QgsProcessingException) as err:  # catchExceptions=False: run() raises instead of ok=False
        alg.run(_params(src, out, vllm_server), context, feedback, {}, False)
    stopped = time.monotonic() - cancelled_at[0]
    assert "cancel" in str(err.value).lower()
    assert stopped < 3.0, f"took {stopped:.1f} s to stop after cancel"
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_qgis_process_headless_remote(vllm_server, tmp_path):
    src = tmp_path / "headless.tif"
    truth = generate_scene(src, seed=9107, width=256, height=256)
    out = tmp_path / "headless-flood.tif"
    env = dict(os.environ, FLOODMAPPER_QGIS_STATE=str(tmp_path / "qgis"))
    proc = subprocess.run(
        [str(ROOT / "scripts" / "qgis-process"), "--json", "run", "floodmapper:map_floods", "--",
         f"INPUT={src}", "BACKEND=0", f"SERVER_URL={vllm_server.url}", f"OUTPUT={out}"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    payload = json.loads(proc.stdout[proc.stdout.index("{"):])
    results = payload["results"]
    assert _grid(out) == _grid(src)
    classes, _ = _classes(out)
    assert results["WATER_PIXELS"] == int((classes == 1).sum())
    assert iou(classes, truth) >= MIN_IOU


@pytest.mark.parametrize("kind", ["url", "zip"])
def test_qgis_process_takes_a_url_and_a_zip_member(vllm_server, tmp_path, kind):
    """Headless, Processing loads a layer from text only when it names a file: a COG's URL (/vsicurl/) and a
    member of a downloaded zip (/vsizip/) are loaded with GDAL by the algorithm and mapped like the file."""
    import zipfile

    from tests.fixtures.range_http import serve_directory

    src = tmp_path / "scene.tif"
    truth = generate_scene(src, seed=9131, width=256, height=256)
    out = tmp_path / "flood.tif"
    env = dict(os.environ, FLOODMAPPER_QGIS_STATE=str(tmp_path / "qgis"))

    def qgis_process(source):
        return subprocess.run(
            [str(ROOT / "scripts" / "qgis-process"), "--json", "run", "floodmapper:map_floods", "--",
             f"INPUT={source}", "BACKEND=0", f"SERVER_URL={vllm_server.url}", "TRANSPORT=1", f"OUTPUT={out}"],
            capture_output=True, text=True, env=env, timeout=600)

    if kind == "url":
        with serve_directory(str(tmp_path)) as base:
            source = f"/vsicurl/{base}/scene.tif"
            proc = qgis_process(source)
        sent = f"url {base}/scene.tif"  # the server fetched it itself
    else:
        with zipfile.ZipFile(tmp_path / "download.zip", "w") as zf:
            zf.write(src, "download/scene.tif")
        source = f"/vsizip/{tmp_path / 'download.zip'}/download/scene.tif"
        proc = qgis_process(source)
        sent = "not a file of its own"  # a temporary GeoTIFF copy went to the server
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sent in proc.stdout + proc.stderr
    results = json.loads(proc.stdout[proc.stdout.index("{"):])["results"]
    assert _grid(out) == _grid(src)
    classes, _ = _classes(out)
    assert results["WATER_PIXELS"] == int((classes == 1).sum()) and iou(classes, truth) >= MIN_IOU


def test_water_polygons_area_matches_raster_geographic(provider_loaded, vllm_server, tmp_path):
    """EPSG:4326 scene: polygon areas (ellipsoidal) sum to the raster's equal-area water figure within 1 %."""
    import processing
    from qgis.core import QgsVectorLayer

    src = tmp_path / "geo.tif"
    generate_scene(src, seed=9108, width=300, height=260, crs="EPSG:4326")
    out = tmp_path / "geo-flood.tif"
    polys = tmp_path / "geo-water.gpkg"
    result = processing.run("floodmapper:map_floods", _params(
        src, out, vllm_server, WATER_POLYGONS=str(polys), MIN_AREA=0))
    assert _grid(out) == _grid(src)
    layer = QgsVectorLayer(str(result["WATER_POLYGONS"]), "water", "ogr")
    assert layer.isValid() and layer.featureCount() > 0
    total_m2 = sum(f["area_m2"] for f in layer.getFeatures())
    assert sum(f["pixels"] for f in layer.getFeatures()) == result["WATER_PIXELS"]
    assert total_m2 / 1e6 == pytest.approx(result["WATER_AREA_KM2"], rel=0.01)
    # MIN_AREA drops the specks, never the big areas; a Shapefile takes the fields as they are (254 at most)
    biggest = max(f["area_m2"] for f in layer.getFeatures())
    filtered = processing.run("floodmapper:map_floods", _params(
        src, tmp_path / "geo-flood2.tif", vllm_server, WATER_POLYGONS=str(tmp_path / "big.shp"),
        MIN_AREA=biggest / 2))
    big = QgsVectorLayer(str(filtered["WATER_POLYGONS"]), "big", "ogr")
    assert 1 <= big.featureCount() < layer.featureCount()
    assert 0 < big.fields().field("class").length() <= 254
    assert {f["class"] for f in big.getFeatures()} == {"flood"}


def test_tensor_transport_through_the_algorithm(provider_loaded, main_window_iface, vllm_tensor_server, tmp_path):
    """TRANSPORT=tensor with MODEL_SPEC = the model folder, against a server without the IOProcessor plugin:
    the same styled map and figures, plus the water probability raster, loaded with its colour ramp, which its
    .qml gives it wherever the file is opened."""
    import processing
    from qgis.core import QgsProcessingContext, QgsProject, QgsRasterLayer, QgsSingleBandPseudoColorRenderer

    from floodmapper.plugin.processing.postprocessor import PROBABILITY_RAMP
    from floodmapper.plugin.toolbelt.compat import layer_abstract

    src = tmp_path / "scene.tif"
    truth = generate_scene(src, seed=9111, width=400, height=300, crs="EPSG:4326")
    out, prob = tmp_path / "flood.tif", tmp_path / "water-probability.tif"
    logs: list[str] = []
    result = processing.runAndLoadResults("floodmapper:map_floods", _params(
        src, out, vllm_tensor_server, TRANSPORT=2, MODEL_SPEC=str(ROOT / "resources" / "demo_model"),
        PROBABILITY=str(prob)), context=QgsProcessingContext(), feedback=_info_recorder(logs))
    assert _grid(out) == _grid(src) and _grid(prob) == _grid(src)
    classes, nodata = _classes(out)
    assert nodata == 255 and iou(classes, truth) >= MIN_IOU
    assert result["WATER_PIXELS"] == int((classes == 1).sum())
    with rasterio.open(prob) as ds:
        p = ds.read(1)
    assert ((p > 0.5) == (classes == 1)).mean() > 0.999  # the probability agrees with the classes
    text = "\n".join(logs)
    assert "Tensor transport:" in text and "bytes logits" in text, text[-2000:]

    def ramp(layer):
        renderer = layer.renderer()
        assert isinstance(renderer, QgsSingleBandPseudoColorRenderer), type(renderer).__name__
        assert (renderer.classificationMin(), renderer.classificationMax()) == (0.0, 1.0)
        items = renderer.shader().rasterShaderFunction().colorRampItemList()
        return [(i.value, i.color.name(), i.color.alpha(), i.label) for i in items]

    expected = [(value, color.name(), color.alpha(), label) for value, color, label in PROBABILITY_RAMP]
    loaded = QgsProject.instance().mapLayersByName("scene – water probability")
    assert len(loaded) == 1
    assert ramp(loaded[0]) == expected
    assert "km²" in layer_abstract(loaded[0])  # the run's figures, as in the flood layer
    assert ramp(QgsRasterLayer(str(prob), "from the file")) == expected  # the .qml beside it
    for layer in loaded + QgsProject.instance().mapLayersByName("scene – flood"):
        QgsProject.instance().removeMapLayer(layer.id())


@pytest.mark.parametrize("transport", ["image", "tensor"])
def test_a_raster_inside_a_zip_as_the_browser_adds_it(provider_loaded, request, tmp_path, transport):
    """A band stack inside a downloaded zip, added from the Browser as a `/vsizip/` layer, maps as the same
    raster unzipped does: the tensor transport reads it in place, image-to-image sends the server a temporary
    GeoTIFF of it (the server reads files by path)."""
    import zipfile

    import processing
    from qgis.core import QgsProcessingContext, QgsProject, QgsRasterLayer

    server = request.getfixturevalue("vllm_server" if transport == "image" else "vllm_tensor_server")
    plain = tmp_path / "scene.tif"
    truth = generate_scene(plain, seed=9121, width=300, height=260)
    archive = tmp_path / "S2_download.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(plain, "S2_download/scene.tif")
    layer = QgsRasterLayer(f"/vsizip/{archive}/S2_download/scene.tif", "scene in zip", "gdal")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    try:
        extra = {"TRANSPORT": 1} if transport == "image" else {
            "TRANSPORT": 2, "MODEL_SPEC": str(ROOT / "resources" / "demo_model")}
        logs: list[str] = []
        context = QgsProcessingContext()
        context.setProject(QgsProject.instance())
        zipped = processing.run("floodmapper:map_floods", _params(layer.id(), tmp_path / "zipped.tif", server,
                                                                   **extra),
                                context=context, feedback=_info_recorder(logs))
        unzipped = processing.run("floodmapper:map_floods", _params(plain, tmp_path / "plain.tif", server, **extra))
    finally:
        QgsProject.instance().removeMapLayer(layer.id())
    classes, _ = _classes(tmp_path / "zipped.tif")
    assert _grid(tmp_path / "zipped.tif") == _grid(plain)
    assert np.array_equal(classes, _classes(tmp_path / "plain.tif")[0])
    assert iou(classes, truth) >= MIN_IOU
    assert zipped["WATER_PIXELS"] == unzipped["WATER_PIXELS"]
    if transport == "image":
        assert any("not a file of its own" in line for line in logs), logs
        sent = [line.split("(path ", 1)[1].split(",", 1)[0] for line in logs if "Request sent (path " in line]
        assert len(sent) == 1 and sent[0].endswith(".tif") and not os.path.exists(sent[0])  # the copy is gone
