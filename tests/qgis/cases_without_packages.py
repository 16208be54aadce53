"""Run by tests/qgis/test_missing_packages.py in a QGIS Python where numpy, rasterio and requests (and the optional
pybase64) cannot be imported (tests/fixtures/import_blocker.py), with a private profile; never collected on its own.

Phase "install" (FLOODMAPPER_TEST_PHASE): the plugin loads and lists its algorithms, the message bar names
what is missing with an Install button, both algorithms end with the dependency message, the button
installs the pinned packages with pip into the profile, and they import at once, without a restart.
Phase "reload": a new QGIS process with the same profile finds the installed folder at plugin load.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from qgis.core import Qgis, QgsApplication, QgsProcessingException
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtWidgets import QPushButton

PHASE = os.environ["FLOODMAPPER_TEST_PHASE"]
SCENE = os.environ["FLOODMAPPER_TEST_SCENE"]
BLOCKED = ("numpy", "rasterio", "requests")
OPTIONAL = ("pybase64",)  # blocked too: the plugin runs without it, and Install brings it along
sys.path.insert(0, os.environ["FLOODMAPPER_TEST_PLUGINS"])  # holds floodmapper -> the checkout


def _packages_folder() -> Path:
    from floodmapper.plugin.toolbelt.dependencies import package_folder

    return package_folder()


@pytest.fixture(scope="module")
def loaded(qgis_app, qgis_iface, qgis_processing):
    import floodmapper

    instance = floodmapper.classFactory(qgis_iface)
    instance.initGui()
    yield instance
    instance.unload()


def _install_button(iface) -> QPushButton | None:
    return iface.messageBar().findChild(QPushButton, "floodmapper_install_dependencies")


def _bar_text(iface) -> str:
    from qgis.PyQt.QtWidgets import QLabel, QTextEdit

    texts = [w.text() for w in iface.messageBar().findChildren(QLabel)]
    texts += [w.toPlainText() for w in iface.messageBar().findChildren(QTextEdit)]
    return "\n".join(texts)


def _run(alg: str, parameters: dict) -> str:
    import processing

    with pytest.raises(QgsProcessingException) as caught:
        processing.run(alg, parameters)
    return str(caught.value)


@pytest.mark.skipif(PHASE != "install", reason="install phase")
class TestInstall:
    def test_packages_are_really_missing(self):
        for name in BLOCKED + OPTIONAL:
            with pytest.raises(ImportError):
                __import__(name)
        assert not _packages_folder().exists()

    def test_plugin_loads_and_lists_its_algorithms(self, loaded):
        registry = QgsApplication.processingRegistry()
        assert loaded.provider is not None
        assert registry.algorithmById("floodmapper:map_floods") is not None
        assert registry.algorithmById("floodmapper:prepare_model") is not None
        assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED]

    def test_message_bar_names_what_is_missing_with_install(self, loaded, qgis_iface):
        assert loaded.plan is not None and set(loaded.plan.missing) == set(BLOCKED)
        assert loaded.plan.faster_text() == "pybase64 (faster tensor requests)"  # offered, not required
        assert _install_button(qgis_iface) is not None
        text = _bar_text(qgis_iface)
        for name in BLOCKED + OPTIONAL:
            assert name in text, text
        assert str(_packages_folder()) in text

    def test_algorithms_end_with_the_message_not_a_traceback(self, loaded, tmp_path):
        out = tmp_path / "flood.tif"
        message = _run("floodmapper:map_floods", {"INPUT": SCENE, "BACKEND": 0, "SERVER_URL": "http://127.0.0.1:9",
                                                  "OUTPUT": str(out)})
        assert "Flood Mapper needs Python packages QGIS's Python lacks" in message
        assert "rasterio (missing)" in message and "requests (missing)" in message
        assert "Install" in message and "-m pip install --no-deps" in message and str(_packages_folder()) in message
        assert "Traceback" not in message
        assert not out.exists()
        message = _run("floodmapper:prepare_model", {"TTCONFIG": SCENE, "INPUT_SPEC": "{}", "WEIGHTS": SCENE,
                                                     "OUTPUT": str(tmp_path / "model")})
        assert "rasterio (missing)" in message and "Traceback" not in message
        message = _run("floodmapper:compare_water_maps", {"INPUT": SCENE, "PRE_EVENT": SCENE,
                                                          "OUTPUT": str(tmp_path / "extent.tif")})
        assert "rasterio (missing)" in message and "Traceback" not in message

    def test_install_button_installs_and_makes_them_importable(self, loaded, qgis_iface):
        qgis_iface.messageBar().clear_messages()
        t0 = time.monotonic()
        _install_button(qgis_iface).click()
        task = loaded.dependency_bar.task
        assert task is not None
        progress = []
        task.progressChanged.connect(progress.append)
        while loaded.dependency_bar.task is not None:
            QCoreApplication.processEvents()
            time.sleep(0.05)
            assert time.monotonic() - t0 < 900, "the installation did not end"
        print(f"installed in {time.monotonic() - t0:.1f} s")
        assert task.error == "", task.error
        success = qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Success)
        assert any("no restart needed" in m for m in success), (success, qgis_iface.messageBar().get_messages(
            Qgis.MessageLevel.Warning))
        assert progress and max(progress) == 100 and progress == sorted(progress)
        folder = _packages_folder()
        for name in BLOCKED + OPTIONAL:
            module = __import__(name)
            assert Path(module.__file__).is_relative_to(folder), (name, module.__file__)
        from floodmapper.plugin.core.tensor import codec

        assert codec.load_fast_base64() and codec.base64_backend() == "pybase64"  # the tensor runs use it
        assert sys.path[0] == str(folder)
        assert not list(folder.parent.glob(".*partial*")), "the staging folder was left behind"

    def test_algorithm_runs_past_the_check_after_install(self, loaded, tmp_path):
        message = _run("floodmapper:map_floods", {"INPUT": SCENE, "BACKEND": 0, "SERVER_URL": "http://127.0.0.1:9",
                                                  "OUTPUT": str(tmp_path / "flood.tif")})
        assert "Python packages" not in message
        assert "127.0.0.1:9" in message, message  # now it is the unreachable server that stops it


@pytest.mark.skipif(PHASE != "reload", reason="reload phase")
def test_installed_folder_is_used_at_the_next_load(loaded, qgis_iface):
    import rasterio

    folder = _packages_folder()
    assert folder.is_dir() and sys.path[0] == str(folder)
    assert loaded.plan is not None and loaded.plan.ok, loaded.plan
    assert _install_button(qgis_iface) is None
    assert Path(rasterio.__file__).is_relative_to(folder)
