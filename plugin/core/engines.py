"""The local engines of this process: one per engine settings, reused across runs, at most one running by
default (two would compete for the same cores and memory), all stopped when QGIS exits."""

from __future__ import annotations

import atexit
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import requests

from .engine import LocalEngine, engine_key, live_engines
from .engine_env import ENTRY_SCRIPT, check_environment
from .progress import Progress
from .settings import Settings
from .transport_choice import engine_dtype


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


_ENGINES: dict[tuple, LocalEngine] = {}
_LOCK = threading.RLock()  # taken after an engine's own lock, never before


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
    with _LOCK:
        engine = _ENGINES.get(key)
        if exclusive:
            others = [_ENGINES.pop(k) for k in list(_ENGINES) if k != key]
            others += [e for e in live_engines() if e is not engine and e not in others]
        if engine is None:
            engine = LocalEngine(settings, log_dir, on_log, io_processor=io_processor, entry=entry)
            _ENGINES[key] = engine
        else:
            engine.on_log = on_log
    for other in others:  # outside the registry lock: stop() takes the engine's own lock
        other.stop()
    return engine


def running_engines() -> list[LocalEngine]:
    return [e for e in live_engines() if e.is_alive()]


def stop_all() -> None:
    """Stop every engine this process started (plugin unload, QGIS exit)."""
    with _LOCK:
        engines = list(_ENGINES.values()) + [e for e in live_engines() if e not in _ENGINES.values()]
        _ENGINES.clear()
    for engine in engines:
        engine.stop()


def engine_status(settings: Settings, *, io_processor: bool | None = None, start: bool = False,
                  progress: Progress | None = None, entry: str | Path = ENTRY_SCRIPT) -> EngineStatus:
    """The "Test" button: what the vLLM environment has and, if running (or `start`), what it serves.

    Without `io_processor`, the engine is the one a job on a small raster would start (plan_local_engine)."""
    if io_processor is None:
        dtype = engine_dtype(settings, check_environment(settings.vllm_python, entry).device).dtype
        settings, io_processor = replace(settings, dtype=dtype), dtype == "float16"
    engine = get_engine(settings, io_processor=io_processor, exclusive=start, entry=entry)
    if start:
        engine.ensure_running(progress)
    info = engine.info or check_environment(settings.vllm_python, entry)
    running = engine.is_alive() and engine.state() in ("healthy", "busy")
    models: list[str] = []
    version = info.vllm
    if running:
        try:
            with requests.Session() as http:
                http.trust_env = False  # loopback: no proxy
                models = [m["id"] for m in http.get(engine.url + "/v1/models", timeout=10).json()["data"]]
                version = http.get(engine.url + "/version", timeout=10).json().get("version", version)
        except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
            engine.log.emit(f"[floodmapper] status query failed: {exc}")
    return EngineStatus(
        running=running, url=engine.url if running else "", vllm_version=str(version),
        terratorch_version=info.terratorch, torch_version=info.torch, device=info.device, models=models,
        pid=engine.pid if running else None, log_path=str(engine.log_path), python=info.python,
    )


atexit.register(stop_all)
