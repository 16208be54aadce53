"""The tensor transport's map writer: row bands written in whole rows of the files' blocks, against each band
written as it comes (not a test).

    .venv/bin/python benchmarks/bench_writer.py                    # 4096² and 10980², with the probability map
    .venv/bin/python benchmarks/bench_writer.py --sizes 10980 --rounds 3 --no-probability

Each measurement runs in a fresh process: `MapWriter` gets the row bands of a map of the given size, 448 rows each
(a 512 px tile with the default overlap), as the stitcher hands them over, and then commits. The bands are made
first; the peak RSS shown is what the process grew by after that (GDAL's cache, the writer's buffers). The logits
(handed over as their water margin, plugin/core/tensor/scores.py) are a smooth field with per-pixel noise, as a
model's are: a water probability made of them compresses like a real one (constant logits would compress to nothing
and hide the cost). GDAL runs as in a tensor run: its cache at the most a run asks for, compression on all CPUs.
Printed per variant: the seconds spent handing the bands over (`sink`, during the run), the seconds of the commit
(after the last tile: what the user waits for once the server is done), the process's CPU seconds and what its peak
RSS grew by. Variants alternate, round by round.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BAND_ROWS = 448
VARIANTS = ("whole rows of blocks", "each band as it comes")


def measure(variant: str, size: int, probability: bool, folder: str) -> dict:
    """One map written through MapWriter (this process: run it in a fresh one)."""
    from types import SimpleNamespace

    import numpy as np
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    from plugin.core.model_spec import ModelSpec
    from plugin.core.tensor import block_cache, scores
    from plugin.core.tensor.writer import MapWriter

    class EachBand(MapWriter):
        """The writer before it wrote whole rows of blocks: each band's rows at once, whatever their blocks."""

        def _put(self, y0: int, rows: list) -> None:
            self._write(y0, rows)

    writer_class = MapWriter if variant == VARIANTS[0] else EachBand
    grid = SimpleNamespace(width=size, height=size, crs=CRS.from_epsg(32633),
                           transform=from_origin(500000, 5000000, 10, 10), name=os.path.join(folder, "input.tif"))
    spec = ModelSpec(channels=6, tile_height=512, tile_width=512, num_classes=2, means=[0.0] * 6, stds=[1.0] * 6)
    rng = np.random.default_rng(1)
    cols = np.sin(np.arange(size, dtype=np.float32) / 300.0) * 3
    bands = []  # made before the clocks start: the model's answers, not the writer's work
    for y0 in range(0, size, BAND_ROWS):
        h = min(BAND_ROWS, size - y0)
        rows = np.sin(np.arange(y0, y0 + h, dtype=np.float32) / 200.0)[:, None] * 3
        water = cols[None, :] + rows + rng.normal(0, 0.5, (h, size)).astype(np.float32)
        bands.append((y0, scores.of_tile(np.stack([np.zeros_like(water), water]), spec)))
    valid = np.ones((BAND_ROWS, size), bool)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with rasterio.Env(GDAL_CACHEMAX=block_cache.MAX_BYTES, GDAL_NUM_THREADS="ALL_CPUS"):
        c0 = time.process_time()
        writer = writer_class(grid, os.path.join(folder, "map.tif"),
                              os.path.join(folder, "probability.tif") if probability else "", spec)
        sink = 0.0
        for y0, band in bands:
            t = time.perf_counter()
            writer.sink(y0, band, valid[:band.shape[1]])
            sink += time.perf_counter() - t
        t = time.perf_counter()
        writer.commit()
        commit = time.perf_counter() - t
        cpu = time.process_time() - c0
    return {"sink_s": sink, "commit_s": commit, "cpu_s": cpu,
            "rss_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024,
            "map_bytes": sum(os.path.getsize(os.path.join(folder, n)) for n in ("map.tif", "probability.tif")
                             if os.path.exists(os.path.join(folder, n)))}


def fresh(variant: str, size: int, probability: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-writer-") as folder:
        out = subprocess.run([sys.executable, __file__, "--one", variant, "--sizes", str(size), "--folder", folder]
                             + ([] if probability else ["--no-probability"]),
                             capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="4096,10980", help="map sides, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per variant and size (medians shown)")
    parser.add_argument("--no-probability", action="store_true", help="the class map alone")
    parser.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    probability = not args.no_probability
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.one:
        print(json.dumps(measure(args.one, sizes[0], probability, args.folder)))
        return
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} at start; "
          f"{'class and probability maps' if probability else 'class map'}, bands of {BAND_ROWS} rows")
    for size in sizes:
        runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for _ in range(args.rounds):
            for variant in VARIANTS:
                runs[variant].append(fresh(variant, size, probability))
        for variant in VARIANTS:
            med = {key: statistics.median(r[key] for r in runs[variant]) for key in runs[variant][0]}
            print(f"{size}x{size}, {variant}: sink {med['sink_s']:.2f} s, commit {med['commit_s']:.2f} s, "
                  f"CPU {med['cpu_s']:.2f} s, peak RSS +{med['rss_mb']:.0f} MB, "
                  f"files {med['map_bytes'] / 1e6:.1f} MB (medians of {args.rounds})")
        new, old = runs[VARIANTS[0]], runs[VARIANTS[1]]
        ratio = statistics.median(r["commit_s"] for r in new) / statistics.median(r["commit_s"] for r in old)
        print(f"  commit, whole rows of blocks / each band: {ratio:.2f}")
    print(f"load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
