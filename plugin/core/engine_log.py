"""The local engine's output: each line written to its log file, passed on (to the QGIS log panel), and the
last ones kept for the messages that quote them.

An engine that may outlive this process (keep-alive) writes its output to the log file itself, not to a pipe
that would break when this process exits; its lines are then followed in the file.
"""

from __future__ import annotations

import collections
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Optional

LOG_TAIL = 40  # log lines quoted in an error


class EngineLog:
    def __init__(self, path: Path, on_log: Optional[Callable[[str], None]] = None) -> None:
        self.path = path
        self.on_log = on_log
        self._fh = None
        self._tail: collections.deque[str] = collections.deque(maxlen=400)
        self._own: collections.Counter[str] = collections.Counter()  # our lines, not to be relayed twice
        self._own_lock = threading.Lock()
        self._following = False

    def open(self, *, new: bool = True) -> None:
        """A new log file for a new engine process (the previous one kept as .log.1), or with `new=False` the
        file of an engine already running, appended to."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if new and self.path.exists():
            os.replace(self.path, self.path.with_suffix(".log.1"))
        # append mode: an engine writing to the same file (keep-alive) appends too, and nothing is overwritten
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._tail.clear()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def follow(self, proc: subprocess.Popen) -> threading.Thread:
        """A thread that emits the process's output line by line until it ends."""

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.emit(line.rstrip("\n"))
            proc.stdout.close()

        thread = threading.Thread(target=read, daemon=True, name="floodmapper-engine-log")
        thread.start()
        return thread

    def follow_file(self, alive: Callable[[], bool], stop: threading.Event,
                    interval: float = 0.2) -> threading.Thread:
        """A thread that passes on the lines the engine writes to the log file (from its current end) until the
        engine ends or `stop` is set."""
        start = self.path.stat().st_size if self.path.exists() else 0

        def read() -> None:
            with open(self.path, encoding="utf-8", errors="replace") as fh:
                fh.seek(start)
                pending = ""
                while True:
                    chunk = fh.read()
                    if chunk:
                        pending += chunk
                        *lines, pending = pending.split("\n")
                        for line in lines:
                            self._relay(line)
                        continue
                    if stop.is_set() or not alive():
                        break
                    time.sleep(interval)
            if pending:
                self._relay(pending)
            self._following = False

        self._following = True
        thread = threading.Thread(target=read, daemon=True, name="floodmapper-engine-log")
        thread.start()
        return thread

    def _relay(self, line: str) -> None:
        with self._own_lock:
            if self._own[line] > 0:  # written by emit() below, which already passed it on
                self._own[line] -= 1
                return
        self._tail.append(line)
        self._callback(line)

    def emit(self, line: str) -> None:
        self._tail.append(line)
        fh = self._fh
        if fh is not None and not fh.closed:
            try:
                if self._following:
                    with self._own_lock:
                        self._own[line] += 1
                fh.write(line + "\n")
                fh.flush()
            except ValueError:  # closed by stop() between the check and the write
                pass
        self._callback(line)

    def _callback(self, line: str) -> None:
        callback = self.on_log
        if callback is not None:
            try:
                callback(line)
            except Exception as exc:  # noqa: BLE001 - a broken log sink must not kill the reader thread
                self.on_log = None
                self._tail.append(f"[floodmapper] log callback failed and was detached: {exc!r}")

    def tail(self, lines: int = LOG_TAIL) -> str:
        return "\n".join(list(self._tail)[-lines:])
