"""The shipped Model Designer model resources/models/flood_outline.model3: map floods -> water polygons ->
one dissolved flood outline with its ellipsoidal area; loaded as the Model Designer loads it, listed by the
provider, and run headless with qgis_process against the real demo server."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio

from scripts.scenes import generate_scene, iou

# QGIS-facing: also run on QGIS 3.40 and the newest QGIS (scripts/test-qgis-versions)
pytestmark = pytest.mark.qgis_versions

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "resources" / "models" / "flood_outline.model3"
INPUTS = {"input", "backend", "server_url", "bands", "min_area"}
OUTPUTS = {"map_floods:flood_map", "dissolve:flood_outline"}


def test_model_file_loads_as_in_the_model_designer(provider_loaded):
    from qgis.core import QgsProcessingModelAlgorithm

    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(str(MODEL))
    assert model.displayName() == "Flood outline"
    children = model.childAlgorithms()
    assert {c.algorithmId() for c in children.values()} == {"floodmapper:map_floods", "native:aggregate"}
    for child_id, child in children.items():
        assert child.reattach(), f"{child_id}: {child.algorithmId()} is not available"
    # the outline is made from map_floods' water polygons
    sources = children["dissolve"].parameterSources()["INPUT"]
    assert [(s.outputChildId(), s.outputName()) for s in sources] == [("map_floods", "WATER_POLYGONS")]
    assert {p.name() for p in model.parameterDefinitions() if not p.isDestination()} == INPUTS
    assert {p.name() for p in model.destinationParameterDefinitions()} == OUTPUTS
    assert "ellipsoidal" in model.shortHelpString()


def test_provider_lists_the_shipped_model(provider_loaded):
    from qgis.core import QgsApplication

    alg = QgsApplication.processingRegistry().algorithmById("floodmapper:flood_outline")
    assert alg is not None
    assert alg.displayName() == "Flood outline" and alg.group() == "Models"
    instance = alg.create()  # what the Toolbox, the batch dialog and qgis_process run
    assert {p.name() for p in instance.parameterDefinitions() if not p.isDestination()} == INPUTS
    assert all(instance.childAlgorithm(c).algorithm() is not None for c in instance.childAlgorithms())


def test_plugin_menu_opens_a_copy_in_the_model_designer(plugin, main_window_iface):
    from processing.modeler.ModelerDialog import ModelerDialog

    before = len(ModelerDialog.dlgs)
    plugin.model_action.trigger()
    assert len(ModelerDialog.dlgs) == before + 1
    dialog = ModelerDialog.dlgs[-1]
    model = dialog.model()
    assert model.displayName() == "Flood outline"
    assert {c.algorithmId() for c in model.childAlgorithms().values()} == {"floodmapper:map_floods", "native:aggregate"}
    assert model.sourceFilePath() == ""  # Save asks where: the shipped file is never overwritten
    dialog.setDirty(False)  # closing asks nothing
    dialog.close()


@pytest.mark.vllm
@pytest.mark.parametrize("target", ["floodmapper:flood_outline", str(MODEL)], ids=["provider-id", "model-file"])
def test_model_runs_headless_to_an_outline_with_its_ellipsoidal_area(qgis_app, vllm_server, tmp_path, target):
    from qgis.core import QgsCoordinateReferenceSystem, QgsDistanceArea, QgsProject, QgsVectorLayer

    src = tmp_path / "geo.tif"
    truth = generate_scene(src, seed=9121, width=300, height=260, crs="EPSG:4326")
    flood, outline = tmp_path / "flood.tif", tmp_path / "outline.gpkg"
    env = dict(os.environ, FLOODMAPPER_QGIS_STATE=str(tmp_path / "qgis"))
    proc = subprocess.run(
        [str(ROOT / "scripts" / "qgis-process"), "--json", "run", target, "--",
         f"input={src}", "backend=0", f"server_url={vllm_server.url}",
         f"map_floods:flood_map={flood}", f"dissolve:flood_outline={outline}"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(proc.stdout[proc.stdout.index("{"):])["results"]
    assert Path(results["map_floods:flood_map"]) == flood

    with rasterio.open(flood) as ds:
        classes = ds.read(1)
    assert iou(classes, truth) >= 0.85
    layer = QgsVectorLayer(str(outline), "outline", "ogr")
    assert layer.isValid() and layer.featureCount() == 1
    (feature,) = layer.getFeatures()
    geometry = feature.geometry()
    assert geometry.isGeosValid()
    assert feature["water_pixels"] == int((classes == 1).sum())
    assert feature["water_polygons"] >= 1
    # the area field is ellipsoidal (a planimetric area of this EPSG:4326 outline would be in square degrees)
    measure = QgsDistanceArea()
    measure.setSourceCrs(QgsCoordinateReferenceSystem("EPSG:4326"), QgsProject.instance().transformContext())
    measure.setEllipsoid("EPSG:7030")
    assert feature["area_m2"] == pytest.approx(measure.measureArea(geometry), rel=1e-3)
    assert feature["area_km2"] == pytest.approx(feature["area_m2"] / 1e6)
    # and it is the flooded area of the map: water pixels times their cell areas on the ellipsoid
    with rasterio.open(flood) as ds:
        rows = np.arange(ds.height)
        lat_top = ds.transform.f + rows * ds.transform.e
        cell_m2 = np.array([measure.measureArea(_cell(ds.transform.c, lat, ds.transform.a, ds.transform.e))
                            for lat in lat_top])
    assert feature["area_m2"] == pytest.approx(float(((classes == 1).sum(axis=1) * cell_m2).sum()), rel=1e-3)


def _cell(x0: float, y0: float, dx: float, dy: float):
    from qgis.core import QgsGeometry, QgsPointXY

    ring = [QgsPointXY(x0, y0), QgsPointXY(x0 + dx, y0), QgsPointXY(x0 + dx, y0 + dy), QgsPointXY(x0, y0 + dy)]
    return QgsGeometry.fromPolygonXY([ring])
