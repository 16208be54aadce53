"""Shared fixtures.

`vllm_server` / `vllm_tensor_server` start a real `vllm serve` on the demo model (scripts/serve-demo,
loopback only) once per test session and stop it by its process group afterwards. Tests that use them
are marked `vllm`; `make test-quick` (-m "not vllm") runs everything else.

FLOODMAPPER_TEST_SERVE_DIR=DIR reuses servers that outlive the session instead: the first session starts
them (in their own process groups, logs and outputs under DIR) and leaves them running; later sessions find
them through DIR/<name>.json and use them while /health answers. For working on one test at a time, where a
60-90 s start-up per run would dominate; `tests/fixtures/servers.py start DIR` starts both beforehand (as
scripts/test-qgis-versions does for the chroots) and `tests/fixtures/servers.py stop DIR` ends them.
"""

from __future__ import annotations

import faulthandler
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests import `plugin.core...` from the checkout

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
faulthandler.enable()  # a crash names its frame, in the tests and in the session's teardown

from tests.fixtures.servers import SERVERS, kept_server, start_server, stop_group  # noqa: E402

KEEP_DIR = os.environ.get("FLOODMAPPER_TEST_SERVE_DIR", "")


def _session_server(tmp_path_factory, name: str):
    extra = SERVERS[name]
    if KEEP_DIR:
        yield kept_server(KEEP_DIR, name, extra)
        return
    server = start_server(tmp_path_factory.mktemp(f"vllm-{name}"), extra, name)
    yield server
    stop_group(server.pid)


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    """A real vLLM server with the terratorch_segmentation IOProcessor (image-to-image)."""
    yield from _session_server(tmp_path_factory, "image")


@pytest.fixture(scope="session")
def vllm_tensor_server(tmp_path_factory):
    """A real vLLM server without the IOProcessor plugin (tensor-to-tensor)."""
    yield from _session_server(tmp_path_factory, "tensor")


@pytest.fixture(scope="session", autouse=True)
def _qgis_objects_freed_before_qgis_exits(qgis_app):
    """Free the Python side's QGIS objects while QGIS still runs.

    pytest-qgis calls exitQgis() when its session fixture ends; a PyQGIS object freed after that (by a late
    garbage collection, or at interpreter exit from a module-level list) touches a QGIS that is gone and
    crashes the process after every test passed. This fixture depends on qgis_app, so it ends first: the
    objects the tests and the plugin keep alive on purpose (registered providers, post-processors) are
    released here and collected.
    """
    yield
    import gc

    from qgis.core import QgsApplication, QgsProject

    for name in ("floodmapper.plugin.core.engines", "plugin.core.engines"):
        engines = sys.modules.get(name)
        if engines is not None:  # their log threads call into QGIS: ended while it runs
            engines.stop_all()
    QgsProject.instance().clear()
    registry = QgsApplication.processingRegistry()
    for provider in list(registry.providers()):
        if provider.id() == "floodmapper":
            registry.removeProvider(provider)
    post = sys.modules.get("floodmapper.plugin.processing.postprocessor")
    if post is not None:
        post.FloodLayerPostProcessor._KEEP.clear()
    gc.collect()
    # What is still reachable now (module globals, daemon threads' frames) may become cyclic garbage only
    # after QGIS has exited; a later collection would then free PyQGIS objects into a QGIS that is gone.
    # Frozen objects are never collected again; the process ends right after.
    gc.freeze()
