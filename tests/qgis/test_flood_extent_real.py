"""Flood extent in real QGIS against the real demo vLLM servers: map_floods with PRE_EVENT and/or
REFERENCE_WATER on generated pre-event/event pairs whose flood and permanent water are known, through
image-to-image and tensor-to-tensor, references on other grids and CRSs, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from scripts.scenes import class_iou, flood_classes, generate_pair, generate_scene, regrid_scene
from tests.fixtures.landsat_values import as_collection2
from tests.fixtures.processing_log import run_logged
from tests.fixtures.references import water_shapes, write_occurrence, write_vector

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[2]
MIN_FLOOD_IOU = 0.8
MIN_PERMANENT_IOU = 0.8


def _params(src, out, server, **extra):
    params = {"INPUT": str(src), "BACKEND": 0, "SERVER_URL": server.url, "OUTPUT": str(out)}
    params.update(extra)
    return params


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.transform, ds.crs


def _check_figures(result, classes, transform):
    pixel_km2 = abs(transform.a * transform.e) / 1e6
    flood, permanent = int((classes == 1).sum()), int((classes == 2).sum())
    assert result["FLOOD_PIXELS"] == flood
    assert result["PERMANENT_WATER_PIXELS"] == permanent
    assert result["WATER_PIXELS"] == flood + permanent
    assert result["FLOOD_AREA_KM2"] == pytest.approx(flood * pixel_km2, rel=1e-6)
    assert result["PERMANENT_WATER_AREA_KM2"] == pytest.approx(permanent * pixel_km2, rel=1e-6)


def _ious(name, classes, truth):
    flood, permanent = class_iou(classes, truth, 1), class_iou(classes, truth, 2)
    print(f"{name}: flood IoU {flood:.3f}, permanent-water IoU {permanent:.3f}")
    return flood, permanent


def _nothing_written(folder: Path, out: Path) -> None:
    assert not out.exists()
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


@pytest.mark.qgis_versions
def test_pre_event_image_to_image_styled_with_polygons(provider_loaded, main_window_iface, vllm_server, tmp_path):
    """The pair through image-to-image: classes, figures, IoUs, the two-colour style and its .qml, polygons."""
    import processing
    from qgis.core import QgsProject, QgsRasterLayer, QgsVectorLayer

    from floodmapper.plugin.processing.postprocessor import FLOOD_COLOR, PERMANENT_WATER_COLOR

    pre, post = tmp_path / "pre.tif", tmp_path / "scene.tif"
    truth = flood_classes(*generate_pair(pre, post, seed=9150, width=256, height=256))
    out, polys = tmp_path / "flood.tif", tmp_path / "water.gpkg"
    result = processing.runAndLoadResults("floodmapper:map_floods", _params(
        post, out, vllm_server, PRE_EVENT=str(pre), WATER_POLYGONS=str(polys)))

    classes, transform, _ = _read(out)
    assert set(np.unique(classes)) <= {0, 1, 2, 255}
    _check_figures(result, classes, transform)
    assert result["NO_REFERENCE_PIXELS"] == 0  # the pre-event image covers the whole scene
    flood, permanent = _ious("image-to-image", classes, truth)
    assert flood >= MIN_FLOOD_IOU and permanent >= MIN_PERMANENT_IOU

    layer = QgsProject.instance().mapLayersByName("scene – flood")[0]
    legend = {c.value: (c.label, c.color.name(), c.color.alpha()) for c in layer.renderer().classes()}
    assert legend[1] == ("Flood water", FLOOD_COLOR.name(), 255)
    assert legend[2] == ("Permanent water", PERMANENT_WATER_COLOR.name(), 255)
    assert legend[0][2] == 0
    assert "Flood water" in layer.abstract() and "no reference" in layer.abstract()
    sidecar = QgsRasterLayer(str(out), "from the file")  # the .qml beside it styles the file the same way
    assert {c.value: (c.label, c.color.name(), c.color.alpha()) for c in sidecar.renderer().classes()} == legend
    QgsProject.instance().removeMapLayer(layer.id())

    water = QgsVectorLayer(str(result["WATER_POLYGONS"]), "water", "ogr")
    by_class = {"flood": [0.0, 0], "permanent": [0.0, 0]}
    for feature in water.getFeatures():
        by_class[feature["class"]][0] += feature["area_m2"]
        by_class[feature["class"]][1] += feature["pixels"]
    assert by_class["flood"][1] == result["FLOOD_PIXELS"]
    assert by_class["permanent"][1] == result["PERMANENT_WATER_PIXELS"]
    assert by_class["flood"][0] / 1e6 == pytest.approx(result["FLOOD_AREA_KM2"], rel=0.01)
    assert by_class["permanent"][0] / 1e6 == pytest.approx(result["PERMANENT_WATER_AREA_KM2"], rel=0.01)


def test_pre_event_tensor_to_tensor(provider_loaded, vllm_tensor_server, tmp_path):
    import processing

    pre, post = tmp_path / "pre.tif", tmp_path / "scene.tif"
    truth = flood_classes(*generate_pair(pre, post, seed=9155, width=256, height=256))
    out, prob = tmp_path / "flood.tif", tmp_path / "probability.tif"
    result = processing.run("floodmapper:map_floods", _params(
        post, out, vllm_tensor_server, PRE_EVENT=str(pre), TRANSPORT=2, PROBABILITY=str(prob),
        MODEL_SPEC=str(ROOT / "resources" / "demo_model")))
    classes, transform, _ = _read(out)
    _check_figures(result, classes, transform)
    flood, permanent = _ious("tensor-to-tensor", classes, truth)
    assert flood >= MIN_FLOOD_IOU and permanent >= MIN_PERMANENT_IOU
    with rasterio.open(prob) as ds:  # the event's probability, committed with the classes
        p = ds.read(1)
    assert ((p > 0.5) == np.isin(classes, (1, 2))).mean() > 0.999


def test_pre_event_on_another_grid(provider_loaded, vllm_server, tmp_path):
    """The pre-event image in another CRS at 20 m: mapped on its own grid, brought onto the event's."""
    import processing

    pre10, post = tmp_path / "pre10.tif", tmp_path / "scene.tif"
    truth = flood_classes(*generate_pair(pre10, post, seed=9157, width=256, height=256))
    pre = tmp_path / "pre-utm32-20m.tif"
    regrid_scene(pre10, pre, "EPSG:32632", 20.0)
    out = tmp_path / "flood.tif"
    result = processing.run("floodmapper:map_floods", _params(post, out, vllm_server, PRE_EVENT=str(pre)))
    classes, transform, crs = _read(out)
    with rasterio.open(post) as src:
        assert (crs, transform, classes.shape) == (src.crs, src.transform, (src.height, src.width))
    _check_figures(result, classes, transform)
    flood, permanent = _ious("pre-event at 20 m in EPSG:32632", classes, truth)
    assert flood >= MIN_FLOOD_IOU and permanent >= 0.7  # 20 m pixels blur the shores of the permanent water


def _as_landsat_collection2(src, dst) -> None:
    """A scene written again as a Landsat 9 Collection 2 Level-2 export: SR_B1 (coastal, here the blue) first, then
    SR_B7 ... SR_B2, values (reflectance + 0.2) / 0.0000275, 0 = no data."""
    with rasterio.open(src) as ds:
        profile, reflectance = ds.profile, ds.read().astype(np.float64) * 1e-4
        empty = ds.read_masks(1) == 0
    stored = as_collection2(reflectance[[0, 5, 4, 3, 2, 1, 0]])
    stored[:, empty] = 0
    profile.update(count=7, nodata=0)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(stored)
        out.descriptions = ("SR_B1", "SR_B7", "SR_B6", "SR_B5", "SR_B4", "SR_B3", "SR_B2")


def test_pre_event_landsat_before_a_sentinel2_event(provider_loaded, vllm_server, tmp_path):
    """The pre-event image of another sensor and product: a Landsat Collection 2 Level-2 export at 30 m in another
    UTM zone, its bands in its own order and scaling, before a 10 m Sentinel-2-like event: each image's bands are
    chosen by their names and scaled by their own product's rule."""
    pre10, post = tmp_path / "pre10.tif", tmp_path / "scene.tif"
    truth = flood_classes(*generate_pair(pre10, post, seed=9165, width=256, height=256))
    pre30 = tmp_path / "pre30.tif"
    regrid_scene(pre10, pre30, "EPSG:32632", 30.0)
    landsat = tmp_path / "LC09_L2SP_pre_event.tif"
    _as_landsat_collection2(pre30, landsat)
    out = tmp_path / "flood.tif"
    result, log = run_logged("floodmapper:map_floods", _params(post, out, vllm_server, PRE_EVENT=str(landsat)))
    assert "The pre-event image is another product (7 band(s) (SR_B1, SR_B7" in log, log
    assert "Pre-event image: Landsat Collection 2" in log and "input bands [7, 6, 5, 4, 3, 2]" in log, log
    classes, transform, _ = _read(out)
    _check_figures(result, classes, transform)
    flood, permanent = _ious("Landsat pre-event at 30 m in EPSG:32632", classes, truth)
    assert flood >= 0.75 and permanent >= 0.75  # 30 m pixels blur the shores: flood and permanent water meet there


def test_pre_event_cloud_mask_at_20_m(provider_loaded, vllm_server, tmp_path):
    """The pre-event image's own SCL raster at 20 m (PRE_EVENT_CLOUD_MASK): under its clouds there is no
    reference, so the event's water there is flood water and counted as without reference; elsewhere the classes
    are as without clouds."""
    import processing
    from rasterio.transform import Affine

    pre, post = tmp_path / "pre.tif", tmp_path / "scene.tif"
    truth = flood_classes(*generate_pair(pre, post, seed=9164, width=256, height=256))
    with rasterio.open(pre) as src:
        crs, transform = src.crs, src.transform * Affine.scale(2)
    scl = np.full((128, 128), 4, np.uint8)
    scl[:32] = 9  # high-probability cloud over the top quarter (rows 0-63 at 10 m)
    clouds = tmp_path / "pre_SCL_20m.tif"
    with rasterio.open(clouds, "w", driver="GTiff", width=128, height=128, count=1, dtype="uint8", crs=crs,
                       transform=transform) as dst:
        dst.write(scl, 1)
    plain = processing.run("floodmapper:map_floods", _params(post, tmp_path / "plain.tif", vllm_server,
                                                             PRE_EVENT=str(pre)))
    before, _, _ = _read(plain["OUTPUT"])
    out = tmp_path / "flood.tif"
    result = processing.run("floodmapper:map_floods", _params(
        post, out, vllm_server, PRE_EVENT=str(pre), PRE_EVENT_CLOUD_MASK=str(clouds)))
    classes, transform, _ = _read(out)
    _check_figures(result, classes, transform)
    assert result["NO_REFERENCE_PIXELS"] == 64 * 256 and result["CLOUD_PIXELS"] == 0  # the event has no clouds
    assert (before[:64] == 2).sum() > 100  # there was permanent water under the clouds
    np.testing.assert_array_equal(classes[:64], np.where(before[:64] == 2, 1, before[:64]))  # now flood water
    np.testing.assert_array_equal(classes[64:], before[64:])  # the clear rows as without clouds
    assert result["FLOOD_PIXELS"] == plain["FLOOD_PIXELS"] + int((before[:64] == 2).sum())
    expected = truth.copy()
    expected[:64][expected[:64] == 2] = 1  # no reference under the clouds: all the event's water there is flood
    flood, _ = _ious("pre-event clouds over a quarter", classes, expected)
    assert flood >= MIN_FLOOD_IOU


def test_reference_polygons_in_another_crs(provider_loaded, vllm_server, tmp_path):
    """OpenStreetMap-like water polygons in EPSG:4326 for an event raster in UTM."""
    import processing

    pre, post = tmp_path / "pre.tif", tmp_path / "scene.tif"
    pre_truth, post_truth = generate_pair(pre, post, seed=9164, width=256, height=256)
    truth = flood_classes(pre_truth, post_truth)
    reference = write_vector(tmp_path / "osm-water.gpkg", water_shapes(pre_truth, pre, "EPSG:4326"), "EPSG:4326")
    out = tmp_path / "flood.tif"
    result = processing.run("floodmapper:map_floods", _params(post, out, vllm_server, REFERENCE_WATER=reference))
    classes, transform, _ = _read(out)
    _check_figures(result, classes, transform)
    assert result["NO_REFERENCE_PIXELS"] == 0  # polygons cover everything: outside them is land
    flood, permanent = _ious("reference polygons in EPSG:4326", classes, truth)
    assert flood >= MIN_FLOOD_IOU and permanent >= MIN_PERMANENT_IOU


def test_reference_raster_covering_half(provider_loaded, vllm_server, tmp_path):
    """A JRC-like occurrence raster (percent, threshold 50) in EPSG:4326 over the western half only: the east
    has no reference, so its water is flood, and the log and the output count those pixels."""
    import processing
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback

    pre, post = tmp_path / "pre.tif", tmp_path / "scene.tif"
    pre_truth, post_truth = generate_pair(pre, post, seed=9169, width=256, height=256)
    truth = flood_classes(pre_truth, post_truth)
    reference = write_occurrence(tmp_path / "occurrence.tif", pre_truth, pre, "EPSG:4326", 0.00005, 0.5)
    out = tmp_path / "flood.tif"
    logs: list[str] = []

    class Feedback(QgsProcessingFeedback):
        def pushInfo(self, info):  # noqa: N802 (Qt API)
            logs.append(info)
            super().pushInfo(info)

    result = processing.run("floodmapper:map_floods", _params(
        post, out, vllm_server, REFERENCE_WATER=reference, REFERENCE_THRESHOLD=50),
        context=QgsProcessingContext(), feedback=Feedback())
    classes, transform, _ = _read(out)
    _check_figures(result, classes, transform)
    share = result["NO_REFERENCE_PIXELS"] / result["VALID_PIXELS"]
    assert 0.4 < share < 0.6, share
    assert f"{result['NO_REFERENCE_PIXELS']:,} valid pixels" in "\n".join(logs)
    west, east = slice(0, 110), slice(146, 256)
    assert not (classes[:, east] == 2).any()  # no reference there: all water is flood
    assert np.array_equal(classes[:, east] == 1, np.isin(classes[:, east], (1, 2)))
    flood, permanent = _ious("occurrence >= 50 on the western half", classes[:, west], truth[:, west])
    assert flood >= MIN_FLOOD_IOU and permanent >= MIN_PERMANENT_IOU


def test_no_overlap_warns_and_maps_everything_as_flood(provider_loaded, vllm_server, tmp_path):
    import processing
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback

    post = tmp_path / "scene.tif"
    generate_scene(post, seed=9152, width=128, height=128)
    elsewhere = tmp_path / "elsewhere.tif"
    elsewhere_truth = generate_scene(elsewhere, seed=9152, width=128, height=128, centre_lonlat=(20.0, 50.0))
    reference = write_vector(tmp_path / "far.gpkg", water_shapes(elsewhere_truth, elsewhere, "EPSG:4326"),
                             "EPSG:4326")
    warnings: list[str] = []

    class Feedback(QgsProcessingFeedback):
        def pushWarning(self, warning):  # noqa: N802 (Qt API)
            warnings.append(warning)
            super().pushWarning(warning)

    out = tmp_path / "flood.tif"
    result = processing.run("floodmapper:map_floods", _params(post, out, vllm_server, REFERENCE_WATER=reference),
                            context=QgsProcessingContext(), feedback=Feedback())
    assert result["FLOOD_PIXELS"] == result["WATER_PIXELS"] > 0
    assert result["PERMANENT_WATER_PIXELS"] == 0
    assert any("does not overlap" in w and "flood" in w for w in warnings), warnings


@pytest.mark.parametrize("case", ["points", "lines", "pre-event bands", "threshold"])
def test_bad_reference_input_fails_before_anything_is_written(provider_loaded, vllm_server, tmp_path, case):
    import processing
    from qgis.core import QgsProcessingException

    pre, post = tmp_path / "pre.tif", tmp_path / "scene.tif"
    pre_truth, _ = generate_pair(pre, post, seed=9152, width=64, height=64)
    shapes = water_shapes(pre_truth, pre, "EPSG:4326")
    extra: dict = {}
    if case == "points":
        points = [{"type": "Point", "coordinates": s["coordinates"][0][0]} for s in shapes]
        extra["REFERENCE_WATER"] = write_vector(tmp_path / "points.gpkg", points, "EPSG:4326", "Point")
        expected = ("not polygons", "polygons")
    elif case == "lines":
        lines = [{"type": "LineString", "coordinates": s["coordinates"][0]} for s in shapes]
        extra["REFERENCE_WATER"] = write_vector(tmp_path / "lines.gpkg", lines, "EPSG:4326", "LineString")
        expected = ("not polygons", "buffer")
    elif case == "pre-event bands":  # no SWIR bands: the model's bands cannot all be found by name
        four = tmp_path / "pre-4-bands.tif"
        with rasterio.open(pre) as src:
            profile, data, names = src.profile, src.read()[:4], src.descriptions[:4]
        profile.update(count=4)
        with rasterio.open(four, "w", **profile) as dst:
            dst.write(data)
            dst.descriptions = names
        extra["PRE_EVENT"] = str(four)
        expected = ("4 band(s) (BLUE, GREEN, RED, NIR_NARROW)", "same bands")
    else:
        extra["REFERENCE_WATER"] = write_occurrence(tmp_path / "occ.tif", pre_truth, pre, "EPSG:4326", 0.0001)
        extra["REFERENCE_THRESHOLD"] = 300
        expected = ("REFERENCE_THRESHOLD 300", "0 to 255")
    before = {p.name for p in tmp_path.iterdir()}
    out = tmp_path / "flood.tif"
    with pytest.raises(QgsProcessingException) as err:
        processing.run("floodmapper:map_floods", _params(post, out, vllm_server, **extra))
    message = str(err.value)
    print(f"{case}: {message}")
    assert all(text in message for text in expected), message
    assert {p.name for p in tmp_path.iterdir()} == before  # nothing written, no temporary file left


def test_the_pre_event_cloud_mask_is_read_with_the_pre_event_image_only(provider_loaded, tmp_path):
    from qgis.core import QgsApplication, QgsProcessingContext, QgsRectangle

    from plugin.processing.reference_inputs import read_reference_inputs

    pre, post = tmp_path / "pre.tif", tmp_path / "scene.tif"
    generate_pair(pre, post, seed=9159, width=64, height=64)
    alg = QgsApplication.processingRegistry().createAlgorithmById("floodmapper:map_floods")
    context = QgsProcessingContext()

    def read(**parameters):
        return read_reference_inputs(alg, parameters, context, alg.parameterAsRasterLayer(
            {"INPUT": str(post)}, "INPUT", context).crs(), QgsRectangle())

    both = read(PRE_EVENT=str(pre), PRE_EVENT_CLOUD_MASK=str(post))
    assert both.error is None and both.pre_event_cloud_path == str(post) and both.warnings == []
    assert both.request_fields()["pre_event_cloud_mask_path"] == str(post)
    alone = read(PRE_EVENT_CLOUD_MASK=str(post))
    assert alone.pre_event_cloud_path == "" and len(alone.warnings) == 1
    assert "PRE_EVENT is empty, so it is not used" in alone.warnings[0]
    missing = read(PRE_EVENT=str(pre), PRE_EVENT_CLOUD_MASK=str(tmp_path / "nowhere.tif"))
    assert "PRE_EVENT_CLOUD_MASK is not a raster layer" in str(missing.error)
