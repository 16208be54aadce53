"""The offline batch on its two engines, side by side in one run, natively and with oneDNN/MKL held to AVX2 (not a
test).

    .venv/bin/python benchmarks/bench_batch.py [--rasters 3] [--size 512] [--model DIR] [--isa native avx2]

For each ISA setting (native; AVX2 = `ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2`, standing for a
typical workstation CPU without AVX-512/AMX) it runs `python -m plugin.batch` in the vLLM environment's Python on
the same --rasters synthetic scenes (scripts/scenes.py), once with `--engine offline` (vLLM in the batch's
process, TerraTorch's IOProcessor, float16) and once with `--engine local` (the plugin's local engine, tensor
transport, the dtype the CPU runs fastest), one after another. It reports, from the batch's own output, the
engine's start, the seconds per raster once the engine runs (median of the rasters after the first, whose time
holds the local engine's start) and the whole batch, with the local engine's ratio to the offline one; and the
largest peak RSS of one process so far (ru_maxrss of the children: the batch, or the engine it started).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from plugin.core.settings import DEMO_MODEL_DIR, Settings  # noqa: E402
from scripts import scenes  # noqa: E402

ISA = {"native": {}, "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}


def run(python: str, folder: Path, out: Path, engine: str, model: str, env: dict[str, str]) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.monotonic()
    proc = subprocess.run([python, "-m", "plugin.batch", str(folder), "--out", str(out), "--model", model,
                           "--engine", engine], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=7200)
    seconds = time.monotonic() - t0
    output = proc.stdout + proc.stderr
    chosen = re.search(r"^Engine: (.*)$", output, re.M)
    if proc.returncode != 0:  # recorded: an engine too slow for vLLM's step timeout is a result
        failed = [line for line in output.splitlines() if "FAILED" in line or line.startswith("error:")]
        return {"engine": engine, "chosen": chosen.group(1) if chosen else "?", "seconds": seconds,
                "failed": (failed or output.splitlines()[-1:])[0][:300]}
    per_raster = [float(s) for s in re.findall(r"^\[\d+/\d+\] ok .*\(([\d.]+) s\)$", output, re.M)]
    start = re.search(r"Engine ready in ([\d.]+) s|engine ready at \S+ after (\d+) s", output)
    return {
        "engine": engine, "chosen": chosen.group(1) if chosen else "?", "seconds": seconds,
        "start_s": float(next(g for g in start.groups() if g)) if start else float("nan"),
        "per_raster_s": statistics.median(per_raster[1:] or per_raster),
        # ru_maxrss of the children: the largest one so far (a later run shows only if it is larger)
        "peak_rss_mb": max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rasters", type=int, default=3)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--model", default=str(DEMO_MODEL_DIR))
    p.add_argument("--isa", nargs="+", choices=sorted(ISA), default=["native", "avx2"])
    p.add_argument("--engines", nargs="+", choices=["offline", "local"], default=["offline", "local"])
    args = p.parse_args()
    python = Settings().with_env().vllm_python
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        folder = Path(tmp, "scenes")
        folder.mkdir()
        for i in range(args.rasters):
            scenes.generate_scene(folder / f"scene{i}.tif", seed=9300 + i, width=args.size, height=args.size)
        for isa in args.isa:
            for engine in args.engines:
                row = run(python, folder, Path(tmp, f"out-{isa}-{engine}"), engine, args.model, ISA[isa])
                row["isa"] = isa
                rows.append(row)
                print(f"{isa} {engine}: {row}", flush=True)
    print(f"\n{args.rasters} rasters of {args.size}x{args.size}, model {args.model}; load {os.getloadavg()[0]:.2f}\n")
    print("| ISA | engine | engine start, s | s per raster | whole batch, s | local / offline per raster |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        if "failed" in row:
            print(f"| {row['isa']} | {row['engine']} | failed after {row['seconds']:.0f} s: {row['failed']} | | | |")
            continue
        offline = next((r for r in rows if r["isa"] == row["isa"] and r["engine"] == "offline"), {})
        ratio = (f"{row['per_raster_s'] / offline['per_raster_s']:.3f}"
                 if row["engine"] == "local" and "per_raster_s" in offline else "")
        print(f"| {row['isa']} | {row['engine']} | {row['start_s']:.0f} | {row['per_raster_s']:.2f} | "
              f"{row['seconds']:.1f} | {ratio} |")
    for row in rows:
        print(f"{row['isa']} {row['engine']}: {row['chosen']}")


if __name__ == "__main__":
    main()
