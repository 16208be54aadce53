"""What reading a Sentinel-2 product as downloaded costs: the tensor pipeline against the zero-latency peer
(benchmarks/canned_peer.py) on the product's .zip (the stack the plugin makes of its JPEG 2000 band files, read
inside the zip) and on the same six bands unzipped into a deflate GeoTIFF, side by side in one run (not a test).

    .venv/bin/python benchmarks/bench_product.py [--size 2040] [--width 10980 --height 3060] [--runs 3]

The product is a generated scene written as an L2A product (tests/fixtures/sentinel2_safe.py: lossless JPEG 2000,
B02-B04 at 10 m, B8A, B11, B12 at 20 m); the GeoTIFF holds the stack's six model bands at 10 m, so both runs send
the same tiles, and the maps are compared. Also timed: finding the product and writing its stack (what a run
adds before its first tile). Prints tiles/s medians, their ratio, client CPU per tile and peak RSS.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import rasterio  # noqa: E402
from bench_tensor import peak_rss_mb, spec, start_peer, stop_peer  # noqa: E402

MODEL_BANDS = [2, 3, 4, 9, 11, 12]  # B02, B03, B04, B8A, B11, B12 in the L2A stack (1-based)


def make_inputs(folder: Path, width: int, height: int) -> tuple[Path, Path]:
    from scripts.scenes import synthesize
    from tests.fixtures.sentinel2_safe import write_l2a

    refl, _ = synthesize(7301, width, height)
    dn = (np.rint(refl * 10000) + 1000).clip(1, 65535).astype(np.uint16)
    archive = write_l2a(folder, dn, zipped=True)
    stack = stack_of(archive, folder / "stack")
    tif = folder / "bands.tif"
    with rasterio.open(stack) as src:
        profile = dict(driver="GTiff", width=src.width, height=src.height, count=6, dtype="uint16",
                       crs=src.crs, transform=src.transform, nodata=0, tiled=True, blockxsize=512,
                       blockysize=512, compress="deflate")
        with rasterio.open(tif, "w", **profile) as dst:
            dst.write(src.read(MODEL_BANDS))
    return archive, tif


def stack_of(archive: Path, folder: Path) -> str:
    from plugin.core.sentinel2_product import metadata_of, read_product, write_stack

    folder.mkdir(exist_ok=True)
    return write_stack(read_product(metadata_of(str(archive))), str(folder))


def run(port: int, path: str, bands: list[int], out: Path) -> dict:
    from plugin.core.jobs import MapFloodsRequest
    from plugin.core.vllm_api import VllmClient
    from tests.fixtures.jobs import run_tensor

    with VllmClient(f"http://127.0.0.1:{port}") as client:
        req = MapFloodsRequest(input_path=path, output_path=str(out), server_url=client.base_url, model="m",
                               scale=1e-4, offset=-0.1)
        t0, c0 = time.perf_counter(), time.process_time()
        stats = run_tensor(req, client, spec(), [b - 1 for b in bands])
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"tiles": stats.tiles, "tiles_per_s": stats.tiles / dt, "cpu_ms_per_tile": 1000 * cpu / stats.tiles}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2040, help="the product's 10 m size (a multiple of 6)")
    parser.add_argument("--width", type=int, help="the 10 m width, if not --size (a Sentinel-2 tile's: 10980)")
    parser.add_argument("--height", type=int, help="the 10 m height, if not --size")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    width, height = args.width or args.size, args.height or args.size
    with tempfile.TemporaryDirectory(prefix="bench-product-") as tmp:
        tmp_path = Path(tmp)
        archive, tif = make_inputs(tmp_path, width, height)
        t0 = time.perf_counter()
        for i in range(args.runs):
            stack_of(archive, tmp_path / f"again-{i}")
        stacking_ms = 1000 * (time.perf_counter() - t0) / args.runs
        proc, port = start_peer()
        try:
            results: dict[str, list[dict]] = {"product": [], "geotiff": []}
            for i in range(args.runs):  # alternating, so that a drift in the machine's speed falls on both
                stack = stack_of(archive, tmp_path / f"run-{i}")
                results["product"].append(run(port, stack, MODEL_BANDS, tmp_path / f"product-{i}.tif"))
                results["geotiff"].append(run(port, str(tif), [1, 2, 3, 4, 5, 6], tmp_path / f"geotiff-{i}.tif"))
            with rasterio.open(tmp_path / "product-0.tif") as a, rasterio.open(tmp_path / "geotiff-0.tif") as b:
                same = bool((a.read(1) == b.read(1)).all())
        finally:
            stop_peer(proc)
    rate = {k: statistics.median(r["tiles_per_s"] for r in v) for k, v in results.items()}
    cpu = {k: statistics.median(r["cpu_ms_per_tile"] for r in v) for k, v in results.items()}
    tiles = results["product"][0]["tiles"]
    print(f"{width}x{height} px, {tiles} tiles of {spec().tile_width}, {args.runs} runs each, "
          f"maps identical: {same}")
    print(f"finding the product and writing its stack: {stacking_ms:.1f} ms")
    for k in ("product", "geotiff"):
        print(f"{k:8s} {rate[k]:6.1f} tiles/s median, client CPU {cpu[k]:.1f} ms per tile")
    print(f"product / geotiff time per tile: {rate['geotiff'] / rate['product']:.2f}x; peak RSS {peak_rss_mb():.0f} MB")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
