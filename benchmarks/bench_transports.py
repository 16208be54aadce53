"""Image-to-image against tensor-to-tensor on the same raster, each beside its bare /pooling requests, at several
concurrencies (not a test).

    .venv/bin/python benchmarks/bench_transports.py [--size 1024] [--concurrency 1 2 4] [--runs 3]
    .venv/bin/python benchmarks/bench_transports.py --image-concurrency 1 --concurrency 1 4 8   # one raster
    .venv/bin/python benchmarks/bench_transports.py --model build/reference-model/f16   # a CPU with float16 arithmetic
    .venv/bin/python benchmarks/bench_transports.py --model build/reference-model/bench-float32 --dtype float32 \
        --transports tensor                                     # the reference model where float16 is too slow

The model (default: the bundled demo model) is served in float16 by `scripts/serve-demo`, once with TerraTorch's
IOProcessor (image-to-image takes float16 only) and once in tensor mode, one server at a time. `--dtype float32`
serves the tensor server in float32 (the tensors sent follow), for a CPU on which float16 takes minutes a tile:
then only `--transports tensor` can run. A synthetic
--size² scene (scripts/scenes.py) is mapped with overlap 0, so both transports cut the same tiles:

- image, bare      c copies of the IOProcessor's /pooling request (the raster's path) at once: what the server
                   takes to read the file, tile it, run the model and write the GeoTIFF; the answer's JSON read.
- image, plugin    c `map_floods()` runs at once (image transport): the same requests plus everything the plugin
                   does around them (input checks, the written map, its statistics and style).
- tensor, bare     the raster's tiles as the plugin encodes them (normalised, float16 .npy, the /pooling JSON),
                   built before the clock starts and posted c at a time: the server's time per tile.
- tensor, plugin   one `map_floods()` run (tensor transport, CONCURRENCY c): reading, normalising, encoding,
                   posting, stitching and writing included.

"Concurrency" is what the plugin keeps in flight: tensor requests of one raster, or (image-to-image, one request
per raster) rasters at once, as the batch dialog or parallel runs do. So the two lines of one concurrency above 1
compare c rasters by image-to-image with one raster by tensor; the column "tensor / one raster by image" compares
the same single raster both ways (image-to-image at concurrency 1, whose one request hands the server every tile at
once; `--image-concurrency 1` runs only that image line). Seconds per tile are wall seconds over the
tiles the server ran (c rasters x tiles for the image lines). Runs alternate bare and plugin, after a warm-up
of each; medians are printed with every run, and the load average beside them. With --default-overlap the
tensor transport also maps the scene with its default overlap, to show the extra tiles and time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rasterio  # noqa: E402
import requests  # noqa: E402

from plugin.core.bands import select_bands  # noqa: E402
from plugin.core.image_transport import build_payload  # noqa: E402
from plugin.core.jobs import DEFAULT_OVERLAP, MapFloodsRequest  # noqa: E402
from plugin.core.model_spec import load_model_spec  # noqa: E402
from plugin.core.pipeline import map_floods  # noqa: E402
from plugin.core.raster import inspect  # noqa: E402
from plugin.core.tensor.codec import PayloadEncoder, choose_answer  # noqa: E402
from plugin.core.tensor.inputs import Normaliser, tile_locations  # noqa: E402
from plugin.core.tensor.reader import band_numbers, detect_scale, read_tile  # noqa: E402
from plugin.core.tensor.tiling import TileGrid, overlap_pixels  # noqa: E402
from plugin.core.vllm_api import VllmClient  # noqa: E402
from scripts.scenes import generate_scene  # noqa: E402
from tests.fixtures.servers import free_port, start_serve_demo, stop_group, wait_healthy  # noqa: E402

SERVED_NAME = "bench"


def load() -> str:
    with open("/proc/loadavg") as fh:
        return fh.read().split()[0]


@contextmanager
def server(model: Path, tmp: Path, kind: str, dtype: str = "float16"):
    port = free_port()
    log = tmp / f"{kind}.log"
    extra = ("--tensor",) if kind == "tensor" else ()
    t0 = time.monotonic()
    proc = start_serve_demo(port, log, tmp / f"{kind}-out",
                            (*extra, "--dtype", dtype, "--served-model-name", SERVED_NAME),
                            env={"FLOODMAPPER_MODEL": str(model)})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log, timeout=900)
        print(f"{kind} server up in {time.monotonic() - t0:.0f} s", flush=True)
        yield url
    finally:
        stop_group(proc.pid)


def at_once(fn, count: int) -> float:
    """Wall seconds for `count` calls of fn(i) on `count` threads."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:
        list(pool.map(fn, range(count)))
    return time.perf_counter() - t0


def plugin_run(url: str, raster: Path, out: Path, model: Path, transport: str, concurrency: int | None = None,
               overlap: float | None = None, dtype: str = "float16") -> None:
    request = MapFloodsRequest(input_path=str(raster), output_path=str(out), server_url=url,
                               server_can_read_local_files=True, model=SERVED_NAME, transport=transport,
                               model_spec_source=str(model), server_dtype=dtype, concurrency=concurrency,
                               overlap=overlap)
    with VllmClient(url) as client:
        result = map_floods(request, client)
    assert result.transport == transport, result.transport


def image_lines(url: str, raster: Path, tmp: Path, model: Path, tiles: int, args) -> dict[int, tuple]:
    spec = load_model_spec(str(model))
    indices, _ = select_bands(inspect(str(raster)), None, spec.channels, tuple(spec.bands))
    with VllmClient(url) as client:
        version = client.version()
    payload = build_payload(SERVED_NAME, str(raster), "path", indices, version)

    def bare(_: int) -> None:
        reply = requests.post(url + "/pooling", json=payload, timeout=1800)
        reply.raise_for_status()
        assert reply.json()["data"]["data"]

    def plugin(i: int) -> None:
        plugin_run(url, raster, tmp / f"image-{i}.tif", model, "image")

    bare(0)
    plugin(0)
    return {c: runs(bare, plugin, c, c * tiles, args.runs) for c in args.image_concurrency}


def tensor_lines(url: str, raster: Path, tmp: Path, model: Path, args) -> tuple[dict[int, tuple], int]:
    spec = load_model_spec(str(model)).with_dtype(args.dtype)
    with VllmClient(url) as client:
        version = client.version()
    encoder = PayloadEncoder(SERVED_NAME, spec, answer=choose_answer(version))
    indices, _ = select_bands(inspect(str(raster)), None, spec.channels, tuple(spec.bands))
    with rasterio.open(raster) as ds:
        bands = band_numbers(indices, ds.count, spec.channels)
        normalise = Normaliser(spec, detect_scale(ds, bands), 0.0, ds.dtypes[bands[0] - 1])
        grid = TileGrid.build(ds.width, ds.height, spec.tile_width, spec.tile_height)
        locations = tile_locations(ds, grid, spec.location_shape) if spec.has_location else {}
        bodies = [encoder.encode(normalise(*read_tile(ds, bands, tile)), locations.get(tile.index))
                  for tile in grid]
    session = requests.Session()
    headers = {"Content-Type": "application/json"}

    def bare_at(c: int):
        def bare(_: int) -> None:
            def one(body: bytes) -> None:
                reply = session.post(url + "/pooling", data=body, headers=headers, timeout=1800)
                reply.raise_for_status()
                assert len(reply.content) > 0
            with ThreadPoolExecutor(c) as pool:
                list(pool.map(one, bodies))
        return bare

    def plugin_at(c: int):
        return lambda _: plugin_run(url, raster, tmp / "tensor.tif", model, "tensor", c, 0.0, args.dtype)

    bare_at(1)(0)
    plugin_at(1)(0)
    lines = {c: runs(bare_at(c), plugin_at(c), 1, len(grid), args.runs) for c in args.concurrency}
    return lines, len(grid)


def runs(bare, plugin, parallel: int, tiles: int, n: int) -> tuple[list[float], list[float], str]:
    """Seconds per tile of n bare and n plugin runs, alternated (bare, plugin, plugin, bare, ...)."""
    bare_s, plugin_s = [], []
    start = load()
    for i in range(n):
        order = [(bare, bare_s), (plugin, plugin_s)]
        for fn, into in (order if i % 2 == 0 else order[::-1]):
            into.append(at_once(fn, parallel) / tiles)
    return bare_s, plugin_s, f"{start}-{load()}"


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({', '.join(f'{v:.3f}' for v in values)})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "resources" / "demo_model",
                    help="a TerraTorch model folder that vLLM serves (config.json + weights)")
    ap.add_argument("--size", type=int, default=1024, help="the scene's width and height, pixels")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--image-concurrency", type=int, nargs="+", default=None,
                    help="the image lines' concurrencies (default: those of --concurrency)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs of each line")
    ap.add_argument("--default-overlap", action="store_true", help="also the tensor transport's default overlap")
    ap.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                    help="the tensor server's --dtype (the image server runs float16 whatever this says)")
    ap.add_argument("--transports", nargs="+", choices=("image", "tensor"), default=["image", "tensor"])
    args = ap.parse_args()
    if args.image_concurrency is None:
        args.image_concurrency = args.concurrency
    if args.dtype != "float16" and "image" in args.transports:
        ap.error("image-to-image runs float16 only: with --dtype float32 give --transports tensor")

    spec = load_model_spec(str(args.model))
    grid = TileGrid.build(args.size, args.size, spec.tile_width, spec.tile_height)
    print(f"model {args.model.name}: {spec.tile_width}x{spec.tile_height} tiles, {spec.channels} bands; "
          f"scene {args.size}² = {len(grid)} tiles at overlap 0; load {load()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-transports-") as tmp_name:
        tmp = Path(tmp_name)
        raster = tmp / "scene.tif"
        generate_scene(raster, seed=4343, width=args.size, height=args.size)
        image: dict[int, tuple] = {}
        tensor: dict[int, tuple] = {}
        tiles, overlap = len(grid), None
        if "image" in args.transports:
            with server(args.model, tmp, "image") as url:
                image = image_lines(url, raster, tmp, args.model, len(grid), args)
        if "tensor" in args.transports:
            with server(args.model, tmp, "tensor", args.dtype) as url:
                tensor, tiles = tensor_lines(url, raster, tmp, args.model, args)
                if args.default_overlap:
                    t0 = time.perf_counter()
                    plugin_run(url, raster, tmp / "overlap.tif", args.model, "tensor", dtype=args.dtype)
                    overlap = time.perf_counter() - t0
    print("\n| concurrency | transport | bare s/tile, median (runs) | plugin s/tile, median (runs) | plugin / bare "
          "| tensor / image (plugin) | tensor / one raster by image (plugin) | load |")
    print("|---|---|---|---|---|---|---|---|")
    for c in sorted(set(image) | set(tensor)):
        for name, lines in (("image", image), ("tensor", tensor)):
            if c not in lines:
                continue
            bare_s, plugin_s, loads = lines[c]
            ratio = statistics.median(plugin_s) / statistics.median(bare_s)
            cross = one = ""
            if name == "tensor":
                if c in image:
                    cross = f"{statistics.median(plugin_s) / statistics.median(image[c][1]):.2f}"
                if 1 in image:
                    one = f"{statistics.median(plugin_s) / statistics.median(image[1][1]):.2f}"
            label = name if name == "image" else f"tensor ({args.dtype})"
            print(f"| {c} | {label} | {fmt(bare_s)} | {fmt(plugin_s)} | {ratio:.2f} | {cross} | {one} | {loads} |")
    if overlap is not None:
        ov = overlap_pixels(min(spec.tile_width, spec.tile_height), DEFAULT_OVERLAP)
        with_overlap = TileGrid.build(args.size, args.size, spec.tile_width, spec.tile_height, ov, ov)
        print(f"\ntensor, default overlap ({ov} px): {len(with_overlap)} tiles instead of {tiles}, {overlap:.1f} s "
              f"({overlap / len(with_overlap):.3f} s per tile sent)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
