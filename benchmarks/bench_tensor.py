"""Client-side cost of the tensor transport, next to the way vLLM's documented client does it, in one run (not a test).

What it measures, all against a zero-latency peer on 127.0.0.1 that returns canned logits (so the server's
model time is out of the picture and only the client's work and the HTTP round trip remain; `--latency S`
makes each answer wait S seconds, as a fast GPU server's would):

1. ours, transport   512x512x6 uint16 tiles already in memory: normalise (LUT) -> float16 -> .npy ->
                     base64 -> pre-encoded JSON bytes -> POST -> logits. What the plugin asks of vLLM >= 0.12:
                     a binary answer (`encoding_format: "bytes"`, float16 for a float16 model), read in
                     place; and, for comparison, the base64 float32 JSON answer older servers give.
2. documented way   vLLM's documented client (torch.full/randn float16 tensor -> torch.save -> base64 ->
                     requests.post(json=...) -> response.json() -> b64decode -> np.frombuffer), sequential,
                     starting from ready float16 tensors (no normalisation: it is favoured). Needs torch,
                     so it runs in the vLLM environment's Python (--vllm-python, FLOODMAPPER_VLLM_PYTHON).
3. ours, pipeline    run_tensor() on 4096x4096x6 uint16 GeoTIFFs (deflate, uncompressed, deflate with a nodata
                     corner) and a deflate one as wide as a Sentinel-2 tile (10980x2048), with the default overlap
                     (1/8): windowed reads, blending, writing the GeoTIFF. Under each, the CPU a tile cost
                     (this process in user and kernel mode, the peer's process), the share of the machine left
                     idle, and the rate the cores would give if that CPU per tile kept them all busy; and the
                     steady state: the rate from the first answer to the last, and the time of a run outside it.
4. peak RSS          run_tensor() on a 20000x20000x6 uint16 GeoTIFF (sparse: mostly unwritten blocks, so it
                     is small on disk), in a fresh process, ru_maxrss reported. Target: < 1 GB.

Targets: >= 100 tiles/s, >= 5x the documented client, peak RSS < 1 GB. Usage and results:
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from plugin.core.progress import NullProgress  # noqa: E402

TILE = 512
CHANNELS = 6

DOCUMENTED_CLIENT = textwrap.dedent('''
    import base64, io, json, sys, time
    import numpy as np, requests, torch

    port, n = int(sys.argv[1]), int(sys.argv[2])
    api_url = f"http://127.0.0.1:{port}/pooling"
    torch.set_default_dtype(torch.float16)
    torch.manual_seed(0)
    tensors = [torch.randn(6, 512, 512, dtype=torch.float16) for _ in range(4)]

    def post_http_request(prompt, api_url):
        headers = {"User-Agent": "Test Client", "Content-Type": "application/json"}
        return requests.post(api_url, headers=headers, json=prompt)

    def decompress(output):
        np_result = np.frombuffer(base64.b64decode(output), dtype=np.float32)
        return np_result.reshape(1, 2, 512, 512)

    def one(pixel_values):
        buffer_tiff = io.BytesIO()
        torch.save(pixel_values, buffer_tiff)
        buffer_tiff.seek(0)
        binary_data = buffer_tiff.read()
        base64_tensor_embedding = base64.b64encode(binary_data).decode("utf-8")
        prompt = {"model": "m", "additional_data": {"prompt_token_ids": [1]}, "encoding_format": "base64",
                  "messages": [{"role": "user", "content": [{"type": "image_embeds",
                               "image_embeds": {"pixel_values": base64_tensor_embedding}}]}]}
        return decompress(post_http_request(prompt=prompt, api_url=api_url).json()["data"][0]["data"])

    one(tensors[0])
    t0 = time.perf_counter()
    for i in range(n):
        out = one(tensors[i % 4])
    dt = time.perf_counter() - t0
    assert out.shape == (1, 2, 512, 512)
    print(json.dumps({"tiles": n, "seconds": dt, "tiles_per_s": n / dt}))
''')


def start_peer(classes: int = 2, latency: float = 0.0) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks/canned_peer.py"),
                             "--tile", str(TILE), "--classes", str(classes), "--latency", str(latency)],
                            stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True, start_new_session=True)
    line = proc.stdout.readline()
    if not line.startswith("PORT"):
        proc.kill()
        raise RuntimeError(f"peer did not start: {line!r}")
    return proc, int(line.split()[1])


def stop_peer(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def spec():
    from plugin.core.model_spec import ModelSpec

    return ModelSpec(channels=CHANNELS, tile_height=TILE, tile_width=TILE, num_classes=2,
                     means=(0.1413, 0.1380, 0.1235, 0.3090, 0.2045, 0.1191),
                     stds=(0.0741, 0.0737, 0.0869, 0.1180, 0.0977, 0.0766))


def ours_transport(port: int, n: int, concurrency: int, stdlib_base64: bool = False,
                   answer: str = "bytes") -> float:
    from plugin.core.tensor import codec
    from plugin.core.tensor.codec import PayloadEncoder
    from plugin.core.tensor.inputs import Normaliser
    from plugin.core.tensor.runner import post_tile
    from plugin.core.vllm_api import VllmClient

    saved = codec._fast_b64
    if stdlib_base64:
        codec._fast_b64 = None

    s = spec()
    norm = Normaliser(s, 1e-4, 0.0, "uint16")
    enc = PayloadEncoder("m", s, answer=answer)
    rng = np.random.default_rng(0)
    tiles = [rng.integers(100, 4000, (CHANNELS, TILE, TILE)).astype(np.uint16) for _ in range(4)]
    valid = np.ones((TILE, TILE), bool)
    with VllmClient(f"http://127.0.0.1:{port}") as client:
        def one(i: int) -> float:
            body = enc.body(norm(tiles[i % 4], valid))
            logits = post_tile(client, body, enc, s)
            assert logits.shape == (2, TILE, TILE)
            return float(logits[1, 0, 0])

        try:
            one(0)
            t0 = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as ex:
                list(ex.map(one, range(n)))
            return n / (time.perf_counter() - t0)
        finally:
            codec._fast_b64 = saved


def transport_all(port: int, n: int, concurrency: int) -> dict:
    """Our transport on 1 and N threads, with the stdlib's base64 and (when importable) pybase64."""
    from plugin.core.tensor.codec import base64_backend

    out = {"stdlib_1": ours_transport(port, n, 1, True), "stdlib_n": ours_transport(port, n, concurrency, True),
           "stdlib_1_json": ours_transport(port, n, 1, True, "base64")}
    if base64_backend() == "pybase64":
        out["pybase64_1"] = ours_transport(port, n, 1)
        out["pybase64_n"] = ours_transport(port, n, concurrency)
        out["pybase64_1_json"] = ours_transport(port, n, 1, False, "base64")
    return out


def documented_client(port: int, n: int, python: str) -> float | None:
    if not python or not os.path.exists(python):
        return None
    out = subprocess.run([python, "-c", DOCUMENTED_CLIENT, str(port), str(n)], capture_output=True, text=True,
                         timeout=1800)
    if out.returncode != 0:
        print("documented client failed:", out.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["tiles_per_s"]


def make_raster(path: Path, size: int, sparse: bool, compress: str = "deflate", nodata_corner: bool = False,
                height: int | None = None) -> None:
    """Random uint16 values in 512x512 blocks, `size` wide and `height` (default `size`) high; `nodata_corner`:
    nodata 0, and the blocks below the anti-diagonal one block in from the bottom right corner hold only nodata
    (the edge of a satellite swath)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rows = size if height is None else height
    profile = dict(driver="GTiff", width=size, height=rows, count=CHANNELS, dtype="uint16", tiled=True,
                   blockxsize=512, blockysize=512, compress=compress, crs="EPSG:32633", BIGTIFF="IF_SAFER",
                   transform=from_origin(500000, 5000000, 10, 10))
    if sparse:
        profile["SPARSE_OK"] = True
    if nodata_corner:
        profile["nodata"] = 0
    rng = np.random.default_rng(1)
    block = rng.integers(300, 3500, (CHANNELS, 512, 512)).astype(np.uint16)
    with rasterio.open(path, "w", **profile) as dst:
        for y in range(0, rows, 512):
            for x in range(0, size, 512):
                if sparse and (x // 512 + y // 512) % 7:  # 1 block in 7 holds data, the rest is unwritten
                    continue
                w = Window(x, y, min(512, size - x), min(512, rows - y))
                data = block[:, : w.height, : w.width]
                if nodata_corner and x + y >= 5 * size // 4:
                    data = np.zeros_like(data)
                dst.write(data, window=w)


def stages(port: int, path: Path, out: Path) -> dict:
    """CPU milliseconds per tile of each step of the pipeline, one tile after another in one thread (the same
    functions run_tensor calls; thread CPU time, so the peer's work is not counted)."""
    import rasterio

    from plugin.core.tensor import scores
    from plugin.core.tensor.codec import PayloadEncoder, logits_float32
    from plugin.core.tensor.inputs import Normaliser
    from plugin.core.tensor.reader import read_tile
    from plugin.core.tensor.runner import post_tile
    from plugin.core.tensor.tiling import RowBandStitcher, TileGrid, overlap_pixels
    from plugin.core.tensor.writer import MapWriter
    from plugin.core.vllm_api import VllmClient

    s = spec()
    cost = dict.fromkeys(("read", "normalise", "encode", "post", "scores + NaN check", "blend", "class rows",
                          "close file"), 0.0)

    def timed(step, fn, *args):
        t = time.thread_time()
        value = fn(*args)
        cost[step] += time.thread_time() - t
        return value

    def checked(logits):
        tile_scores = scores.of_tile(logits_float32(logits), s)
        assert not np.isnan(tile_scores).any()
        return tile_scores

    with rasterio.Env(GDAL_CACHEMAX=128 * 1024 * 1024), rasterio.open(path) as ds, \
            VllmClient(f"http://127.0.0.1:{port}") as client:
        ov = overlap_pixels(TILE, 0.125)
        grid = TileGrid.build(ds.width, ds.height, TILE, TILE, ov, ov)
        norm = Normaliser(s, 1e-4, 0.0, ds.dtypes[0])
        enc = PayloadEncoder("m", s, answer="bytes")
        writer = MapWriter(ds, str(out), "", s)
        stitcher = RowBandStitcher(grid, scores.channels(s), lambda *a: timed("class rows", writer.sink, *a))
        bands = list(range(1, CHANNELS + 1))
        for tile in grid:
            raw, valid = timed("read", read_tile, ds, bands, tile)
            body = timed("encode", enc.body, timed("normalise", norm, raw, valid))
            logits = timed("post", post_tile, client, body, enc, s)
            logits = timed("scores + NaN check", checked, logits)
            timed("blend", stitcher.add, tile, logits, valid)
        timed("close file", writer.commit)
    cost["blend"] -= cost["class rows"]  # the rows are written from inside add()
    return {step: 1000 * seconds / len(grid) for step, seconds in cost.items()}


def pipeline(port: int, path: Path, out: Path, concurrency: int | None, probability: Path | None = None,
             peer: subprocess.Popen | None = None) -> dict:
    """One run_tensor() run: its rate, and where the machine's CPU went meanwhile (this process in user and
    kernel mode, the peer's process when given, and the share of the machine left idle)."""
    from plugin.core.jobs import MapFloodsRequest
    from plugin.core.vllm_api import VllmClient
    from tests.fixtures.jobs import run_tensor

    with VllmClient(f"http://127.0.0.1:{port}") as client:
        req = MapFloodsRequest(input_path=str(path), output_path=str(out), server_url=client.base_url, model="m",
                               concurrency=concurrency, probability_path=str(probability or ""))
        stamps = ProgressStamps()
        idle0, peer0, times0, faults0 = machine_idle(), process_cpu_s(peer), os.times(), minor_faults()
        t0, c0 = time.perf_counter(), time.process_time()
        stats = run_tensor(req, client, spec(), list(range(CHANNELS)), stamps)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        idle1, peer1, times1, faults1 = machine_idle(), process_cpu_s(peer), os.times(), minor_faults()
    n = stats.tiles
    steady = stamps.steady_rate(stats.requests)
    return {"tiles": n, "requests": stats.requests, "seconds": dt, "tiles_per_s": n / dt,
            "steady_tiles_per_s": steady,
            "outside_steady_ms": None if steady is None else 1000 * (dt - stats.requests / steady),
            "cpu_ms_per_tile": 1000 * cpu / n, "max_rss_mb": peak_rss_mb(),
            "concurrency": stats.concurrency,
            "user_ms_per_tile": 1000 * (times1.user - times0.user) / n,
            "kernel_ms_per_tile": 1000 * (times1.system - times0.system) / n,
            "peer_ms_per_tile": None if peer is None else 1000 * (peer1 - peer0) / n,
            "idle_share": (idle1[0] - idle0[0]) / max(idle1[1] - idle0[1], 1),
            "faults_per_tile": (faults1 - faults0) / n}


class ProgressStamps(NullProgress):
    """The Progress a benchmark run reports to: the time of each new progress figure, from which the rate between
    the first and the last answer (the steady state) is told apart from the run's start and end."""

    def __init__(self) -> None:
        self.stamps: list[tuple[float, float]] = []  # (perf_counter, percent), one per new figure

    def set_progress(self, percent: float) -> None:
        if not self.stamps or percent > self.stamps[-1][1]:
            self.stamps.append((time.perf_counter(), percent))

    def steady_rate(self, sent: int) -> float | None:
        """Tiles per second from the first answer to the last, of `sent` tiles in all (the progress counts the tiles
        that are sent); None when fewer than two figures came before the end."""
        if len(self.stamps) < 2:
            return None
        (t_first, first), (t_last, last) = self.stamps[0], self.stamps[-1]
        if t_last <= t_first:
            return None
        return (last - first) / 100 * sent / (t_last - t_first)


def minor_faults() -> int:
    """Minor page faults of this process so far: pages it touched before they were mapped, a kernel trip each."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def process_cpu_s(proc: subprocess.Popen | None) -> float:
    """User + kernel CPU seconds a child process has used so far (Linux /proc; in clock ticks of 10 ms)."""
    if proc is None:
        return 0.0
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_idle() -> tuple[int, int]:
    """(idle ticks, all ticks) of the whole machine so far, from /proc/stat."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return ticks[3] + ticks[4], sum(ticks)


def cpu_budget(runs: list[dict]) -> str:
    """Where a tile's CPU went, summed over the runs, and the rate the machine's cores, fully used, would allow at
    that cost."""
    tiles = sum(r["tiles"] for r in runs)

    def per_tile(key: str) -> float:
        return sum(r[key] * r["tiles"] for r in runs) / tiles

    client, peer = per_tile("user_ms_per_tile") + per_tile("kernel_ms_per_tile"), per_tile("peer_ms_per_tile")
    idle = sum(r["idle_share"] * r["seconds"] for r in runs) / sum(r["seconds"] for r in runs)
    cores = os.cpu_count() or 1
    return (f"  CPU ms per tile: client {client:.1f} (user {per_tile('user_ms_per_tile'):.1f}, kernel "
            f"{per_tile('kernel_ms_per_tile'):.1f}), peer {peer:.1f}; page faults {per_tile('faults_per_tile'):.0f} "
            f"per tile; machine idle {100 * idle:.0f} % of the runs; "
            f"at this CPU per tile, {cores} cores fully used would give {1000 * cores / (client + peer):.0f} tiles/s")


def steady_state(runs: list[dict]) -> str:
    """The rate between each run's first and last answer, in tiles sent, and the time of a run outside it (opening
    the raster and the plan before the first answer, the last rows and the commit after the last), medians over the
    runs."""
    rates = [r["steady_tiles_per_s"] for r in runs if r["steady_tiles_per_s"]]
    if not rates:
        return "  steady state: too few answers to tell"
    outside = statistics.median(r["outside_steady_ms"] for r in runs if r["steady_tiles_per_s"])
    return (f"  steady state (first answer to last): {statistics.median(rates):.1f} sent tiles/s median; "
            f"{outside:.0f} ms of each run outside it")


def keep_rows(port: int, tmp_path: Path, runs: int) -> dict:
    """The pipeline on the uncompressed 4096² raster (the client's cheapest read, so keeping weighs most) with its
    probability raster, keeping every finished band from the first (as a run does after its first minute) and not,
    alternately; the kept rows are removed after each run, as a completed map removes them."""
    from plugin.core.tensor import checkpoint

    raster = tmp_path / "keep.tif"
    make_raster(raster, 4096, sparse=False, compress="none")
    rates: dict[str, list[float]] = {"kept": [], "not kept": []}
    saved = checkpoint.KEEP_AFTER_S
    try:
        for _ in range(runs):
            for name, after in (("not kept", 1e9), ("kept", 0.0)):
                checkpoint.KEEP_AFTER_S = after
                rates[name].append(pipeline(port, raster, tmp_path / "keep-out.tif", None,
                                            tmp_path / "keep-p.tif")["tiles_per_s"])
    finally:
        checkpoint.KEEP_AFTER_S = saved
    kept, plain = statistics.median(rates["kept"]), statistics.median(rates["not kept"])
    print(f"pipeline 4096^2 uncompressed with probability, rows kept from the first band: {kept:.1f} tiles/s "
          f"median ({', '.join(f'{r:.1f}' for r in rates['kept'])}); not kept: {plain:.1f} "
          f"({', '.join(f'{r:.1f}' for r in rates['not kept'])}); ratio {kept / plain:.3f}")
    return {"kept": rates["kept"], "not_kept": rates["not kept"], "ratio": kept / plain}


def base64_pipeline(port: int, tmp_path: Path, runs: int, peer: subprocess.Popen | None) -> dict:
    """The pipeline on the uncompressed 4096² raster (where the encoder weighs most) with pybase64 and with the
    standard library's base64 (what a QGIS without the optional package uses), run for run alternately."""
    from plugin.core.tensor import codec

    if not codec.load_fast_base64():
        print("base64 comparison: skipped (pybase64 is not importable here)")
        return {}
    raster = tmp_path / "base64.tif"
    make_raster(raster, 4096, sparse=False, compress="none")
    found = {name: [] for name in ("pybase64", "stdlib")}
    try:
        for _ in range(runs):
            for name in found:
                codec._fast_b64 = None
                sys.modules.pop("pybase64", None)
                if name == "stdlib":
                    sys.modules["pybase64"] = None  # `import pybase64` fails, as where it is not installed
                found[name].append(pipeline(port, raster, tmp_path / "base64-out.tif", None, peer=peer))
    finally:
        sys.modules.pop("pybase64", None)
        codec.load_fast_base64()
    medians = {name: statistics.median(r["tiles_per_s"] for r in found[name]) for name in found}
    for name in found:
        rates = ", ".join(f"{r['tiles_per_s']:.1f}" for r in found[name])
        print(f"pipeline 4096^2 uncompressed, {name} base64: {medians[name]:.1f} tiles/s median ({rates})")
        print(cpu_budget(found[name]))
    print(f"ratio pybase64 / stdlib: {medians['pybase64'] / medians['stdlib']:.2f}")
    return found


def transports(port: int, args) -> dict:
    """The transport lines (tiles in memory) and the documented client, printed; their figures."""
    results: dict[str, object] = {}
    ours = transport_all(port, args.tiles, args.concurrency)
    where = "this python"
    if "pybase64_1" not in ours and os.path.exists(args.vllm_python):
        other = subprocess.run([args.vllm_python, __file__, "--child-transport", str(port), str(args.tiles),
                                str(args.concurrency)], capture_output=True, text=True, timeout=1800)
        if other.returncode == 0:
            extra = json.loads(other.stdout.strip().splitlines()[-1])
            ours.update({k: v for k, v in extra.items() if k.startswith("pybase64")})
            where = "the vLLM env's python"
    documented = documented_client(port, max(20, args.tiles // 4), args.vllm_python)
    n = args.concurrency
    print(f"ours, binary answer, stdlib base64, 1 thread:    {ours['stdlib_1']:7.1f} tiles/s")
    print(f"ours, binary answer, stdlib base64, {n} threads:   {ours['stdlib_n']:7.1f} tiles/s")
    print(f"ours, base64 answer, stdlib base64, 1 thread:    {ours['stdlib_1_json']:7.1f} tiles/s")
    if "pybase64_1" in ours:
        print(f"ours, binary answer, pybase64, 1 thread:         {ours['pybase64_1']:7.1f} tiles/s  ({where})")
        print(f"ours, binary answer, pybase64, {n} threads:        {ours['pybase64_n']:7.1f} tiles/s")
        print(f"ours, base64 answer, pybase64, 1 thread:         {ours['pybase64_1_json']:7.1f} tiles/s")
    if documented:
        print(f"documented client (torch.save + json, 1 thread): {documented:7.1f} tiles/s")
        for key in ("stdlib_1", "stdlib_n", "stdlib_1_json", "pybase64_1", "pybase64_n", "pybase64_1_json"):
            if key in ours:
                print(f"ratio ours ({key}) / documented: {ours[key] / documented:.1f}x")
    else:
        print(f"documented client: skipped (no torch-capable python at {args.vllm_python})")
    results.update(ours=ours, documented=documented)
    return results


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: after fork+exec it includes the parent's size."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024.0


def main() -> int:
    ap = argparse.ArgumentParser(description="tensor transport client benchmark")
    ap.add_argument("--tiles", type=int, default=200, help="tiles per transport measurement")
    ap.add_argument("--concurrency", type=int, default=4, help="threads for 'ours, transport'")
    ap.add_argument("--big", type=int, default=20000, help="side of the peak-RSS raster (0 = skip)")
    ap.add_argument("--latency", type=float, default=0.0,
                    help="seconds the peer waits before each answer (a fast server's time per request; default 0)")
    ap.add_argument("--runs", type=int, default=3, help="pipeline runs per raster (median and best reported)")
    ap.add_argument("--pipeline-only", action="store_true", help="only the pipeline lines and the step costs")
    ap.add_argument("--base64", action="store_true",
                    help="only the uncompressed pipeline with pybase64 and with the stdlib's base64, alternately")
    ap.add_argument("--keep-rows", action="store_true",
                    help="only the cost of keeping finished rows for a resume: the pipeline with rows kept from the "
                         "first band and without, alternately, with the probability raster")
    ap.add_argument("--vllm-python", default=os.environ.get("FLOODMAPPER_VLLM_PYTHON") or str(
        Path(os.environ.get("FLOODMAPPER_HOME", Path.home() / ".local/share/floodmapper")) / "vllm-env/bin/python"))
    ap.add_argument("--child", nargs=3, metavar=("PORT", "RASTER", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--child-transport", nargs=3, type=int, metavar=("PORT", "N", "CONC"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child_transport:
        print(json.dumps(transport_all(*args.child_transport)))
        return 0

    if args.child:  # a fresh process for one pipeline run, so the peak RSS is this run's alone
        print(json.dumps(pipeline(int(args.child[0]), Path(args.child[1]), Path(args.child[2]), None)))
        return 0

    print(f"machine: {os.cpu_count()} CPUs, load {open('/proc/loadavg').read().split()[0]} at start")
    peer, port = start_peer(latency=args.latency)
    results: dict[str, object] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-tensor-") as tmp:
            tmp_path = Path(tmp)
            if args.base64:
                results["base64"] = base64_pipeline(port, tmp_path, args.runs, peer)
                print("RESULT " + json.dumps(results))
                return 0
            if args.keep_rows:
                results["keep_rows"] = keep_rows(port, tmp_path, args.runs)
                print("RESULT " + json.dumps(results))
                return 0
            if not args.pipeline_only:
                results.update(transports(port, args))
            # random values: the worst case for decompression; the third raster has a nodata value, so the
            # tiles with nothing to map are looked for before the first request (a pass that reads the bands);
            # the fourth is as wide as a Sentinel-2 tile (10980 px), where a row band of logits is 45 MB
            for name, compress, nodata, (width, height) in (
                    ("deflate", "deflate", False, (4096, 4096)), ("none", "none", False, (4096, 4096)),
                    ("deflate, nodata corner", "deflate", True, (4096, 4096)),
                    ("deflate, Sentinel-2 width", "deflate", False, (10980, 2048))):
                mid = tmp_path / f"mid-{compress}-{nodata}-{width}.tif"
                make_raster(mid, width, sparse=False, compress=compress, nodata_corner=nodata, height=height)
                runs = [pipeline(port, mid, tmp_path / "mid-out.tif", None, peer=peer) for _ in range(args.runs)]
                rates = sorted(r["tiles_per_s"] for r in runs)
                size = "4096^2" if width == height else f"{width}x{height}"
                print(f"ours, pipeline {size} {name} (read+blend+write, overlap 1/8, concurrency "
                      f"{runs[0]['concurrency']}): {statistics.median(rates):.1f} tiles/s median, "
                      f"{rates[-1]:.1f} best, {runs[0]['tiles']} tiles per run ({runs[0]['requests']} sent); "
                      f"client CPU "
                      f"{statistics.median(r['cpu_ms_per_tile'] for r in runs):.1f} ms per tile")
                print(cpu_budget(runs))
                print(steady_state(runs))
                results[f"pipeline_{name}"] = {"runs": runs}
                if not nodata and width == height:
                    steps = stages(port, mid, tmp_path / "stages-out.tif")
                    print("  one thread, CPU ms per tile: " + ", ".join(f"{k} {v:.2f}" for k, v in steps.items())
                          + f"; sum {sum(steps.values()):.1f}")
                    results[f"pipeline_{name}"]["stages_ms"] = steps
            if args.big:
                big = tmp_path / "big.tif"
                t0 = time.perf_counter()
                make_raster(big, args.big, sparse=True)
                print(f"{args.big}^2 x6 sparse raster: {big.stat().st_size / 1e6:.0f} MB on disk "
                      f"(written in {time.perf_counter() - t0:.0f} s)")
                out = subprocess.run([sys.executable, __file__, "--child", str(port), str(big),
                                      str(tmp_path / "big-out.tif")], capture_output=True, text=True)
                if out.returncode != 0:
                    print(out.stderr[-3000:], file=sys.stderr)
                    return 1
                res = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{args.big}^2 x6 pipeline: {res['tiles']} tiles in {res['seconds']:.0f} s "
                      f"({res['tiles_per_s']:.1f} tiles/s), peak RSS {res['max_rss_mb']:.0f} MB")
                results["big"] = res
    finally:
        stop_peer(peer)
    print(f"load at end {open('/proc/loadavg').read().split()[0]}")
    print("RESULT " + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
