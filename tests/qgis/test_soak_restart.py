"""100 small rasters through map_floods, each in its own context, as the batch dialog runs them, with the real
server restarted after the 40th: every raster is mapped (the one that meets the restart waits for the server,
within the retry wait), none lost, and nothing is left behind."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from scripts.scenes import generate_scene
from tests.fixtures.servers import group_gone, start_serve_demo, stop_group, wait_healthy

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[2]
COUNT = int(os.environ.get("FLOODMAPPER_SOAK_COUNT", "100"))
RESTART_AT = int(os.environ.get("FLOODMAPPER_SOAK_RESTART_AT", "40"))


def test_hundred_rasters_with_a_server_restart(provider_loaded, tmp_path, capsys):
    from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingFeedback, QgsSettings

    from floodmapper.plugin.toolbelt import settings as stored

    # a start-up of vLLM takes 1-2 minutes on a busy 2-core machine; an overnight user sets a long retry wait
    stored.set_value("retry_wait", 900.0)

    class RecordingFeedback(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            self.errors: list[str] = []

        def reportError(self, error, fatalError=False):  # noqa: N802, N803 (QGIS API)
            self.errors.append(error)
            super().reportError(error, fatalError)

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    serve_out = tmp_path / "serve-out"
    serve_out.mkdir()
    inputs = tmp_path / "in"
    outputs = tmp_path / "out"
    inputs.mkdir()
    outputs.mkdir()
    for i in range(COUNT):
        generate_scene(inputs / f"r{i:03d}.tif", seed=70000 + i, width=64, height=64)
    temp_before = {p.name for p in Path(tempfile.gettempdir()).glob("floodmapper-*")}

    alg = QgsApplication.processingRegistry().algorithmById("floodmapper:map_floods")
    mapped, reported = [], []
    servers = [start_serve_demo(port, log, serve_out)]
    try:
        wait_healthy(url, servers[0], log)
        t0 = time.monotonic()
        for i in range(COUNT):
            if i == RESTART_AT:  # the server goes away and comes back on the same port while rasters keep coming
                stop_group(servers[-1].pid)
                servers.append(start_serve_demo(port, log, serve_out))
            src, out = inputs / f"r{i:03d}.tif", outputs / f"r{i:03d}-flood.tif"
            context, feedback = QgsProcessingContext(), RecordingFeedback()
            params = {"INPUT": str(src), "BACKEND": 0, "SERVER_URL": url, "OUTPUT": str(out)}
            result, ok = alg.run(params, context, feedback)  # as the batch dialog runs a row: errors reported
            if ok:
                mapped.append(i)
                with rasterio.open(out) as ds:
                    assert (ds.width, ds.height) == (64, 64)
                    assert set(np.unique(ds.read(1))) <= {0, 1, 255}
                assert result["VALID_PIXELS"] == 64 * 64
            else:
                assert feedback.errors, f"raster {i} failed without a reported error"
                reported.append((i, feedback.errors[-1]))
                assert not out.exists(), f"raster {i} failed but left {out}"
        elapsed = time.monotonic() - t0
    finally:
        for proc in servers:
            stop_group(proc.pid)
        QgsSettings().remove(stored.PREFIX + "retry_wait")

    with capsys.disabled():
        print(f"\nsoak: {len(mapped)} mapped, {len(reported)} reported, in {elapsed:.0f} s; "
              f"first failure: {reported[0][1][:160] if reported else '-'}")
    assert reported == [] and mapped == list(range(COUNT))
    assert sorted(p.name for p in outputs.iterdir() if p.suffix == ".tif") == [
        f"r{i:03d}-flood.tif" for i in mapped]
    assert [p.name for p in outputs.iterdir() if p.name.startswith(".")] == []
    leftover = {p.name for p in Path(tempfile.gettempdir()).glob("floodmapper-*")} - temp_before
    assert leftover == set()
    assert all(group_gone(p.pid) for p in servers)
