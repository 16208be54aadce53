"""The plugin loads in QGIS, registers its provider, toolbar button and menu, and unloads cleanly."""

from __future__ import annotations

import pytest
from qgis.core import QgsApplication, QgsProject, QgsRasterLayer, QgsVectorLayer
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QCoreApplication, QEvent
from qgis.PyQt.QtWidgets import QPushButton

# QGIS-facing: also run on QGIS 3.40 and the newest QGIS (scripts/test-qgis-versions)
pytestmark = pytest.mark.qgis_versions

EXPECTED_PARAMS = {
    "INPUT", "BACKEND", "SERVER_URL", "MODEL", "TRANSPORT", "BANDS", "OVERLAP", "CONCURRENCY", "SCALE",
    "OFFSET", "OUTPUT", "PROBABILITY", "MODEL_SPEC",
}
EXPECTED_OUTPUTS = {"OUTPUT", "WATER_PIXELS", "VALID_PIXELS", "WATER_FRACTION", "WATER_AREA_KM2"}


def _flush_deletes() -> None:
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)


def test_provider_and_algorithm_registered(plugin):
    registry = QgsApplication.processingRegistry()
    provider = registry.providerById("floodmapper")
    assert provider is not None
    assert provider.name() == "Flood Mapper"
    alg = registry.algorithmById("floodmapper:map_floods")
    assert alg is not None
    assert alg.displayName() == "Map floods"
    assert {p.name() for p in alg.parameterDefinitions()} >= EXPECTED_PARAMS
    assert {o.name() for o in alg.outputDefinitions()} >= EXPECTED_OUTPUTS
    for param in alg.parameterDefinitions():
        assert param.help() or param.name() in ("INPUT", "OUTPUT", "PROBABILITY"), param.name()
    assert alg.shortHelpString()


def _raster_destinations():
    registry = QgsApplication.processingRegistry()
    params = [registry.algorithmById("floodmapper:map_floods").parameterDefinition(name)
              for name in ("OUTPUT", "PROBABILITY")]
    return params + [registry.algorithmById("floodmapper:compare_water_maps").parameterDefinition("OUTPUT")]


def test_raster_outputs_are_geotiff_only(plugin, tmp_path):
    """The file dialogs offer GeoTIFF alone and another format's name is refused."""
    from qgis.core import QgsProcessingContext

    context = QgsProcessingContext()
    for param in _raster_destinations():
        file_filter = param.createFileFilter()
        assert "*.tif" in file_filter and "*.img" not in file_filter, file_filter
        assert param.defaultFileExtension() == "tif"
        assert param.isSupportedOutputValue(str(tmp_path / "flood.tif"), context)[0]
        supported, error = param.isSupportedOutputValue(str(tmp_path / "flood.img"), context)
        assert not supported and ".img" in error


@pytest.fixture()
def default_raster_format_img():
    """The user's default raster output format (Processing ▸ General) set to ERDAS Imagine (.img)."""
    from qgis.core import QgsProcessingUtils, QgsRasterFileWriter, QgsSettings

    settings = QgsSettings()
    ways = [("qgis/configuration/default-output-raster-ext", "img"),  # QGIS 3.40+: the extension
            ("Processing/Configuration/DefaultOutputRasterLayerExt",  # QGIS 3.22: its index among GDAL's
             QgsRasterFileWriter.supportedFormatExtensions().index("img"))]
    for key, value in ways:
        before = settings.value(key)
        settings.setValue(key, value)
        took = QgsProcessingUtils.defaultRasterExtension() == "img"
        if took:
            yield
        settings.setValue(key, before) if before is not None else settings.remove(key)
        if took:
            return
    pytest.skip("this QGIS keeps the default raster output format under another setting")


def test_temporary_outputs_are_geotiff_whatever_the_default_format(plugin, default_raster_format_img):
    for param in _raster_destinations():
        assert param.generateTemporaryDestination().endswith(".tif"), param.name()


def test_toolbar_action_and_menu(qgis_app, qgis_iface, qgis_processing, clean_registry, monkeypatch):
    import floodmapper

    menu: list[tuple[str, str]] = []
    monkeypatch.setattr(qgis_iface, "addPluginToMenu", lambda name, action: menu.append((name, action.objectName())),
                        raising=False)
    instance = floodmapper.classFactory(qgis_iface)
    instance.initGui()
    try:
        assert instance.action in instance.toolbar.actions()
        assert instance.action.objectName() == "floodmapper_map_floods"
        assert instance.action.parent() is qgis_iface.mainWindow()
        assert menu == [("&Flood Mapper", "floodmapper_map_floods"), ("&Flood Mapper", "floodmapper_options"),
                        ("&Flood Mapper", "floodmapper_install_dependencies"),
                        ("&Flood Mapper", "floodmapper_flood_outline_model")]
    finally:
        instance.unload()


def test_unload_removes_everything(qgis_app, qgis_iface, qgis_processing, clean_registry):
    import floodmapper

    instance = floodmapper.classFactory(qgis_iface)
    instance.initGui()
    action, toolbar = instance.action, instance.toolbar
    assert QgsApplication.processingRegistry().providerById("floodmapper") is not None
    instance.unload()
    _flush_deletes()
    assert QgsApplication.processingRegistry().providerById("floodmapper") is None
    assert QgsApplication.processingRegistry().algorithmById("floodmapper:map_floods") is None
    assert sip.isdeleted(action)
    assert sip.isdeleted(toolbar)
    assert instance.action is None and instance.toolbar is None
    # loading again after unload works (plugin reloader)
    again = floodmapper.classFactory(qgis_iface)
    again.initGui()
    assert QgsApplication.processingRegistry().algorithmById("floodmapper:map_floods") is not None
    again.unload()


def test_toolbar_on_raster_opens_prefilled_dialog(plugin, qgis_iface, monkeypatch, tmp_path):
    import numpy as np
    import processing
    import rasterio
    from rasterio.transform import from_origin

    path = tmp_path / "scene.tif"
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=6, dtype="uint16",
                       crs="EPSG:32633", transform=from_origin(500000, 4600000, 30, 30)) as dst:
        dst.write(np.full((6, 8, 8), 1000, dtype="uint16"))
    layer = QgsRasterLayer(str(path), "scene")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    qgis_iface.setActiveLayer(layer)
    calls = []
    monkeypatch.setattr(processing, "execAlgorithmDialog", lambda alg, params: calls.append((alg, params)))
    from floodmapper.plugin.toolbelt import settings as stored

    stored.set_value("last_backend", 0)
    plugin.action.trigger()
    assert calls == [("floodmapper:map_floods", {"INPUT": layer.id(), "BACKEND": 0})]
    QgsProject.instance().removeMapLayer(layer.id())


def test_toolbar_on_vector_shows_hint(plugin, qgis_iface, monkeypatch):
    import processing

    layer = QgsVectorLayer("Point?crs=EPSG:4326", "points", "memory")
    QgsProject.instance().addMapLayer(layer)
    qgis_iface.setActiveLayer(layer)
    calls = []
    monkeypatch.setattr(processing, "execAlgorithmDialog", lambda *a: calls.append(a))
    qgis_iface.messageBar().clear_messages()
    plugin.action.trigger()
    assert calls == []
    from qgis.core import Qgis

    messages = qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Info)
    assert any("raster layer" in m for m in messages), messages
    QgsProject.instance().removeMapLayer(layer.id())


def test_algorithm_model_and_batch_dialogs_build(plugin, main_window_iface, tmp_path):
    """The dialogs QGIS builds from the parameter definitions: Map floods prefilled as the toolbar opens it,
    the shipped model's, and the batch dialog (a MagicMock-free iface: these hand it to C++)."""
    import numpy as np
    import processing
    import rasterio
    from processing.gui.BatchAlgorithmDialog import BatchAlgorithmDialog
    from rasterio.transform import from_origin

    path = tmp_path / "scene.tif"
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=6, dtype="uint16",
                       crs="EPSG:32633", transform=from_origin(500000, 4600000, 30, 30)) as dst:
        dst.write(np.arange(6 * 64, dtype="uint16").reshape(6, 8, 8))
    layer = QgsRasterLayer(str(path), "scene")
    QgsProject.instance().addMapLayer(layer)
    try:
        dialog = processing.createAlgorithmDialog("floodmapper:map_floods", plugin.dialog_parameters(layer))
        values = dialog.createProcessingParameters()
        assert values["INPUT"] == layer.id() and values["BACKEND"] == plugin.dialog_parameters(layer)["BACKEND"]
        assert set(values) >= EXPECTED_PARAMS - {"PROBABILITY"}  # optional outputs off by default are left out
        dialog.deleteLater()

        model_dialog = processing.createAlgorithmDialog("floodmapper:flood_outline", {"input": layer.id()})
        assert model_dialog.createProcessingParameters()["input"] == layer.id()
        model_dialog.deleteLater()

        alg = QgsApplication.processingRegistry().createAlgorithmById("floodmapper:map_floods")
        batch = BatchAlgorithmDialog(alg, parent=main_window_iface.mainWindow())
        panel = batch.mainWidget()
        assert panel.batchRowCount() >= 1
        assert panel.tblParameters.columnCount() >= len(EXPECTED_PARAMS)
        batch.deleteLater()
    finally:
        QgsProject.instance().removeMapLayer(layer.id())
        _flush_deletes()


def test_a_broken_copy_first_on_the_path_is_named_in_the_error(plugin, tmp_path, monkeypatch):
    """A package copy that shadows QGIS's own and does not import (here: its compiled part is missing, as in a
    copy made for another Python): the algorithm stops before any work and names that copy's folder."""
    import sys

    import numpy as np
    import processing
    import rasterio
    from qgis.core import QgsProcessingException
    from rasterio.transform import from_origin

    site = tmp_path / "other-python-site-packages"
    (site / "requests").mkdir(parents=True)
    (site / "requests" / "__init__.py").write_text("import requests._compiled\n")
    (site / "requests-2.32.3.dist-info").mkdir()
    (site / "requests-2.32.3.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: requests\nVersion: 2.32.3\n")
    water = tmp_path / "water.tif"
    with rasterio.open(water, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(500000, 4600000, 10, 10)) as ds:
        ds.write(np.ones((1, 8, 8), np.uint8))
    monkeypatch.syspath_prepend(str(site))
    for name in [m for m in sys.modules if m == "requests" or m.startswith("requests.")]:
        monkeypatch.delitem(sys.modules, name)
    out = tmp_path / "extent.tif"
    with pytest.raises(QgsProcessingException) as err:
        processing.run("floodmapper:compare_water_maps", {"INPUT": str(water), "PRE_EVENT": str(water),
                                                          "OUTPUT": str(out)})
    text = str(err.value)
    assert "requests: ModuleNotFoundError: No module named 'requests._compiled'" in text
    assert f"(the copy in {site})" in text
    assert "PYTHONPATH" in text
    assert not out.exists()


def test_the_dependency_bar_shows_a_version_range_whole(qgis_app, qgis_iface):
    """A message bar item renders its text as HTML: the '<' of a version range must not start a tag and hide
    the rest of the message (the packages after it, the folder, the Install button's reason)."""
    from types import SimpleNamespace

    from qgis.PyQt.QtWidgets import QTextEdit

    from floodmapper.plugin.gui.dependency_bar import BUTTON_NAME, DependencyBar

    summary = "rasterio (missing), affine 3.0.1 (needs >= 2.3 and < 3), requests (missing)"
    plan = SimpleNamespace(ok=False, blocked=[], install=["rasterio==1.4.4", "requests==2.32.3"],
                           summary=lambda: summary, install_text=lambda: "rasterio==1.4.4 & requests==2.32.3")
    bar = DependencyBar(qgis_iface)
    bar.show(plan)
    try:
        shown = "\n".join(w.toPlainText() for w in bar.item.findChildren(QTextEdit))
        assert "affine 3.0.1 (needs >= 2.3 and < 3), requests (missing). The algorithms are listed" in shown
        assert "rasterio==1.4.4 & requests==2.32.3 into" in shown
        assert qgis_iface.messageBar().findChild(QPushButton, BUTTON_NAME) is not None
    finally:
        bar.clear()


def test_the_menu_entry_offers_an_optional_package_without_a_warning(plugin, qgis_iface, monkeypatch):
    """Everything needed is there, pybase64 is not: the menu entry shows a note with Install, never a warning,
    and the QGIS log says what it would bring; with it there too, the entry says all is installed."""
    from qgis.core import Qgis

    from floodmapper.plugin.core import dependencies
    from floodmapper.plugin.gui.dependency_bar import BUTTON_NAME
    from floodmapper.plugin.toolbelt import log as qlog

    check = dependencies.check
    lines = []
    monkeypatch.setattr(qlog, "log", lambda message, *args, **kwargs: lines.append(message))

    def without(*modules):
        def find(requirement):
            return None if requirement.module in modules else dependencies.probe(requirement)
        return lambda: check(find=find)

    bar = qgis_iface.messageBar()
    bar.clear_messages()
    pushed = []
    push = bar.pushWidget
    monkeypatch.setattr(bar, "pushWidget", lambda item, level, *args: pushed.append((item, level))
                        or push(item, level, *args))
    monkeypatch.setattr(dependencies, "check", without("pybase64"))
    plugin.check_dependencies()
    try:
        assert plugin.plan.ok and [p.spec for p in plugin.plan.install] == ["pybase64==1.5.1"]
        assert bar.findChild(QPushButton, BUTTON_NAME) is not None
        assert [level for _, level in pushed] == [Qgis.MessageLevel.Info]
        assert bar.get_messages(Qgis.MessageLevel.Warning) == []
        assert any(line.startswith("Optional, not installed: pybase64 (faster tensor requests).")
                   and "pybase64 1.5.1" in line for line in lines), lines
    finally:
        plugin.dependency_bar.clear()
    monkeypatch.setattr(dependencies, "check", without())
    plugin.check_dependencies()
    assert plugin.plan.install == []
    assert any("All Python packages Flood Mapper needs are installed." in m
               for m in bar.get_messages(Qgis.MessageLevel.Success))
