"""Server-side seconds per tile by `--dtype`, natively and with oneDNN/MKL held to AVX2, and how far each dtype's
water mask is from float32's (not a test).

Run with the vLLM environment's Python (tiles travel as `torch.save` bytes: .npy has no bfloat16):

    ~/.local/share/floodmapper/vllm-env/bin/python benchmarks/bench_dtype.py            # everything, ~1 h on 2 cores
    ... bench_dtype.py --models demo --isa native --repeat 10 --json build/bench/dtype.json
    ... bench_dtype.py --models reference --settings float32 float32-medium float32    # A-B-A

For each model (the reference model, 512² tiles: scripts/make-reference-model, float32 weights, cached under
build/reference-model/; the bundled demo model, 256² tiles) and each ISA setting (native; AVX2 =
`ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2` in the server's environment, standing for a typical
workstation CPU without AVX-512/AMX), it starts `scripts/serve-demo --tensor` once per dtype setting
(float16, float32, float32 with `VLLM_FLOAT32_MATMUL_PRECISION=medium`, bfloat16), one server at a time, and
sends bare /pooling requests one after another: one normalised 512x512 (or 256x256) tile of a synthetic scene
(scripts/scenes.py), the first request timed on its own (it includes one-off set-up), then --repeat more
(median and minimum reported). A request that takes longer than --cap seconds is recorded as "> cap" and the
server is stopped (its dtype setting gets no more requests). Keep --cap at most 300: vLLM stops its engine
when one model step takes longer than VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS (300 s), so a slower tile never
answers anyway. On a machine shared with other jobs the load changes from one server to
the next, and so do the figures: compare settings run back to back at a low load (e.g. A-B-A, below), and
read the minimum beside the median. (Two servers side by side do not help: each one's OpenMP threads spin
on both cores after a request and slow the other one down.) For the demo model (trained weights) it also maps
--seeds 512x512 scenes (4 tiles each, no overlap) and compares each dtype's water mask (argmax) with
float32's under the same ISA setting, pixel by pixel.

It prints the CPU flags that matter and what torch reports (capability, oneDNN float16/bfloat16 support)
under each ISA setting, the load average next to every figure, and a Markdown table.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import requests  # noqa: E402

from tests.fixtures.servers import free_port, start_serve_demo, stop_group, wait_healthy  # noqa: E402

AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
SETTINGS = {  # name -> (vllm --dtype, extra server environment)
    "float16": ("float16", {}),
    "float32": ("float32", {}),
    "float32-medium": ("float32", {"VLLM_FLOAT32_MATMUL_PRECISION": "medium"}),
    "bfloat16": ("bfloat16", {}),
    # bfloat16 with oneDNN held below AMX (AVX512-BF16 alone), where the CPU has AMX-BF16
    "bfloat16-no-amx": ("bfloat16", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}),
}
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16", "amx_tile")
SERVED_NAME = "bench"
LOCATION = (15.0, 45.0)

TORCH_PROBE = r"""
import json, time, torch
def mm(dt):
    a = torch.randn(1024, 1024).to(dt); b = torch.randn(1024, 1024).to(dt); a @ b
    t = time.perf_counter(); a @ b; return round(time.perf_counter() - t, 4)
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(),
                  "mkldnn_fp16": bool(torch.ops.mkldnn._is_mkldnn_fp16_supported()),
                  "mkldnn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
                  "matmul_1024_s": {str(d).split(".")[1]: mm(d)
                                    for d in (torch.float32, torch.bfloat16, torch.float16)}}))
"""


def load() -> str:
    return open("/proc/loadavg").read().split()[0]


def cpu_flags() -> dict[str, bool]:
    flags: set[str] = set()
    model = ""
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
        if line.startswith("model name") and not model:
            model = line.split(":", 1)[1].strip()
    return {"model": model, **{f: f in flags for f in FLAGS}}


def torch_report(env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", TORCH_PROBE], env=dict(os.environ, **env), capture_output=True,
                         text=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {"error": out.stderr[-500:]}


def reference_folder() -> Path:
    """The reference model, float32 weights (vLLM casts them to the served --dtype), built once."""
    folder = ROOT / "build" / "reference-model" / "bench-float32"
    if not (folder / "config.json").exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make-reference-model"), str(folder),
                        "--dtype", "float32", "--overwrite"], check=True)
    return folder


class Model:
    def __init__(self, name: str, folder: Path) -> None:
        from plugin.core.model_spec import load_model_spec

        self.name = name
        self.folder = folder
        self.spec = load_model_spec(str(folder))

    def tiles(self, seed: int, size: int) -> list[np.ndarray]:
        """A size x size synthetic scene, normalised, cut into the model's tiles (row-major, no overlap)."""
        from scripts.scenes import synthesize

        refl, _ = synthesize(seed, size, size)
        mean = np.asarray(self.spec.means, np.float32)[:, None, None]
        std = np.asarray(self.spec.stds, np.float32)[:, None, None]
        x = (refl - mean) / std
        t = self.spec.tile_size
        return [x[:, r:r + t, c:c + t] for r in range(0, size, t) for c in range(0, size, t)]


def body(model: Model, tile: np.ndarray, dtype: str) -> dict:
    import torch

    def b64(t: torch.Tensor) -> str:
        buf = io.BytesIO()
        torch.save(t, buf)
        return base64.b64encode(buf.getvalue()).decode()

    dt = getattr(torch, dtype)
    embeds = {"pixel_values": b64(torch.from_numpy(np.ascontiguousarray(tile)).to(dt))}
    if model.spec.has_location:
        embeds["location_coords"] = b64(torch.tensor([LOCATION]).to(dt))
    return {"model": SERVED_NAME, "encoding_format": "bytes", "embed_dtype": "float32", "endianness": "little",
            "messages": [{"role": "user", "content": [{"type": "image_embeds", "image_embeds": embeds}]}]}


def post(url: str, payload: dict, model: Model, cap: float) -> tuple[float, np.ndarray | None]:
    """(seconds, logits) for one tile; (inf, None) when the server took longer than `cap`."""
    t0 = time.monotonic()
    try:
        r = requests.post(url + "/pooling", json=payload, timeout=(10, cap))
    except requests.ReadTimeout:
        return float("inf"), None
    seconds = time.monotonic() - t0
    if r.status_code != 200:
        raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
    t = model.spec.tile_size
    return seconds, np.frombuffer(r.content, "<f4").reshape(model.spec.num_classes, t, t)


@contextmanager
def serving(model: Model, isa: str, setting: str, args, tmp: Path):
    """A tensor server of `model` for one dtype setting; (url, start-up seconds). Stopped on exit. A server
    that dies while starting (seen when the machine is short of memory) is started once more."""
    dtype, env = SETTINGS[setting]
    env = dict(env, FLOODMAPPER_MODEL=str(model.folder), **(AVX2_ENV if isa == "avx2" else {}))
    for attempt in (1, 2):
        port = free_port()
        log = tmp / f"{model.name}-{isa}-{setting}-{port}.log"
        t0 = time.monotonic()
        proc = start_serve_demo(port, log, tmp / "out", ("--tensor", "--dtype", dtype, "--served-model-name",
                                                         SERVED_NAME), env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            try:
                wait_healthy(url, proc, log, timeout=args.startup_cap)
            except RuntimeError:
                if attempt == 2:
                    raise
                print(f"  {setting} server did not start; once more", flush=True)
                continue
            yield url, round(time.monotonic() - t0, 1)
            return
        finally:
            stop_group(proc.pid)


def timed(url: str, model: Model, dtype: str, args) -> tuple[float, list[float]]:
    """(first request s, further requests s) for the timing tile; stops at the first request over the cap."""
    payload = body(model, model.tiles(args.timing_seed, model.spec.tile_size)[0], dtype)
    first, _ = post(url, payload, model, args.cap)
    times: list[float] = []
    while first != float("inf") and len(times) < args.repeat:
        times.append(post(url, payload, model, args.cap)[0])
        if times[-1] == float("inf"):
            break
    return first, times


def masks(url: str, model: Model, dtype: str, args) -> list[np.ndarray] | None:
    out = []
    for seed in args.seeds:
        for tile in model.tiles(seed, args.scene_size):
            logits = post(url, body(model, tile, dtype), model, args.cap)[1]
            if logits is None:
                return None
            out.append(logits.argmax(0) == model.spec.water_class)
    return out


def run_setting(model: Model, isa: str, setting: str, args, tmp: Path) -> dict:
    dtype = SETTINGS[setting][0]
    row: dict = {"model": model.name, "isa": isa, "setting": setting, "load_start": load()}
    try:
        with serving(model, isa, setting, args, tmp) as (url, startup):
            row["startup_s"] = startup
            row["first_s"], times = timed(url, model, dtype, args)
            row["median_s"] = statistics.median(times) if times else row["first_s"]
            row["min_s"] = min(times) if times else row["first_s"]
            row["masks"] = None
            if args.seeds and model.name == "demo" and row["median_s"] != float("inf"):
                row["masks"] = masks(url, model, dtype, args)
            row["load_end"] = load()
    except RuntimeError as exc:
        row["error"] = str(exc)[:300]
    return row


def fmt(s: float, cap: float) -> str:
    return f"> {cap:.0f}" if s == float("inf") else f"{s:.3f}" if s < 1 else f"{s:.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["reference", "demo"], choices=["reference", "demo"])
    ap.add_argument("--isa", nargs="+", default=["native", "avx2"], choices=["native", "avx2"])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--repeat", type=int, default=3, help="timed requests after the first (median reported)")
    ap.add_argument("--cap", type=float, default=300.0, help="longest wait for one tile, seconds")
    ap.add_argument("--startup-cap", type=float, default=900.0)
    ap.add_argument("--seeds", type=int, nargs="*", default=[101, 102, 103, 104, 105, 106],
                    help="demo scenes for the water-mask agreement (512x512, 4 tiles each)")
    ap.add_argument("--scene-size", type=int, default=512)
    ap.add_argument("--timing-seed", type=int, default=100)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    cpu = cpu_flags()
    print(f"CPU: {cpu['model']}; " + ", ".join(f"{k}={'yes' if cpu[k] else 'no'}" for k in FLAGS))
    reports = {isa: torch_report(AVX2_ENV if isa == "avx2" else {}) for isa in args.isa}
    for isa, rep in reports.items():
        print(f"torch under {isa}: {json.dumps(rep)}")

    models = []
    for name in args.models:
        models.append(Model(name, reference_folder() if name == "reference" else ROOT / "resources" / "demo_model"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-dtype-") as tmp:
        for isa in args.isa:
            for model in models:
                for setting in args.settings:
                    row = run_setting(model, isa, setting, args, Path(tmp))
                    rows.append(row)
                    print(f"{model.name:9s} {isa:6s} {setting:14s} start {row.get('startup_s', '-')} s, first "
                          f"{fmt(row.get('first_s', float('nan')), args.cap)} s, median "
                          f"{fmt(row.get('median_s', float('nan')), args.cap)} s/tile, min "
                          f"{fmt(row.get('min_s', float('nan')), args.cap)} (load {row['load_start']}->"
                          f"{row.get('load_end', '?')}) {row.get('error', '')}", flush=True)

    for row in rows:  # agreement with float32 under the same ISA setting
        ref = next((r for r in rows if r["model"] == row["model"] and r["isa"] == row["isa"]
                    and r["setting"] == "float32"), None)
        if row.get("masks") and ref and ref.get("masks"):
            a, b = np.stack(row["masks"]), np.stack(ref["masks"])
            row["agreement"] = float((a == b).mean())
            row["water"] = float(a.mean())

    print("\n| model | ISA | dtype | s/tile (median) | min | first request s | start-up s | water mask = float32 "
          "| load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        agree = f"{100 * row['agreement']:.3f} %" if "agreement" in row else "n/a"
        nan = float("nan")
        print(f"| {row['model']} | {row['isa']} | {row['setting']} | {fmt(row.get('median_s', nan), args.cap)} | "
              f"{fmt(row.get('min_s', nan), args.cap)} | {fmt(row.get('first_s', nan), args.cap)} | "
              f"{row.get('startup_s', '-')} | {agree} | {row['load_start']}-{row.get('load_end', '?')} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        keep = [{k: v for k, v in r.items() if k != "masks"} for r in rows]
        args.json.write_text(json.dumps({"cpu": cpu, "torch": reports, "rows": keep}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
