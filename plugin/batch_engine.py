"""Which engine the offline batch maps with, and the batch on the plugin's local engine.

Two engines can map a batch:

- offline: vLLM in the batch's own process with TerraTorch's IOProcessor, no server at all. The IOProcessor
  sends every tile in float16, and a CPU without AVX512-FP16 or AMX-FP16 runs float16 one to two orders of
  magnitude slower than float32 (a 512x512 tile of Prithvi-EO-2.0-300M: minutes instead of seconds).
- local: the plugin's local engine (a `vllm serve` on 127.0.0.1, started once for the whole batch), fed by the
  tensor transport in the fastest dtype of this computer: the same path as `qgis_process` with BACKEND=1, so
  tiling, blending, nodata and the flood-extent classes are the plugin's own.

`auto` takes offline where float16 runs fast (a GPU, or a CPU with fast float16 that has no faster dtype) and
the local engine everywhere else.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import Optional

from .core.errors import EngineError
from .core.jobs import TRANSPORT_AUTO, MapFloodsRequest, MapFloodsResult
from .core.progress import Progress
from .core.settings import Settings
from .core.transport_choice import FLOAT16_NAMES, IMAGE_DTYPE_REASON, engine_dtype

ENGINE_AUTO = "auto"
ENGINE_OFFLINE = "offline"
ENGINE_LOCAL = "local"
ENGINES = (ENGINE_AUTO, ENGINE_OFFLINE, ENGINE_LOCAL)


@dataclass(frozen=True)
class EngineChoice:
    engine: str  # offline | local
    reason: str


def torch_device() -> str:
    """gpu or cpu, as the local engine's environment check tells it (this process is that environment)."""
    try:
        import torch
    except ImportError:
        return "cpu"
    return "gpu" if torch.cuda.is_available() else "cpu"


def choose_engine(asked: str, settings: Settings, device: str) -> EngineChoice:
    """The engine for `--engine asked` on `device`; EngineError for a dtype setting offline cannot run."""
    if asked == ENGINE_OFFLINE:
        dtype = (settings.dtype or "auto").strip().lower()
        if dtype not in FLOAT16_NAMES:
            raise EngineError(
                f"The offline engine runs float16 ({IMAGE_DTYPE_REASON}), and the dtype is set to {settings.dtype} "
                "(FLOODMAPPER_DTYPE).",
                "Use --engine local (or auto) for that dtype, or unset FLOODMAPPER_DTYPE.")
        return EngineChoice(ENGINE_OFFLINE, f"--engine offline: vLLM in this process, float16 ({IMAGE_DTYPE_REASON})")
    choice = engine_dtype(settings, device)
    if asked == ENGINE_LOCAL:
        return EngineChoice(ENGINE_LOCAL, f"--engine local: the local engine, tensor transport in {choice.dtype} "
                            f"({choice.reason})")
    if choice.dtype == "float16":
        return EngineChoice(ENGINE_OFFLINE, f"float16 ({choice.reason}): vLLM in this process with TerraTorch's "
                            "IOProcessor")
    return EngineChoice(
        ENGINE_LOCAL, f"{choice.dtype} ({choice.reason}), which only the tensor transport sends (the offline "
        "engine's IOProcessor sends float16): the local engine, a vLLM server on 127.0.0.1 started once for the "
        "batch")


class LocalBatch:
    """The rasters of a batch mapped one after another through one local engine, stopped at the end (unless
    the keep-alive setting keeps it for the next run)."""

    def __init__(self, settings: Settings, on_log=None) -> None:
        from .core.backends import LocalBackend

        self.backend = LocalBackend(settings, on_log=on_log)

    def map(self, input_path: str, output_path: str, indices: list[int], reference: str, threshold: float,
            progress: Progress) -> MapFloodsResult:
        from .core.pipeline import map_floods

        request = MapFloodsRequest(
            input_path=input_path, output_path=output_path, server_url="", server_can_read_local_files=True,
            transport=TRANSPORT_AUTO, bands=[i + 1 for i in indices], reference_path=reference,
            reference_threshold=threshold)
        return map_floods(request, self.backend, progress)

    def close(self) -> None:
        from .core.engines import stop_all

        stop_all()


def local_settings(model: str, max_num_seqs: int, environ: Optional[dict[str, str]] = None) -> Settings:
    """The local engine's settings for a batch: this Python's environment (the batch runs in the vLLM
    environment), the model and batch size given, FLOODMAPPER_* variables on top (dtype, keep-alive)."""
    settings = replace(Settings(), vllm_python=sys.executable).with_env(environ)
    return replace(settings, model=model, max_num_seqs=max_num_seqs)
