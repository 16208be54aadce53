"""Which engine the offline batch maps with, and the batch on the plugin's local engine.

Two engines can map a batch:

- offline: vLLM in the batch's own process with TerraTorch's IOProcessor, no server at all. The IOProcessor
  sends every tile in float16, and a CPU without AVX512-FP16 or AMX-FP16 runs float16 one to two orders of
  magnitude slower than float32 (a 512x512 tile of Prithvi-EO-2.0-300M: minutes instead of seconds).
- local: the plugin's local engine (a `vllm serve` on 127.0.0.1, started once for the whole batch), fed by the
  tensor transport in the fastest dtype of this computer: the same path as `qgis_process` with BACKEND=1, so
  tiling, blending, nodata and the flood-extent classes are the plugin's own.

`auto` takes offline where float16 runs fast (a GPU, or a CPU with fast float16 that has no faster dtype) and
the local engine everywhere else. Run by a Python without vLLM (QGIS's, which also has GDAL's bindings that stacking
a Sentinel-2 product's band files needs), the batch maps on the local engine, in the vLLM environment the plugin
uses (FLOODMAPPER_VLLM_PYTHON, else the one scripts/setup-vllm-env builds).
"""

from __future__ import annotations

import importlib.util
import sys
from argparse import Namespace
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


def has_vllm() -> bool:
    """Whether this Python can run vLLM in-process (the offline engine)."""
    return importlib.util.find_spec("vllm") is not None


def torch_device() -> str:
    """gpu or cpu, as the local engine's environment check tells it (this process is that environment)."""
    try:
        import torch
    except ImportError:
        return "cpu"
    return "gpu" if torch.cuda.is_available() else "cpu"


def choose_engine(asked: str, settings: Settings, device: str, in_process: bool = True,
                  pipeline_for: str = "") -> EngineChoice:
    """The engine for `--engine asked` on `device`; `in_process`: this Python has vLLM; `pipeline_for`: why the
    batch needs the plugin's pipeline (inputs to stack, --clouds), which auto then takes. EngineError for an
    offline engine this Python or the dtype setting cannot run."""
    if not in_process:
        if asked == ENGINE_OFFLINE:
            raise EngineError(
                f"The offline engine runs vLLM in the batch's own Python, and {sys.executable} has no vLLM.",
                "Run the batch with the vLLM environment's Python, or use --engine local (or auto).")
        return EngineChoice(ENGINE_LOCAL, f"this Python has no vLLM: the local engine in the vLLM environment "
                            f"({settings.vllm_python}), its dtype and transport chosen as for the plugin")
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
    if pipeline_for:
        return EngineChoice(ENGINE_LOCAL, f"{pipeline_for}, which the plugin's pipeline does: the local engine, "
                            f"tensor transport in {choice.dtype} ({choice.reason})")
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

    def __init__(self, settings: Settings) -> None:
        from .core.backends import LocalBackend

        self.backend = LocalBackend(settings)  # the engine's own log stays in its file

    def map(self, input_path: str, output_path: str, options: Namespace, progress: Progress) -> MapFloodsResult:
        """One raster as `qgis_process` maps it; `options` are the batch's (indices, reference, clouds, the area
        read from --area as `area_polygons`, the pre-event image as `pre_event_path`)."""
        from .batch_inputs import own_cloud_mask
        from .core.pipeline import map_floods

        area = options.area_polygons
        cloud_mask = pre_event_clouds = ""
        if options.clouds:
            cloud_mask = own_cloud_mask(input_path)  # product_inputs.py stacks a product's or takes the file
            if not cloud_mask:
                progress.warning("--clouds: neither a Sentinel-2 product nor a set of band files with a cloud file "
                                 "beside it (QA_PIXEL, Fmask, SCL), so no cloud classification of its own; mapped "
                                 "without a cloud mask")
            if options.pre_event_path:  # without one of its own, the pipeline says what its clouds do
                pre_event_clouds = own_cloud_mask(options.pre_event_path)
        request = MapFloodsRequest(
            input_path=input_path, output_path=output_path, server_url="", server_can_read_local_files=True,
            transport=TRANSPORT_AUTO, bands=[i + 1 for i in options.indices] if options.indices else None,
            reference_path=options.reference, reference_threshold=options.reference_threshold,
            cloud_mask_path=cloud_mask, mask_polygons=area.shapes if area else None, mask_crs=area.crs if area else "",
            pre_event_path=options.pre_event_path, pre_event_cloud_mask_path=pre_event_clouds)
        return map_floods(request, self.backend, progress)

    def close(self) -> None:
        from .core.engines import stop_all

        stop_all()


def local_settings(model: str, max_num_seqs: int, environ: Optional[dict[str, str]] = None,
                   in_process: bool = True) -> Settings:
    """The local engine's settings for a batch: this Python's environment when it has vLLM (`in_process`), else
    the plugin's; the model and batch size given; FLOODMAPPER_* variables on top (dtype, keep-alive, Python)."""
    settings = Settings()
    if in_process:
        settings = replace(settings, vllm_python=sys.executable)
    settings = settings.with_env(environ)
    return replace(settings, model=model, max_num_seqs=max_num_seqs)
