"""The local engine's output: each line written to its log file, passed on (to the QGIS log panel), and the
last ones kept for the messages that quote them."""

from __future__ import annotations

import collections
import os
import subprocess
import threading
from pathlib import Path
from typing import Callable, Optional

LOG_TAIL = 40  # log lines quoted in an error


class EngineLog:
    def __init__(self, path: Path, on_log: Optional[Callable[[str], None]] = None) -> None:
        self.path = path
        self.on_log = on_log
        self._fh = None
        self._tail: collections.deque[str] = collections.deque(maxlen=400)

    def open(self) -> None:
        """A new log file for a new engine process (the previous one kept as .log.1)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            os.replace(self.path, self.path.with_suffix(".log.1"))
        self._fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
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

    def emit(self, line: str) -> None:
        self._tail.append(line)
        fh = self._fh
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

    def tail(self, lines: int = LOG_TAIL) -> str:
        return "\n".join(list(self._tail)[-lines:])
