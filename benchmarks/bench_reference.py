"""Seconds per 512² tile of the reference model through the tensor transport, end to end, and peak memory (not a test).

    .venv/bin/python benchmarks/bench_reference.py [--size 1024] [--dtype float32] [--runs 3] [--overlap 0]

The reference model (scripts/make-reference-model: Prithvi-EO-2.0-300M-TL-Sen1Floods11's architecture, random
float32 weights; built once under build/reference-model/bench-float32, as benchmarks/bench_dtype.py does) is
served once, by `scripts/serve-demo --tensor --dtype DTYPE`, and a synthetic --size² scene (scripts/scenes.py)
is mapped --runs times by `map_floods` (tensor transport, SERVER_DTYPE = DTYPE, MODEL_SPEC = the model's
folder, OVERLAP = --overlap, default concurrency) after one warm-up run on a single tile. Each run's wall time
covers everything the plugin does: read, normalise, encode, post, wait, blend, write. Reported: seconds per
tile of each run (median and minimum), the server's start-up time, the peak resident memory of the server's
processes together (sampled every 0.2 s while it runs) and of this process (the client), and the load average.

Keep --dtype float32 on a CPU without AVX512-FP16/AMX-FP16: there float16 runs this model with generic
kernels, over 300 s per tile, and vLLM stops its engine when one step takes that long.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from plugin.core.jobs import DEFAULT_CONCURRENCY, MapFloodsRequest  # noqa: E402
from plugin.core.pipeline import map_floods  # noqa: E402
from plugin.core.settings import Settings  # noqa: E402
from plugin.core.tensor.tiling import TileGrid, overlap_pixels  # noqa: E402
from plugin.core.vllm_api import VllmClient  # noqa: E402
from scripts.scenes import generate_scene  # noqa: E402
from tests.fixtures.servers import free_port, start_serve_demo, stop_group, wait_healthy  # noqa: E402

SERVED_NAME = "prithvi-reference"
TILE = 512


def load() -> str:
    with open("/proc/loadavg") as fh:
        return fh.read().split()[0]


def reference_folder() -> Path:
    """The reference model with float32 weights (vLLM casts them to the served --dtype), built once."""
    folder = ROOT / "build" / "reference-model" / "bench-float32"
    if not (folder / "config.json").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([Settings().with_env().vllm_python, str(ROOT / "scripts" / "make-reference-model"),
                        str(folder), "--dtype", "float32", "--overwrite"], check=True)
    return folder


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (serve-demo runs vLLM in a process group of its own)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


class PeakRss:
    """The largest summed RSS of a process tree, sampled in a thread."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.pid, self.every, self.peak = pid, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(descendants(self.pid)))
            self._stop.wait(self.every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


@contextmanager
def server(folder: Path, tmp: Path, dtype: str):
    """One tensor server of `folder`; (url, start-up seconds, memory sampler). Stopped on exit."""
    port = free_port()
    log = tmp / "server.log"
    t0 = time.monotonic()
    proc = start_serve_demo(port, log, tmp / "out", ("--tensor", "--dtype", dtype, "--served-model-name",
                                                     SERVED_NAME), env={"FLOODMAPPER_MODEL": str(folder)})
    memory = PeakRss(proc.pid)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log, timeout=900)
        yield url, time.monotonic() - t0, memory
    finally:
        memory.stop()
        stop_group(proc.pid)


def map_once(url: str, raster: Path, out: Path, folder: Path, dtype: str, overlap: float) -> float:
    """One job through the plugin's public entry point; wall seconds."""
    request = MapFloodsRequest(input_path=str(raster), output_path=str(out), server_url=url,
                               server_can_read_local_files=True, model=SERVED_NAME, transport="tensor",
                               model_spec_source=str(folder), server_dtype=dtype, overlap=overlap)
    t0 = time.monotonic()
    with VllmClient(url) as client:
        result = map_floods(request, client)
    assert result.transport == "tensor", result.transport
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=1024, help="the scene's width and height, pixels")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                    help="the server's --dtype, and SERVER_DTYPE")
    ap.add_argument("--runs", type=int, default=3, help="timed runs after the warm-up")
    ap.add_argument("--overlap", type=float, default=0.0, help="OVERLAP, a fraction of the tile")
    args = ap.parse_args()

    folder = reference_folder()
    ov = overlap_pixels(TILE, args.overlap)
    tiles = len(TileGrid.build(args.size, args.size, TILE, TILE, ov, ov))
    with tempfile.TemporaryDirectory(prefix="bench-reference-") as tmp_name:
        tmp = Path(tmp_name)
        raster, warm = tmp / "scene.tif", tmp / "warm.tif"
        generate_scene(raster, seed=77, width=args.size, height=args.size)
        generate_scene(warm, seed=78, width=TILE, height=TILE)
        print(f"reference model, {args.dtype} server, {args.size}² scene: {tiles} tiles of {TILE}² at overlap "
              f"{args.overlap}, concurrency {DEFAULT_CONCURRENCY}; load {load()}", flush=True)
        with server(folder, tmp, args.dtype) as (url, startup, memory):
            print(f"server healthy in {startup:.0f} s (load {load()})", flush=True)
            first = map_once(url, warm, tmp / "warm-flood.tif", folder, args.dtype, args.overlap)
            print(f"warm-up, 1 tile: {first:.1f} s (load {load()})", flush=True)
            per_tile = []
            for i in range(args.runs):
                seconds = map_once(url, raster, tmp / f"flood-{i}.tif", folder, args.dtype, args.overlap)
                per_tile.append(seconds / tiles)
                print(f"run {i + 1}: {seconds:.1f} s, {per_tile[-1]:.2f} s/tile (load {load()})", flush=True)
            server_peak = memory.stop()
    client_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"\n| dtype | scene | tiles | s/tile median | min | server start-up s | server peak RSS | "
          f"client peak RSS |\n|---|---|---|---|---|---|---|---|\n"
          f"| {args.dtype} | {args.size}² | {tiles} | {statistics.median(per_tile):.2f} | {min(per_tile):.2f} | "
          f"{startup:.0f} | {server_peak / 2**30:.2f} GiB | {client_peak / 2**20:.0f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
