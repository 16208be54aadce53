"""Tensor transport against the REAL vLLM server: tiles/s by concurrency (not a test).

This is the measurement behind jobs.DEFAULT_CONCURRENCY. It starts `scripts/serve-demo --tensor`
(the demo model, float16) on a free loopback port in its own process group, maps one synthetic scene with
concurrency 1, 2, 4 (overlap 0, so every run sends the same tiles), prints tiles/s, and stops the server.

    .venv/bin/python benchmarks/bench_tensor_real.py [--size 1024] [--concurrency 1 2 4]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from tests.fixtures.servers import free_port  # noqa: E402


def main() -> int:
    from plugin.core.jobs import MapFloodsRequest
    from plugin.core.model_spec import load_model_spec, resolve_model_spec
    from plugin.core.vllm_api import VllmClient
    from scripts.scenes import generate_scene
    from tests.fixtures.jobs import run_tensor

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-real-") as tmp:
        tmp_path = Path(tmp)
        port = free_port()
        log = open(tmp_path / "server.log", "wb")
        env = dict(os.environ, PORT=str(port), FLOODMAPPER_SERVE_OUT=str(tmp_path / "out"))
        proc = subprocess.Popen(["bash", str(ROOT / "scripts/serve-demo"), "--tensor"], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            t0 = time.monotonic()
            while True:
                if proc.poll() is not None:
                    print((tmp_path / "server.log").read_text()[-3000:])
                    return 1
                try:
                    if requests.get(url + "/health", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() - t0 > 900:
                    print("server did not start in 15 min")
                    return 1
                time.sleep(1)
            print(f"server up in {time.monotonic() - t0:.0f} s; load {open('/proc/loadavg').read().split()[0]}")
            inp = tmp_path / "scene.tif"
            generate_scene(inp, seed=42, width=args.size, height=args.size)
            with VllmClient(url) as client:
                model = client.resolve_model("")
                source = os.environ.get("FLOODMAPPER_MODEL", "")
                spec = (load_model_spec(source) if source else resolve_model_spec("", model)).with_dtype("float16")
                warm = MapFloodsRequest(input_path=str(inp), output_path=str(tmp_path / "w.tif"), server_url=url,
                                        model=model, overlap=0.0, concurrency=1)
                run_tensor(warm, client, spec, [0, 1, 2, 3, 4, 5])  # first requests are slower
                for conc in args.concurrency:
                    req = MapFloodsRequest(input_path=str(inp), output_path=str(tmp_path / f"c{conc}.tif"),
                                           server_url=url, model=model, overlap=0.0, concurrency=conc)
                    st = run_tensor(req, client, spec, [0, 1, 2, 3, 4, 5])
                    print(f"concurrency {conc}: {st.tiles} tiles of {st.tile_size}² in {st.seconds:.1f} s = "
                          f"{st.tiles / st.seconds:.2f} tiles/s (load {open('/proc/loadavg').read().split()[0]})")
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
