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

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests import `plugin.core...` from the checkout

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

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


_EXIT_STATUS = {"code": None}


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS["code"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Leave with the session's status once pytest has reported everything.

    After a long QGIS session (the 100-raster soak test), pytest's final garbage collection frees PyQGIS
    objects after pytest-qgis has shut QGIS down, and the process segfaults (exit 139) although every test
    passed and the summary is printed. Objects the plugin creates are not involved (their tracebacks are
    cleared); the crash is in the bindings' teardown order, which QGIS itself and qgis_process never reach
    this way. Ending here keeps the exit status pytest decided.
    """
    code = _EXIT_STATUS["code"]
    if code is not None and os.environ.get("FLOODMAPPER_PYTEST_HARD_EXIT", "1") == "1":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
