"""Shared fixtures.

`vllm_server` / `vllm_tensor_server` start a real `vllm serve` on the demo model (scripts/serve-demo,
loopback only) once per test session and stop it by its process group afterwards. Tests that use them
are marked `vllm`; `make test-quick` (-m "not vllm") runs everything else.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests import `plugin.core...` from the checkout

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


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
    env = dict(os.environ, PORT=str(port), FLOODMAPPER_SERVE_OUT=str(out_dir))
    t0 = time.monotonic()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            ["bash", str(ROOT / "scripts" / "serve-demo"), *extra],
            stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + float(os.environ.get("FLOODMAPPER_TEST_STARTUP_TIMEOUT", "600"))
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(1)
    else:
        _stop(proc.pid)
        raise RuntimeError(f"vllm serve not healthy in time:\n{log.read_text()[-4000:]}")
    model = requests.get(url + "/v1/models", timeout=10).json()["data"][0]["id"]
    return RunningServer(url, port, proc.pid, log, model, out_dir, time.monotonic() - t0)


def _stop(pid: int) -> None:
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    os.killpg(pgid, signal.SIGTERM)
    for _ in range(150):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(pgid, signal.SIGKILL)


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    """A real vLLM server with the terratorch_segmentation IOProcessor (image-to-image)."""
    server = _start_server(tmp_path_factory.mktemp("vllm-image"), [], "image")
    yield server
    _stop(server.pid)


@pytest.fixture(scope="session")
def vllm_tensor_server(tmp_path_factory):
    """A real vLLM server without the IOProcessor plugin (tensor-to-tensor)."""
    server = _start_server(tmp_path_factory.mktemp("vllm-tensor"), ["--tensor"], "tensor")
    yield server
    _stop(server.pid)


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
