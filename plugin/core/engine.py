"""The local engine: one real `vllm serve` process that the plugin starts, watches and stops (QGIS-free).

Why a child process and not vLLM in QGIS's Python: vLLM, torch and TerraTorch live in their own environment
(engine_env.py), which QGIS's Python must never import. The engine runs in a process group of its own
(start_new_session), so `stop()` ends vLLM's API server, engine core and workers together and nothing is
orphaned. A dead engine (process exited, or /health answering an error) is noticed by the next
`ensure_running`, which starts a new one; a /health that merely times out means "busy" (vLLM runs the
IOProcessor's pre-processing in its event loop), not "dead". Which engine serves which settings: engines.py;
an engine kept running for later processes (the keep-alive option): kept_engine.py.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import requests

from . import kept_engine as kept
from .engine_command import (
    engine_key,
    engine_key_hash,
    free_port,
    is_demo_model,
    port_is_free,
    serve_command,
    serve_environment,
)
from .engine_env import ENTRY_SCRIPT, HOST, SETUP_HINT, EngineInfo, check_environment, child_environment
from .engine_log import LOG_TAIL, EngineLog
from .errors import Cancelled, EngineError
from .process_group import group_alive, kill_foreign_group, kill_group
from .progress import NullProgress, Progress
from .settings import Settings, floodmapper_home

STOP_GRACE = 15.0  # vLLM shuts its engine core down within a few seconds of SIGTERM

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
        self.keep_alive = max(0.0, float(settings.engine_keep_alive)) * 60  # seconds; 0: stops with this process
        self._proc: subprocess.Popen | None = None
        self._adopted: kept.KeptRecord | None = None  # a kept engine another process started
        self._kept = False  # the running engine outlives this process (started or adopted with keep-alive)
        self._lease: kept.Lease | None = None
        self._follow_stop = threading.Event()
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
        if self._proc is not None:
            return self._proc.pid
        return self._adopted.pid if self._adopted is not None else None

    @property
    def output_dir(self) -> str | None:
        """The private folder the IOProcessor writes `path` outputs to (removed by stop())."""
        return self._out_dir

    def is_alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self._adopted is not None and group_alive(self._adopted.pid)

    def _has_process(self) -> bool:
        return self._proc is not None or self._adopted is not None

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
            if not self._has_process() and self.keep_alive > 0:
                self._adopt(progress)
            if self._has_process():
                state = self._probe()
                if state == "healthy" or (state == "busy" and self._healthy_once):
                    return self.url
                if state == "dead":
                    tail = self.log_tail(8)
                    if "kept engine stopping" in tail:
                        progress.info("The local vLLM engine kept after the last run stopped after its idle "
                                      "time; starting a new one.")
                    else:
                        code = self._proc.poll() if self._proc is not None else None
                        why = f"exited with code {code}" if code is not None else "stopped or reported itself unhealthy"
                        progress.warning(f"The local vLLM engine {why} (a process killed, or out of memory?); "
                                         f"starting a new one. Its last log lines:\n{tail}")
                        self.log.emit(f"[floodmapper] engine {why}; restarting")
                    self._terminate()
            if not self._has_process():
                self._start(progress)
            return self._wait_healthy(progress, timeout)

    def hold(self) -> Callable[[], None]:
        """Mark the engine in use by a job until the returned function is called: a kept engine does not stop
        for idleness meanwhile, and its idle time counts from the release."""
        lease = self._lease if self._kept else None
        return lease.hold() if lease is not None else (lambda: None)

    def detach(self) -> None:
        """Leave a kept engine running for the next process (plugin unload, exit); stop any other engine."""
        with self._lock:
            if not (self._kept and self.is_alive()):
                self._terminate()
                return
            self.log.emit(f"[floodmapper] engine {self.pid} left running for the next run; it stops after "
                          f"{self.keep_alive / 60:g} idle minutes")
            self._stop_follower()
            self.log.close()
            self._out_dir = None  # the engine's, removed when it stops
            self._drop()

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

    def build_command(self, info: EngineInfo, port: int) -> list[str]:
        """`vllm serve` arguments for these settings and this vLLM version (engine_command.py)."""
        argv, self.dtype = serve_command(self.settings, info, port, io_processor=self.io_processor, entry=self.entry)
        return argv

    # ---- internals --------------------------------------------------------------------------------

    def _adopt(self, progress: Progress) -> None:
        """Take over the kept engine for these settings that another process started, if it can be reused."""
        key = engine_key_hash(self.settings, self.io_processor)
        record = kept.find_reusable(key, self.settings.vllm_python, self._http, progress.info, STOP_GRACE)
        if record is None:
            return
        self._adopted = record
        self._kept = True
        self.info = record.engine_info()
        self.url, self.port, self.model_id, self.dtype = record.url, record.port, record.model_id, record.dtype
        self._out_dir = record.output_dir
        self._healthy_once = True
        self.log.path = self.log_path = Path(record.log_path)
        self.log.open(new=False)
        self._follow_stop = threading.Event()
        self._reader = self.log.follow_file(self.is_alive, self._follow_stop)
        self._lease = kept.Lease(kept.record_path(key), record.keep_alive)
        with _LIVE_LOCK:
            _LIVE.add(self)
        since = time.strftime("%H:%M", time.localtime(record.started))
        mode = "image-to-image (IOProcessor)" if record.io_processor else "tensor-to-tensor"
        progress.info(f"Reusing the local vLLM engine kept running since {since} (pid {record.pid}, "
                      f"{record.dtype}, {mode}) at {self.url}")
        self.log.emit(f"[floodmapper] reusing kept engine {record.pid} at {self.url} (pid {os.getpid()})")

    def _record(self, pid: int) -> kept.KeptRecord:
        return kept.engine_record(self, engine_key_hash(self.settings, self.io_processor), pid)

    def _start(self, progress: Progress) -> None:
        kept.stop_idle_kept_engines(self.log.emit, STOP_GRACE)  # they would compete for the same cores and memory
        progress.info("Checking the vLLM environment…")
        info = self.info = check_environment(self.settings.vllm_python, self.entry)
        # the same port as before where it is free: a job's client keeps talking to a restarted engine
        port = self.port if self.port and port_is_free(self.port) else free_port()
        cmd = self.build_command(info, port)
        self._out_dir = tempfile.mkdtemp(prefix=kept.OUTPUT_DIR_PREFIX)
        extra = serve_environment(self.settings, info, self._out_dir)
        self.log.open()
        self._healthy_once = False
        self.command = cmd
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self.model_id = ""
        self._kept = self.keep_alive > 0
        if self._kept:
            # it outlives this process: it stops itself once its record has been idle for keep_alive seconds,
            # and writes to its log file (a pipe to this process would break when this process exits)
            path = kept.write_record(self._record(0))
            extra.update(FLOODMAPPER_KEEP_RECORD=str(path), FLOODMAPPER_KEEP_IDLE=str(self.keep_alive))
            self._lease = kept.Lease(path, self.keep_alive)
        else:
            extra["FLOODMAPPER_WATCH_PID"] = str(os.getpid())  # it stops when this process is gone
        extra["FLOODMAPPER_OUTPUT_DIR"] = self._out_dir  # removed by the engine when it stops on its own
        self.log.emit("[floodmapper] starting: " + " ".join(shlex.quote(c) for c in cmd))
        note = f", kept {self.keep_alive / 60:g} minutes after the last run" if self._kept else ""
        progress.info(f"Starting the local vLLM engine (vLLM {info.vllm}, {info.device.upper()}) on {self.url}{note}")
        out = open(self.log_path, "a", encoding="utf-8") if self._kept else None  # noqa: SIM115 - closed below
        try:
            self._proc = subprocess.Popen(
                cmd, stdout=out or subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=child_environment(extra), cwd=self._out_dir, start_new_session=True,
                bufsize=1, text=True, encoding="utf-8", errors="replace",
            )
        except OSError as exc:
            self._cleanup_files()
            self._forget_record(0)
            raise EngineError(f"Cannot start the vLLM engine ({cmd[0]}): {exc}.", SETUP_HINT) from exc
        finally:
            if out is not None:
                out.close()  # the engine has its own descriptor
        with _LIVE_LOCK:
            _LIVE.add(self)  # stop_all()/atexit reach it even if it was made outside get_engine()
        if self._kept:
            kept.write_record(self._record(self._proc.pid))
            proc = self._proc
            self._follow_stop = threading.Event()
            self._reader = self.log.follow_file(lambda: proc.poll() is None, self._follow_stop)
        else:
            self._reader = self.log.follow(self._proc)

    def _wait_healthy(self, progress: Progress, timeout: float) -> str:
        t0 = last_note = time.monotonic()
        while True:
            proc = self._proc
            if proc is None:
                if self._adopted is not None and not self.is_alive():
                    self._terminate()
                    raise EngineError("The kept local vLLM engine stopped while this run took it over.",
                                      "Run the algorithm again: it starts a new engine.")
                if self._adopted is None:
                    raise EngineError("The local vLLM engine was stopped while starting.")
            elif proc.poll() is not None:
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
                if self._kept and self.pid:
                    kept.write_record(self._record(self.pid))  # now a later process can find and check it
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
            if self._lease is not None:  # a kept engine's idle time starts once it serves, not while it loads
                kept.touch(self._lease.path)
            if time.monotonic() - last_note >= 10:
                last_note = time.monotonic()
                progress.info(f"Waiting for the local vLLM engine to load the model… {elapsed:.0f} s")
            time.sleep(0.5)

    def _probe(self) -> str:
        """healthy | busy | starting | dead, from the process state and one /health request."""
        if not self.is_alive():
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
        proc, adopted = self._proc, self._adopted
        if proc is not None:
            kill_group(proc, STOP_GRACE)
            self._stop_follower()
            self.log.emit(f"[floodmapper] engine stopped (exit code {proc.returncode})")
            if self._kept:
                self._forget_record(proc.pid)
        elif adopted is not None:
            kill_foreign_group(adopted.pid, STOP_GRACE)
            self._stop_follower()
            self.log.emit(f"[floodmapper] kept engine {adopted.pid} stopped")
            self._forget_record(adopted.pid)
        self._cleanup_files()
        self._drop()

    def _drop(self) -> None:
        """Forget the process: stopped, or left running on its own."""
        self._proc = self._adopted = self._lease = self._reader = None
        self._kept = self._healthy_once = False
        self.url = ""
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def _stop_follower(self) -> None:
        self._follow_stop.set()
        if self._reader is not None:
            self._reader.join(timeout=5)
        self._reader = None

    def _forget_record(self, pid: int) -> None:
        kept.forget_engine(engine_key_hash(self.settings, self.io_processor), pid)

    def _cleanup_files(self) -> None:
        self.log.close()
        if self._out_dir:
            shutil.rmtree(self._out_dir, ignore_errors=True)
            self._out_dir = None


__all__ = ["LocalEngine", "engine_key", "engine_key_hash", "free_port", "is_demo_model", "live_engines", "port_is_free"]
