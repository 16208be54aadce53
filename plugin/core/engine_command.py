"""The `vllm serve` command line for a set of engine settings and the vLLM environment that runs it (the flags
come and go with vLLM's version, the dtype follows from the device and the transport), and the key that tells
one such command from another."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import socket
from pathlib import Path

from .cpu import vllm_cpu_binding
from .engine_env import HOST, EngineInfo
from .errors import EngineError
from .settings import DEMO_MODEL_DIR, DEMO_MODEL_NAME, Settings
from .transport_choice import engine_dtype, plan_local_engine

IO_PROCESSOR = "terratorch_segmentation"
MODEL_STEP_TIMEOUT_S = 300  # vLLM's own default for VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS: never set below it
# vLLM's message queues are Unix sockets named <temporary directory>/<uuid4>; Linux takes 107 bytes of path
SOCKET_PATH_MAX = 107


def engine_key(settings: Settings, io_processor: bool = True) -> tuple:
    s = settings
    return (s.vllm_python, s.model, s.device, s.dtype, int(s.max_num_seqs), float(s.gpu_memory_utilization),
            s.extra_args, bool(io_processor))


def engine_key_hash(settings: Settings, io_processor: bool = True) -> str:
    return hashlib.sha256(repr(engine_key(settings, io_processor)).encode()).hexdigest()[:10]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as vLLM's server binds it
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def is_demo_model(model: str) -> bool:
    try:
        return Path(model).resolve() == DEMO_MODEL_DIR.resolve()
    except OSError:
        return False


def serve_command(settings: Settings, info: EngineInfo, port: int, *, io_processor: bool,
                  entry: str | Path) -> tuple[list[str], str]:
    """(`vllm serve` arguments, the dtype they run) for these settings and this vLLM environment."""
    s = settings
    device = info.device
    if s.device == "gpu" and device != "gpu":
        raise EngineError(
            "The engine is set to run on the GPU, but the vLLM environment has no usable GPU "
            f"(torch {info.torch}).",
            "Set the device to 'auto' or 'cpu', or build the GPU environment on a machine with an NVIDIA "
            "GPU (scripts/setup-vllm-env).",
        )
    if s.device == "cpu" and device == "gpu":
        raise EngineError(
            "The engine is set to run on the CPU, but the vLLM environment is a GPU (CUDA) build, "
            "which cannot run on the CPU.",
            "Set the device to 'auto' or 'gpu', or build a CPU environment with FLOODMAPPER_DEVICE=cpu "
            "scripts/setup-vllm-env DIR and point the 'vLLM Python' setting at DIR/bin/python.",
        )
    if io_processor:
        # TerraTorch's IOProcessor always sends float16 tiles; any other model dtype kills the engine
        # on the first request ("Input type (c10::Half) and bias type (float) should be the same").
        dtype = plan_local_engine(s, "image", None, 0, device).dtype
    else:
        dtype = engine_dtype(s, device).dtype
    # the engine runs in a folder of its own: a model folder given relative to this one is made absolute
    model = os.path.abspath(s.model) if os.path.isdir(s.model) else s.model
    cmd = [info.python, str(entry), "serve", model, "--host", HOST, "--port", str(port)]
    if is_demo_model(s.model):
        cmd += ["--served-model-name", DEMO_MODEL_NAME]
    cmd += ["--model-impl", "terratorch", "--skip-tokenizer-init", "--enforce-eager"]
    if io_processor:
        if info.io_processor_plugins and IO_PROCESSOR not in info.io_processor_plugins:
            raise EngineError(
                f"The vLLM environment has no '{IO_PROCESSOR}' IOProcessor plugin "
                f"(found: {', '.join(info.io_processor_plugins) or 'none'}).",
                "Install TerraTorch >= 1.1 in the vLLM environment (scripts/setup-vllm-env does).",
            )
        cmd += ["--io-processor-plugin", IO_PROCESSOR]
    if info.vllm_tuple >= (0, 11, 1):
        cmd.append("--enable-mm-embeds")  # required from 0.11.1 for image_embeds; unknown before
    cmd += ["--dtype", dtype, "--max-num-seqs", str(int(s.max_num_seqs))]
    if device == "gpu":
        cmd += ["--gpu-memory-utilization", str(s.gpu_memory_utilization)]
    try:
        cmd += shlex.split(s.extra_args or "")
    except ValueError as exc:
        raise EngineError(
            f"The extra vLLM arguments cannot be parsed: {exc}.",
            "Fix the quoting in the 'Extra vLLM arguments' setting.",
        ) from exc
    return cmd, dtype


def holds_vllm_sockets(folder: str) -> bool:
    """Whether vLLM's message queue sockets (<folder>/<uuid4>) fit in the path of a Unix socket there."""
    return len(os.fsencode(folder)) + 1 + 36 <= SOCKET_PATH_MAX


def serve_environment(settings: Settings, info: EngineInfo, output_dir: str) -> dict[str, str]:
    """Environment variables for the engine process, beside child_environment()'s."""
    extra = {
        "TERRATORCH_SEGMENTATION_IO_PROCESSOR_CONFIG": json.dumps({"output_path": output_dir}),
        # A local model folder must not trigger downloads; a Hugging Face id needs the hub.
        "HF_HUB_OFFLINE": "1" if os.path.isdir(settings.model) else "0",
        # vLLM stops its engine for good when one model step takes longer than this (300 s by default), which a
        # batch of large tiles on a slow CPU can: a step may take as long as the plugin waits for an answer.
        "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": os.environ.get("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS")
        or str(max(MODEL_STEP_TIMEOUT_S, math.ceil(settings.read_timeout))),
    }
    if holds_vllm_sockets(output_dir):
        # vLLM leaves its sockets and rendezvous files (vllm_dist_*) in the temporary directory when it stops:
        # in the engine's own folder they go with it, however the engine stops
        extra["TMPDIR"] = output_dir
    if info.device == "cpu":
        extra["VLLM_CPU_KVCACHE_SPACE"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE") or "1"
        extra.update(vllm_cpu_binding())
    return extra
