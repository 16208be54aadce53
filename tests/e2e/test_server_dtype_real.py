"""The server's dtype, on a REAL vLLM server started `--tensor --dtype float32`.

vLLM tells no client which dtype it runs, and a tensor of another dtype stops its engine for everyone. Here
the demo model runs in float32 (the fast dtype on a CPU without AVX512-FP16): mapped with SERVER_DTYPE
float32 it answers and stays healthy; a float16 request (what the model's own config.json would make the
plugin send) stops its engine, and the job says so, with the dtype and shape it sent.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import rasterio
import requests

from plugin.core.errors import EngineDied
from plugin.core.jobs import MapFloodsRequest
from plugin.core.pipeline import map_floods
from plugin.core.vllm_api import VllmClient
from scripts.scenes import generate_scene, iou
from tests.fixtures.servers import free_port, start_serve_demo, stop_group, wait_healthy

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def float32_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vllm-float32")
    port = free_port()
    proc = start_serve_demo(port, tmp / "server.log", tmp / "out", ("--tensor", "--dtype", "float32"))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, tmp / "server.log")
        yield url
    finally:
        stop_group(proc.pid)


def run(url, inp, out, **kw):
    request = MapFloodsRequest(input_path=str(inp), output_path=str(out), server_url=url, transport="tensor", **kw)
    with VllmClient(url, retries=0) as client:
        return map_floods(request, client)


def test_float32_server_mapped_with_its_dtype_then_killed_by_another(float32_server, tmp_path):
    inp = tmp_path / "scene.tif"
    truth = generate_scene(inp, seed=5150, width=300, height=280)
    result = run(float32_server, inp, tmp_path / "flood.tif", server_dtype="float32")
    assert result.transport == "tensor"
    with rasterio.open(tmp_path / "flood.tif") as ds:
        score = iou(ds.read(1), truth)
    print(f"float32 server, SERVER_DTYPE float32: water IoU {score:.3f}")
    assert score >= 0.85
    assert requests.get(float32_server + "/health", timeout=10).status_code == 200

    # the model's config.json says float16, which is what `--dtype auto` would run: here it is wrong
    with pytest.raises(EngineDied) as err:
        run(float32_server, inp, tmp_path / "wrong.tif")
    message = err.value.message
    print(message, err.value.hint)
    assert "stopped while it processed /pooling and must be restarted" in message
    assert "This run sent float16 tensors of shape [6, 256, 256]" in message
    assert "--dtype" in err.value.hint and "SERVER_DTYPE" in err.value.hint
    assert not (tmp_path / "wrong.tif").exists() and not list(tmp_path.glob(".*part*"))
    with pytest.raises(requests.RequestException):  # the engine is gone: nothing answers any more
        health = requests.get(float32_server + "/health", timeout=10)
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
