"""Shared fixtures.

`vllm_server` / `vllm_tensor_server` start a real `vllm serve` on the demo model (scripts/serve-demo,
loopback only) once per test session and stop it by its process group afterwards. Tests that use them
are marked `vllm`; `make test-quick` (-m "not vllm") runs everything else.

FLOODMAPPER_TEST_SERVE_DIR=DIR reuses servers that outlive the session instead: the first session starts
them (in their own process groups, logs and outputs under DIR) and leaves them running; later sessions find
them through DIR/<name>.json and use them while /health answers. For working on one test at a time, where a
60-90 s start-up per run would dominate; `tests/fixtures/servers.py stop DIR` ends them.
"""

from __future__ import annotations

import faulthandler
import json
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests import `plugin.core...` from the checkout

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
faulthandler.enable()  # a crash names its frame, in the tests and in the session's teardown

from tests.fixtures.servers import start_serve_demo, stop_group, wait_healthy  # noqa: E402

KEEP_DIR = os.environ.get("FLOODMAPPER_TEST_SERVE_DIR", "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningServer:
    url: str
    port: int
    pid: int
    log: Path
    model: str
    out_dir: Path
    startup_seconds: float

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True


def _start_server(tmp: Path, extra: list[str], name: str) -> RunningServer:
    port = free_port()
    log = tmp / f"{name}.log"
    out_dir = tmp / f"{name}-out"
    out_dir.mkdir()
    t0 = time.monotonic()
    proc = start_serve_demo(port, log, out_dir, tuple(extra))
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, log)
    model = requests.get(url + "/v1/models", timeout=10).json()["data"][0]["id"]
    return RunningServer(url, port, proc.pid, log, model, out_dir, time.monotonic() - t0)


def _kept_server(name: str, extra: list[str]) -> RunningServer:
    """A server kept running under KEEP_DIR between sessions: reused while healthy, else started anew."""
    folder = Path(KEEP_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / f"{name}.json"
    if record.exists():
        known = json.loads(record.read_text())
        server = RunningServer(**{**known, "log": Path(known["log"]), "out_dir": Path(known["out_dir"])})
        try:
            if server.alive() and requests.get(server.url + "/health", timeout=5).status_code == 200:
                return server
        except requests.RequestException:
            pass
        stop_group(server.pid)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=folder))
    server = _start_server(run_dir, extra, name)
    record.write_text(json.dumps({**server.__dict__, "log": str(server.log), "out_dir": str(server.out_dir)}))
    return server


def _session_server(tmp_path_factory, name: str, extra: list[str]):
    if KEEP_DIR:
        yield _kept_server(name, extra)
        return
    server = _start_server(tmp_path_factory.mktemp(f"vllm-{name}"), extra, name)
    yield server
    stop_group(server.pid)


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    """A real vLLM server with the terratorch_segmentation IOProcessor (image-to-image)."""
    yield from _session_server(tmp_path_factory, "image", [])


@pytest.fixture(scope="session")
def vllm_tensor_server(tmp_path_factory):
    """A real vLLM server without the IOProcessor plugin (tensor-to-tensor)."""
    yield from _session_server(tmp_path_factory, "tensor", ["--tensor"])


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

    QgsProject.instance().clear()
    registry = QgsApplication.processingRegistry()
    for provider in list(registry.providers()):
        if provider.id() == "floodmapper":
            registry.removeProvider(provider)
    post = sys.modules.get("floodmapper.plugin.processing.postprocessor")
    if post is not None:
        post.FloodLayerPostProcessor._KEEP.clear()
    gc.collect()
