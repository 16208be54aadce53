"""floodmapper:compare_water_maps in real QGIS (no server): water maps on different grids in, flood extent out,
styled; in a Model Designer model; bad input refused with nothing written."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.warp import Resampling, calculate_default_transform, reproject

from scripts.scenes import class_iou, flood_classes, synthesize, write_truth
from tests.fixtures.references import write_vector


def _water_maps(tmp_path, seed=9153, size=200):
    """The generator's own water before and during the flood as water maps: the event's on its scene grid, the
    earlier one in EPSG:4326 (nearest neighbour, ~10 m)."""
    from scripts.scenes import generate_scene

    scene = tmp_path / "scene.tif"
    generate_scene(scene, seed=seed, width=size, height=size)
    pre_truth = synthesize(seed, size, size, flood=False)[1]
    post_truth = synthesize(seed, size, size)[1]
    event = tmp_path / "event-water.tif"
    write_truth(event, post_truth, scene)
    before = tmp_path / "before-water-4326.tif"
    with rasterio.open(scene) as src:
        transform, width, height = calculate_default_transform(src.crs, "EPSG:4326", src.width, src.height,
                                                               *src.bounds, resolution=0.0001)
        data = np.full((height, width), 255, np.uint8)
        reproject(pre_truth, data, src_transform=src.transform, src_crs=src.crs, dst_transform=transform,
                  dst_crs="EPSG:4326", src_nodata=None, dst_nodata=255, resampling=Resampling.nearest)
    with rasterio.open(before, "w", driver="GTiff", width=width, height=height, count=1, dtype="uint8",
                       crs="EPSG:4326", transform=transform, nodata=255) as dst:
        dst.write(data, 1)
    return event, before, flood_classes(pre_truth, post_truth)


@pytest.mark.qgis_versions
def test_compare_water_maps_on_different_grids(provider_loaded, main_window_iface, tmp_path):
    import processing
    from qgis.core import QgsProject

    event, before, truth = _water_maps(tmp_path)
    out = tmp_path / "extent.tif"
    result = processing.runAndLoadResults("floodmapper:compare_water_maps", {
        "INPUT": str(event), "PRE_EVENT": str(before), "OUTPUT": str(out)})
    with rasterio.open(out) as ds, rasterio.open(event) as ev:
        assert (ds.crs, ds.transform, ds.width, ds.height) == (ev.crs, ev.transform, ev.width, ev.height)
        classes = ds.read(1)
    assert result["FLOOD_PIXELS"] == int((classes == 1).sum())
    assert result["PERMANENT_WATER_PIXELS"] == int((classes == 2).sum())
    flood, permanent = class_iou(classes, truth, 1), class_iou(classes, truth, 2)
    print(f"compare_water_maps, truth maps via EPSG:4326: flood IoU {flood:.3f}, permanent IoU {permanent:.3f}")
    assert flood > 0.95 and permanent > 0.9  # only the round trip through the other grid differs
    layer = QgsProject.instance().mapLayersByName("event-water – flood extent")[0]
    assert [c.label for c in layer.renderer().classes()] == ["Not water", "Flood water", "Permanent water"]
    assert (tmp_path / "extent.qml").exists()
    QgsProject.instance().removeMapLayer(layer.id())


@pytest.mark.qgis_versions
def test_compare_water_maps_in_a_model(provider_loaded, tmp_path):
    """As the Model Designer builds it: two model inputs feed the algorithm, its output is the model's."""
    import processing
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterRasterLayer,
    )

    event, before, truth = _water_maps(tmp_path, seed=9160, size=120)
    model = QgsProcessingModelAlgorithm("Flood extent", "tests")
    for name in ("event", "before"):
        model.addModelParameter(QgsProcessingParameterRasterLayer(name, name), QgsProcessingModelParameter(name))
    child = QgsProcessingModelChildAlgorithm("floodmapper:compare_water_maps")
    child.setChildId("compare")
    child.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromModelParameter("event")])
    child.addParameterSources("PRE_EVENT", [QgsProcessingModelChildParameterSource.fromModelParameter("before")])
    child.addParameterSources("REFERENCE_THRESHOLD", [QgsProcessingModelChildParameterSource.fromStaticValue(1)])
    child.addParameterSources("MIN_AREA", [QgsProcessingModelChildParameterSource.fromStaticValue(0)])
    output = QgsProcessingModelOutput("extent", "Flood extent")
    output.setChildId("compare")
    output.setChildOutputName("OUTPUT")
    child.setModelOutputs({"extent": output})
    model.addChildAlgorithm(child)
    ok, problems = model.validate()
    assert ok, problems
    out = tmp_path / "model-extent.tif"
    # the model's own name for its output: "compare:extent" on QGIS 3.22, "flood_extent" on 3.40 and 3.44
    (dest,) = [p.name() for p in model.destinationParameterDefinitions()]
    result = processing.run(model, {"event": str(event), "before": str(before), dest: str(out)})
    assert result[dest] == str(out)
    with rasterio.open(out) as ds:
        assert class_iou(ds.read(1), truth, 1) > 0.95


@pytest.mark.parametrize("case", ["no reference", "lines", "six bands"])
def test_compare_water_maps_bad_input(provider_loaded, tmp_path, case):
    import processing
    from qgis.core import QgsProcessingException

    event, before, _ = _water_maps(tmp_path, seed=9160, size=64)
    params = {"INPUT": str(event), "OUTPUT": str(tmp_path / "extent.tif")}
    if case == "lines":
        params["REFERENCE_WATER"] = write_vector(tmp_path / "rivers.gpkg", [
            {"type": "LineString", "coordinates": [(15.0, 45.0), (15.001, 45.001)]}], "EPSG:4326", "LineString")
        expected = "not polygons"
    elif case == "six bands":
        params.update(INPUT=str(tmp_path / "scene.tif"), PRE_EVENT=str(before))
        expected = "6 bands"
    else:
        expected = "No reference water"
    before_files = {p.name for p in tmp_path.iterdir()}
    with pytest.raises(QgsProcessingException) as err:
        processing.run("floodmapper:compare_water_maps", params)
    assert expected in str(err.value), str(err.value)
    assert {p.name for p in tmp_path.iterdir()} == before_files
