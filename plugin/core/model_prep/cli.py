"""The `prepare-model` command line: exit 0 written, 2 validation errors, 1 other failure."""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from ..errors import ModelSpecError
from .builder import ModelPreparationFailed, prepare_model


def main(argv: Optional[list[str]] = None) -> int:
    """Run prepare_model on the command's arguments; returns the exit code."""
    ap = argparse.ArgumentParser(
        prog="prepare-model",
        description="Write a vLLM-ready TerraTorch model folder (config.json + model.safetensors), "
                    "after checking the config, input spec and checkpoint agree.")
    ap.add_argument("--ttconfig", required=True, help="TerraTorch LightningCLI YAML (model + data sections)")
    ap.add_argument("-i", "--input", required=True, help="input spec: JSON text or a JSON file")
    ap.add_argument("--weights", required=True, help="checkpoint: .ckpt, .pt/.pth or .safetensors")
    ap.add_argument("--out", required=True, help="output folder (written atomically)")
    ap.add_argument("--fp16", action="store_true", help="store float weights as float16 (half the size)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    ap.add_argument("--terratorch-version", default="detect",
                    help="TerraTorch version vLLM runs (default: read from the vLLM environment)")
    a = ap.parse_args(argv)
    try:
        res = prepare_model(a.ttconfig, a.input, a.weights, a.out, fp16=a.fp16, overwrite=a.overwrite,
                            terratorch_version=a.terratorch_version)
    except ModelPreparationFailed as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        print("Nothing was written.", file=sys.stderr)
        return 2
    except (ModelSpecError, OSError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    for p in res.warnings:
        print(p, file=sys.stderr)
    print(f"wrote {res.out_dir} ({res.tensors} tensors, {res.weights_bytes / 1e6:.1f} MB of weights)")
    return 0
