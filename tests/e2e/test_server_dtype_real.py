"""A REAL vLLM server started `--tensor --dtype float32`: its dtype, and a run that outlives its restart.

vLLM tells no client which dtype it runs, and a tensor of another dtype stops its engine for everyone. Here
the demo model runs in float32 (the fast dtype on a CPU without AVX512-FP16): mapped with SERVER_DTYPE
float32 it answers and stays healthy. A run whose server is killed after some tiles and started again on the
same port 10 s later completes, with the same map byte for byte as an undisturbed run (one tile in flight, so
vLLM batches nothing and float32 answers are exact). Last, a float16 request (what the model's own
config.json would make the plugin send) stops its engine, and the job says so, with the dtype and shape.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
import rasterio
import requests

from plugin.core.errors import EngineDied
from plugin.core.jobs import MapFloodsRequest
from plugin.core.pipeline import map_floods
from plugin.core.provenance import DTYPE_TAG, MODEL_TAG, SERVER_TAG, TRANSPORT_TAG, read_provenance
from plugin.core.vllm_api import VllmClient
from scripts.scenes import generate_scene, iou
from tests.fixtures.progress import Recorder
from tests.fixtures.servers import free_port, group_gone, start_serve_demo, stop_group, wait_healthy

pytestmark = pytest.mark.vllm


class Float32Server:
    """One float32 tensor server that the tests may kill and start again on the same port."""

    def __init__(self, tmp) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self.start()

    def start(self) -> None:
        log = self.tmp / "server.log"
        self.proc = start_serve_demo(self.port, log, self.tmp / "out", ("--tensor", "--dtype", "float32"))
        wait_healthy(self.url, self.proc, log)

    def kill(self) -> None:
        """What a crash or an OOM kill does: the whole process group, at once."""
        vllm = _children_groups(self.proc.pid)  # before the script dies and its children are re-parented
        os.killpg(self.proc.pid, signal.SIGKILL)
        for pgid in vllm:
            os.killpg(pgid, signal.SIGKILL)
        self.proc.wait(10)
        while not group_gone(self.proc.pid) or any(not group_gone(g) for g in vllm):
            time.sleep(0.1)
        # nothing of the killed server removes the folder its vLLM kept its sockets in: the test does
        named = _temporary_folders(self.tmp / "server.log")
        if named:
            assert os.path.basename(named[-1]).startswith("floodmapper-serve-tmp."), named[-1]
            shutil.rmtree(named[-1], ignore_errors=True)


def _children_groups(pid: int) -> list[int]:
    """The process groups of pid's children (serve-demo runs vLLM in a group of its own)."""
    groups = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    stat = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                groups.add(os.getpgid(int(entry)))
    return sorted(groups)


@pytest.fixture(scope="module")
def float32_server(tmp_path_factory):
    server = Float32Server(tmp_path_factory.mktemp("vllm-float32"))
    try:
        yield server
    finally:
        stop_group(server.proc.pid)
    # a server whose engine died exits by itself: stopped while it stops its group, it still removes its folder
    left = [p for p in _temporary_folders(server.tmp / "server.log") if os.path.exists(p)]
    assert not left, f"serve-demo left vLLM's temporary folder behind: {left}"


def _temporary_folders(log) -> list[str]:
    """The folders serve-demo named for vLLM's temporary files, one per start, in the order it started."""
    return re.findall(r"vLLM's temporary files in (\S+)", log.read_text())


def run(url, inp, out, **kw):
    kw.setdefault("retry_wait", 0.0)
    request = MapFloodsRequest(input_path=str(inp), output_path=str(out), server_url=url, transport="tensor", **kw)
    with VllmClient(url, retries=0) as client:
        return map_floods(request, client)


def test_a_run_outlives_a_restart_of_its_server(float32_server, tmp_path):
    inp = tmp_path / "scene.tif"
    generate_scene(inp, seed=5151, width=900, height=700)  # 16 tiles of 256 px with the default overlap
    run(float32_server.url, inp, tmp_path / "undisturbed.tif", server_dtype="float32", concurrency=1)

    progress = Recorder()
    killed = threading.Event()

    def kill_then_restart() -> None:
        while len([p for p in progress.percent if p > 30]) == 0:  # some tiles done
            time.sleep(0.05)
        float32_server.kill()
        killed.set()
        time.sleep(10)
        float32_server.start()

    restarter = threading.Thread(target=kill_then_restart, daemon=True)
    restarter.start()
    request = MapFloodsRequest(input_path=str(inp), output_path=str(tmp_path / "restarted.tif"),
                               server_url=float32_server.url, transport="tensor", server_dtype="float32",
                               concurrency=1, retry_wait=600.0)
    with VllmClient(float32_server.url, retries=0) as client:
        map_floods(request, client, progress)
    restarter.join(60)
    assert killed.is_set()
    notes = [m for m in progress.infos if m.startswith("The server is unreachable")]
    print(notes[:1], notes[-1:])
    assert notes, progress.infos[-10:]
    with rasterio.open(tmp_path / "undisturbed.tif") as a, rasterio.open(tmp_path / "restarted.tif") as b:
        assert a.read(1).tobytes() == b.read(1).tobytes()


def test_float32_server_mapped_with_its_dtype_then_killed_by_another(float32_server, tmp_path):
    inp = tmp_path / "scene.tif"
    truth = generate_scene(inp, seed=5150, width=300, height=280)
    result = run(float32_server.url, inp, tmp_path / "flood.tif", server_dtype="float32")
    assert result.transport == "tensor"
    made = read_provenance(str(tmp_path / "flood.tif"))  # the map says what made it
    assert (made[DTYPE_TAG], made[TRANSPORT_TAG], made[MODEL_TAG], made[SERVER_TAG]) == (
        "float32", "tensor", result.model, f"vLLM {result.server_version}")
    with rasterio.open(tmp_path / "flood.tif") as ds:
        score = iou(ds.read(1), truth)
    print(f"float32 server, SERVER_DTYPE float32: water IoU {score:.3f}")
    assert score >= 0.85
    assert requests.get(float32_server.url + "/health", timeout=10).status_code == 200

    # the model's config.json says float16, which is what `--dtype auto` would run: here it is wrong
    with pytest.raises(EngineDied) as err:
        run(float32_server.url, inp, tmp_path / "wrong.tif")
    message = err.value.message
    print(message, err.value.hint)
    assert "stopped while it processed /pooling and must be restarted" in message
    assert "This run sent float16 tensors of shape [6, 256, 256]" in message
    assert "--dtype" in err.value.hint and "SERVER_DTYPE" in err.value.hint
    assert not (tmp_path / "wrong.tif").exists() and not list(tmp_path.glob(".*part*"))
    with pytest.raises(requests.RequestException):  # the engine is gone: nothing answers any more
        health = requests.get(float32_server.url + "/health", timeout=10)
        assert health.status_code != 200
        raise requests.ConnectionError(f"/health {health.status_code}")


def test_torch_reads_the_tensors_written_without_torch(tmp_path):
    """bfloat16 (and old servers' tensors) go as torch.save bytes written here without torch: the vLLM
    environment's torch.load(weights_only=True), which is what vLLM calls, reads them back exactly."""
    from plugin.core.settings import default_vllm_python
    from plugin.core.tensor.torch_save import save_bytes, to_bfloat16

    values = np.linspace(-70000, 70000, 6 * 8 * 8, dtype=np.float32).reshape(6, 8, 8)
    cases = {"bfloat16": to_bfloat16(values), "float16": values.clip(-65504, 65504).astype(np.float16),
             "float32": values}
    for dtype, array in cases.items():
        (tmp_path / f"{dtype}.pt").write_bytes(save_bytes(array, dtype))
    script = (
        "import sys, torch\n"
        "for name in sys.argv[1:]:\n"
        "    t = torch.load(name, weights_only=True)\n"
        "    print(name.rsplit('/', 1)[-1], t.dtype, 'x'.join(map(str, t.shape)), t.float().numpy().tobytes().hex())\n"
    )
    out = subprocess.run([default_vllm_python(), "-c", script, *[str(tmp_path / f"{d}.pt") for d in cases]],
                         capture_output=True, text=True, timeout=300, check=True).stdout.split("\n")
    for line, (dtype, array) in zip(out, cases.items()):
        name, torch_dtype, shape, values_hex = line.split(" ", 3)
        assert (name, torch_dtype, shape) == (f"{dtype}.pt", f"torch.{dtype}", "6x8x8")
        assert bytes.fromhex(values_hex) == from_carrier(array, dtype).tobytes()  # every value, exactly


def from_carrier(array, dtype):
    from plugin.core.tensor.torch_save import from_bfloat16

    return from_bfloat16(array) if dtype == "bfloat16" else array.astype(np.float32)
