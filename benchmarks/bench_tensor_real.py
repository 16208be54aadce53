"""Tensor transport against the REAL vLLM server: seconds per tile by concurrency (not a test).

This is the measurement behind jobs.DEFAULT_CONCURRENCY and the local engine's own in-flight count (its
max-num-seqs). It starts `scripts/serve-demo --tensor --dtype D` (the demo model, `--max-num-seqs 8` as the local
engine runs by default) on a free loopback port in its own process group, maps one synthetic scene with
`map_floods()` at each concurrency (overlap 0, so every run sends the same tiles), the concurrencies alternated
round after round (a machine's speed drifts), prints each run and the medians, and stops the server.

    .venv/bin/python benchmarks/bench_tensor_real.py [--dtype float32] [--size 2048] [--concurrency 4 8] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from plugin.core.jobs import MapFloodsRequest  # noqa: E402
from plugin.core.model_spec import load_model_spec  # noqa: E402
from plugin.core.pipeline import map_floods  # noqa: E402
from plugin.core.tensor.tiling import TileGrid  # noqa: E402
from plugin.core.vllm_api import VllmClient  # noqa: E402
from scripts.scenes import generate_scene  # noqa: E402
from tests.fixtures.servers import free_port, start_serve_demo, stop_group, wait_healthy  # noqa: E402

SERVED_NAME = "bench"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "resources" / "demo_model")
    ap.add_argument("--dtype", choices=("float16", "float32"), default="float32",
                    help="the server's --dtype (float32: what the local engine runs on a CPU without AVX512-FP16)")
    ap.add_argument("--size", type=int, default=2048, help="the scene's side, pixels")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--runs", type=int, default=3, help="rounds; each maps the scene once per concurrency")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-real-") as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        log = tmp / "server.log"
        t0 = time.monotonic()
        proc = start_serve_demo(port, log, tmp / "out", ("--tensor", "--dtype", args.dtype,
                                                         "--served-model-name", SERVED_NAME),
                                env={"FLOODMAPPER_MODEL": str(args.model)})
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, proc, log, timeout=900)
            print(f"server up in {time.monotonic() - t0:.0f} s ({args.dtype}); load {os.getloadavg()[0]:.1f}")
            scene = tmp / "scene.tif"
            generate_scene(scene, seed=42, width=args.size, height=args.size)

            spec = load_model_spec(str(args.model))
            tiles = len(TileGrid.build(args.size, args.size, spec.tile_width, spec.tile_height))

            def run(concurrency: int) -> float:
                request = MapFloodsRequest(
                    input_path=str(scene), output_path=str(tmp / "map.tif"), server_url=url, model=SERVED_NAME,
                    transport="tensor", model_spec_source=str(args.model), server_dtype=args.dtype,
                    server_can_read_local_files=True, concurrency=concurrency, overlap=0.0)
                t = time.perf_counter()
                with VllmClient(url) as client:
                    assert map_floods(request, client).transport == "tensor"
                return time.perf_counter() - t

            run(max(args.concurrency))  # warm-up: the first requests are slower
            seconds: dict[int, list[float]] = {c: [] for c in args.concurrency}
            for i in range(args.runs):
                for c in (args.concurrency if i % 2 == 0 else args.concurrency[::-1]):
                    seconds[c].append(run(c) / tiles)
                print(f"round {i + 1}: " + ", ".join(f"c{c} {v[-1]:.4f}" for c, v in seconds.items())
                      + f" s/tile; load {os.getloadavg()[0]:.1f}", flush=True)
            base = statistics.median(seconds[args.concurrency[0]])
            print(f"{tiles} tiles of {args.model.name} per run ({args.size}², overlap 0), {args.dtype}; medians:")
            for c, values in seconds.items():
                med = statistics.median(values)
                print(f"  concurrency {c}: {med:.4f} s/tile = {1 / med:.1f} tiles/s "
                      f"({base / med:.2f}x concurrency {args.concurrency[0]})")
        finally:
            stop_group(proc.pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
