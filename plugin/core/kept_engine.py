"""A local engine kept running between runs (the keep-alive option): its record on disk, which is also its lease.

With keep-alive set to N minutes the engine outlives the process that started it, so `qgis_process` runs one
after another reuse it instead of paying its start (30-60 s) each time. Its record,
`<home>/engines/<key>.json`, says what it serves (model, dtype, whether it loads the IOProcessor, the vLLM
environment) and where (process group, URL). The record's modification time is the time the engine was last
used: a process touches it when it takes the engine and every few seconds while a job runs. The engine itself
(vllm_entry.py) watches the record and, once it is N minutes old, removes it and stops its whole process group,
so no orphan is left and no later process adopts an engine about to stop.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import requests

from .engine_env import EngineInfo
from .process_group import group_alive, kill_foreign_group
from .settings import floodmapper_home

HEARTBEAT_MAX = 30.0  # seconds between two touches of the record while a job runs
BUSY_WINDOW = 2 * HEARTBEAT_MAX  # a record touched this recently may belong to a running job
OUTPUT_DIR_PREFIX = "floodmapper-engine-"  # an engine's private folder in the temporary directory


def engines_dir() -> Path:
    return floodmapper_home() / "engines"


def record_path(key: str) -> Path:
    return engines_dir() / f"{key}.json"


def python_fingerprint(python: str) -> list:
    """The vLLM environment's interpreter as a file: its real path, size and modification time."""
    real = os.path.realpath(python)
    try:
        st = os.stat(real)
    except OSError:
        return [real, -1, -1]
    return [real, st.st_size, st.st_mtime_ns]


@dataclass
class KeptRecord:
    key: str  # engine_key_hash of the settings it runs
    pid: int  # its process group (the group leader's pid)
    url: str
    model: str  # the model setting (folder or id)
    model_id: str  # the name it serves the model under
    dtype: str  # its --dtype
    io_processor: bool
    python: list  # python_fingerprint of the vLLM environment
    vllm: str
    device: str
    keep_alive: float  # seconds idle before it stops
    log_path: str
    output_dir: str
    started: float = field(default_factory=time.time)
    info: dict = field(default_factory=dict)  # vllm_entry.py --check's answer

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[-1])

    def engine_info(self) -> EngineInfo:
        """What the vLLM environment had when the engine started (so a new process need not ask it again)."""
        return EngineInfo(python=self.python[0], vllm=self.vllm, terratorch=str(self.info.get("terratorch")),
                          torch=str(self.info.get("torch")), device=self.device,
                          io_processor_plugins=tuple(self.info.get("io_processor_plugins") or ()), raw=self.info)


def engine_record(engine, key: str, pid: int) -> KeptRecord:
    """The record of a LocalEngine that keeps its engine process running (pid 0 before the process exists)."""
    info = engine.info
    return KeptRecord(
        key=key, pid=pid, url=engine.url, model=engine.settings.model, model_id=engine.model_id,
        dtype=engine.dtype, io_processor=engine.io_processor, python=python_fingerprint(engine.settings.vllm_python),
        vllm=info.vllm, device=info.device, keep_alive=engine.keep_alive, log_path=str(engine.log_path),
        output_dir=engine.output_dir or "", info=info.raw,
    )


def write_record(record: KeptRecord) -> Path:
    """Write the record atomically (readers never see half a file), readable by this user only."""
    path = record_path(record.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(asdict(record), fh)
    os.replace(tmp, path)
    return path


def read_record(path: Path) -> Optional[KeptRecord]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return KeptRecord(**data)
    except (OSError, ValueError, TypeError):
        return None


def touch(path: Path) -> bool:
    """Mark the engine as used now; False when its record is gone (the engine is stopping or stopped)."""
    try:
        os.utime(path)
        return True
    except OSError:
        return False


def forget_engine(key: str, pid: int) -> None:
    """Forget the engine in process group `pid`, stopped or gone: its record (not a newer one written under the
    same key) and its output folder, which an engine stopped from outside its own idle watch leaves behind."""
    path = record_path(key)
    record = read_record(path)
    if record is not None and record.pid == pid:
        try:
            path.unlink()
        except OSError:
            pass
        if Path(record.output_dir).name.startswith(OUTPUT_DIR_PREFIX):  # never a folder the plugin did not make
            shutil.rmtree(record.output_dir, ignore_errors=True)


def records() -> list[tuple[Path, KeptRecord]]:
    found = []
    for path in sorted(engines_dir().glob("*.json")):
        record = read_record(path)
        if record is not None:
            found.append((path, record))
    return found


def idle_seconds(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return float("inf")


def known_device(vllm_python: str) -> str:
    """The device of a kept engine of this vLLM environment ("" if none): a new process then needs not ask the
    environment (~20 s) before it finds the engine to reuse."""
    fingerprint = python_fingerprint(vllm_python)
    for _path, record in records():
        if record.python == fingerprint and group_alive(record.pid):
            return record.device
    return ""


def check_adoptable(record: KeptRecord, vllm_python: str, http: requests.Session) -> str:
    """"" when the engine of `record` runs and serves what the record says with this vLLM environment, else why
    not."""
    if record.pid <= 0 or not group_alive(record.pid):
        return f"its process group {record.pid} is gone"
    if record.python != python_fingerprint(vllm_python):
        return "it runs another vLLM environment (or the environment changed since it started)"
    try:
        health = http.get(record.url + "/health", timeout=10)
        if health.status_code != 200:
            return f"/health answers {health.status_code}"
        models = [m.get("id") for m in http.get(record.url + "/v1/models", timeout=10).json()["data"]]
        version = str(http.get(record.url + "/version", timeout=10).json().get("version", ""))
    except (requests.RequestException, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"it does not answer as a vLLM server ({exc})"
    if record.model_id not in models:
        return f"it serves {', '.join(map(str, models)) or 'nothing'}, not {record.model_id}"
    if version.split("+")[0] != record.vllm:
        return f"it runs vLLM {version}, not {record.vllm}"
    return ""


def find_reusable(key: str, vllm_python: str, http: requests.Session, say: Callable[[str], None],
                  grace: float) -> Optional[KeptRecord]:
    """The kept engine for the settings `key` if it runs and serves what its record says with this vLLM
    environment; one that cannot be reused is stopped when it is idle (a newer start would replace it anyway)."""
    path = record_path(key)
    record = read_record(path)
    if record is None:
        return None
    idle = idle_seconds(path)
    if not touch(path):  # removed meanwhile: the engine is stopping
        return None
    why = check_adoptable(record, vllm_python, http)
    if not why:
        return record
    say(f"Not reusing the local vLLM engine kept running (pid {record.pid}): {why}")
    if record.pid > 0 and group_alive(record.pid) and idle > BUSY_WINDOW:
        kill_foreign_group(record.pid, grace)
        forget_engine(key, record.pid)
    return None


def stop_idle_kept_engines(say: Callable[[str], None], grace: float) -> None:
    """Stop the kept engines not in use: a new engine would compete with them for the same cores and memory.
    The record of an engine that is gone (killed from outside, the computer restarted) is removed."""
    for path, record in records():
        if record.pid > 0 and not group_alive(record.pid):
            forget_engine(record.key, record.pid)
        elif record.pid > 0 and idle_seconds(path) > BUSY_WINDOW:
            say(f"[floodmapper] stopping the kept engine {record.pid} ({record.model}, {record.dtype}) "
                "to start this one")
            kill_foreign_group(record.pid, grace)
            forget_engine(record.key, record.pid)


class Lease:
    """Keeps a kept engine's record fresh while jobs run on it: taken per job, released when the job ends.

    The engine stops `keep_alive` seconds after the last release; while held, a thread touches the record
    often enough that the engine never sees itself idle mid-job.
    """

    def __init__(self, path: Path, keep_alive: float) -> None:
        self.path = path
        self.interval = max(1.0, min(HEARTBEAT_MAX, keep_alive / 4))
        self._holders = 0
        self._lock = threading.Lock()
        self._stop: Optional[threading.Event] = None

    def hold(self) -> Callable[[], None]:
        """Taken by a job; returns its release (calling it again does nothing)."""
        touch(self.path)
        with self._lock:
            self._holders += 1
            if self._holders == 1:
                self._stop = threading.Event()
                threading.Thread(target=self._beat, args=(self._stop,), daemon=True,
                                 name="floodmapper-engine-lease").start()
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                self._release()

        return release

    def _release(self) -> None:
        with self._lock:
            self._holders = max(0, self._holders - 1)
            if self._holders == 0 and self._stop is not None:
                self._stop.set()
                self._stop = None
        touch(self.path)  # the idle time counts from the end of the last run

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            touch(self.path)


__all__ = [
    "KeptRecord", "Lease", "check_adoptable", "find_reusable", "known_device", "read_record", "record_path",
    "forget_engine", "records", "stop_idle_kept_engines", "touch", "write_record",
]
