"""The local engine: one real `vllm serve` process that the plugin starts, watches and stops (QGIS-free).

Why a child process and not vLLM in QGIS's Python: vLLM, torch and TerraTorch live in their own environment
(engine_env.py), which QGIS's Python must never import. The engine runs in a process group of its own
(start_new_session), so `stop()` ends vLLM's API server, engine core and workers together and nothing is
orphaned. A dead engine (process exited, or /health answering an error) is noticed by the next
`ensure_running`, which starts a new one; a /health that merely times out means "busy" (vLLM runs the
IOProcessor's pre-processing in its event loop), not "dead". Which engine serves which settings: engines.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import requests

from .cpu import vllm_cpu_binding
from .engine_env import ENTRY_SCRIPT, HOST, SETUP_HINT, EngineInfo, check_environment, child_environment
from .engine_log import LOG_TAIL, EngineLog
from .errors import Cancelled, EngineError
from .process_group import kill_group
from .progress import NullProgress, Progress
from .settings import DEMO_MODEL_DIR, DEMO_MODEL_NAME, Settings, floodmapper_home
from .transport_choice import engine_dtype, plan_local_engine

IO_PROCESSOR = "terratorch_segmentation"
STOP_GRACE = 15.0  # vLLM shuts its engine core down within a few seconds of SIGTERM

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


# Every engine with a process, made through the registry (engines.py) or not: the exit hook stops them all.
# Lock order: an engine's own lock, then this one; never an engine's lock while holding this one.
_LIVE: set[LocalEngine] = set()
_LIVE_LOCK = threading.RLock()


def live_engines() -> list[LocalEngine]:
    with _LIVE_LOCK:
        return list(_LIVE)


class LocalEngine:
    """One `vllm serve` child process for one set of engine settings.

    `ensure_running()` starts it (or restarts a dead one) and returns its URL; `stop()` ends its whole
    process group. Thread-safe: QGIS may run algorithms in worker threads.
    """

    def __init__(
        self,
        settings: Settings,
        log_dir: str | Path | None = None,
        on_log: Callable[[str], None] | None = None,
        *,
        io_processor: bool = True,
        entry: str | Path = ENTRY_SCRIPT,
    ) -> None:
        self.settings = settings
        self.io_processor = io_processor
        self.entry = Path(entry)
        self.log_dir = Path(log_dir) if log_dir else floodmapper_home() / "logs"
        self.info: EngineInfo | None = None
        self.url = ""
        self.port = 0
        self.model_id = ""
        self.dtype = ""  # the --dtype it runs (set when it starts)
        self.command: list[str] = []
        self.log_path = self.log_dir / f"vllm-engine-{engine_key_hash(settings, io_processor)}.log"
        self.log = EngineLog(self.log_path, on_log)
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._out_dir: str | None = None
        self._healthy_once = False
        self._lock = threading.RLock()
        self._stop_requested = threading.Event()
        self._http = requests.Session()
        self._http.trust_env = False  # a proxy from the environment must never see loopback traffic

    # ---- public API -------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def output_dir(self) -> str | None:
        """The private folder the IOProcessor writes `path` outputs to (removed by stop())."""
        return self._out_dir

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = LOG_TAIL) -> str:
        return self.log.tail(lines)

    @property
    def on_log(self) -> Callable[[str], None] | None:
        return self.log.on_log

    @on_log.setter
    def on_log(self, callback: Callable[[str], None] | None) -> None:
        self.log.on_log = callback  # each run has its own feedback

    def ensure_running(self, progress: Progress | None = None, timeout: float | None = None) -> str:
        """Return the URL of a healthy engine, starting (or restarting) it when needed.

        Waits for /health with progress messages; cancel stops a starting engine (Cancelled). A crash during
        start-up raises EngineError quoting the last log lines.
        """
        progress = progress or NullProgress()
        timeout = self.settings.startup_timeout if timeout is None else timeout
        with self._lock:
            if self._proc is not None:
                state = self._probe()
                if state == "healthy" or (state == "busy" and self._healthy_once):
                    return self.url
                if state == "dead":
                    code = self._proc.poll()
                    why = f"exited with code {code}" if code is not None else "reported itself unhealthy"
                    tail = self.log_tail(8)
                    progress.warning(f"The local vLLM engine {why} (a process killed, or out of memory?); "
                                     f"starting a new one. Its last log lines:\n{tail}")
                    self.log.emit(f"[floodmapper] engine {why}; restarting")
                    self._terminate()
            if self._proc is None:
                self._start(progress)
            return self._wait_healthy(progress, timeout)

    def stop(self) -> None:
        """End the engine's whole process group (SIGTERM, SIGKILL after a grace period) and clean up.

        Safe from any thread, also while another thread waits in ensure_running(): that wait notices the
        request within half a second and gives the lock up (QGIS exiting must not wait for a start-up).
        """
        self._stop_requested.set()
        try:
            with self._lock:
                self._terminate()
        finally:
            self._stop_requested.clear()

    def state(self) -> str:
        """healthy | busy | starting | dead (see _probe)."""
        return self._probe()

    # ---- command line -----------------------------------------------------------------------------

    def build_command(self, info: EngineInfo, port: int) -> list[str]:
        """`vllm serve` arguments for this settings + this vLLM version (flags come and go by version)."""
        s = self.settings
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
        if self.io_processor:
            # TerraTorch's IOProcessor always sends float16 tiles; any other model dtype kills the engine
            # on the first request ("Input type (c10::Half) and bias type (float) should be the same").
            dtype = plan_local_engine(s, "image", None, 0, device).dtype
        else:
            dtype = engine_dtype(s, device).dtype
        self.dtype = dtype
        cmd = [info.python, str(self.entry), "serve", s.model, "--host", HOST, "--port", str(port)]
        if is_demo_model(s.model):
            cmd += ["--served-model-name", DEMO_MODEL_NAME]
        cmd += ["--model-impl", "terratorch", "--skip-tokenizer-init", "--enforce-eager"]
        if self.io_processor:
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
        return cmd

    # ---- internals --------------------------------------------------------------------------------

    def _start(self, progress: Progress) -> None:
        progress.info("Checking the vLLM environment…")
        info = self.info = check_environment(self.settings.vllm_python, self.entry)
        # the same port as before where it is free: a job's client keeps talking to a restarted engine
        port = self.port if self.port and port_is_free(self.port) else free_port()
        cmd = self.build_command(info, port)
        self._out_dir = tempfile.mkdtemp(prefix="floodmapper-engine-")
        extra = {
            "TERRATORCH_SEGMENTATION_IO_PROCESSOR_CONFIG": json.dumps({"output_path": self._out_dir}),
            # A local model folder must not trigger downloads; a Hugging Face id needs the hub.
            "HF_HUB_OFFLINE": "1" if os.path.isdir(self.settings.model) else "0",
        }
        if info.device == "cpu":
            extra["VLLM_CPU_KVCACHE_SPACE"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE") or "1"
            extra.update(vllm_cpu_binding())
        self.log.open()
        self._healthy_once = False
        self.command = cmd
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self.log.emit("[floodmapper] starting: " + " ".join(shlex.quote(c) for c in cmd))
        progress.info(f"Starting the local vLLM engine (vLLM {info.vllm}, {info.device.upper()}) on {self.url}")
        try:
            self._proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=child_environment({**extra, "FLOODMAPPER_WATCH_PID": str(os.getpid())}),
                cwd=self._out_dir, start_new_session=True,
                bufsize=1, text=True, encoding="utf-8", errors="replace",
            )
        except OSError as exc:
            self._cleanup_files()
            raise EngineError(f"Cannot start the vLLM engine ({cmd[0]}): {exc}.", SETUP_HINT) from exc
        with _LIVE_LOCK:
            _LIVE.add(self)  # stop_all()/atexit reach it even if it was made outside get_engine()
        self._reader = self.log.follow(self._proc)

    def _wait_healthy(self, progress: Progress, timeout: float) -> str:
        t0 = time.monotonic()
        last_note = t0
        while True:
            proc = self._proc
            if proc is None:
                raise EngineError("The local vLLM engine was stopped while starting.")
            if proc.poll() is not None:
                code = proc.returncode
                if self._reader is not None:
                    self._reader.join(timeout=5)
                tail = self.log_tail()
                self._terminate()
                raise EngineError(
                    f"The local vLLM engine exited with code {code} while starting. Last log lines:\n{tail}",
                    f"The full log is {self.log_path}. Check the model folder and the engine settings "
                    "(dtype, extra arguments).",
                )
            if progress.is_canceled():
                self.log.emit("[floodmapper] start-up cancelled; stopping the engine")
                self._terminate()
                raise Cancelled("Cancelled while the local vLLM engine was starting; it was stopped.")
            if self._stop_requested.is_set():
                self._terminate()
                raise EngineError("The local vLLM engine was stopped while it was starting.",
                                  "Run the algorithm again to start it anew.")
            state = self._probe()
            if state == "healthy":
                self._healthy_once = True
                self.model_id = self._served_model()
                progress.info(f"Local vLLM engine ready at {self.url} after {time.monotonic() - t0:.0f} s")
                return self.url
            elapsed = time.monotonic() - t0
            if elapsed > timeout:
                tail = self.log_tail()
                self._terminate()
                raise EngineError(
                    f"The local vLLM engine did not become healthy within {timeout:.0f} s. "
                    f"Last log lines:\n{tail}",
                    f"The full log is {self.log_path}. On a busy or small machine raise the start-up timeout.",
                )
            if time.monotonic() - last_note >= 10:
                last_note = time.monotonic()
                progress.info(f"Waiting for the local vLLM engine to load the model… {elapsed:.0f} s")
            time.sleep(0.5)

    def _probe(self) -> str:
        """healthy | busy | starting | dead, from the process state and one /health request."""
        if self._proc is None or self._proc.poll() is not None:
            return "dead"
        try:
            r = self._http.get(self.url + "/health", timeout=3)
        except requests.Timeout:
            return "busy"
        except requests.ConnectionError:
            return "starting" if not self._healthy_once else "dead"
        if r.status_code == 200:
            return "healthy"
        return "dead" if self._healthy_once else "starting"

    def _served_model(self) -> str:
        try:
            data = self._http.get(self.url + "/v1/models", timeout=10).json()["data"]
            return str(data[0]["id"]) if data else ""
        except (requests.RequestException, ValueError, KeyError, IndexError, TypeError) as exc:
            self.log.emit(f"[floodmapper] /v1/models failed: {exc}")
            return ""

    def _terminate(self) -> None:
        proc = self._proc
        if proc is not None:
            kill_group(proc, STOP_GRACE)
            if self._reader is not None:
                self._reader.join(timeout=5)
            self.log.emit(f"[floodmapper] engine stopped (exit code {proc.returncode})")
        self._proc = None
        self._reader = None
        self._healthy_once = False
        self.url = ""
        self._cleanup_files()
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def _cleanup_files(self) -> None:
        self.log.close()
        if self._out_dir:
            shutil.rmtree(self._out_dir, ignore_errors=True)
            self._out_dir = None


def is_demo_model(model: str) -> bool:
    try:
        return Path(model).resolve() == DEMO_MODEL_DIR.resolve()
    except OSError:
        return False


def engine_key(settings: Settings, io_processor: bool = True) -> tuple:
    s = settings
    return (s.vllm_python, s.model, s.device, s.dtype, int(s.max_num_seqs), float(s.gpu_memory_utilization),
            s.extra_args, bool(io_processor))


def engine_key_hash(settings: Settings, io_processor: bool = True) -> str:
    return hashlib.sha256(repr(engine_key(settings, io_processor)).encode()).hexdigest()[:10]


__all__ = ["LocalEngine", "engine_key", "live_engines"]
