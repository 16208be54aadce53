"""Cost follows the area mapped, not the file: a 512x512 EXTENT of a 6000x6000 raster against the same 512x512
raster on its own, through map_floods() on the same real vLLM server(s), in the same run (not a test).

    .venv/bin/python benchmarks/bench_area.py            # starts a demo image server, then a tensor one
    .venv/bin/python benchmarks/bench_area.py --server http://127.0.0.1:8000 [--server URL ...]
    .venv/bin/python benchmarks/bench_area.py --size 6000 --area 512 --repeats 3

The big raster is the small one repeated (a tiled, deflate 6-band uint16 GeoTIFF, as a Sentinel-2 stack), so the
area at its centre holds exactly the small raster's pixels and both runs send the same tiles: the maps are
compared too. Runs alternate (area, alone, alone, area, ...) so that a drift in the server's speed falls on both;
the medians and their ratio are printed per server. Target: area / alone <= 1.5.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rasterio  # noqa: E402
import requests  # noqa: E402

from tests.fixtures.servers import free_port  # noqa: E402


def start_server(kind: str, folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(folder / f"{kind}.log", "wb")  # open as long as the server runs
    env = dict(os.environ, PORT=str(port), FLOODMAPPER_SERVE_OUT=str(folder / f"{kind}-out"))
    extra = ["--tensor"] if kind == "tensor" else []
    proc = subprocess.Popen(["bash", str(ROOT / "scripts/serve-demo"), *extra], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise SystemExit((folder / f"{kind}.log").read_text()[-3000:])
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        if time.monotonic() - t0 > 900:
            raise SystemExit(f"the {kind} server did not start in 15 min")
        time.sleep(1)
    print(f"{kind} server up in {time.monotonic() - t0:.0f} s at {url}", flush=True)
    return proc, url


def stop_server(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def write_rasters(folder: Path, size: int, area: int) -> tuple[str, str, tuple[float, float, float, float]]:
    """(small raster, big raster, extent of the small one's copy at the big one's centre)."""
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from scripts.scenes import generate_scene

    small = folder / "alone.tif"
    generate_scene(small, seed=4242, width=area, height=area)
    with rasterio.open(small) as src:
        pixels = src.read()
        profile = dict(src.profile)
        descriptions = src.descriptions
    x0, y0 = 400000.0, 5200000.0
    offset = (size // 2 // area) * area  # the centre copy starts on a multiple of `area`
    profile.update(width=size, height=size, transform=from_origin(x0, y0, 10, 10), tiled=True, blockxsize=256,
                   blockysize=256, compress="deflate", BIGTIFF="IF_SAFER")
    big = folder / "big.tif"
    with rasterio.open(big, "w", **profile) as dst:
        for row in range(0, size, area):
            for col in range(0, size, area):
                h, w = min(area, size - row), min(area, size - col)
                dst.write(pixels[:, :h, :w], window=Window(col, row, w, h))
        dst.descriptions = descriptions
    with rasterio.open(small, "r+") as dst:  # the small raster sits where its copy is, so both maps coincide
        dst.transform = from_origin(x0 + offset * 10, y0 - offset * 10, 10, 10)
    extent = (x0 + offset * 10, y0 - (offset + area) * 10, x0 + (offset + area) * 10, y0 - offset * 10)
    return str(small), str(big), extent


def run_server(url: str, small: str, big: str, extent, folder: Path, repeats: int) -> None:
    from plugin.core.jobs import MapFloodsRequest
    from plugin.core.pipeline import map_floods
    from plugin.core.vllm_api import VllmClient

    def once(path: str, name: str, **area) -> tuple[float, str, str]:
        out = str(folder / f"map-{name}.tif")
        request = MapFloodsRequest(input_path=path, output_path=out, server_url=url,
                                   server_can_read_local_files=True,
                                   model_spec_source=str(ROOT / "resources" / "demo_model"), **area)
        t0 = time.monotonic()
        with VllmClient(url) as client:
            result = map_floods(request, client)
        return time.monotonic() - t0, result.transport, out

    once(small, "warm-up")  # the first requests of a server are slower
    area_s, alone_s = [], []
    for i in range(repeats):
        order = [("area", big, {"extent": extent}), ("alone", small, {})]
        for name, path, area in (order if i % 2 == 0 else order[::-1]):
            seconds, transport, out = once(path, name, **area)
            (area_s if name == "area" else alone_s).append(seconds)
    with rasterio.open(folder / "map-area.tif") as a, rasterio.open(folder / "map-alone.tif") as b:
        same = (a.transform == b.transform and a.shape == b.shape, float((a.read(1) == b.read(1)).mean()))
    load = open("/proc/loadavg").read().split()[0]
    ratio = statistics.median(area_s) / statistics.median(alone_s)
    print(f"{transport:6} | 512² extent of {Path(big).name}: {statistics.median(area_s):6.2f} s "
          f"({', '.join(f'{s:.2f}' for s in area_s)}) | 512² raster alone: {statistics.median(alone_s):6.2f} s "
          f"({', '.join(f'{s:.2f}' for s in alone_s)}) | ratio {ratio:.2f} (target <= 1.5) | same grid {same[0]}, "
          f"{100 * same[1]:.2f} % equal pixels | load {load}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server", action="append", default=[], help="a running vLLM server (repeatable)")
    ap.add_argument("--size", type=int, default=6000)
    ap.add_argument("--area", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-area-") as tmp:
        folder = Path(tmp)
        t0 = time.monotonic()
        small, big, extent = write_rasters(folder, args.size, args.area)
        print(f"rasters written in {time.monotonic() - t0:.0f} s: {args.size}² ({os.path.getsize(big) / 1e6:.0f} MB) "
              f"and {args.area}²; load {open('/proc/loadavg').read().split()[0]}", flush=True)
        for url in args.server:
            run_server(url, small, big, extent, folder, args.repeats)
        if not args.server:  # one demo server at a time: image-to-image, then tensor-to-tensor
            for kind in ("image", "tensor"):
                proc, url = start_server(kind, folder)
                try:
                    run_server(url, small, big, extent, folder, args.repeats)
                finally:
                    stop_server(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
