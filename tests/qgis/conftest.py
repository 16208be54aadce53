"""QGIS tests import the checkout as the installed plugin package `floodmapper`, as QGIS does."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "build" / "test-plugins"


def _link_plugin() -> None:
    PLUGINS.mkdir(parents=True, exist_ok=True)
    link = PLUGINS / "floodmapper"
    if not link.is_symlink() or link.resolve() != ROOT:
        if link.is_symlink():
            link.unlink()
        link.symlink_to(ROOT, target_is_directory=True)
    if str(PLUGINS) not in sys.path:
        sys.path.insert(0, str(PLUGINS))


_link_plugin()


@pytest.fixture
def clean_registry(qgis_app, qgis_processing):
    """No 'floodmapper' provider registered when the test starts."""
    drop_registered_provider()


@pytest.fixture
def plugin(qgis_app, qgis_iface, qgis_processing):
    """The plugin loaded through classFactory + initGui, unloaded afterwards."""
    import floodmapper

    drop_registered_provider()
    instance = floodmapper.classFactory(qgis_iface)
    instance.initGui()
    yield instance
    if instance.provider is not None:
        instance.unload()


@pytest.fixture
def main_window_iface(qgis_iface, monkeypatch):
    """pytest-qgis's iface with the main window's real parts that Processing's dialogs and result loading
    hand to C++ (a MagicMock there is a TypeError): the layer tree view on the project's layer tree (passed
    to C++ by processing.runAndLoadResults on QGIS >= 3.44), the browser model (the parameters panel), and
    iconSize with QGIS's default argument (the Model Designer)."""
    from qgis.core import QgsLayerTreeModel, QgsProject
    from qgis.gui import QgsBrowserGuiModel, QgsLayerTreeView
    from qgis.PyQt.QtCore import QSize

    view = QgsLayerTreeView()
    view.setModel(QgsLayerTreeModel(QgsProject.instance().layerTreeRoot(), view))
    browser = QgsBrowserGuiModel()
    monkeypatch.setattr(qgis_iface, "layerTreeView", lambda: view, raising=False)
    monkeypatch.setattr(qgis_iface, "browserModel", lambda: browser, raising=False)
    monkeypatch.setattr(qgis_iface, "iconSize", lambda dockedToolbar=False: QSize(24, 24), raising=False)
    yield qgis_iface
    view.deleteLater()
    browser.deleteLater()


_KEEP: list = []


@pytest.fixture(scope="session", autouse=True)
def _release_kept_providers(qgis_app):
    """The providers kept alive for the tests go while QGIS still runs (see tests/conftest.py)."""
    yield
    _KEEP.clear()


def drop_registered_provider() -> None:
    """Start a plugin test from a registry without a 'floodmapper' provider (another fixture may have one)."""
    from qgis.core import QgsApplication

    registry = QgsApplication.processingRegistry()
    existing = registry.providerById("floodmapper")
    if existing is not None:
        registry.removeProvider(existing)
    _KEEP.clear()


@pytest.fixture
def provider_loaded(qgis_app, qgis_processing):
    """Only the Processing provider (as qgis_process loads it), for algorithm tests."""
    from qgis.core import QgsApplication

    from floodmapper.plugin.processing.provider import FloodMapperProvider

    registry = QgsApplication.processingRegistry()
    if registry.providerById("floodmapper") is None:
        provider = FloodMapperProvider()
        registry.addProvider(provider)
        # keep the Python object alive, as the plugin does with self.provider: without it the wrapper is
        # garbage-collected and the registry is left with a bare C++ provider that has no algorithms
        _KEEP.append(provider)
    return registry.providerById("floodmapper")
